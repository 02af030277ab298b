package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestRelayCarriesAndCloses: bytes and half-closes pass both ways, and
// Close cuts open streams.
func TestRelayCarriesAndCloses(t *testing.T) {
	target := loopbackTCP(t, echoConn)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := startRelay(ln, tcpDialer(target), t.Logf, relayPortCap, &connCap{max: relayBottleCap})
	if _, err := echoCheck(context.Background(), ln.Addr().String(), 1<<20, 10*time.Second); err != nil {
		t.Fatalf("through the relay: %v", err)
	}
	open, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	open.Write([]byte("x"))
	buf := make([]byte, 1)
	if _, err := io.ReadFull(open, buf); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { r.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
	open.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := open.Read(buf); err == nil {
		t.Error("stream still open after Close")
	}
	if _, err := net.DialTimeout("tcp4", ln.Addr().String(), time.Second); err == nil {
		t.Error("listener still accepts after Close")
	}
}

// countingTarget is an echo sidecar that counts the connections it holds
// and the most it ever held at once.
type countingTarget struct {
	mu        sync.Mutex
	open, max int
}

func (ct *countingTarget) serve(c net.Conn) {
	ct.mu.Lock()
	ct.open++
	ct.max = max(ct.max, ct.open)
	ct.mu.Unlock()
	echoConn(c)
	ct.mu.Lock()
	ct.open--
	ct.mu.Unlock()
}

func (ct *countingTarget) counts() (open, most int) {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	return ct.open, ct.max
}

// holdConns opens n connections to addr, each sending first when speak is
// set, and waits for each to be echoed (speak) or accepted.
func holdConns(t *testing.T, addr string, n int, speak bool) []net.Conn {
	t.Helper()
	var cs []net.Conn
	t.Cleanup(func() {
		for _, c := range cs {
			c.Close()
		}
	})
	for range n {
		c, err := net.Dial("tcp4", addr)
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
		if speak {
			c.Write([]byte("x"))
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
				t.Fatalf("held stream %d: %v", len(cs), err)
			}
		}
	}
	return cs
}

// refusedAtOnce reports whether a new stream to addr is closed by the relay
// (EOF or reset) rather than left hanging; the deadline is generous.
func refusedAtOnce(t *testing.T, addr string) bool {
	t.Helper()
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		return true
	}
	defer c.Close()
	c.Write([]byte("x"))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// TestRelayCaps: streams beyond the port cap, and beyond the bottle cap
// shared by two relays, are closed at once; a freed slot serves again.
func TestRelayCaps(t *testing.T) {
	ct := &countingTarget{}
	target := loopbackTCP(t, ct.serve)
	bottle := &connCap{max: 5}
	var addrs []string
	for range 2 {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		r := startRelay(ln, tcpDialer(target), t.Logf, 3, bottle)
		t.Cleanup(func() { r.Close() })
		addrs = append(addrs, ln.Addr().String())
	}
	a := holdConns(t, addrs[0], 3, true)
	if !refusedAtOnce(t, addrs[0]) {
		t.Errorf("a 4th stream on a port capped at 3 was not refused")
	}
	holdConns(t, addrs[1], 2, true)
	if !refusedAtOnce(t, addrs[1]) {
		t.Errorf("a 6th stream in a bottle capped at 5 was not refused")
	}
	if _, most := ct.counts(); most > 5 {
		t.Errorf("the sidecar held %d streams at once, over the bottle cap 5", most)
	}
	a[0].Close()
	var err error
	for range 100 { // the relay frees the slot once both copies end
		if _, err = echoCheck(context.Background(), addrs[1], 1, 10*time.Second); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Errorf("a freed slot does not serve again: %v", err)
	}
}

// TestRelayDialsOnFirstBytes: gvproxy dials the relay for every SYN before
// the guest's handshake completes and never closes that connection when the
// handshake fails (pkg/services/forwarder/tcp.go:34-51 @ v0.8.9): a spoofed
// SYN is a relay stream that never speaks. Such streams must not reach the
// sidecar, must stay within the cap, and leave no slot taken for good.
func TestRelayDialsOnFirstBytes(t *testing.T) {
	ct := &countingTarget{}
	target := loopbackTCP(t, ct.serve)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := startRelay(ln, tcpDialer(target), t.Logf, 4, &connCap{max: 4})
	t.Cleanup(func() { r.Close() })
	silent := holdConns(t, ln.Addr().String(), 4, false)
	if !refusedAtOnce(t, ln.Addr().String()) {
		t.Errorf("a 5th stream on a port capped at 4 was not refused")
	}
	if open, most := ct.counts(); open != 0 || most != 0 {
		t.Errorf("silent streams reached the sidecar: %d open, %d at most", open, most)
	}
	// A silent stream that finally speaks is carried.
	silent[0].Write([]byte("y"))
	silent[0].SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(silent[0], make([]byte, 1)); err != nil {
		t.Errorf("a stream that spoke late was not carried: %v", err)
	}
}

// TestRelayDialFailuresLogCapped: a guest that opens streams to a port
// whose sidecar is down, as fast as it can, gets refusalLogLines lines in
// the log, then one at 1,000 and each doubling.
func TestRelayDialFailuresLogCapped(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var lines []string
	logf := func(format string, args ...any) {
		mu.Lock()
		lines = append(lines, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	down := func(context.Context) (net.Conn, error) { return nil, errors.New("connection refused") }
	r := startRelay(ln, down, logf, relayPortCap, &connCap{max: relayBottleCap})
	const streams = 1100
	for range streams {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("x"))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		c.Read(make([]byte, 1)) // EOF once the relay has given up on it
		c.Close()
	}
	r.Close()
	mu.Lock()
	defer mu.Unlock()
	if len(lines) != refusalLogLines+1 || !strings.HasSuffix(lines[len(lines)-1], "1000 lines so far, the rest not logged") {
		t.Fatalf("%d log lines for %d failed dials, want %d and the count last:\n%s", len(lines), streams, refusalLogLines+1, strings.Join(lines, "\n"))
	}
}

// TestRelayRefusalsDoNotHideDialFailures: streams refused over the cap and
// failed dials are capped apart, so a flood of the first does not hide why
// the sidecar could not be reached.
func TestRelayRefusalsDoNotHideDialFailures(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &logLines{}
	down := func(context.Context) (net.Conn, error) { return nil, errors.New("sidecar down") }
	r := startRelay(ln, down, l.logf, 1, &connCap{max: relayBottleCap})
	defer r.Close()
	held, err := net.Dial("tcp4", ln.Addr().String()) // takes the port's one place
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	for range refusalLogLines + 10 {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("a stream over the cap: %v, want it closed at once", err)
		}
		c.Close()
	}
	if !l.has("refused: over the cap") || l.has("sidecar down") {
		t.Fatalf("want only refusals so far:\n%s", strings.Join(l.lines, "\n"))
	}
	held.Write([]byte("x"))
	held.SetReadDeadline(time.Now().Add(10 * time.Second))
	held.Read(make([]byte, 1)) // EOF once the relay has given up on it
	if !l.has("sidecar down") {
		t.Fatalf("no dial failure logged after %d refusals:\n%s", refusalLogLines+10, strings.Join(l.lines, "\n"))
	}
}

// flakyListener fails its first n accepts with err, as a listener does
// when the process runs out of descriptors.
type flakyListener struct {
	net.Listener
	mu  sync.Mutex
	n   int
	err error
}

func (l *flakyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if l.n > 0 {
		l.n--
		l.mu.Unlock()
		return nil, l.err
	}
	l.mu.Unlock()
	return l.Listener.Accept()
}

// TestRelayRecoversFromAcceptErrors: EMFILE, ENFILE and ECONNABORTED from
// accept pause the relay; it serves again once accept works.
func TestRelayRecoversFromAcceptErrors(t *testing.T) {
	target := loopbackTCP(t, echoConn)
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ECONNABORTED} {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		fl := &flakyListener{Listener: ln, n: 5, err: &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errno)}}
		r := startRelay(fl, tcpDialer(target), t.Logf, relayPortCap, &connCap{max: relayBottleCap})
		if _, err := echoCheck(context.Background(), ln.Addr().String(), 1<<10, 10*time.Second); err != nil {
			t.Errorf("%v: the relay did not recover: %v", errno, err)
		}
		r.Close()
	}
}

func TestRelayCapsFitTheLimit(t *testing.T) {
	for _, tc := range []struct {
		nofile             uint64
		wantPort, wantBott int
	}{
		{1 << 20, relayPortCap, relayBottleCap},
		{20000, relayPortCap, relayBottleCap},
		{1024, 128, 128},
		{100, 1, 1},
	} {
		port, bottle := relayCaps(tc.nofile)
		if port != tc.wantPort || bottle != tc.wantBott {
			t.Errorf("relayCaps(%d) = %d, %d, want %d, %d", tc.nofile, port, bottle, tc.wantPort, tc.wantBott)
		}
		if tc.nofile > relayFDReserve && uint64(bottle*relayFDsPerStream+relayFDReserve) > tc.nofile {
			t.Errorf("relayCaps(%d): %d streams leave no reserve", tc.nofile, bottle)
		}
	}
}

// BenchmarkRelayConnect: connect, one byte there and back, close; direct
// to the sidecar, through a relay, and through "bare": the least a
// user-space relay can do (accept, dial at once, copy both ways; no caps,
// no wait for the first bytes). relay against bare is what the caps and
// the first-byte rule cost; bare against direct is the cost of the second
// TCP connection itself, which only a relay-free path avoids.
func BenchmarkRelayConnect(b *testing.B) {
	target := loopbackTCP(b, echoConn)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	r := startRelay(ln, tcpDialer(target), b.Logf, relayPortCap, &connCap{max: relayBottleCap})
	defer r.Close()
	bare := loopbackTCP(b, func(c net.Conn) {
		d, err := net.Dial("tcp4", target)
		if err != nil {
			c.Close()
			return
		}
		joinConns(c, d)
	})
	for _, tc := range []struct{ name, addr string }{{"direct", target}, {"relay", ln.Addr().String()}, {"bare", bare}} {
		b.Run(tc.name, func(b *testing.B) {
			buf := make([]byte, 1)
			for b.Loop() {
				c, err := net.Dial("tcp4", tc.addr)
				if err != nil {
					b.Fatal(err)
				}
				c.Write(buf)
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}

// TestServedListenerCaps: a port the owner serves itself counts against
// the same caps as a relay, shares the bottle's with the relays, refuses
// one over at once, recovers from failed accepts, gives a closed
// connection's place back, and Close cuts what it handed out.
func TestServedListenerCaps(t *testing.T) {
	bottle := &connCap{max: 5}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &flakyListener{Listener: ln, n: 3, err: &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}}
	sl := newServedListener(fl, "served", t.Logf, 3, bottle)
	t.Cleanup(func() { sl.Close() })
	go func() {
		for {
			c, err := sl.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	rln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := startRelay(rln, tcpDialer(loopbackTCP(t, echoConn)), t.Logf, 3, bottle)
	t.Cleanup(func() { r.Close() })

	served := ln.Addr().String()
	held := holdConns(t, served, 3, true)
	if !refusedAtOnce(t, served) {
		t.Errorf("a 4th connection on a served port capped at 3 was not refused")
	}
	holdConns(t, rln.Addr().String(), 2, true)
	if !refusedAtOnce(t, rln.Addr().String()) {
		t.Errorf("a relayed stream over the bottle cap of 5, shared with the served port, was not refused")
	}
	held[0].Close()
	for range 100 { // the server's close gives the place back
		if _, err = echoCheck(context.Background(), served, 1, 10*time.Second); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Errorf("a freed place does not serve again: %v", err)
	}
	sl.Close()
	held[1].SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := held[1].Read(make([]byte, 1)); err == nil {
		t.Errorf("a held connection survived Close")
	}
}

// TestRelayCloseCutsSidecarSide: a stream whose guest side has half-closed
// while its sidecar stays silent holds no guest descriptor to cut; Close
// must still end it, sidecar side included, and return.
func TestRelayCloseCutsSidecarSide(t *testing.T) {
	ended := make(chan struct{})
	target := loopbackTCP(t, func(c net.Conn) {
		io.Copy(io.Discard, c)  // the guest's bytes, then its half-close
		c.Read(make([]byte, 1)) // silent until the relay cuts it
		close(ended)
	})
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := startRelay(ln, tcpDialer(target), t.Logf, relayPortCap, &connCap{max: relayBottleCap})
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("x"))
	c.(*net.TCPConn).CloseWrite()
	time.Sleep(100 * time.Millisecond) // the relay passes the half-close on
	done := make(chan struct{})
	go func() { r.Close(); close(done) }()
	for _, ch := range []chan struct{}{done, ended} {
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatal("Close left the stream's sidecar side open")
		}
	}
}

// TestRefusalLogGrowsWithTheLogarithm: a flood of one kind of line that
// never ends still writes only the first refusalLogLines and a count at
// 1,000 and each doubling, so a guest cannot fill the disk with it.
func TestRefusalLogGrowsWithTheLogarithm(t *testing.T) {
	var l refusalLog
	var got []string
	logf := func(format string, args ...any) { got = append(got, fmt.Sprintf(format, args...)) }
	for range 1 << 20 {
		l.log(logf, "relay", "refused")
	}
	var counts []string
	for _, line := range got[refusalLogLines:] {
		counts = append(counts, strings.TrimSuffix(strings.TrimPrefix(line, "relay: "), " lines so far, the rest not logged"))
	}
	want := []string{"1000", "2000", "4000", "8000", "16000", "32000", "64000", "128000", "256000", "512000", "1024000"}
	if len(got) < refusalLogLines || got[0] != "relay: refused" || !slices.Equal(counts, want) {
		t.Errorf("%d lines; after the first %d: %q, want %q", len(got), refusalLogLines, counts, want)
	}
}

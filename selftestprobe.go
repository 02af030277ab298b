package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The selftest's own probe kinds: echoes, UDP, gvproxy's API, the guest
// link front, floods and spoofed SYNs. They run in the selftest's guest
// namespace; the start-up self-test (probe.go) uses none of them.
const (
	probeEcho   = "echo"    // Addr must echo Bytes bytes back intact
	probeNoUDP  = "no-udp"  // a datagram to Addr must get no reply
	probeAPI    = "api"     // POST Body to the gateway's expose API; judged by the host
	probeBurst  = "burst"   // Count dials to Want (black hole) must not stall the echo at Addr
	probeNoLink = "no-link" // Body sent on the unix socket Addr must be refused (guestlink.go)
	probeFlood  = "flood"   // Count held streams to Addr end at a cap; Addr echoes again after release
	probeSpoof  = "spoof"   // Count raw TCP SYNs to Addr from Want, an address the guest does not own; judged by the host
)

const (
	probeUDPWait     = time.Second
	probeEchoTimeout = 30 * time.Second
	// burstStallLimit is how long the sidecar may take to answer while
	// dials to a black hole are pending. Stock gvproxy stalls ~136 s here
	// (measured): its TCP forwarder keeps at most 10 dials in flight
	// (pkg/services/forwarder/tcp.go:21 @ v0.8.9).
	burstStallLimit = 3 * time.Second
)

func init() {
	harnessProbes[probeEcho] = func(ctx context.Context, _ probePlan, p probe) (bool, string) {
		n, err := echoCheck(ctx, p.Addr, p.Bytes, probeEchoTimeout)
		if err != nil {
			return false, err.Error()
		}
		return true, fmt.Sprintf("%d bytes each way", n)
	}
	harnessProbes[probeNoUDP] = func(ctx context.Context, _ probePlan, p probe) (bool, string) {
		return mustNotAnswerUDP(ctx, p.Addr)
	}
	harnessProbes[probeAPI] = func(ctx context.Context, plan probePlan, p probe) (bool, string) {
		return true, postAPI(ctx, plan.Gateway, p.Body)
	}
	harnessProbes[probeBurst] = func(ctx context.Context, _ probePlan, p probe) (bool, string) {
		return burstCheck(ctx, p)
	}
	harnessProbes[probeNoLink] = func(_ context.Context, _ probePlan, p probe) (bool, string) {
		return mustRefuseLink(p.Addr, p.Body)
	}
	harnessProbes[probeFlood] = func(ctx context.Context, _ probePlan, p probe) (bool, string) {
		return floodCheck(ctx, p)
	}
	harnessProbes[probeSpoof] = func(_ context.Context, _ probePlan, p probe) (bool, string) {
		return spoofSYNs(p)
	}
}

// mustRefuseLink sends body on the unix socket at path and passes only when
// the answer is the guest link front's 403. gvproxy itself answers its API
// with 200, 400 or 404 and a /connect with silence, holding the link open:
// all fail.
func mustRefuseLink(path, body string) (bool, string) {
	c, err := net.DialTimeout("unix", path, probeDialTimeout)
	if err != nil {
		return false, shortErr(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	io.WriteString(c, body) // the front may refuse before all is sent
	got, err := io.ReadAll(io.LimitReader(c, 512))
	line, _, _ := strings.Cut(string(got), "\r\n")
	switch {
	case strings.HasPrefix(line, "HTTP/1.1 403 "):
		return true, line
	case len(got) == 0 && err == nil:
		return false, "closed without the front's refusal"
	case len(got) == 0:
		return false, "no answer: " + shortErr(err)
	}
	return false, fmt.Sprintf("answered %q", line)
}

// mustNotAnswerUDP passes when a datagram gets no reply. "Sent" proves
// nothing on its own: the listeners on the far side also record what
// reaches them, and the selftest checks those counts.
func mustNotAnswerUDP(ctx context.Context, addr string) (bool, string) {
	d := net.Dialer{Timeout: probeDialTimeout}
	c, err := d.DialContext(ctx, "udp4", addr)
	if err != nil {
		return true, shortErr(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("smolbottle probe")); err != nil {
		return true, shortErr(err)
	}
	c.SetReadDeadline(time.Now().Add(probeUDPWait))
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		return true, "no reply (" + shortErr(err) + ")"
	}
	return false, fmt.Sprintf("reply %q", buf[:n])
}

// postAPI sends a request to gvproxy's guest-facing API and describes the
// answer; whether the request did harm is checked on the host.
func postAPI(ctx context.Context, gateway, body string) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	url := "http://" + net.JoinHostPort(gateway, "80") + "/services/forwarder/expose"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return err.Error()
	}
	req.Header.Set("Content-Type", "application/json")
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		return "API: " + shortErr(err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
	return fmt.Sprintf("API answered %d %s", resp.StatusCode, strings.TrimSpace(string(msg)))
}

// echoCheck writes size pseudo-random bytes to an echo service and reads
// them back at the same time, comparing digests.
func echoCheck(ctx context.Context, addr string, size int, limit time.Duration) (int, error) {
	d := net.Dialer{Timeout: probeDialTimeout}
	c, err := d.DialContext(ctx, "tcp4", addr)
	if err != nil {
		return 0, err
	}
	return echoOver(c, size, limit)
}

// echoOver is echoCheck on a connection already made; it closes c.
func echoOver(c net.Conn, size int, limit time.Duration) (int, error) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(limit))
	src := rand.NewChaCha8([32]byte{'s', 'm', 'o', 'l'})
	data := make([]byte, size)
	src.Read(data)
	var werr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, werr = c.Write(data)
		if tc, ok := c.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}()
	h := sha256.New()
	n, rerr := io.Copy(h, c)
	wg.Wait()
	if werr != nil {
		return 0, fmt.Errorf("write: %v", werr)
	}
	if rerr != nil {
		return 0, fmt.Errorf("read after %d bytes: %v", n, rerr)
	}
	want := sha256.Sum256(data)
	if n != int64(size) || !bytes.Equal(h.Sum(nil), want[:]) {
		return 0, fmt.Errorf("echoed %d of %d bytes, digest mismatch", n, size)
	}
	return size, nil
}

// burstCheck opens Count dials to the black-holed Want, then checks that the
// echo at Addr still answers within burstStallLimit.
func burstCheck(ctx context.Context, p probe) (bool, string) {
	bctx, cancel := context.WithTimeout(ctx, 2*burstStallLimit)
	defer cancel()
	var wg sync.WaitGroup
	for range p.Count {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var d net.Dialer
			if c, err := d.DialContext(bctx, "tcp4", p.Want); err == nil {
				c.Close()
			}
		}()
	}
	time.Sleep(200 * time.Millisecond) // let the SYNs reach gvproxy first
	start := time.Now()
	_, err := echoCheck(ctx, p.Addr, 1024, burstStallLimit)
	took := time.Since(start)
	cancel()
	wg.Wait()
	if err != nil {
		return false, fmt.Sprintf("sidecar stalled: %v after %v", err, took.Round(time.Millisecond))
	}
	return true, fmt.Sprintf("sidecar answered in %v with %d dials pending", took.Round(time.Millisecond), p.Count)
}

// floodCheck opens Count streams to Addr, each sending a first line so that
// the relay dials the sidecar, and holds them; then it counts how many are
// still open (the relays close those over their cap), releases them all
// and waits for the echo at Addr to answer a new stream again. It passes
// when some streams were refused and the echo answers within
// floodRecoverLimit; the host judges the caps themselves.
//
// The new streams come from source ports the flood did not use. gvproxy
// closed each refused stream first, so its netstack holds that 4-tuple in
// TIME_WAIT for 60 s (DefaultTCPTimeWaitTimeout,
// vendor/gvisor.dev/gvisor/pkg/tcpip/transport/tcp/protocol.go:63-65 @
// v0.8.9; gvproxy does not change it) and drops a new SYN on it: one is
// handed on only to a listening endpoint (connect.go:1417-1450, rcv.go:586-
// 593), which a forwarded port never has. That is the guest's own network
// stack remembering the guest's own flood, not the host worn down, so the
// detail reports what a reused port meets and the row does not judge it.
func floodCheck(ctx context.Context, p probe) (bool, string) {
	var (
		mu    sync.Mutex
		conns []net.Conn
		fails int
	)
	jobs := make(chan struct{})
	var wg sync.WaitGroup
	for range 16 { // gvproxy takes 10 handshakes at a time (tcp.go:21 @ v0.8.9)
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{Timeout: 2 * time.Second}
			for range jobs {
				mu.Lock()
				broken := fails > floodMaxFails
				mu.Unlock()
				if broken { // no network left: do not wait 2 s per stream
					continue
				}
				c, err := d.DialContext(ctx, "tcp4", p.Addr)
				mu.Lock()
				if err != nil {
					fails++
				} else {
					conns = append(conns, c)
				}
				mu.Unlock()
				if err == nil {
					io.WriteString(c, "GET / HTTP/1.1\r\n")
				}
			}
		}()
	}
	for range p.Count {
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	// A refused stream reads EOF or a reset at once; a held one times out.
	used := map[int]bool{}
	var refusedPorts []int
	var held, refused int
	var cw sync.WaitGroup
	for _, c := range conns {
		port := c.LocalAddr().(*net.TCPAddr).Port
		used[port] = true
		cw.Add(1)
		go func() {
			defer cw.Done()
			c.SetReadDeadline(time.Now().Add(time.Second))
			buf := make([]byte, 64)
			_, err := io.ReadFull(c, buf[:len("GET / HTTP/1.1\r\n")])
			var ne net.Error
			mu.Lock()
			if err == nil || errors.As(err, &ne) && ne.Timeout() {
				held++ // echoed or silent: still open
			} else {
				refused++
				refusedPorts = append(refusedPorts, port)
			}
			mu.Unlock()
		}()
	}
	cw.Wait()
	for _, c := range conns {
		c.Close()
	}
	start := time.Now()
	var err error
	tries, firstErr, port := 0, "", floodFreshPorts
	for time.Since(start) < floodRecoverLimit {
		tries++
		port--
		for used[port] {
			port--
		}
		// A short dial timeout: a SYN gvproxy drops while it is still
		// busy is retried from the next port, not after the guest
		// kernel's one-second retransmission.
		d := net.Dialer{Timeout: floodRetryDial, LocalAddr: &net.TCPAddr{Port: port}}
		var c net.Conn
		if c, err = d.DialContext(ctx, "tcp4", p.Addr); err == nil {
			if _, err = echoOver(c, 1024, floodRecoverLimit); err == nil {
				break
			}
		}
		if firstErr == "" {
			firstErr = fmt.Sprintf(" (first try: %v after %v)", shortErr(err), time.Since(start).Round(time.Millisecond))
		}
		time.Sleep(10 * time.Millisecond)
	}
	took := time.Since(start).Round(time.Millisecond)
	detail := fmt.Sprintf("%d streams: %d held, %d closed by the relay, %d dials failed; a new stream echoes %v after release, try %d%s", p.Count, held, refused, fails, took, tries, firstErr)
	if err != nil {
		return false, detail + ": " + shortErr(err)
	}
	// What a reused port meets, told not judged. The guest itself may
	// still hold a port (bind fails): then the next one is tried.
	for _, port := range refusedPorts[:min(len(refusedPorts), 5)] {
		d := net.Dialer{Timeout: floodRetryDial, LocalAddr: &net.TCPAddr{Port: port}}
		c, rerr := d.DialContext(ctx, "tcp4", p.Addr)
		if errors.Is(rerr, syscall.EADDRINUSE) {
			continue
		}
		if rerr == nil {
			c.Close()
			detail += fmt.Sprintf("; a refused stream's port %d connects again", port)
		} else {
			detail += fmt.Sprintf("; a refused stream's port %d: %v (gvproxy's TIME_WAIT)", port, shortErr(rerr))
		}
		break
	}
	return refused > 0, detail
}

// spoofSYNs sends Count TCP SYNs to Addr from the address Want over a raw
// socket, as a guest would to make gvproxy dial for handshakes that never
// complete, and gives gvproxy a second to act on them.
func spoofSYNs(p probe) (bool, string) {
	dst, err := netip.ParseAddrPort(p.Addr)
	if err != nil {
		return false, err.Error()
	}
	src, err := netip.ParseAddr(p.Want)
	if err != nil || !src.Is4() || !dst.Addr().Is4() {
		return false, fmt.Sprintf("want IPv4 addresses, got %q and %q", p.Want, p.Addr)
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
	if err != nil {
		return false, "raw socket: " + err.Error()
	}
	defer syscall.Close(fd)
	sa := &syscall.SockaddrInet4{Addr: dst.Addr().As4()}
	for i := range p.Count {
		if err := syscall.Sendto(fd, synPacket(src, dst, uint16(40000+i), uint32(i+1)*7919), 0, sa); err != nil {
			return false, "send: " + err.Error()
		}
	}
	time.Sleep(time.Second)
	return true, fmt.Sprintf("%d SYNs sent from %s", p.Count, src)
}

// synPacket is an IPv4 packet holding a bare TCP SYN (no options).
func synPacket(src netip.Addr, dst netip.AddrPort, sport uint16, seq uint32) []byte {
	b := make([]byte, 40)
	b[0], b[8], b[9] = 0x45, 64, 6 // IPv4, 20-byte header; TTL; TCP
	binary.BigEndian.PutUint16(b[2:], 40)
	binary.BigEndian.PutUint16(b[6:], 0x4000) // don't fragment
	s4, d4 := src.As4(), dst.Addr().As4()
	copy(b[12:], s4[:])
	copy(b[16:], d4[:])
	binary.BigEndian.PutUint16(b[10:], inetChecksum(b[:20], 0))
	t := b[20:]
	binary.BigEndian.PutUint16(t[0:], sport)
	binary.BigEndian.PutUint16(t[2:], dst.Port())
	binary.BigEndian.PutUint32(t[4:], seq)
	t[12], t[13] = 5<<4, 0x02 // 20-byte header; SYN
	binary.BigEndian.PutUint16(t[14:], 64240)
	var pseudo uint32 = 6 + 20 // protocol and TCP length
	for _, a := range [][4]byte{s4, d4} {
		pseudo += uint32(a[0])<<8 | uint32(a[1])
		pseudo += uint32(a[2])<<8 | uint32(a[3])
	}
	binary.BigEndian.PutUint16(t[16:], inetChecksum(t, pseudo))
	return b
}

// inetChecksum is the RFC 1071 checksum of b, starting from sum.
func inetChecksum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// floodRecoverLimit is the second within which the sidecar must answer a
// new stream after the flood; the figure itself is in the row's detail.
// floodFreshPorts is where the recovery streams' source ports start, going
// down and skipping those the flood used.
const (
	floodRecoverLimit = time.Second
	floodRetryDial    = 250 * time.Millisecond
	floodFreshPorts   = 61000
	floodMaxFails     = 100
)

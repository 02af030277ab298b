package main

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The probes must be able to fail: each "must not" probe is run here
// against a loopback listener that does answer.

func loopbackTCP(t testing.TB, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serve(c)
		}
	}()
	return ln.Addr().String()
}

// portOf returns the port of a host:port address.
func portOf(addr string) int {
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}

func echoConn(c net.Conn) {
	defer c.Close()
	io.Copy(c, c)
	c.(*net.TCPConn).CloseWrite()
}

func TestProbeEcho(t *testing.T) {
	addr := loopbackTCP(t, echoConn)
	if _, err := echoCheck(context.Background(), addr, 1<<20, probeEchoTimeout); err != nil {
		t.Errorf("echo: %v", err)
	}
	// A server that drops a byte is caught.
	short := loopbackTCP(t, func(c net.Conn) {
		defer c.Close()
		buf := make([]byte, 1)
		c.Read(buf)
		io.Copy(c, c)
	})
	if _, err := echoCheck(context.Background(), short, 4096, probeEchoTimeout); err == nil {
		t.Error("a short echo passed")
	}
}

func TestProbeNoTCP(t *testing.T) {
	addr := loopbackTCP(t, func(c net.Conn) { c.Close() })
	if pass, detail := mustNotConnect(context.Background(), "tcp4", addr); pass {
		t.Errorf("listening port: got pass (%s)", detail)
	}
	ln, _ := net.Listen("tcp4", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	if pass, detail := mustNotConnect(context.Background(), "tcp4", closed); !pass {
		t.Errorf("closed port: got fail (%s)", detail)
	}
}

func TestProbeNoUDP(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	if pass, detail := mustNotAnswerUDP(context.Background(), pc.LocalAddr().String()); pass {
		t.Errorf("echoing UDP port: got pass (%s)", detail)
	}
	silent, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	if pass, detail := mustNotAnswerUDP(context.Background(), silent.LocalAddr().String()); !pass {
		t.Errorf("silent UDP port: got fail (%s)", detail)
	}
}

func TestProbeUnknownKind(t *testing.T) {
	res := runProbes(context.Background(), probePlan{Gateway: "127.0.0.1", Probes: []probe{{Name: "x", Kind: "nonsense"}}})
	if len(res) != 1 || res[0].Pass {
		t.Errorf("unknown kind: got %+v, want one failing row", res)
	}
}

func TestStartupProbePlan(t *testing.T) {
	n := netFor(42)
	plan := startupProbePlan(n, []int{4001, 4002}, 4003)
	if plan.Gateway != "192.168.42.1" {
		t.Errorf("gateway: got %q", plan.Gateway)
	}
	kinds := map[string]int{}
	for _, p := range plan.Probes {
		kinds[p.Kind]++
		if p.Kind == probeAnswer && !strings.HasPrefix(p.Addr, "192.168.42.254:") {
			t.Errorf("sidecar probe to %q, want the host virtual IP", p.Addr)
		}
	}
	if kinds[probeResolve] != 1 || kinds[probeAnswer] != 2 || kinds[probeNoDNS] < 4 || kinds[probeNoTCP] < 3 || kinds[probeNoTCP6] != 1 {
		t.Errorf("got kinds %v", kinds)
	}
}

// TestProbeAnswer: the start-up row passes for a sidecar that answers
// HTTP or holds the request, and fails for one that drops it, which is what
// the guest sees when the relay's dial to a dead sidecar fails.
func TestProbeAnswer(t *testing.T) {
	http := loopbackTCP(t, func(c net.Conn) {
		io.ReadAtLeast(c, make([]byte, 16), 16)
		io.WriteString(c, "HTTP/1.1 405 Method Not Allowed\r\n\r\n")
		c.Close()
	})
	quiet := loopbackTCP(t, func(c net.Conn) { time.Sleep(probeQuietLimit + time.Second); c.Close() })
	drops := loopbackTCP(t, func(c net.Conn) { c.Close() })
	for _, tt := range []struct {
		name, addr string
		want       bool
	}{{"HTTP", http, true}, {"quiet", quiet, true}, {"drops", drops, false}} {
		pl := probePlan{Gateway: "127.0.0.1", Probes: []probe{{Name: tt.name, Kind: probeAnswer, Addr: tt.addr}}}
		rs := runProbes(context.Background(), pl)
		if err := judgeProbes(pl, rs); (err == nil) != tt.want {
			t.Errorf("%s: got %v (%+v), want pass=%v", tt.name, err, rs, tt.want)
		}
	}
	pl := probePlan{Gateway: "127.0.0.1", Probes: []probe{{Name: "up", Kind: probeAnswer, Addr: http}}}
	if judgeProbes(pl, nil) == nil {
		t.Error("no rows: got pass")
	}
	two := probePlan{Probes: []probe{{Name: "a"}, {Name: "b"}}}
	if judgeProbes(two, []probeResult{{Name: "a", Pass: true}, {Name: "b", Pass: false}}) == nil {
		t.Error("a failing row: got pass")
	}
}

// TestSynPacketChecksums: the IPv4 and TCP checksums of a spoofed SYN
// verify (a checksum over the covered bytes, the checksum included, is 0).
func TestSynPacketChecksums(t *testing.T) {
	b := synPacket(netip.MustParseAddr("192.168.7.77"), netip.MustParseAddrPort("192.168.7.254:8080"), 40000, 7919)
	if got := inetChecksum(b[:20], 0); got != 0 {
		t.Errorf("IPv4 header checksum does not verify: %#x", got)
	}
	pseudo := uint32(192<<8|168) + uint32(7<<8|77) + uint32(192<<8|168) + uint32(7<<8|254) + 6 + 20
	if got := inetChecksum(b[20:], pseudo); got != 0 {
		t.Errorf("TCP checksum does not verify: %#x", got)
	}
	if b[33] != 0x02 || b[9] != 6 {
		t.Errorf("not a TCP SYN: %x", b)
	}
}

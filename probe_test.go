package main

import (
	"context"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
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
		if p.Kind == probeTCP && !strings.HasPrefix(p.Addr, "192.168.42.254:") {
			t.Errorf("sidecar probe to %q, want the host virtual IP", p.Addr)
		}
	}
	if kinds[probeResolve] != 1 || kinds[probeTCP] != 2 || kinds[probeNoDNS] < 4 || kinds[probeNoTCP] < 3 || kinds[probeNoTCP6] != 1 {
		t.Errorf("got kinds %v", kinds)
	}
}

func TestProbeTCPAndPass(t *testing.T) {
	addr := loopbackTCP(t, func(c net.Conn) { c.Close() })
	pl := probePlan{Gateway: "127.0.0.1", Probes: []probe{{Name: "up", Kind: probeTCP, Addr: addr}}}
	rs := runProbes(context.Background(), pl)
	if err := judgeProbes(pl, rs); err != nil {
		t.Errorf("listening port: %v (%+v)", err, rs)
	}
	if judgeProbes(pl, nil) == nil {
		t.Error("no rows: got pass")
	}
	two := probePlan{Probes: []probe{{Name: "a"}, {Name: "b"}}}
	if judgeProbes(two, []probeResult{{Name: "a", Pass: true}, {Name: "b", Pass: false}}) == nil {
		t.Error("a failing row: got pass")
	}
}

package main

import (
	"context"
	"io"
	"net"
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

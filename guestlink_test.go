package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// upstreamRecorder stands in for gvproxy's socket: it counts connections
// and echoes what follows the link request, so a test sees both what
// reached "gvproxy" and that the splice carries bytes both ways.
type upstreamRecorder struct {
	mu    sync.Mutex
	heads []string
}

func startUpstream(t *testing.T, path string) *upstreamRecorder {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	u := &upstreamRecorder{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				head := make([]byte, len(linkRequest))
				io.ReadFull(c, head)
				u.mu.Lock()
				u.heads = append(u.heads, string(head))
				u.mu.Unlock()
				io.Copy(c, c)
			}()
		}
	}()
	return u
}

func (u *upstreamRecorder) seen() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.heads...)
}

// logLines collects a front's log.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) logf(format string, args ...any) {
	l.mu.Lock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
	l.mu.Unlock()
}

func (l *logLines) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			return true
		}
	}
	return false
}

func newTestLink(t *testing.T) (*guestLink, *upstreamRecorder) {
	g, u, _ := newTestLinkLog(t)
	return g, u
}

func newTestLinkLog(t *testing.T) (*guestLink, *upstreamRecorder, *logLines) {
	t.Helper()
	dir := t.TempDir()
	u := startUpstream(t, filepath.Join(dir, "gvproxy.sock"))
	l := &logLines{}
	g, err := startGuestLink(filepath.Join(dir, "guest.sock"), filepath.Join(dir, "gvproxy.sock"), l.logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g, u, l
}

// openLink sends the link request and checks that a frame comes back.
func openLink(t *testing.T, g *guestLink) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", g.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	frame := "\x03\x00abc"
	io.WriteString(c, linkRequest+frame)
	got := make([]byte, len(frame))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != frame {
		t.Fatalf("link: got %q, %v, want the frame %q back", got, err, frame)
	}
	return c
}

// answer sends req on a fresh connection and returns all that comes back.
func answer(t *testing.T, g *guestLink, req string) string {
	t.Helper()
	c, err := net.Dial("unix", g.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, req)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, _ := io.ReadAll(c)
	return string(got)
}

// TestGuestLinkLogCapped: a guest that makes and drops links as fast as it
// can gets refusalLogLines lines in the log, then one at 1,000 and each doubling.
func TestGuestLinkLogCapped(t *testing.T) {
	g, _, l := newTestLinkLog(t)
	for range 1100 {
		c, err := net.Dial("unix", g.path)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, linkRequest+"\x03\x00abc")
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		c.Read(make([]byte, 5)) // the frame back, or a refusal
		c.Close()
	}
	g.Close()
	l.mu.Lock()
	defer l.mu.Unlock()
	// A link opened before the last one's end was seen is refused. Link
	// lines and refusals are capped apart; 1,100 links make at least 1,100
	// lines, so at least one kind reaches its cap.
	lines, counts := map[string]int{}, map[string]int{}
	for _, line := range l.lines {
		kind := "link"
		if strings.HasPrefix(line, "guest link: refused: ") {
			kind = "refused"
		}
		if strings.HasSuffix(line, "lines so far, the rest not logged") {
			counts[kind]++
		} else {
			lines[kind]++
		}
	}
	if max(lines["link"], lines["refused"]) != refusalLogLines || lines["link"] > refusalLogLines || lines["refused"] > refusalLogLines ||
		counts["link"] > 2 || counts["refused"] > 1 {
		t.Fatalf("%d link lines, %d refusals and %d and %d counts for 1,100 links, want at most %d of each and one kind at that:\n%s",
			lines["link"], lines["refused"], counts["link"], counts["refused"], refusalLogLines, strings.Join(l.lines, "\n"))
	}
}

// TestGuestLinkRefusalsDoNotHideLinks: refusals and link events are capped
// apart, so a guest's junk connections do not hide the line that says a
// link came up (or why it failed).
func TestGuestLinkRefusalsDoNotHideLinks(t *testing.T) {
	g, _, l := newTestLinkLog(t)
	for range refusalLogLines + 10 {
		if got := answer(t, g, "\x00junk"); got != linkRefusal {
			t.Fatalf("junk: got %q, want the refusal", got)
		}
	}
	openLink(t, g) // echoes a frame only once "up" was logged
	if !l.has("guest link: up") {
		t.Fatalf("no link line after %d refusals:\n%s", refusalLogLines+10, strings.Join(l.lines, "\n"))
	}
}

func TestGuestLinkAdmitsOneLinkAndNothingElse(t *testing.T) {
	g, u := newTestLink(t)
	for _, req := range []string{
		"GET /stats HTTP/1.1\r\nHost: \r\n\r\n",
		"POST /services/dns/add HTTP/1.1\r\nHost: \r\nContent-Length: 2\r\n\r\n{}",
		strings.Replace(linkRequest, "Content-Length: 0", "Content-Length: 1", 1) + "x",
		strings.Replace(linkRequest, "POST", "GET", 1),
		"POST /connect HTTP/1.0\r\n\r\n",
		"\x00garbage",
	} {
		if got := answer(t, g, req); got != linkRefusal {
			t.Errorf("%q: got %q, want the refusal", req, got)
		}
	}
	if got := u.seen(); len(got) != 0 {
		t.Fatalf("refused requests reached gvproxy: %q", got)
	}
	first := openLink(t, g)
	if got := answer(t, g, linkRequest); got != linkRefusal {
		t.Errorf("a second link while one lives: got %q, want the refusal", got)
	}
	if got := u.seen(); len(got) != 1 || got[0] != linkRequest {
		t.Errorf("gvproxy saw %q, want exactly one link request", got)
	}
	// Once the first link ends, gvforwarder's reconnect is admitted.
	first.Close()
	var err error
	for range 100 {
		c, derr := net.Dial("unix", g.path)
		if derr != nil {
			t.Fatal(derr)
		}
		io.WriteString(c, linkRequest+"\x01\x00z")
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		got := make([]byte, 3)
		_, err = io.ReadFull(c, got)
		c.Close()
		if err == nil && string(got) == "\x01\x00z" {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Errorf("no new link after the first ended: %v", err)
	}
}

// TestGuestLinkBoundsWaiting: connections that send nothing hold at most
// linkMaxPending slots; the next one is refused at once.
func TestGuestLinkBoundsWaiting(t *testing.T) {
	g, _, log := newTestLinkLog(t)
	for range linkMaxPending {
		c, err := net.Dial("unix", g.path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	// The front counts a connection as waiting once it accepted it.
	for range 100 {
		g.mu.Lock()
		n := g.pending
		g.mu.Unlock()
		if n == linkMaxPending {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := answer(t, g, ""); got != linkRefusal {
		t.Errorf("connection over the waiting cap: got %q, want the refusal", got)
	}
	if !log.has("over 4 connections waiting") {
		t.Errorf("the refusal was not for the waiting cap: %q", log.lines)
	}
}

// TestGuestLinkClose: Close cuts the link and removes the socket.
func TestGuestLinkClose(t *testing.T) {
	g, _ := newTestLink(t)
	c := openLink(t, g)
	g.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("link still open after Close")
	}
	if _, err := os.Lstat(g.path); !os.IsNotExist(err) {
		t.Errorf("socket left after Close: %v", err)
	}
}

// TestGuestLinkLinksDoNotHideFailures: a guest that makes and drops links
// past the cap does not hide the line saying why gvproxy could not be
// reached.
func TestGuestLinkLinksDoNotHideFailures(t *testing.T) {
	g, _, l := newTestLinkLog(t)
	for range refusalLogLines + 10 {
		c := openLink(t, g)
		c.Close()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			g.mu.Lock()
			linked := g.linked
			g.mu.Unlock()
			if !linked {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the link never ended")
			}
		}
	}
	os.Remove(g.gvproxy) // gvproxy's socket gone: the next link cannot be made
	answer(t, g, linkRequest)
	for deadline := time.Now().Add(10 * time.Second); !l.has("guest link: failed: dial gvproxy"); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no dial failure logged after %d links", refusalLogLines+10)
		}
	}
}

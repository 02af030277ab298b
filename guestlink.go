package main

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// The guest link front. The socket smolvm bridges into the guest is this
// front's, never gvproxy's. It keeps these invariants:
//
//  1. gvproxy's listen socket serves its whole HTTP API (/stats, /cam,
//     /leases, /tunnel, /services/...: pkg/virtualnetwork/mux.go:18-81 @
//     v0.8.9) besides the VM link (/connect, mux.go:85-104). Only this front
//     connects to it on the guest's behalf, and only after the guest sent
//     exactly the request gvforwarder sends.
//  2. That request is fixed: gvforwarder dials unix:// and writes
//     http.NewRequest("POST", "/connect", nil) with Request.Write
//     (cmd/vm/main_linux.go:76-91, pkg/transport/dial_linux.go:31-33 @
//     v0.8.9), which is byte for byte linkRequest (captured from bin/
//     gvforwarder). Anything else is refused with 403 and logged; nothing
//     the guest sent before the link is accepted reaches gvproxy.
//  3. At most one link at a time: a second port on gvproxy's switch could
//     claim the guest's MAC or stall the switch. A second /connect while one
//     lives is refused.
//  4. Bounded: at most linkMaxPending connections wait for their request,
//     each for at most linkHeadTimeout, reading at most len(linkRequest)
//     bytes; the excess is answered 403 and closed at once (the answer
//     fits in a fresh socket's buffer; a 100 ms deadline bounds the write
//     anyway). Refusals, and links made and lost, are logged up to
//     refusalLogLines lines each, then counted (limits.go): refusals
//     cannot hide why a link failed.
//  5. After the request, bytes pass both ways unchanged: the data path is
//     gvproxy's own framing (a 2-byte little-endian length before each
//     Ethernet frame, cmd/vm/main_linux.go:158-224 @ v0.8.9).
//  6. The front lives in the process that owns gvproxy (confinedNet): it
//     dies with it, and Close removes its socket and cuts the link.
const (
	linkRequest     = "POST /connect HTTP/1.1\r\nHost: \r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 0\r\n\r\n"
	linkRefusal     = "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
	linkHeadTimeout = 5 * time.Second
	linkMaxPending  = 4
	linkBufSize     = 256 << 10
)

// guestLink is a running front.
type guestLink struct {
	ln      *net.UnixListener
	path    string
	gvproxy string
	logf    func(string, ...any)

	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	pending  int
	linked   bool
	closed   bool
	refusals refusalLog // requests refused
	links    refusalLog // links made and lost
	failures refusalLog // failed dials to gvproxy
	wg       sync.WaitGroup
}

// startGuestLink listens on path (created 0600 in a private directory) and
// serves links to gvproxy's socket at gvproxySock.
func startGuestLink(path, gvproxySock string, logf func(string, ...any)) (*guestLink, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	g := &guestLink{ln: ln, path: path, gvproxy: gvproxySock, logf: logf, conns: map[net.Conn]struct{}{}}
	g.wg.Add(1)
	go g.serve()
	return g, nil
}

func (g *guestLink) serve() {
	defer g.wg.Done()
	backoff := acceptBackoff{}
	for {
		c, err := g.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and the like pass; anything else too, after a pause.
			g.failures.log(g.logf, "guest link: failed", "accept: %v (retrying)", err)
			backoff.wait()
			continue
		}
		backoff.reset()
		g.mu.Lock()
		ok := !g.closed && g.pending < linkMaxPending
		if ok {
			g.pending++
			g.conns[c] = struct{}{}
		}
		g.mu.Unlock()
		if !ok {
			g.refuse(c, "over %d connections waiting for their request", linkMaxPending)
			continue
		}
		g.wg.Add(1)
		go g.handle(c)
	}
}

// handle reads the one request, then splices the link to gvproxy.
func (g *guestLink) handle(c *net.UnixConn) {
	defer g.wg.Done()
	defer g.drop(c)
	head, err := readLinkRequest(c)
	g.mu.Lock()
	g.pending--
	claimed := err == nil && !g.linked && !g.closed
	if claimed {
		g.linked = true
	}
	busy := g.linked && !claimed
	g.mu.Unlock()
	if !claimed {
		if err == nil && busy {
			g.refuse(c, "a second link while one is open")
		} else {
			g.refuse(c, "not gvforwarder's link request: %v: %q", err, head)
		}
		return
	}
	defer func() {
		g.mu.Lock()
		g.linked = false
		g.mu.Unlock()
	}()
	up, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: g.gvproxy, Net: "unix"})
	if err != nil {
		g.failures.log(g.logf, "guest link: failed", "dial gvproxy: %v", err)
		return
	}
	defer up.Close()
	if _, err := io.WriteString(up, linkRequest); err != nil {
		g.failures.log(g.logf, "guest link: failed", "%v", err)
		return
	}
	g.links.log(g.logf, "guest link", "up")
	splice(c, up)
	g.links.log(g.logf, "guest link", "down")
}

// readLinkRequest reads exactly len(linkRequest) bytes and fails as soon as
// what came so far stops being a prefix of it, or after linkHeadTimeout.
func readLinkRequest(c net.Conn) ([]byte, error) {
	head := make([]byte, len(linkRequest))
	c.SetReadDeadline(time.Now().Add(linkHeadTimeout))
	defer c.SetReadDeadline(time.Time{})
	n := 0
	for n < len(head) {
		m, err := c.Read(head[n:])
		n += m
		if !bytes.Equal(head[:n], []byte(linkRequest[:n])) {
			return head[:n], errors.New("differs")
		}
		if err != nil {
			return head[:n], err
		}
	}
	return head, nil
}

// splice copies both ways until either side ends, then closes both: a
// link has no half-close worth keeping. Close cuts it by closing a, the
// guest's side, which stays in g.conns until handle returns.
func splice(a, b *net.UnixConn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src *net.UnixConn) {
		// UnixConn has no splice path: one read and one write per burst.
		io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, make([]byte, linkBufSize))
		a.Close()
		b.Close()
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
}

// refuse answers 403, closes c and logs why.
func (g *guestLink) refuse(c net.Conn, format string, args ...any) {
	c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	io.WriteString(c, linkRefusal)
	c.Close()
	g.refusals.log(g.logf, "guest link: refused", format, args...)
}

// drop closes c and forgets it.
func (g *guestLink) drop(c net.Conn) {
	c.Close()
	g.mu.Lock()
	delete(g.conns, c)
	g.mu.Unlock()
}

// Close stops listening, removes the socket, cuts the link and waits.
func (g *guestLink) Close() error {
	g.mu.Lock()
	g.closed = true
	err := g.ln.Close()
	for c := range g.conns {
		c.Close()
	}
	g.mu.Unlock()
	g.wg.Wait()
	return err
}

package main

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// A relay carries TCP byte streams from the confined network namespace to
// a sidecar. For each sidecar port P, the confined side opens a listening
// socket on 127.0.0.1:P inside its namespace (where gvproxy's NAT sends the
// guest's connections to proxy.internal:P) and passes it to the owner; the
// owner accepts on it and dials 127.0.0.1:P in the host namespace. A socket
// stays in the namespace it was made in, so this crosses the boundary with
// one hop and without any file the jail or the guest could reach. Only TCP
// is relayed: a guest has no UDP path to the host at all.
//
// Invariants:
//   - At most relayPortCap streams per port and relayBottleCap per bottle
//     are open or waiting; one over the cap is closed at once, so the guest
//     sees a refusal, not a hang.
//   - The sidecar is dialled only once the guest side has sent its first
//     bytes (every sidecar is client-speaks-first HTTP), and a stream that
//     sends nothing within relayFirstByteTimeout is closed. gvproxy dials
//     the relay for every SYN before the guest's handshake completes
//     (pkg/services/forwarder/tcp.go:34 runs before CreateEndpoint at
//     tcp.go:42, which performs the handshake:
//     vendor/gvisor.dev/gvisor/pkg/tcpip/transport/tcp/forwarder.go:148-159
//     @ v0.8.9), and when that handshake fails, as it does for a spoofed
//     source, it never closes the connection it dialled (tcp.go:44-51). So a
//     spoofed SYN costs the host sidecar nothing, and its slot here is freed
//     after relayFirstByteTimeout.
//   - A failed accept (EMFILE, ENFILE, ECONNABORTED, ...) is retried after a
//     short backoff; only Close stops a relay.
//   - Caps, refusal and accept retry live in servedListener, which every
//     relay admits through. A port the owner serves itself (the credential
//     sidecar) gets a servedListener alone, handed to its server, which
//     must bound a silent connection itself (credproxy's
//     ReadHeaderTimeout), as relayFirstByteTimeout does here.
//
// The caps and the descriptor budget behind them are in limits.go.
const (
	relayDialTimeout      = 5 * time.Second
	relayFirstByteTimeout = 20 * time.Second
	relayFirstChunk       = 2 << 10
)

// relay accepts connections on one listener and joins each to a fresh
// connection from dial. Close stops accepting and cuts every open stream, so
// nothing outlives the bottle.
type relay struct {
	ln     *servedListener // admits within the caps; Close cuts the guest sides
	dial   func(ctx context.Context) (net.Conn, error)
	ctx    context.Context // cancelled by Close: cuts dials in flight and the sidecar sides
	cancel context.CancelFunc
	taken  atomic.Int64 // streams admitted, for the selftest
	failed refusalLog   // failed dials, capped apart from ln's refusals
	wg     sync.WaitGroup
}

// startRelay serves ln in the background, with at most portCap streams of
// its own and at most bottle.max together with the relays sharing bottle.
func startRelay(ln net.Listener, dial func(ctx context.Context) (net.Conn, error), logf func(string, ...any), portCap int, bottle *connCap) *relay {
	r := &relay{ln: newServedListener(ln, "relay", logf, portCap, bottle), dial: dial}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.wg.Add(1)
	go r.serve()
	return r
}

// tcpDialer dials the sidecar on the host side.
func tcpDialer(addr string) func(ctx context.Context) (net.Conn, error) {
	d := net.Dialer{Timeout: relayDialTimeout}
	return func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
}

func (r *relay) serve() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return // closed: Accept retries every other error itself
		}
		r.taken.Add(1)
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer c.Close() // closes the guest side, gives its place back
			// The bare *net.TCPConn, so that joinConns can splice.
			r.serveConn(c.(*servedConn).Conn)
		}()
	}
}

// serveConn waits for the guest's first bytes, then dials and joins. The
// caller closes c.
func (r *relay) serveConn(c net.Conn) {
	first := make([]byte, relayFirstChunk)
	c.SetReadDeadline(time.Now().Add(relayFirstByteTimeout))
	n, err := c.Read(first)
	c.SetReadDeadline(time.Time{})
	if err != nil {
		return
	}
	d, err := r.dial(r.ctx)
	if err != nil {
		r.failed.log(r.ln.logf, r.ln.who+": failed", "%v", err)
		return
	}
	defer d.Close()
	defer context.AfterFunc(r.ctx, func() { d.Close() })()
	if _, err := d.Write(first[:n]); err == nil {
		joinConns(c, d)
	}
}

// Close stops the listener, cuts every stream and waits for the goroutines.
func (r *relay) Close() error {
	r.cancel()
	err := r.ln.Close()
	r.wg.Wait()
	return err
}

// joinConns copies both ways until both directions have ended, passing each
// half-close on. a and b are handed to io.Copy as the concrete *net.TCPConn
// values: that lets the runtime use splice(2) between the two sockets
// instead of copying through user space, which keeps the relay's one extra
// hop cheap.
func joinConns(a, b net.Conn) {
	var wg sync.WaitGroup
	wg.Add(2)
	half := func(dst, src net.Conn) {
		defer wg.Done()
		_, err := io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == nil {
			cw.CloseWrite()
		} else {
			// An error in one direction ends the stream: close both so
			// the other copy returns too.
			dst.Close()
			src.Close()
		}
	}
	go half(a, b)
	go half(b, a)
	wg.Wait()
	a.Close()
	b.Close()
}

// servedListener admits the connections of a confined-side listener within
// the caps: a relay's, or those of a server in the owner's own process.
type servedListener struct {
	net.Listener
	who     string // "relay ADDR" or "served ADDR", for the log
	logf    func(format string, args ...any)
	port    connCap
	bottle  *connCap
	refused refusalLog // streams refused over a cap
	failed  refusalLog // accepts that failed
	mu      sync.Mutex
	conns   map[*servedConn]struct{}
	closed  bool
}

func newServedListener(ln net.Listener, kind string, logf func(string, ...any), portCap int, bottle *connCap) *servedListener {
	return &servedListener{Listener: ln, who: kind + " " + ln.Addr().String(), logf: logf,
		port: connCap{max: portCap}, bottle: bottle, conns: map[*servedConn]struct{}{}}
}

// Accept returns the next connection within the caps; one over a cap is
// closed at once, and a failed accept is retried. It fails only once the
// listener is closed.
func (l *servedListener) Accept() (net.Conn, error) {
	var backoff acceptBackoff
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil, err
			}
			l.failed.log(l.logf, l.who+": failed", "accept: %v (retrying)", err)
			backoff.wait()
			continue
		}
		backoff.reset()
		if !l.port.take() {
			c.Close()
			l.refused.log(l.logf, l.who+": refused", "over the cap of %d streams for this port", l.port.max)
			continue
		}
		if !l.bottle.take() {
			l.port.give()
			c.Close()
			l.refused.log(l.logf, l.who+": refused", "over the cap of %d streams for the bottle", l.bottle.max)
			continue
		}
		sc := &servedConn{Conn: c, l: l}
		l.mu.Lock()
		closed := l.closed
		if !closed {
			l.conns[sc] = struct{}{}
		}
		l.mu.Unlock()
		if closed {
			sc.Close()
			return nil, net.ErrClosed
		}
		return sc, nil
	}
}

// Close stops accepting and cuts every connection handed out.
func (l *servedListener) Close() error {
	l.mu.Lock()
	l.closed = true
	err := l.Listener.Close()
	for c := range l.conns {
		c.Conn.Close()
	}
	l.mu.Unlock()
	return err
}

// servedConn gives its place under the caps back when it is closed.
type servedConn struct {
	net.Conn
	l    *servedListener
	once sync.Once
}

func (c *servedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
		c.l.bottle.give()
		c.l.port.give()
	})
	return err
}

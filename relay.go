package main

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
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
const relayDialTimeout = 5 * time.Second

// relay accepts connections on one listener and joins each to a fresh
// connection from dial. Close stops accepting and cuts every open stream, so
// nothing outlives the bottle.
type relay struct {
	ln   net.Listener
	dial func(ctx context.Context) (net.Conn, error)
	logf func(format string, args ...any)

	ctx    context.Context // cancelled by Close: cuts dials in flight
	cancel context.CancelFunc
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// startRelay serves ln in the background.
func startRelay(ln net.Listener, dial func(ctx context.Context) (net.Conn, error), logf func(string, ...any)) *relay {
	r := &relay{ln: ln, dial: dial, logf: logf, conns: map[net.Conn]struct{}{}}
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
			if !errors.Is(err, net.ErrClosed) {
				r.logf("relay %s: accept: %v", r.ln.Addr(), err)
			}
			return
		}
		if !r.track(c) {
			c.Close()
			return
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer r.untrack(c)
			d, err := r.dial(r.ctx)
			if err != nil {
				r.logf("relay %s: %v", r.ln.Addr(), err)
				c.Close()
				return
			}
			if !r.track(d) {
				c.Close()
				d.Close()
				return
			}
			defer r.untrack(d)
			joinConns(c, d)
		}()
	}
}

func (r *relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *relay) untrack(c net.Conn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
}

// Close stops the listener, cuts every stream and waits for the goroutines.
func (r *relay) Close() error {
	r.cancel()
	r.mu.Lock()
	r.closed = true
	err := r.ln.Close()
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
	return err
}

// joinConns copies both ways until both directions have ended, passing each
// half-close on. a and b are handed to io.Copy as the concrete *net.TCPConn
// and *net.UnixConn values: that lets the runtime use splice(2) between the
// two sockets instead of copying through user space, which is what keeps the
// two extra hops of the confined path cheap.
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

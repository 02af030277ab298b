package main

import (
	"sync"
	"time"
)

// Limits that keep a bottle from wearing down the host. Invariants:
//
//   - Each relayed stream costs the owner (the supervisor) up to
//     relayFDsPerStream descriptors: the two sockets and the two pipes
//     splice(2) uses. relayPortCap streams per sidecar port and
//     relayBottleCap per bottle are far above what one agent opens (tens)
//     and keep a bottle's share at 512*6 = 3,072 descriptors. The supervisor
//     raises its soft RLIMIT_NOFILE to the hard one, and relayCaps lowers
//     the caps where the limit cannot hold them plus relayFDReserve for the
//     supervisor's own work (state file, logs, stopping children).
//   - A listener whose accept fails (EMFILE, ENFILE, ECONNABORTED, ...)
//     backs off and retries (acceptBackoff); it stops only on Close.
//   - A flood cannot fill the disk through the owner's logs: every line a
//     guest can cause at will (a refusal, a failed dial, a guest link made
//     or lost, a request the credential sidecar forwarded or could not) is
//     logged up to refusalLogLines times per kind of line and listener,
//     then once at 1,000 and at every doubling (refusalLog, one per kind),
//     so its lines grow with the logarithm of a flood: a flood of one kind
//     does not hide the first lines of another.
//   - Nor through a child's output: a sidecar's (pipelock's request log
//     among it) and gvproxy's reach their logs through a pipe the owner
//     reads (sidecar.go's logFile). A log that would pass logCapBytes
//     turns: it becomes NAME.1, replacing the one before, and a new one
//     starts, so each log keeps at most about twice logCapBytes, the
//     latest. The child never blocks or fails on it.
//   - up reads what the guest prints in its steps into bounded buffers:
//     a report (stdout) of at most guestReportMax bytes, and the last
//     sidecarTailBytes of its standard error.
//   - gvproxy's memory is capped (RLIMIT_DATA, gvproxyMaxData, set by
//     _dropexec before it execs gvproxy). The guest reaches gvproxy's own
//     HTTP API on gateway:80 (cmd/gvproxy/main.go:160-168 @ v0.8.9), whose
//     connections live in gvproxy's netstack, past every relay cap, and
//     may each send up to 1 MiB of header for 10 s (main.go:363-367). At
//     the cap gvproxy's allocation fails and it dies; the supervisor then
//     stops the bottle's network and sidecars (the machine, cut off, waits
//     for down).
const (
	relayPortCap      = 256
	relayBottleCap    = 512
	relayFDsPerStream = 6
	relayFDReserve    = 256
	refusalLogLines   = 50
	logCapBytes       = 64 << 20
	guestReportMax    = 64 << 10
	// gvproxyMaxData is about 2.5 times the data gvproxy maps under
	// selftest's 5,000-stream flood (395 MiB VmData).
	gvproxyMaxData = 1 << 30
)

// relayCaps returns the per-port and per-bottle caps for an owner whose
// soft descriptor limit is nofile: the fixed caps, lowered where the limit
// is too small to hold them and the reserve.
func relayCaps(nofile uint64) (port, bottle int) {
	room := 0
	if nofile > relayFDReserve {
		room = int(min(nofile-relayFDReserve, 1<<20)) / relayFDsPerStream
	}
	bottle = max(min(relayBottleCap, room), 1)
	return min(relayPortCap, bottle), bottle
}

// connCap counts streams against a limit; a bottle's relays share one.
type connCap struct {
	mu     sync.Mutex
	n, max int
}

func (c *connCap) take() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n >= c.max {
		return false
	}
	c.n++
	return true
}

func (c *connCap) give() {
	c.mu.Lock()
	c.n--
	c.mu.Unlock()
}

// acceptBackoff paces retries after a failed accept: 5 ms doubling to
// 200 ms, so that a listener recovers soon after descriptors are free again.
type acceptBackoff struct{ d time.Duration }

func (b *acceptBackoff) wait() {
	b.d = min(max(2*b.d, 5*time.Millisecond), 200*time.Millisecond)
	time.Sleep(b.d)
}

func (b *acceptBackoff) reset() { b.d = 0 }

// refusalLog counts the lines a guest can cause and logs the first
// refusalLogLines of them, then one count line at 1,000, 2,000, 4,000, ...
type refusalLog struct {
	mu sync.Mutex
	n  int
}

func (l *refusalLog) log(logf func(string, ...any), who, format string, args ...any) {
	l.mu.Lock()
	l.n++
	n := l.n
	l.mu.Unlock()
	switch {
	case n <= refusalLogLines:
		logf(who+": "+format, args...)
	case n%1000 == 0 && (n/1000)&(n/1000-1) == 0:
		logf("%s: %d lines so far, the rest not logged", who, n)
	}
}

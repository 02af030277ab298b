//go:build linux

package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The flood rows: the guest holds selftestFlood streams to the sidecar
// (probeFlood); meanwhile the host records the most streams the sidecar
// held and the most descriptors the owner (this process: the relays and
// the guest link front, as in the supervisor) had open, and afterwards the
// peak memory of the owner and of gvproxy.
const (
	selftestSpoofs = 20
	spoofRow       = "20 spoofed-source SYNs to a sidecar port"
	selftestFlood  = 5000
	floodRow       = "5,000 held streams from the guest end at the cap; the sidecar answers after"
)

type floodStats struct {
	mu                   sync.Mutex
	sidecarOpen, sidecar int // streams the sidecar holds now, and at most
	ownerFDs             int // most descriptors the owner had open
	spoofed              int // connections the spoof row's sidecar accepted
}

// spoofSource is an address in the guest's subnet that nothing owns.
func spoofSource(n bottleNet) netip.Addr {
	a := n.Subnet.Addr().As4()
	a[3] = 77
	return netip.AddrFrom4(a)
}

// spoofSidecar is the spoof row's sidecar: it counts connections.
func (s *sandbox) spoofSidecar() (int, error) {
	return s.loopbackSidecar(func(c net.Conn) {
		s.flood.mu.Lock()
		s.flood.spoofed++
		s.flood.mu.Unlock()
		c.Close()
	})
}

// spoofRow: gvproxy dialled the relay for the spoofed SYNs (it dials before
// the handshake, pkg/services/forwarder/tcp.go:34 @ v0.8.9), and the
// sidecar behind it saw none of them.
func (s *sandbox) spoofRow(cn *confinedNet) probeResult {
	s.flood.mu.Lock()
	seen := s.flood.spoofed
	s.flood.mu.Unlock()
	var taken int64
	if len(cn.relays) > 1 { // the spoof port's relay
		if r, ok := cn.relays[1].(*relay); ok {
			taken = r.taken.Load()
		}
	}
	return probeResult{Name: spoofRow + ": the relay takes them, the sidecar sees none", Kind: "host",
		Pass:   taken > 0 && seen == 0,
		Detail: fmt.Sprintf("relay took %d silent streams; the sidecar accepted %d connections", taken, seen)}
}

func (s *sandbox) sidecarOpen(delta int) {
	s.flood.mu.Lock()
	s.flood.sidecarOpen += delta
	s.flood.sidecar = max(s.flood.sidecar, s.flood.sidecarOpen)
	s.flood.mu.Unlock()
}

// sampleOwner counts this process's descriptors every 20 ms until the
// returned function is called.
func (s *sandbox) sampleOwner() (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
				s.flood.mu.Lock()
				s.flood.ownerFDs = max(s.flood.ownerFDs, len(fds))
				s.flood.mu.Unlock()
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// floodRows judges what the host saw of the flood.
func (s *sandbox) floodRows(cn *confinedNet) []probeResult {
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	_, bottleCap := relayCaps(lim.Cur)
	s.flood.mu.Lock()
	sidecar, fds := s.flood.sidecar, s.flood.ownerFDs
	s.flood.mu.Unlock()
	budget := int(lim.Cur) - relayFDReserve
	return []probeResult{
		{Name: fmt.Sprintf("the sidecar held at most the bottle's cap (%d) of streams", bottleCap), Kind: "host",
			Pass: sidecar <= bottleCap, Detail: fmt.Sprintf("at most %d at once", sidecar)},
		{Name: "the owner kept its descriptor reserve under the flood", Kind: "host", Pass: fds <= budget,
			Detail: fmt.Sprintf("at most %d open of %d (reserve %d); peak memory: owner %s, gvproxy %s",
				fds, lim.Cur, relayFDReserve, peakRSS(os.Getpid()), peakRSS(cn.GvproxyPID))},
	}
}

// peakRSS reads a process's peak resident set (VmHWM).
func peakRSS(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return "unknown"
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err == nil {
				return fmt.Sprintf("%d MiB", kb>>10)
			}
		}
	}
	return "unknown"
}

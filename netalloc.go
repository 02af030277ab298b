package main

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"strconv"
)

// Subnet rule (smolbottle's own): N = FNV-1a-32(slug) mod 254 + 1, skipping 17
// (reserved by the original scheme) and 127 (gvproxy's and podman's default
// 192.168.127.0/24), then the next N not held by a live bottle, wrapping
// 254 -> 1. The bottle gets 192.168.N.0/24 with the gateway at .1, the guest
// at .2 and the host virtual IP (proxy.internal) at .254.
const (
	subnetCount   = 254
	skipOriginal  = 17
	skipGvproxy   = 127
	gatewayHost   = 1
	guestHost     = 2
	hostVirtualIP = 254
)

// bottleNet is the address plan of one bottle's virtual network.
type bottleNet struct {
	N       int          `json:"n"`
	Subnet  netip.Prefix `json:"subnet"`
	Gateway netip.Addr   `json:"gateway"`
	Guest   netip.Addr   `json:"guest"`
	HostVIP netip.Addr   `json:"host_virtual_ip"`
}

// subnetBase returns the subnet index a slug hashes to before skipping.
func subnetBase(slug string) int {
	h := fnv.New32a()
	h.Write([]byte(slug))
	return int(h.Sum32()%subnetCount) + 1
}

// nextN returns the index after n, wrapping 254 -> 1.
func nextN(n int) int {
	if n >= subnetCount {
		return 1
	}
	return n + 1
}

// pickSubnet derives the slug's subnet, stepping past reserved indexes and
// past those taken reports as held by another live bottle. taken may be nil.
func pickSubnet(slug string, taken func(n int) bool) (bottleNet, error) {
	n := subnetBase(slug)
	for range subnetCount {
		if n != skipOriginal && n != skipGvproxy && (taken == nil || !taken(n)) {
			return netFor(n), nil
		}
		n = nextN(n)
	}
	return bottleNet{}, errors.New("every 192.168.N.0/24 subnet is held by a live bottle")
}

// netFor returns the address plan of subnet index n (1..254).
func netFor(n int) bottleNet {
	a := func(host int) netip.Addr { return netip.AddrFrom4([4]byte{192, 168, byte(n), byte(host)}) }
	return bottleNet{
		N:       n,
		Subnet:  netip.PrefixFrom(a(0), 24),
		Gateway: a(gatewayHost),
		Guest:   a(guestHost),
		HostVIP: a(hostVirtualIP),
	}
}

// allocPorts asks the kernel for n distinct free TCP ports on 127.0.0.1.
// All listeners stay open until every port is chosen, so the kernel cannot
// hand out the same port twice; they are then closed so the sidecars can
// bind them. Another process may still take a port before a sidecar binds
// it: the supervisor detects that when the sidecar fails its health check.
// Only loopback is ever bound, never all interfaces.
func allocPorts(n int) ([]int, error) {
	lns := make([]net.Listener, 0, n)
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("allocate a loopback port: %w", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// loopbackAddr returns 127.0.0.1:port.
func loopbackAddr(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

// liveSubnets returns the subnet indexes held by the live bottles among
// recorded (those the state root records), other than slug's own.
func liveSubnets(recorded []recordedBottle, slug string) map[int]bool {
	held := map[int]bool{}
	for _, b := range recorded {
		if b.Slug == slug {
			continue
		}
		st, ok, err := readState(b.Stage)
		if err == nil && ok && st.Supervisor.alive() {
			held[st.Subnet] = true
		}
	}
	return held
}

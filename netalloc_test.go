package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"testing"
)

// TestSubnetBase checks the formula against FNV-1a-32 test vectors computed
// by hand from the published algorithm (offset basis 0x811c9dc5, prime
// 0x01000193), not by the same library call the code makes.
func TestSubnetBase(t *testing.T) {
	tests := []struct {
		slug string
		hash uint32
	}{
		{"", 0x811c9dc5},
		{"a", 0xe40c292c},
		{"foobar", 0xbf9cf968},
	}
	for _, tt := range tests {
		if got, want := subnetBase(tt.slug), int(tt.hash%254)+1; got != want {
			t.Errorf("subnetBase(%q) = %d, want %d", tt.slug, got, want)
		}
	}
}

// slugWithBase finds a slug that hashes to base n.
func slugWithBase(t *testing.T, n int) string {
	t.Helper()
	for i := range 1 << 20 {
		s := fmt.Sprintf("s%d", i)
		if subnetBase(s) == n {
			return s
		}
	}
	t.Fatalf("no slug hashes to %d", n)
	return ""
}

func TestPickSubnetSkipsAndWraps(t *testing.T) {
	tests := []struct {
		name  string
		base  int
		taken []int
		want  int
	}{
		{"plain", 42, nil, 42},
		{"skip 17", 17, nil, 18},
		{"skip 127", 127, nil, 128},
		{"taken steps on", 42, []int{42, 43}, 44},
		{"taken steps over 17", 16, []int{16}, 18},
		{"wrap 254 to 1", 254, []int{254}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			slug := slugWithBase(t, tt.base)
			held := map[int]bool{}
			for _, n := range tt.taken {
				held[n] = true
			}
			got, err := pickSubnet(slug, func(n int) bool { return held[n] })
			if err != nil {
				t.Fatal(err)
			}
			if got.N != tt.want {
				t.Errorf("pickSubnet(%q) N = %d, want %d", slug, got.N, tt.want)
			}
			if got.Subnet.String() != fmt.Sprintf("192.168.%d.0/24", tt.want) ||
				got.Gateway.String() != fmt.Sprintf("192.168.%d.1", tt.want) ||
				got.Guest.String() != fmt.Sprintf("192.168.%d.2", tt.want) ||
				got.HostVIP.String() != fmt.Sprintf("192.168.%d.254", tt.want) {
				t.Errorf("addresses = %+v", got)
			}
		})
	}
	if _, err := pickSubnet("x", func(int) bool { return true }); err == nil {
		t.Errorf("pickSubnet with every subnet held succeeded")
	}
	// Same slug, same subnet.
	a, _ := pickSubnet("demo", nil)
	b, _ := pickSubnet("demo", nil)
	if a != b {
		t.Errorf("pickSubnet(demo) not stable: %v vs %v", a, b)
	}
}

func TestAllocPortsLoopbackDistinct(t *testing.T) {
	ports, err := allocPorts(4)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] || p <= 0 || p > 65535 {
			t.Fatalf("ports %v: %d repeated or out of range", ports, p)
		}
		seen[p] = true
		// The port was released: a sidecar can bind it on loopback.
		ln, err := net.Listen("tcp", loopbackAddr(p))
		if err != nil {
			t.Errorf("port %d not free after allocPorts: %v", p, err)
			continue
		}
		ln.Close()
	}
}

// TestLiveSubnets: the subnets of live bottles the state root records,
// staged in it or elsewhere through a pointer, are held; a dead bottle's
// and the slug's own are not.
func TestLiveSubnets(t *testing.T) {
	root, elsewhere := t.TempDir(), t.TempDir()
	for slug, st := range map[string]bottleState{
		"live":  {Subnet: 10, Supervisor: selfIdent(t)},
		"dead":  {Subnet: 11, Supervisor: procIdent{PID: os.Getpid(), Start: 1}},
		"mine":  {Subnet: 12, Supervisor: selfIdent(t)},
		"other": {Subnet: 13, Supervisor: selfIdent(t)},
	} {
		stage := filepath.Join(root, slug)
		if slug == "other" {
			stage = filepath.Join(elsewhere, slug)
			if err := os.WriteFile(stageLinkPath(root, slug), []byte(stage+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			data, _ := json.Marshal(plan{Slug: slug, Stage: stage})
			writeState(t, stage, st)
			if err := os.WriteFile(filepath.Join(stage, planFile), data, 0o600); err != nil {
				t.Fatal(err)
			}
			continue
		}
		writeState(t, stage, st)
	}
	got := liveSubnets(recordedBottles(root), "mine")
	if want := map[int]bool{10: true, 13: true}; !maps.Equal(got, want) {
		t.Errorf("liveSubnets = %v, want %v", got, want)
	}
}

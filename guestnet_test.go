//go:build linux

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNetForSubnet(t *testing.T) {
	tests := []struct {
		in   string
		want int
		ok   bool
	}{
		{"192.168.42.0/24", 42, true},
		{"192.168.254.0/24", 254, true},
		{"192.168.0.0/24", 0, false},
		{"192.168.255.0/24", 0, false},
		{"192.168.42.0/16", 0, false},
		{"10.0.42.0/24", 0, false},
		{"192.168.42.1/24", 0, false},
		{"fd00::/64", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		n, err := netForSubnet(tt.in)
		if (err == nil) != tt.ok || (tt.ok && n.N != tt.want) {
			t.Errorf("netForSubnet(%q) = %d, %v; want %d, ok %v", tt.in, n.N, err, tt.want, tt.ok)
		}
	}
}

func TestWriteGuestFiles(t *testing.T) {
	root := t.TempDir()
	n := netFor(42)
	if err := writeGuestFiles(root, n); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][]string{
		"resolv.conf": {"nameserver 192.168.42.1\n"},
		"hosts":       {"192.168.42.254\tproxy.internal\n", "127.0.0.1\tlocalhost\n"},
	} {
		got, err := os.ReadFile(filepath.Join(root, "etc", name))
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range want {
			if !strings.Contains(string(got), w) {
				t.Errorf("%s: got %q, want it to contain %q", name, got, w)
			}
		}
		if strings.Count(string(got), "nameserver") > 1 {
			t.Errorf("%s: more than one nameserver", name)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(root, "etc"))
	if len(entries) != 2 {
		t.Errorf("etc holds %d entries, want 2 (no temporary files left)", len(entries))
	}
}

func TestIfreqName(t *testing.T) {
	for _, name := range []string{"", "sixteen-bytes-xx"} {
		if _, err := newIfreq(name); err == nil {
			t.Errorf("newIfreq(%q): got no error", name)
		}
	}
}

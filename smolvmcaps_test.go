package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestParsePrepareReport checks that up believes only a well-formed,
// consistent report from _guestnet -prepare.
func TestParsePrepareReport(t *testing.T) {
	for out, ok := range map[string]bool{
		`{"uid":0,"tun":"created"}` + "\n":    true,
		`{"uid":0,"tun":"present"}` + "\n":    true,
		`{"uid":1000,"tun":"skipped"}` + "\n": true,
		`{"uid":1000,"tun":"created"}`:        false, // only root makes the node
		`{"uid":0,"tun":"skipped"}`:           false,
		`{"uid":-1,"tun":"skipped"}`:          false,
		`{"uid":0,"tun":"maybe"}`:             false,
		`{"uid":0,"tun":"created","x":1}`:     false,
		`{"uid":0,"tun":"created"} {}`:        false,
		"":                                    false,
		"uid=0":                               false,
	} {
		if _, err := parsePrepareReport(out); (err == nil) != ok {
			t.Errorf("parsePrepareReport(%q) = %v, want ok %v", out, err, ok)
		}
	}
}

// TestRegistryImageHint checks that the hint for a registry image leads to
// an archive smolvm 1.9.3 can flatten: `docker save`, never an OCI archive
// (crates/smolvm-agent/src/storage.rs:1180-1191,1293-1302 @ v1.9.3).
func TestRegistryImageHint(t *testing.T) {
	_, err := checkImage("node:22")
	var stderr bytes.Buffer
	exitCode(&stderr, err)
	if !strings.Contains(stderr.String(), "docker save node:22 -o image.tar") || strings.Contains(stderr.String(), "oci-archive:") {
		t.Errorf("registry image hint:\n%s", stderr.String())
	}
}

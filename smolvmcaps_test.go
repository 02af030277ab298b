package main

import "testing"

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

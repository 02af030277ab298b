package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestRenderSeatbeltGolden(t *testing.T) {
	spec := seatbeltSpec{
		Gvproxy:   "/Users/dev/smolbottle/bin/gvproxy",
		Config:    "/Users/dev/.smolbottle/stage/demo/gvproxy.yaml",
		SocketDir: "/Users/dev/.smolbottle/stage/demo/sock",
		Ports:     []int{43123, 8080, 43123},
	}
	got, err := renderSeatbelt(spec)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := renderSeatbelt(spec)
	if !bytes.Equal(got, again) {
		t.Error("output is not deterministic")
	}
	golden(t, "seatbelt.sb", got)
	// Nothing but the listed ports goes out over IP.
	if n := strings.Count(string(got), "(remote ip "); n != 2 {
		t.Errorf("got %d IP outbound rules, want 2", n)
	}
	if strings.Contains(string(got), `(remote ip "*`) {
		t.Error("profile allows outbound IP to any host")
	}
}

func TestRenderSeatbeltRejects(t *testing.T) {
	ok := seatbeltSpec{Gvproxy: "/bin/gvproxy", Config: "/s/gvproxy.yaml", SocketDir: "/s/sock", Ports: []int{8080}}
	tests := []struct {
		name string
		edit func(*seatbeltSpec)
	}{
		{"relative binary", func(s *seatbeltSpec) { s.Gvproxy = "bin/gvproxy" }},
		{"quote in path", func(s *seatbeltSpec) { s.SocketDir = `/s/so"ck) (allow default` }},
		{"backslash", func(s *seatbeltSpec) { s.Config = `/s/a\b` }},
		{"newline", func(s *seatbeltSpec) { s.Config = "/s/a\nb" }},
		{"unclean", func(s *seatbeltSpec) { s.SocketDir = "/s/../etc" }},
		{"no ports", func(s *seatbeltSpec) { s.Ports = nil }},
		{"bad port", func(s *seatbeltSpec) { s.Ports = []int{0} }},
	}
	for _, tt := range tests {
		spec := ok
		tt.edit(&spec)
		if _, err := renderSeatbelt(spec); err == nil {
			t.Errorf("%s: got no error", tt.name)
		}
	}
	if _, err := renderSeatbelt(ok); err != nil {
		t.Errorf("valid spec: %v", err)
	}
}

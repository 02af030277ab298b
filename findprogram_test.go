package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFindProgramOrder: smolbottle's own directory wins over PATH, unless
// others may write to it; PATH is searched after it.
func TestFindProgramOrder(t *testing.T) {
	own, onPath := t.TempDir(), t.TempDir()
	os.Chmod(own, 0o755)
	for _, d := range []string{own, onPath} {
		if err := os.WriteFile(filepath.Join(d, "gvproxy"), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(onPath, "pipelock"), []byte("#!/bin/sh\n"), 0o755)
	env := preflightEnv{ExeDir: own, Path: "relative:" + onPath}
	if got, err := findProgram("gvproxy", env); err != nil || got != filepath.Join(own, "gvproxy") {
		t.Errorf("findProgram(gvproxy) = %q, %v; want the one beside smolbottle", got, err)
	}
	if got, err := findProgram("pipelock", env); err != nil || got != filepath.Join(onPath, "pipelock") {
		t.Errorf("findProgram(pipelock) = %q, %v; want PATH's", got, err)
	}
	_, err := findProgram("smolvm", env)
	if err == nil || !strings.Contains(err.Error(), "smolvm not found beside smolbottle (in "+own+") or on PATH") {
		t.Errorf("findProgram(smolvm) = %v", err)
	}
	// A directory others may write to (a sticky /tmp) could gain a
	// gvproxy beside a smolbottle no one there can replace: not trusted.
	os.Chmod(own, 0o1777)
	if got, _ := findProgram("gvproxy", env); got != filepath.Join(onPath, "gvproxy") {
		t.Errorf("with a world-writable own directory, findProgram = %q, want PATH's", got)
	}
	if h := gvisorHint("gvforwarder", env); !strings.Contains(h, "(DIR on PATH)") {
		t.Errorf("hint for an untrusted own directory = %q", h)
	}
	os.Chmod(own, 0o755)
	want := "CGO_ENABLED=0 GOBIN=" + own + " go install github.com/containers/gvisor-tap-vsock/cmd/vm@v0.8.9 && mv " +
		filepath.Join(own, "vm") + " " + filepath.Join(own, "gvforwarder")
	if h := gvisorHint("gvforwarder", env); !strings.Contains(h, want) {
		t.Errorf("gvforwarder hint = %q, want it to hold %q", h, want)
	}
	if h := gvisorHint("gvproxy", env); !strings.Contains(h, "CGO_ENABLED=0 GOBIN="+own+" go install github.com/containers/gvisor-tap-vsock/cmd/gvproxy@v0.8.9") {
		t.Errorf("gvproxy hint = %q", h)
	}
}

package main

import (
	"context"
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

// TestPreflightCacheChecked: the cache's key is built from facts anyone on
// the machine can learn, so a cached result is used only from a private
// file of ours whose tools are the ones findProgram finds now. A planted
// cache with the right key must not choose the programs smolbottle runs.
func TestPreflightCacheChecked(t *testing.T) {
	own, cacheDir, elsewhere := t.TempDir(), t.TempDir(), t.TempDir()
	for _, d := range []string{own, elsewhere} {
		for _, name := range []string{"smolvm", "gvproxy", "gvforwarder", "pipelock"} {
			if err := os.WriteFile(filepath.Join(d, name), []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	env := preflightEnv{ExeDir: own, Path: "", Pipelock: true, CacheDir: cacheDir}
	key := preflightKey(env)
	good := tools{Smolvm: filepath.Join(own, "smolvm"), Gvproxy: filepath.Join(own, "gvproxy"),
		Gvforwarder: filepath.Join(own, "gvforwarder"), Pipelock: filepath.Join(own, "pipelock")}
	cacheFile := filepath.Join(cacheDir, preflightCacheFile)
	plant := func(tl tools) {
		t.Helper()
		os.Remove(cacheFile)
		writePreflightCache(cacheDir, key, preflightCache{Key: key, Tools: tl})
		if _, err := os.Stat(cacheFile); err != nil {
			t.Fatal(err)
		}
	}
	plant(good)
	if c, ok := readPreflightCache(env, key); !ok || c.Tools != good {
		t.Fatalf("our own cache with the tools found now: %+v, %v; want a hit", c.Tools, ok)
	}
	noPipelock := env
	noPipelock.Pipelock = false
	if _, ok := readPreflightCache(noPipelock, key); ok {
		t.Errorf("a cache naming pipelock used when none is launched")
	}

	tests := []struct {
		name string
		set  func()
	}{
		{"other smolvm", func() { tl := good; tl.Smolvm = filepath.Join(elsewhere, "smolvm"); plant(tl) }},
		{"other gvproxy", func() { tl := good; tl.Gvproxy = filepath.Join(elsewhere, "gvproxy"); plant(tl) }},
		{"other gvforwarder", func() { tl := good; tl.Gvforwarder = filepath.Join(elsewhere, "gvforwarder"); plant(tl) }},
		{"other pipelock", func() { tl := good; tl.Pipelock = filepath.Join(elsewhere, "pipelock"); plant(tl) }},
		{"no pipelock", func() { tl := good; tl.Pipelock = ""; plant(tl) }},
		{"group-writable", func() { plant(good); os.Chmod(cacheFile, 0o620) }},
		{"other-writable", func() { plant(good); os.Chmod(cacheFile, 0o602) }},
		{"symlink", func() {
			plant(good)
			real := filepath.Join(elsewhere, "cache.json")
			os.Rename(cacheFile, real)
			os.Symlink(real, cacheFile)
		}},
	}
	if os.Getuid() == 0 { // only root can give a file to another uid
		tests = append(tests, struct {
			name string
			set  func()
		}{"not ours", func() {
			plant(good)
			if err := os.Chown(cacheFile, 65534, -1); err != nil {
				t.Fatal(err)
			}
		}})
	}
	for _, tt := range tests {
		tt.set()
		if c, ok := readPreflightCache(env, key); ok {
			t.Errorf("%s: cache used, tools %+v", tt.name, c.Tools)
		}
	}

	// Through preflight: a planted cache naming another smolvm is not
	// what comes back; the preflight runs again (and fails on these fakes).
	tl := good
	tl.Smolvm = filepath.Join(elsewhere, "smolvm")
	plant(tl)
	if _, got, err := preflight(context.Background(), env); err == nil || got.Smolvm == tl.Smolvm {
		t.Errorf("preflight with a planted cache = %+v, %v; want a fresh run that fails", got, err)
	}
}

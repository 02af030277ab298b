package main

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// fakes maps a program name to the fake the test binary runs when it is
// executed under that name (the os/exec test pattern): tests link the test
// binary as "smolvm", "pipelock" and so on, and TestMain dispatches on
// argv[0]. Test files register their fakes in init.
var fakes = map[string]func(args []string) int{}

func TestMain(m *testing.M) {
	name := filepath.Base(os.Args[0])
	if name == "smolbottle" {
		// The code re-executes itself (namespaces, jail, guest helpers); in
		// tests "itself" is this binary.
		exitNow(exitCode(os.Stderr, runCLI(context.Background(), os.Args[1:], os.Stdout, os.Stderr)))
	}
	if fake, ok := fakes[name]; ok {
		exitNow(fake(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// linkAs makes the test binary available as dir/name, so that running it
// runs the fake registered under name. It hardlinks when it can and falls
// back to a symlink; argv[0] keeps the link's name either way.
func linkAs(t testing.TB, dir, name string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.Link(self, p); err != nil {
		if err := os.Symlink(self, p); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// exitNow ends a fake or re-executed child at once. os.Exit would run the
// race detector's exit hook, which sleeps a second in every child of a
// -race test binary (atexit_sleep_ms); the fakes have nothing to flush.
func exitNow(code int) {
	syscall.Exit(code)
}

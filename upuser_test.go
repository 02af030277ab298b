//go:build linux

package main

import (
	"bytes"
	"context"
	"os"
	"slices"
	"strings"
	"testing"
)

// The guest user of up's steps: gvforwarder and _guestnet need root; the
// self-test runs as the image's USER. smolvm 1.9.3 has no exec --user, so
// there the image's USER must be root (TestUpEndToEnd runs that case);
// with exec --user any USER works; otherwise up says what is missing.

// guestExecs returns the argv of every machine exec the fake ran.
func guestExecs(t *testing.T, f *fakeSmolvmBin) [][]string {
	var out [][]string
	for _, r := range f.records(t) {
		if len(r.Argv) > 1 && r.Argv[1] == "exec" && !slices.Contains(r.Argv, "--help") {
			out = append(out, r.Argv)
		}
	}
	return out
}

// TestUpExecUserNonRootImage brings a bottle up on a smolvm with exec
// --user and an image whose USER is uid 1000: the root steps ask for
// root, the self-test and the user's commands run as uid 1000 (which must
// be able to run the guest binaries).
func TestUpExecUserNonRootImage(t *testing.T) {
	needFakeVM(t)
	b := newTestBottle(t, fakeCapExecUser)
	writeTestImage(t, b.image, "1000")
	// The image's user works in the workspace, as in a host user's own
	// project directory with an image user of the same uid.
	if err := os.Chmod(b.workspace, 0o777); err != nil {
		t.Fatal(err)
	}
	staticSmolbottle(t)
	f := useBottle(t, b)
	ctx := context.Background()
	var out, errb bytes.Buffer
	if err := runCLI(ctx, b.upArgs("user"), &out, &errb); err != nil {
		t.Fatalf("up: %v\n%s", err, errb.String())
	}
	t.Cleanup(func() { runCLI(context.Background(), []string{"down", "user"}, &out, &errb) })
	var o, e bytes.Buffer
	if err := runCLI(ctx, []string{"exec", "user", "--", "id", "-u"}, &o, &e); err != nil || o.String() != "1000\n" {
		t.Errorf("exec id -u = %q, %v (%s); want the image's uid 1000", o.String(), err, e.String())
	}
	root := 0
	for _, argv := range guestExecs(t, f) {
		i := slices.Index(argv, "--")
		asRoot := slices.Contains(argv[:i], "--user") && argv[slices.Index(argv, "--user")+1] == "root"
		internal := strings.HasPrefix(argv[i+1], guestBinDir+"/")
		wantRoot := internal && !slices.Contains(argv, probeCmd)
		if asRoot != wantRoot {
			t.Errorf("exec %q: as root = %v, want %v", argv[i+1:], asRoot, wantRoot)
		}
		if asRoot {
			root++
		}
	}
	if root != 3 {
		t.Errorf("%d execs asked for root, want 3 (prepare, gvforwarder, _guestnet)", root)
	}
}

// TestUpNonRootImageWithoutExecUser is smolvm 1.9.3 with an image whose
// USER is not root: up must stop at the first guest step with an error
// that names the missing capability, what it is for and the change that
// adds it, and tear everything down.
func TestUpNonRootImageWithoutExecUser(t *testing.T) {
	needFakeVM(t)
	b := newTestBottle(t, "")
	writeTestImage(t, b.image, "1000")
	staticSmolbottle(t)
	f := useBottle(t, b)
	var out, errb bytes.Buffer
	err := runCLI(context.Background(), b.upArgs("nouser"), &out, &errb)
	if err == nil {
		t.Fatal("up with a non-root image on smolvm 1.9.3 succeeded")
	}
	var stderr bytes.Buffer
	exitCode(&stderr, err)
	for _, want := range []string{
		"the image's USER is uid 1000, and this smolvm has no `machine exec --user` (smol-machines/smolvm PR #1148; not in v1.9.3)",
		"gvforwarder must run as root in the guest",
		"use an image whose USER is root, or a smolvm with `machine exec --user`",
	} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("up's error lacks %q:\n%s", want, stderr.String())
		}
	}
	for _, argv := range guestExecs(t, f) {
		if slices.Contains(argv, "--user") {
			t.Errorf("smolvm 1.9.3 was asked for exec --user: %q", argv)
		}
		if slices.Contains(argv, "--detach") {
			t.Errorf("gvforwarder was started after the root check failed: %q", argv)
		}
	}
	assertTornDown(t, b, f, "nouser")
}

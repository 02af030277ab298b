package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckVolumeSource checks plan's rule against smolvm's list
// (src/data/storage.rs:52-68,173-187 @ v1.9.3): exact paths, subtrees by
// whole path components.
func TestCheckVolumeSource(t *testing.T) {
	for path, refused := range map[string]bool{
		"/": true, "/var": true, "/var/lib/x": false, "/var/run": true, "/var/run/x": true,
		"/var/log/a/b": true, "/run/user/1000/st": true, "/etc/x": true, "/etcetera": false,
		"/usr/local/src": true, "/lib/x": true, "/lib64/x": false, "/boot": true, "/proc/1": true,
		"/sys/x": true, "/dev/shm/x": true, "/bin/x": true, "/sbin": true, "/home/u/project": false,
		"/tmp/x": false, "/srv/x": false,
	} {
		err := checkVolumeSource("workspace", path)
		if (err != nil) != refused {
			t.Errorf("checkVolumeSource(%q) = %v, want refused %v", path, err, refused)
		}
		if err != nil && !strings.Contains(err.Error(), "smolvm refuses to mount") {
			t.Errorf("checkVolumeSource(%q) = %v: the error does not say why", path, err)
		}
	}
}

// TestCheckVolumeSourceAgreesWithFake holds plan's rule and the fake
// smolvm's to the same answers for real directories.
func TestCheckVolumeSourceAgreesWithFake(t *testing.T) {
	for _, dir := range []string{"/", "/var", "/usr", "/etc", "/run", "/tmp", t.TempDir()} {
		real, err := filepath.EvalSymlinks(dir)
		if err != nil {
			continue
		}
		plan := checkVolumeSource("volume", real) != nil
		fake := fakeCheckVolume(real+":/w") != nil
		if plan != fake {
			t.Errorf("%s: plan refuses %v, the fake smolvm %v", real, plan, fake)
		}
	}
}

// TestPlanRefusesProtectedVolumes plans a bottle whose stage (and so its
// guest/ volume) or workspace lies under /run: smolvm would refuse the
// create, so plan does, naming the rule.
func TestPlanRefusesProtectedVolumes(t *testing.T) {
	run, err := os.MkdirTemp("/run", "sbt")
	if err != nil {
		t.Skipf("cannot make a directory under /run: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	b := newTestBottle(t, "")
	for _, tc := range []struct {
		name string
		set  func(*planOptions)
		want string
	}{
		{"stage", func(o *planOptions) { o.Stage = filepath.Join(run, "st") }, "the stage's guest directory \"" + run + "/st/guest\" is under /run"},
		{"workspace", func(o *planOptions) { o.Workspace = run }, "workspace \"" + run + "\" is under /run"},
	} {
		opts := b.opts("prot")
		tc.set(&opts)
		_, err := resolvePlan(context.Background(), opts, b.env(t))
		var stderr bytes.Buffer
		if code := exitCode(&stderr, err); code != 1 || !strings.Contains(stderr.String(), tc.want) ||
			!strings.Contains(stderr.String(), "smolvm refuses to mount") {
			t.Errorf("%s under /run: exit %d, stderr %q; want %q", tc.name, code, stderr.String(), tc.want)
		}
	}
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestDoctor(t *testing.T) {
	tests := []struct {
		name, mode, remove, guest string
		code                      int
		want                      []string
	}{
		// smolvm 1.9.3 as released: it works with a root image, and the
		// capability table says what is missing and how up copes.
		{name: "smolvm 1.9.3", code: 0, want: []string{
			"ok       smolvm", "version  1.9.3", "smol-machines CLI",
			"ok       smolvm machine create --mount-socket",
			"missing  smolvm machine exec --user", "added by: smol-machines/smolvm PR #1148",
			"without it: up runs those steps as the image's USER, which must then be root",
			"unknown  smolvm /dev/net/tun in image containers", "added by: smol-machines/smolvm PR #1146",
			"mknod /dev/net/tun c 10 200",
			"ok       gvproxy", "version  v0.8.9", "ok       gvforwarder", "static linux/",
			"ok       pipelock", "version  2.3.0", "ok       namespaces",
			"ANTHROPIC_API_KEY        set: the guest gets a random placeholder, sent as X-Api-Key",
			"CLAUDE_CODE_OAUTH_TOKEN  not set", "sends them only to https://api.anthropic.com"}},
		{name: "exec --user", mode: "exec-user", code: 0, want: []string{"present  smolvm machine exec --user"}},
		{name: "no mount-socket", mode: "nomount", code: 1, want: []string{
			"MISSING  smolvm machine create --mount-socket", "fix: upgrade smolvm"}},
		{name: "nothing but gvisor", remove: "smolvm pipelock", code: 1, want: []string{
			"MISSING  smolvm", "smolvm not found", "fix: install smolvm", "MISSING  pipelock", "ok       gvproxy",
			"fix: export ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN"}},
		// A dynamic smolbottle cannot run in the guest: doctor (and plan)
		// say so instead of up, after the machine is made.
		{name: "dynamic smolbottle", guest: "ls", code: 1, want: []string{
			"MISSING  smolbottle", "is dynamically linked", "fix: build it static: in the smolbottle checkout, make build"}},
	}
	staticSmolbottle(t)
	static := testOnlyGuestSelf
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testOnlyGuestSelf = static
			if tt.guest != "" {
				dyn, err := exec.LookPath(tt.guest)
				if err != nil {
					t.Skip("no ls to serve as a dynamic executable")
				}
				testOnlyGuestSelf = dyn
			}
			b := newTestBottle(t, tt.mode)
			for _, r := range strings.Fields(tt.remove) {
				os.Remove(filepath.Join(b.path, r))
			}
			t.Setenv("PATH", b.path)
			t.Setenv("ANTHROPIC_API_KEY", "")
			t.Setenv("CLAUDE_CODE_OAUTH_TOKEN", "")
			if tt.code == 0 {
				t.Setenv("ANTHROPIC_API_KEY", testSecret)
			}
			var out, errb bytes.Buffer
			err := runCLI(context.Background(), []string{"doctor"}, &out, &errb)
			if code := exitCode(&errb, err); code != tt.code {
				t.Errorf("exit %d, want %d; stderr %q", code, tt.code, errb.String())
			}
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("doctor output lacks %q:\n%s", w, out.String())
				}
			}
			if strings.Contains(out.String(), testSecret) {
				t.Errorf("doctor shows a credential's value")
			}
		})
	}
}

// TestStaticELF checks the guest-binary check against a real static build
// (gvforwarder from make tools) and a dynamic one (this test binary, built
// with cgo's resolver, or any program with an interpreter).
func TestStaticELF(t *testing.T) {
	if err := checkStaticELF(realTool(t, "gvforwarder")); err != nil {
		t.Errorf("gvforwarder: %v", err)
	}
	dyn, err := exec.LookPath("ls")
	if err != nil {
		t.Skip("no ls to serve as a dynamic executable")
	}
	if err := checkStaticELF(dyn); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Errorf("checkStaticELF(%s) = %v, want dynamically linked", dyn, err)
	}
	if err := checkStaticELF("plan_test.go"); err == nil || !strings.Contains(err.Error(), "not an ELF") {
		t.Errorf("checkStaticELF(source file) = %v", err)
	}
}

// BenchmarkPlanProcess measures the whole `smolbottle plan` process, the
// preflight's child programs included (cached after the first run), as a
// user runs it. Its Version sub-benchmark is the floor: the same binary
// starting and printing its version, so the difference is plan's own cost.
func BenchmarkPlanProcess(b *testing.B) {
	tb := newTestBottle(b, "")
	bin := filepath.Join(tb.dir, "smolbottle")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // plan checks that it can run in the guest
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	env := []string{"PATH=" + tb.path, "SMOLBOTTLE_STATE=" + tb.state, "HOME=" + tb.dir}
	for _, bc := range []struct {
		name string
		args []string
	}{
		{"Version", []string{"version"}},
		{"Plan", []string{"plan", "-image", tb.image, "-workspace", tb.workspace, "bench"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for range b.N {
				cmd := exec.Command(bin, bc.args...)
				cmd.Env = env
				if out, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("%v: %v\n%s", bc.args, err, out)
				}
			}
		})
	}
}

// BenchmarkPlanInProcess measures plan's own work (validation, cached
// preflight, subnet, ports, rendering, stage writes) without process start.
func BenchmarkPlanInProcess(b *testing.B) {
	tb := newTestBottle(b, "")
	env := tb.env(b)
	opts := tb.opts("bench")
	for b.Loop() {
		p, err := resolvePlan(context.Background(), opts, env)
		if err != nil {
			b.Fatal(err)
		}
		if err := p.writeStage(); err != nil {
			b.Fatal(err)
		}
	}
}

// TestNamespaceHints: doctor names the sysctl that forbids the jail's
// namespaces.
func TestNamespaceHints(t *testing.T) {
	for _, tt := range []struct {
		name  string
		files map[string]string
		want  []string
	}{
		{"debian sysctl off", map[string]string{"kernel/unprivileged_userns_clone": "0\n", "user/max_user_namespaces": "100\n"}, []string{"kernel.unprivileged_userns_clone=1"}},
		{"no namespaces", map[string]string{"user/max_user_namespaces": "0\n"}, []string{"user.max_user_namespaces"}},
		{"ubuntu apparmor", map[string]string{"kernel/apparmor_restrict_unprivileged_userns": "1\n"}, []string{"kernel.apparmor_restrict_unprivileged_userns=0", "userns,"}},
		{"nothing restricts", map[string]string{"user/max_user_namespaces": "100\n"}, []string{"container"}},
	} {
		dir := t.TempDir()
		for name, v := range tt.files {
			p := filepath.Join(dir, name)
			os.MkdirAll(filepath.Dir(p), 0o700)
			os.WriteFile(p, []byte(v), 0o600)
		}
		got := strings.Join(namespaceHints(dir), "\n")
		for _, w := range tt.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: got %q, want it to mention %q", tt.name, got, w)
			}
		}
	}
}

// TestNamespaceCheckIsTheJails: the namespace check runs in exactly the
// jail's namespaces, a PID namespace among them (its init is pid 1).
func TestNamespaceCheckIsTheJails(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("Linux namespaces")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if c := checkNamespaces(context.Background(), self); !c.OK {
		t.Fatalf("namespace check: %+v", c)
	}
}

// TestDoctorRefusesGuestWrittenPath: doctor runs every program it finds,
// so a PATH directory in a bottle's workspace, where that bottle's guest
// could have planted one, is refused before anything runs.
func TestDoctorRefusesGuestWrittenPath(t *testing.T) {
	b := newTestBottle(t, "")
	stage, ws := filepath.Join(b.state, "other"), filepath.Join(b.dir, "otherws")
	venv := filepath.Join(ws, ".venv", "bin")
	for _, d := range []string{stage, venv} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	data, _ := json.Marshal(plan{Slug: "other", Stage: stage, Workspace: ws})
	if err := os.WriteFile(filepath.Join(stage, planFile), data, 0o600); err != nil {
		t.Fatal(err)
	}
	ran := filepath.Join(b.dir, "ran")
	if err := os.WriteFile(filepath.Join(venv, "smolvm"), []byte("#!/bin/sh\ntouch "+ran+"\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SMOLBOTTLE_STATE", b.state)
	t.Setenv("PATH", venv+":"+b.path)
	var out, errb bytes.Buffer
	err := runCLI(context.Background(), []string{"doctor"}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), `bottle "other"'s workspace`) {
		t.Fatalf("doctor = %v, want refused for the PATH directory in bottle other's workspace", err)
	}
	if _, err := os.Stat(ran); err == nil {
		t.Error("doctor ran a program from a bottle's workspace")
	}
}

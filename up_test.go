//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestUpEndToEnd brings a bottle up with the fake smolvm (a namespace VM),
// the real pipelock, the real confined gvproxy and the real gvforwarder,
// then uses it the way a user does: exec, cp, the proxy from inside the
// guest, ls, and down.
func TestUpEndToEnd(t *testing.T) {
	needFakeVM(t)
	// "api.anthropic.com" is a TLS test host in a namespace of its own,
	// which pipelock resolves through its private /etc/hosts; the guest
	// must reach it only through the proxy, and "evil.example" not at all.
	api := newTestHost(t, "api.anthropic.com", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s\n", r.Host)
	}))
	b := newTestBottle(t, "")
	os.Remove(filepath.Join(b.path, "pipelock"))
	pipelockResolving(t, b.path, api)
	staticSmolbottle(t)
	f := useBottle(t, b)
	if err := os.WriteFile(filepath.Join(b.workspace, "ca.pem"), api.CAPEM, 0o600); err != nil {
		t.Fatal(err)
	}

	// A web server on host loopback: the guest must not reach it directly.
	web := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s\n", r.Host)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go web.Serve(ln)
	t.Cleanup(func() { web.Close() })
	webPort := portOf(ln.Addr().String())

	ctx := context.Background()
	var out, errb bytes.Buffer
	if err := runCLI(ctx, []string{"plan", "-image", b.image, "-workspace", b.workspace, "e2e"}, &out, &errb); err != nil {
		t.Fatalf("plan: %v %s", err, errb.String())
	}
	stage := filepath.Join(b.state, "e2e")
	out.Reset()
	errb.Reset()
	if err := runCLI(ctx, []string{"up", "-image", b.image, "-workspace", b.workspace, "e2e"}, &out, &errb); err != nil {
		t.Fatalf("up: %v\n%s", err, errb.String())
	}
	t.Cleanup(func() { runCLI(context.Background(), []string{"down", "e2e"}, &out, &errb) })
	for _, step := range []string{"starting the supervisor", "creating machine", "egress self-test", "ready"} {
		if !strings.Contains(errb.String(), step) {
			t.Errorf("up progress lacks %q:\n%s", step, errb.String())
		}
	}

	// The archive reached smolvm on standard input, never by its path:
	// given a path, smolvm hard-links the file into its image cache.
	archive, _ := os.ReadFile(b.image)
	sum := sha256.Sum256(archive)
	if m := f.state(t).Machines[machineName("e2e")]; m == nil || m.Image != "local:"+hex.EncodeToString(sum[:]) {
		t.Errorf("machine record %+v, want the image staged from the archive's bytes", m)
	}
	for _, r := range f.records(t) {
		if slices.Contains(r.Argv, b.image) {
			t.Errorf("smolvm was given the archive's path: %q", r.Argv)
		}
	}

	exec := func(args ...string) (string, int) {
		var o, e bytes.Buffer
		err := runCLI(ctx, append([]string{"exec", "e2e", "--"}, args...), &o, &e)
		return o.String() + e.String(), exitCode(&e, err)
	}
	if _, code := exec("sh", "-c", "exit 3"); code != 3 {
		t.Errorf("guest exit 3 came back as %d", code)
	}
	pl, _ := readPlan(stage)
	if got, code := exec("sh", "-c", `echo "$ANTHROPIC_API_KEY"`); code != 0 || len(pl.Credentials) != 1 || strings.TrimSpace(got) != pl.Credentials[0].Placeholder {
		t.Errorf("the guest's ANTHROPIC_API_KEY is %q (exit %d), want the bottle's placeholder", got, code)
	}
	// The credential sidecar answers the guest, and nothing on the host:
	// it is served in gvproxy's network namespace only (confineSpec.Serve).
	credPort := portOfSidecar(t, stage, credSidecar)
	if got, code := exec("curl", "-sS", "--noproxy", "*", "--max-time", "5", "http://proxy.internal:"+credPort+"/"); code != 0 || !strings.Contains(got, "smolbottle credentials: only POST") {
		t.Errorf("guest -> credential sidecar: %q (exit %d), want its refusal of a GET", got, code)
	}
	if c, err := net.DialTimeout("tcp", "127.0.0.1:"+credPort, time.Second); err == nil {
		c.Close()
		t.Errorf("the credential sidecar's port %s accepts on host loopback", credPort)
	}
	src := filepath.Join(b.dir, "note.txt")
	os.WriteFile(src, []byte("copied in\n"), 0o600)
	if err := runCLI(ctx, []string{"cp", "e2e", src, "/tmp/note.txt"}, &out, &errb); err != nil {
		t.Fatalf("cp: %v", err)
	}
	if got, _ := exec("cat", "/tmp/note.txt"); got != "copied in\n" {
		t.Errorf("cp'd file reads %q", got)
	}
	curl := func(url string) (string, int) {
		return exec("curl", "-sS", "--max-time", "5", "--cacert", guestWorkspace+"/ca.pem",
			"-x", "http://proxy.internal:"+portOfSidecar(t, stage, "pipelock"), url)
	}
	if got, code := curl(api.URL()); code != 0 || !strings.Contains(got, "hello from api.anthropic.com") {
		t.Errorf("allowed host through the proxy: %q (exit %d)", got, code)
	}
	if got, code := curl("https://evil.example/"); code == 0 || strings.Contains(got, "hello") || !strings.Contains(got, "403") {
		t.Errorf("host outside the allow-list: %q (exit %d), want pipelock's 403", got, code)
	}
	// The web server's port, straight at the host's virtual IP: host
	// loopback, but not a relayed sidecar port.
	direct := fmt.Sprintf("http://%s:%d/", pl.Net.HostVIP, webPort)
	if got, code := exec("curl", "-sS", "--noproxy", "*", "--max-time", "3", direct); code == 0 || strings.Contains(got, "hello") {
		t.Errorf("guest reached a host port without the proxy: %q", got)
	}

	bottles, _ := listBottles(b.state)
	if len(bottles) != 1 || bottles[0].State != "running" {
		t.Errorf("ls = %+v, want e2e running", bottles)
	}
	if err := runCLI(ctx, []string{"up", "-q", "-image", b.image, "-workspace", b.workspace, "e2e"}, &out, &errb); err == nil || !strings.Contains(err.Error(), "live bottle") {
		t.Errorf("second up over a live bottle = %v, want refused", err)
	}
	out.Reset()
	if err := runCLI(ctx, []string{"down", "e2e"}, &out, &errb); err != nil {
		t.Fatalf("down: %v", err)
	}
	assertTornDown(t, b, f, "e2e")
	if err := runCLI(ctx, []string{"exec", "e2e", "--", "true"}, &out, &errb); !errors.As(err, new(errNoBottle)) {
		t.Errorf("exec after down = %v, want no bottle", err)
	}
	// The same slug comes up again over the logs down kept.
	if err := runCLI(ctx, []string{"up", "-q", "-image", b.image, "-workspace", b.workspace, "e2e"}, &out, &errb); err != nil {
		t.Fatalf("second up: %v", err)
	}
	if err := runCLI(ctx, []string{"down", "e2e"}, &out, &errb); err != nil {
		t.Fatalf("second down: %v", err)
	}
	assertTornDown(t, b, f, "e2e")
}

// portOfSidecar reads a sidecar's port from the stage's plan.
func portOfSidecar(t *testing.T, stage, name string) string {
	p, err := readPlan(stage)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range p.Sidecars {
		if s.Name == name {
			return fmt.Sprint(s.Port)
		}
	}
	t.Fatalf("no sidecar %s", name)
	return ""
}

// TestRunExitStatusAndDown: run brings the bottle up, runs the command,
// passes its exit status through and takes the bottle down.
func TestRunExitStatusAndDown(t *testing.T) {
	needFakeVM(t)
	b := newTestBottle(t, "")
	staticSmolbottle(t)
	f := useBottle(t, b)
	var out, errb bytes.Buffer
	err := runCLI(context.Background(), []string{"run", "-q", "-image", b.image, "-workspace", b.workspace, "once",
		"--", "sh", "-c", "pwd; exit 7"}, &out, &errb)
	if code := exitCode(&errb, err); code != 7 {
		t.Errorf("run exit %d, want the guest's 7 (%v, %s)", code, err, errb.String())
	}
	if got := strings.TrimSpace(out.String()); got != guestWorkspace {
		t.Errorf("the agent ran in %q, want %s", got, guestWorkspace)
	}
	assertTornDown(t, b, f, "once")
}

// TestUpExternalEgressProxy uses a proxy that is already running instead
// of pipelock; with nothing listening there, up refuses to start.
func TestUpExternalEgressProxy(t *testing.T) {
	needFakeVM(t)
	b := newTestBottle(t, "")
	staticSmolbottle(t)
	f := useBottle(t, b)
	// A stand-in proxy: any HTTP answer to CONNECT is a proxy answering.
	proxy := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "stand-in proxy refuses", http.StatusForbidden)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go proxy.Serve(ln)
	t.Cleanup(func() { proxy.Close() })
	addr := ln.Addr().String()

	ctx := context.Background()
	var out, errb bytes.Buffer
	if err := runCLI(ctx, b.upArgs("ext", "-egress-proxy", addr), &out, &errb); err != nil {
		t.Fatalf("up -egress-proxy: %v\n%s", err, errb.String())
	}
	var o, e bytes.Buffer
	err = runCLI(ctx, []string{"exec", "ext", "--", "sh", "-c", `echo "$HTTPS_PROXY"`}, &o, &e)
	if want := "http://proxy.internal:" + fmt.Sprint(portOf(addr)); err != nil || strings.TrimSpace(o.String()) != want {
		t.Errorf("guest HTTPS_PROXY = %q (%v), want %s", o.String(), err, want)
	}
	logs := filepath.Join(b.state, "ext", logsDir)
	if _, err := os.Stat(filepath.Join(logs, "pipelock.log")); err == nil {
		t.Errorf("pipelock was started although -egress-proxy was given")
	}
	if err := runCLI(ctx, []string{"down", "ext"}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	assertTornDown(t, b, f, "ext")

	proxy.Close()
	err = runCLI(ctx, b.upArgs("ext2", "-egress-proxy", addr), &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "egress proxy "+addr) {
		t.Fatalf("up with the proxy down = %v, want it named", err)
	}
	if madeMachineNamed(t, f, machineName("ext2")) {
		t.Errorf("machine created although the egress proxy is down")
	}
	assertTornDown(t, b, f, "ext2")
}

// madeMachineNamed reports whether the fake ran machine create for name.
func madeMachineNamed(t *testing.T, f *fakeSmolvmBin, name string) bool {
	for _, r := range f.records(t) {
		if len(r.Argv) > 3 && r.Argv[1] == "create" && r.Argv[3] == name {
			return true
		}
	}
	return false
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func init() {
	fakes["sidecar-parent"] = fakeSidecarParent
	fakes["chatty"] = fakeChatty
}

// fakeChatty writes args[1] bytes of numbered 1 KiB lines to its standard
// output and one line to its standard error, then listens on
// 127.0.0.1:args[0] until killed: a sidecar whose guest floods its log.
func fakeChatty(args []string) int {
	n, _ := strconv.Atoi(args[1])
	for i := 0; i < n/1024; i++ {
		if _, err := fmt.Fprintf(os.Stdout, "%09d %s\n", i, strings.Repeat("x", 1024-11)); err != nil {
			fakeFatal(err)
		}
	}
	fmt.Fprintln(os.Stderr, "chatty: listening")
	ln, err := net.Listen("tcp", "127.0.0.1:"+args[0])
	if err != nil {
		fakeFatal(err)
	}
	for {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}
}

// TestSidecarLogTurns: a sidecar that writes two and a half times
// logCapBytes still starts (it never blocks on its log); its log turns at
// the cap, at a line's end, and what is kept, NAME.1 then NAME, is the
// latest lines, in order, each file within the cap.
func TestSidecarLogTurns(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ports, err := allocPorts(1)
	if err != nil {
		t.Fatal(err)
	}
	const written = logCapBytes * 5 / 2
	spec := sidecarSpec{Name: "chatty", Argv: []string{linkAs(t, dir, "chatty"), strconv.Itoa(ports[0]), strconv.Itoa(written)},
		Dir: dir, Env: []string{}, Port: ports[0], Health: healthTCP, LogDir: dir, OutLog: "chatty.out"}
	s, err := startSidecar(context.Background(), spec, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.stop(2 * time.Second); err != nil {
		t.Error(err)
	}
	var kept []byte
	for _, name := range []string{"chatty.out.1", "chatty.out"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > logCapBytes || len(b) == 0 || b[len(b)-1] != '\n' {
			t.Errorf("%s: %d bytes, want at most %d ending at a line's end", name, len(b), logCapBytes)
		}
		kept = append(kept, b...)
	}
	lines := strings.Split(strings.TrimSuffix(string(kept), "\n"), "\n")
	last := written/1024 - 1
	for i, l := range lines {
		if n, err := strconv.Atoi(strings.Fields(l)[0]); err != nil || n != last-len(lines)+1+i || len(l) != 1023 {
			t.Fatalf("kept line %d of %d is %.20q, want line %d: the latest lines, in order", i, len(lines), l, last-len(lines)+1+i)
		}
	}
	if len(kept) < logCapBytes {
		t.Errorf("kept %d bytes, want at least the cap, %d", len(kept), logCapBytes)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "chatty.log")); err != nil || string(b) != "chatty: listening\n" {
		t.Errorf("chatty.log = %q (%v), want the standard error line alone", b, err)
	}
}

// fakeSidecarParent starts the sidecar described by spec.json beside
// itself, writes its pid to child.pid and waits to be killed: it stands in
// for the supervisor in the Pdeathsig test.
func fakeSidecarParent(args []string) int {
	dir := filepath.Dir(os.Args[0])
	b, err := os.ReadFile(filepath.Join(dir, "spec.json"))
	if err != nil {
		fakeFatal(err)
	}
	var spec sidecarSpec
	if err := json.Unmarshal(b, &spec); err != nil {
		fakeFatal(err)
	}
	s, err := startSidecar(context.Background(), spec, 10*time.Second)
	if err != nil {
		fakeFatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "child.pid"), []byte(strconv.Itoa(s.cmd.Process.Pid)), 0o600); err != nil {
		fakeFatal(err)
	}
	select {}
}

func TestExpandTemplate(t *testing.T) {
	t.Parallel()
	vars := templateVars(4321, "/stage dir/x")
	for _, tc := range []struct {
		tmpl, want []string
	}{
		{[]string{"/bin/git-gate", "-listen", "127.0.0.1:{port}", "-repo", "{stage}/repo.git"},
			[]string{"/bin/git-gate", "-listen", "127.0.0.1:4321", "-repo", "/stage dir/x/repo.git"}},
		{[]string{"/bin/sv", "--port={port}", "{port}{port}", "a;b $(x) {", "{}", "{PORT}"},
			[]string{"/bin/sv", "--port=4321", "43214321", "a;b $(x) {", "{}", "{PORT}"}},
		{[]string{"/bin/sv", "{prot}"}, nil},
		{nil, nil},
	} {
		got, err := expandTemplate(tc.tmpl, vars)
		if tc.want == nil {
			if err == nil {
				t.Errorf("expandTemplate(%q) = %q, want an error", tc.tmpl, got)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("expandTemplate(%q) = %q, %v; want %q", tc.tmpl, got, err, tc.want)
		}
	}
}

func TestSidecarEnv(t *testing.T) {
	t.Parallel()
	got := sidecarEnv([]string{"PATH=/bin", "HOME=/h", "ANTHROPIC_API_KEY=sk", "CLAUDE_CODE_OAUTH_TOKEN=t",
		"HTTPS_PROXY=x", "all_proxy=y", "LC_ALL=C", "SMOLVM_DATA_DIR=/d", "TZ=UTC"})
	want := []string{"HOME=/h", "LC_ALL=C", "PATH=/bin", "TZ=UTC"}
	if !slices.Equal(got, want) {
		t.Errorf("sidecarEnv = %q, want %q", got, want)
	}
}

func TestSupervisorEnv(t *testing.T) {
	t.Parallel()
	got := supervisorEnv([]string{"PATH=/bin", "ANTHROPIC_API_KEY=sk", "HTTPS_PROXY=x",
		"SSL_CERT_FILE=/ca.pem", "SSL_CERT_DIR=/certs", "SSL_CERT_DIR=/certs2", "SSLKEYLOGFILE=/k", "TZ=UTC"})
	want := []string{"PATH=/bin", "TZ=UTC", "SSL_CERT_DIR=/certs2", "SSL_CERT_FILE=/ca.pem"}
	if !slices.Equal(got, want) {
		t.Errorf("supervisorEnv = %q, want %q", got, want)
	}
}

func TestFakeAllowed(t *testing.T) {
	t.Parallel()
	allow := []string{"*.anthropic.com", "example.org"}
	for host, want := range map[string]bool{
		"api.anthropic.com": true, "anthropic.com": true, "a.b.anthropic.com": true, "API.Anthropic.COM.": true,
		"notanthropic.com": false, "anthropic.com.evil": false, "example.org": true, "www.example.org": false,
	} {
		if got := fakeAllowed(allow, host); got != want {
			t.Errorf("fakeAllowed(%q) = %v, want %v", host, got, want)
		}
	}
}

// pipelockFixture is a pipelock sidecar with a rendered config and a
// stage: the real pipelock (bin/pipelock), or the fake where a test needs
// one that misbehaves on command.
type pipelockFixture struct {
	bin               string           // the pipelock the spec runs
	fake              *fakePipelockBin // nil: the real pipelock
	stage, cfg, logs  string
	port, metricsPort int
	env               []string
}

// newPipelockFixture runs the real pipelock.
func newPipelockFixture(t *testing.T) *pipelockFixture {
	t.Helper()
	return newPipelockFixtureWith(t, realTool(t, "pipelock"), nil)
}

// newFakePipelockFixture runs the fake, for the tests that make it
// misbehave; allowed names reach a loopback echo server (hosts.json).
func newFakePipelockFixture(t *testing.T) *pipelockFixture {
	t.Helper()
	// The echo server binds before the ports are allocated: bound after,
	// its ephemeral port could be one of them.
	echo := echoServer(t)
	fake := newFakePipelock(t)
	f := newPipelockFixtureWith(t, fake.path, fake)
	hosts, _ := json.Marshal(map[string]int{"api.anthropic.com": echo})
	if err := os.WriteFile(filepath.Join(f.stage, fakePipelockHosts), hosts, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func newPipelockFixtureWith(t *testing.T, bin string, fake *fakePipelockBin) *pipelockFixture {
	t.Helper()
	f := &pipelockFixture{bin: bin, fake: fake, stage: t.TempDir()}
	f.logs = filepath.Join(f.stage, "logs")
	ports, err := allocPorts(2)
	if err != nil {
		t.Fatal(err)
	}
	f.port, f.metricsPort = ports[0], ports[1]
	f.writeConfig(t, f.port)
	f.env = append(sidecarEnv([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + f.stage,
		"ANTHROPIC_API_KEY=" + testSecret, "HTTPS_PROXY=http://127.0.0.1:9"}), "GORACE=atexit_sleep_ms=0")
	return f
}

// writeConfig renders pipelock's config with its listener on port.
func (f *pipelockFixture) writeConfig(t *testing.T, port int) {
	t.Helper()
	cfg, err := renderPipelock(pipelockSpec{Port: port, MetricsPort: f.metricsPort,
		Allow: []string{"*.anthropic.com"}})
	if err != nil {
		t.Fatal(err)
	}
	f.cfg = filepath.Join(f.stage, "pipelock.yaml")
	if err := os.WriteFile(f.cfg, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
}

func (f *pipelockFixture) spec() sidecarSpec {
	return pipelockSidecar(f.bin, f.cfg, f.port, f.stage, f.logs, f.env)
}

// echoServer listens on a loopback port and echoes every connection.
func echoServer(t *testing.T) int { return portOf(loopbackTCP(t, echoConn)) }

// TestFakePipelockTunnels checks the fake's proxy against the rule the
// real one follows (TestRealPipelockThroughTestHost): the fake stays for
// the tests below that need a misbehaving pipelock, and it must still
// refuse what pipelock refuses.
func TestFakePipelockTunnels(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFakePipelockFixture(t)
	s, err := startSidecar(ctx, f.spec(), 10*time.Second)
	if err != nil {
		t.Fatalf("startSidecar: %v", err)
	}
	defer s.stop(time.Second)
	for target, want := range map[string]int{
		"api.anthropic.com:443": 200, "notanthropic.com:443": 403, "evil.example:443": 403, "127.0.0.1:22": 403,
	} {
		code, c, err := connectThrough(ctx, loopbackAddr(f.port), target)
		if err != nil || code != want {
			t.Errorf("CONNECT %s: %d, %v; want %d", target, code, err, want)
		}
		if c != nil {
			c.Close()
		}
	}
	recs := f.fake.records(t)
	if len(recs) != 1 || !slices.Equal(recs[0].Argv, []string{"run", "--config", f.cfg}) || recs[0].Dir != f.stage {
		t.Errorf("pipelock ran as %+v", recs)
	}
	for _, e := range recs[0].Env {
		k, _, _ := strings.Cut(e, "=")
		if strings.Contains(e, testSecret) || isProxyVar(k) {
			t.Errorf("pipelock environment has %q", e)
		}
	}
}

func TestSidecarMissing(t *testing.T) {
	t.Parallel()
	f := newPipelockFixture(t)
	spec := f.spec()
	spec.Argv[0] = filepath.Join(t.TempDir(), "pipelock")
	_, err := startSidecar(context.Background(), spec, time.Second)
	var h hinted
	if err == nil || !strings.Contains(err.Error(), "not found") || !errors.As(err, &h) {
		t.Errorf("start of a missing program = %v", err)
	}
	spec.Argv[0] = "pipelock"
	if _, err := startSidecar(context.Background(), spec, time.Second); err == nil {
		t.Error("start with a relative program path succeeded")
	}
}

func TestSidecarExitsEarly(t *testing.T) {
	t.Parallel()
	f := newFakePipelockFixture(t) // misbehaves on command: the real pipelock cannot
	// A line from an earlier run in the same log is not this start's.
	if err := os.MkdirAll(f.logs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.logs, "pipelock.log"), []byte("bind: address already in use\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f.fake.control(t, fakePipelockCtl{ExitEarly: "Error: loading config: strict mode needs api_allowlist"})
	start := time.Now()
	_, err := startSidecar(context.Background(), f.spec(), 10*time.Second)
	if err == nil || !strings.Contains(err.Error(), "exited during startup") ||
		!strings.Contains(err.Error(), "strict mode needs api_allowlist") {
		t.Errorf("start of a sidecar that exits = %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("early exit noticed after %v", d)
	}
	if errors.Is(err, errPortTaken) || strings.Contains(err.Error(), "already in use") {
		t.Errorf("an earlier run's log line was blamed: %v", err)
	}
}

func TestSidecarPortTaken(t *testing.T) {
	t.Parallel()
	f := newPipelockFixture(t)
	// Taken before the start: the health check must not ask the intruder.
	ln, err := net.Listen("tcp", loopbackAddr(f.port))
	if err != nil {
		t.Fatal(err)
	}
	_, err = startSidecar(context.Background(), f.spec(), 5*time.Second)
	if !errors.Is(err, errPortTaken) {
		t.Errorf("start on a taken port = %v", err)
	}
	ln.Close()

	// Taken after the check, before the sidecar binds: here the config
	// points at a port held elsewhere, so the sidecar's bind fails.
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	f.writeConfig(t, held.Addr().(*net.TCPAddr).Port)
	_, err = startSidecar(context.Background(), f.spec(), 5*time.Second)
	if !errors.Is(err, errPortTaken) || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("start when the bind fails = %v (%#v)", err, err)
	}
	var h hinted
	if !errors.As(err, &h) {
		t.Errorf("port-taken error %v has no hint", err)
	}
}

// TestSidecarPortIntruder has another program bind the sidecar's port
// after the start checked it was free, and answer the health check: the
// guest's traffic would reach it, so the start must fail.
func TestSidecarPortIntruder(t *testing.T) {
	t.Parallel()
	if runtime.GOOS != "linux" {
		t.Skip("ownership of a port is read from /proc")
	}
	f := newFakePipelockFixture(t) // misbehaves on command: the real pipelock cannot
	elsewhere, _ := allocPorts(1)
	f.writeConfig(t, elsewhere[0]) // the sidecar itself listens elsewhere
	f.fake.control(t, fakePipelockCtl{SlowStart: "1s"})
	bound := make(chan net.Listener, 1)
	go func() {
		// Once the fake has run, the free-port check is behind us and the
		// fake sleeps before it listens.
		for i := 0; i < 5000; i++ {
			if b, _ := os.ReadFile(filepath.Join(f.fake.dir, fakePipelockLog)); len(b) > 0 {
				break
			}
			time.Sleep(time.Millisecond)
		}
		ln, err := net.Listen("tcp", loopbackAddr(f.port))
		if err != nil {
			bound <- nil
			return
		}
		bound <- ln
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "ok")
		})}
		srv.Serve(ln)
	}()
	_, err := startSidecar(context.Background(), f.spec(), 10*time.Second)
	ln := <-bound
	if ln == nil {
		t.Skip("the intruder could not bind in time")
	}
	defer ln.Close()
	if !errors.Is(err, errPortTaken) || !strings.Contains(err.Error(), "another program answers there") {
		t.Errorf("start with an intruder on the port = %v", err)
	}
}

func TestPortOwnedByGroup(t *testing.T) {
	t.Parallel()
	if runtime.GOOS != "linux" {
		t.Skip("Linux only")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	if owned, known := portOwnedByGroup(syscall.Getpgrp(), port); !owned || !known {
		t.Errorf("own listener: owned=%v known=%v", owned, known)
	}
	if owned, known := portOwnedByGroup(1<<30, port); owned || !known {
		t.Errorf("listener of another group: owned=%v known=%v", owned, known)
	}
}

func TestSidecarUnhealthy(t *testing.T) {
	t.Parallel()
	f := newFakePipelockFixture(t) // misbehaves on command: the real pipelock cannot
	f.fake.control(t, fakePipelockCtl{Unhealthy: true})
	_, err := startSidecar(context.Background(), f.spec(), 2*time.Second)
	if err == nil || !strings.Contains(err.Error(), "did not become healthy") ||
		!strings.Contains(err.Error(), "listening on") {
		t.Errorf("start of an unhealthy sidecar = %v", err)
	}
	// Nothing left running: the port is free again.
	ln, err := net.Listen("tcp", loopbackAddr(f.port))
	if err != nil {
		t.Errorf("sidecar still holds its port: %v", err)
	} else {
		ln.Close()
	}

	f.fake.control(t, fakePipelockCtl{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := startSidecar(ctx, f.spec(), time.Second); !errors.Is(err, context.Canceled) {
		t.Errorf("start with a cancelled context = %v", err)
	}
}

func TestSidecarStopKills(t *testing.T) {
	t.Parallel()
	f := newFakePipelockFixture(t) // misbehaves on command: the real pipelock cannot
	f.fake.control(t, fakePipelockCtl{IgnoreTerm: true})
	s, err := startSidecar(context.Background(), f.spec(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.stop(200 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("stop of a sidecar ignoring SIGTERM = %v", err)
	}
	select {
	case <-s.done:
	default:
		t.Error("sidecar survived stop")
	}
}

func TestSidecarTemplate(t *testing.T) {
	t.Parallel()
	f := newPipelockFixture(t)
	argv, err := expandTemplate([]string{f.bin, "run", "--config", "{stage}/pipelock.yaml"},
		templateVars(f.port, f.stage))
	if err != nil {
		t.Fatal(err)
	}
	spec := sidecarSpec{Name: "git-gate", Argv: argv, Dir: f.stage, Env: f.env, Port: f.port,
		Health: healthTCP, LogDir: f.logs}
	s, err := startSidecar(context.Background(), spec, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.stop(2 * time.Second); err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(filepath.Join(f.logs, "git-gate.log")); err != nil {
		t.Error(err)
	}
	spec.Name = "../x"
	if _, err := startSidecar(context.Background(), spec, time.Second); err == nil {
		t.Error("sidecar name with a path was accepted")
	}
}

func TestProbeEgressProxy(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// A listener that closes without answering is not a proxy.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if err := probeEgressProxy(ctx, ln.Addr().(*net.TCPAddr).Port, time.Second); err == nil ||
		!strings.Contains(err.Error(), "does not answer as an HTTP proxy") {
		t.Errorf("probe of a silent listener = %v", err)
	}
	free, _ := allocPorts(1)
	if err := probeEgressProxy(ctx, free[0], time.Second); err == nil {
		t.Error("probe of a closed port succeeded")
	}
}

// TestSidecarDiesWithSupervisor kills the process that started a sidecar
// with SIGKILL and expects the kernel to take the sidecar with it.
func TestSidecarDiesWithSupervisor(t *testing.T) {
	t.Parallel()
	if runtime.GOOS != "linux" {
		t.Skip("Pdeathsig is Linux only")
	}
	f := newPipelockFixture(t)
	pdir := t.TempDir()
	parent := linkAs(t, pdir, "sidecar-parent")
	b, _ := json.Marshal(f.spec())
	if err := os.WriteFile(filepath.Join(pdir, "spec.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(parent)
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pid int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		b, _ := os.ReadFile(filepath.Join(pdir, "child.pid"))
		if pid, _ = strconv.Atoi(string(b)); pid > 0 {
			break
		}
	}
	if pid == 0 {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal("the stand-in supervisor never started its sidecar")
	}
	cmd.Process.Kill()
	cmd.Wait()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if !processAlive(pid) {
			return
		}
	}
	syscall.Kill(pid, syscall.SIGKILL)
	t.Errorf("sidecar %d outlived its supervisor", pid)
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return !strings.HasPrefix(rest, "Z")
}

// TestProcStat reads this process's group and start time the way the
// supervisor and the state file do.
func TestProcStat(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	if got, err := procStat(os.Getpid(), 5); err != nil || got != strconv.Itoa(syscall.Getpgrp()) {
		t.Errorf("process group = %q, %v; want %d", got, err, syscall.Getpgrp())
	}
	if start, err := procStart(os.Getpid()); err != nil || !(procIdent{os.Getpid(), start}).alive() {
		t.Errorf("procStart = %d, %v; want this process's, alive", start, err)
	}
	if _, err := procStat(os.Getpid(), 2); err == nil {
		t.Error("procStat of field 2 (the command name) succeeded")
	}
	if _, err := procStat(-1, 5); err == nil {
		t.Error("procStat of pid -1 succeeded")
	}
}

// TestSidecarTailAfterTurn: a log that turns while a sidecar starts (here
// one an earlier run left just under the cap) still yields this start's
// tail, so a port taken is still told apart from other exits.
func TestSidecarTailAfterTurn(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f, err := os.OpenFile(filepath.Join(dir, "taken.log"), os.O_CREATE|os.O_WRONLY, 0o600)
	if err == nil {
		err = f.Truncate(logCapBytes - 10)
		f.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	ports, err := allocPorts(1)
	if err != nil {
		t.Fatal(err)
	}
	spec := sidecarSpec{Name: "taken", Argv: []string{"/bin/sh", "-c", "echo 'listen tcp: bind: address already in use' >&2; exit 1"},
		Dir: dir, Env: []string{}, Port: ports[0], Health: healthTCP, LogDir: dir}
	if _, err := startSidecar(context.Background(), spec, 10*time.Second); !errors.Is(err, errPortTaken) {
		t.Errorf("startSidecar = %v, want the port-taken error", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "taken.log.1")); err != nil || fi.Size() != logCapBytes-10 {
		t.Errorf("taken.log.1: %v %v, want the earlier run's log", fi, err)
	}
}

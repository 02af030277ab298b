//go:build linux

package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The real pipelock (bin/pipelock, v2.3.0) against what smolbottle renders
// and starts. Missing, these tests skip locally and fail under CI.

// TestRealPipelockVersion: pipelock prints its version on stderr
// (internal/cli/version.go:21-24 @ v2.3.0, through cobra's cmd.Printf), and
// preflight reads it from there.
func TestRealPipelockVersion(t *testing.T) {
	t.Parallel()
	p := realTool(t, "pipelock")
	var stdout, stderr strings.Builder
	cmd := exec.Command(p, "version")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if stdout.Len() != 0 || !strings.HasPrefix(stderr.String(), "pipelock version 2.3.0\n") {
		t.Errorf("pipelock version: stdout %q, stderr %q; want the version on stderr only", stdout.String(), stderr.String())
	}
	dir := t.TempDir()
	os.Symlink(p, filepath.Join(dir, "pipelock"))
	c := checkPipelock(context.Background(), preflightEnv{Path: dir})
	if !c.OK || c.Version != "2.3.0" || c.Path == "" {
		t.Errorf("checkPipelock on the real pipelock = %+v", c)
	}
	// The fake answers on the same stream.
	fake := newFakePipelock(t)
	var fout, ferr strings.Builder
	cmd = exec.Command(fake.path, "version")
	cmd.Stdout, cmd.Stderr = &fout, &ferr
	if err := cmd.Run(); err != nil || fout.Len() != 0 || !strings.HasPrefix(ferr.String(), "pipelock version 2.3.0\n") {
		t.Errorf("fake pipelock version: %v, stdout %q, stderr %q; want it as the real one", err, fout.String(), ferr.String())
	}
}

// pipelockCheck runs `pipelock check --config file` (internal/cli/diag/
// check.go:33-43 @ v2.3.0: config.Load, the loader `run` uses,
// internal/cli/runtime/server.go:328).
func pipelockCheck(t *testing.T, bin, file string) error {
	t.Helper()
	out, err := exec.Command(bin, "check", "--config", file).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	if !strings.Contains(string(out), "Config validation: OK") {
		return fmt.Errorf("no OK: %s", out)
	}
	return nil
}

// TestRealPipelockLoadsRenderedConfigs: every pipelock config smolbottle
// can render loads in the real pipelock: the goldens, the stage's, the
// emitted hostile ones, and allow-lists built from every hostile string
// checkAllowList lets through, at the size limits.
func TestRealPipelockLoadsRenderedConfigs(t *testing.T) {
	t.Parallel()
	bin := realTool(t, "pipelock")
	files, _ := filepath.Glob("testdata/golden/pipelock-*.yaml")
	emitted, _ := filepath.Glob("testdata/emit/pipelock-*.yaml")
	files = append(append(files, emitted...), "testdata/stage/pipelock.yaml")
	if len(files) < 5 {
		t.Fatalf("only %d config files found: %q", len(files), files)
	}
	dir := t.TempDir()
	var lists [][]string
	var ok []string
	for _, h := range hostile {
		for _, c := range []string{h, h + ".example", "*." + h + ".example", strings.ToUpper(h) + ".Example"} {
			if l, err := checkAllowList([]string{c}); err == nil {
				ok = append(ok, l...)
			}
		}
	}
	long := strings.Repeat(strings.Repeat("k", 63)+".", 3) + strings.Repeat("k", 61) // 253 characters
	ok = append(ok, long, "*."+long[4:], "xn--bcher-kva.example", "a-b.c-d", "1a.example", "*.a.b.c.d.e.f")
	for len(ok) > 0 {
		n := min(len(ok), maxAllow)
		lists = append(lists, ok[:n])
		ok = ok[n:]
	}
	var max []string
	for i := range maxAllow {
		max = append(max, fmt.Sprintf("*.h%d.example", i))
	}
	lists = append(lists, max)
	for i, l := range lists {
		checked, err := checkAllowList(l)
		if err != nil { // only what checkAllowList accepts can be rendered
			t.Fatalf("allow-list %d: %v", i, err)
		}
		cfg, err := renderPipelock(pipelockSpec{Port: 40000 + i, MetricsPort: 41000 + i, Allow: checked})
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(dir, fmt.Sprintf("list%d.yaml", i))
		if err := os.WriteFile(f, cfg, 0o600); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	for _, f := range files {
		if err := pipelockCheck(t, bin, f); err != nil {
			t.Errorf("real pipelock refuses %s: %v", f, err)
		}
	}
	// The check can fail: what pipelock refuses (and the fake must too).
	good, _ := renderPipelock(pipelockSpec{Port: 1, MetricsPort: 2, Allow: []string{"a.example"}})
	for name, bad := range map[string]string{
		"empty-allow": strings.Replace(string(good), "  - \"a.example\"\n", "", 1),
		"nested-key":  strings.Replace(string(good), "\"sni_verification\"", "\"sni_verify\"", 1),
		"bad-mode":    strings.Replace(string(good), "\"strict\"", "\"strikt\"", 1),
	} {
		if bad == string(good) {
			t.Fatalf("%s: the edit did not apply", name)
		}
		f := filepath.Join(dir, name+".yaml")
		os.WriteFile(f, []byte(bad), 0o600)
		if err := pipelockCheck(t, bin, f); err == nil {
			t.Errorf("real pipelock accepts %s", name)
		}
		if _, err := parseFakePipelockConfig(bad); err == nil {
			t.Errorf("fake pipelock accepts %s, which the real one refuses", name)
		}
	}
	// A negative limit passes: normalize makes it 60 (internal/config/
	// normalize.go:143-144) before validate.go:369 could refuse it.
	for _, cfg := range []string{string(good), strings.Replace(string(good), "6000", "-1", 1)} {
		f := filepath.Join(dir, "good.yaml")
		os.WriteFile(f, []byte(cfg), 0o600)
		if err := pipelockCheck(t, bin, f); err != nil {
			t.Errorf("real pipelock refuses %s: %v", cfg, err)
		}
		if _, err := parseFakePipelockConfig(cfg); err != nil {
			t.Errorf("fake pipelock refuses a config the real one loads: %v", err)
		}
	}
}

// TestRealPipelockThroughTestHost starts the real pipelock as up does, with
// the config plan renders, and goes through it to a TLS test host by name:
// allowed names tunnel, others get pipelock's 403, and 100 CONNECTs within
// a minute to one allowed domain all pass (pipelock's default would refuse
// after 60: internal/config/normalize.go:143-144 @ v2.3.0).
func TestRealPipelockThroughTestHost(t *testing.T) {
	t.Parallel()
	host := newTestHost(t, "api.anthropic.com", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s\n", r.Host)
	}))
	f := newPipelockFixture(t)
	f.bin = pipelockResolving(t, t.TempDir(), host)
	ctx := context.Background()
	s, err := startSidecar(ctx, f.spec(), 20*time.Second)
	if err != nil {
		t.Fatalf("startSidecar: %v", err)
	}
	defer s.stop(time.Second)
	addr := loopbackAddr(f.port)

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(host.CAPEM)
	get := func() error {
		code, c, err := connectThrough(ctx, addr, host.Target())
		if err != nil || code != 200 {
			return fmt.Errorf("CONNECT %s: %d, %v", host.Target(), code, err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		tc := tls.Client(c, &tls.Config{ServerName: host.Name, RootCAs: pool})
		fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host.Name)
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(body), "hello from api.anthropic.com") {
			return fmt.Errorf("answer %q", body)
		}
		return nil
	}
	if err := get(); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"notanthropic.com:443", "evil.example:443", "127.0.0.1:22", host.Addr.String() + ":443"} {
		if code, c, err := connectThrough(ctx, addr, target); err != nil || code != 403 {
			t.Errorf("CONNECT %s: %d, %v; want pipelock's 403", target, code, err)
			if c != nil {
				c.Close()
			}
		}
	}
	start := time.Now()
	for i := range 100 {
		if err := get(); err != nil {
			t.Fatalf("request %d of the 100 (CONNECT %d to the domain, after %v): %v", i+1, i+2, time.Since(start), err)
		}
	}
	if d := time.Since(start); d > time.Minute {
		t.Fatalf("100 CONNECTs took %v, not within a minute: the limit was not exercised", d)
	}

	if err := s.stop(5 * time.Second); err != nil {
		t.Errorf("stop: %v", err)
	}
	events, _ := os.ReadFile(filepath.Join(f.logs, pipelockLogFile))
	if !strings.Contains(string(events), "evil.example") {
		t.Errorf("pipelock's event log does not name the refused host:\n%.2000s", events)
	}
	logs, _ := os.ReadFile(filepath.Join(f.logs, "pipelock.log"))
	for _, b := range [][]byte{logs, events} {
		if strings.Contains(string(b), testSecret) {
			t.Error("a pipelock log holds the secret value")
		}
	}
	if !slices.Contains(f.env, "HOME="+f.stage) {
		t.Errorf("fixture env %q", f.env)
	}
}

// TestRenderPipelockRefusesEmptyAllow: no caller can render the config
// pipelock would refuse at start.
func TestRenderPipelockRefusesEmptyAllow(t *testing.T) {
	t.Parallel()
	if out, err := renderPipelock(pipelockSpec{Port: 1, MetricsPort: 2}); err == nil {
		t.Errorf("renderPipelock with no allow-list = %q, want an error", out)
	}
}

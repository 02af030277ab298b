//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestUpClaudeInGuest runs the real Claude Code inside a bottle (fake VM,
// real confined gvproxy and gvforwarder, the real pipelock) against a TLS
// stand-in for the Messages API: the test host api.anthropic.com, which
// pipelock resolves through its private /etc/hosts (testhost_test.go) and
// the supervisor trusts through SSL_CERT_FILE. The credential sidecar
// dials credUpstream:443 through pipelock as it does in production. The
// guest holds only the placeholder; the stand-in must see the real key;
// the key must be nowhere in the guest, the stage or any process's argv
// or environment.
func TestUpClaudeInGuest(t *testing.T) {
	needFakeVM(t)
	claude := realTool(t, "claude")
	si := &messagesStandIn{}
	api := newTestHost(t, credUpstream, si)
	b := newTestBottle(t, "")
	os.Remove(filepath.Join(b.path, "pipelock"))
	pipelockResolving(t, b.path, api)
	staticSmolbottle(t)
	f := useBottle(t, b)
	// A key of this run alone: other tests on the machine use testSecret.
	r := make([]byte, 16)
	rand.Read(r)
	key := "sk-ant-e2e-" + hex.EncodeToString(r)
	t.Setenv("ANTHROPIC_API_KEY", key)
	t.Setenv("SSL_CERT_FILE", api.CAFile)
	// The guest runs claude from the workspace: its /tmp is noexec and the
	// host's /tmp is not in it.
	if err := copyFile(claude, filepath.Join(b.workspace, "claude"), 0o755); err != nil {
		t.Fatal(err)
	}

	ctx := context.Background()
	var out, errb bytes.Buffer
	stage := filepath.Join(b.state, "cc")
	if err := runCLI(ctx, []string{"plan", "-image", b.image, "-workspace", b.workspace, "cc"}, &out, &errb); err != nil {
		t.Fatalf("plan: %v %s", err, errb.String())
	}
	if err := runCLI(ctx, b.upArgs("cc"), &out, &errb); err != nil {
		t.Fatalf("up: %v\n%s", err, errb.String())
	}
	t.Cleanup(func() { runCLI(context.Background(), []string{"down", "cc"}, io.Discard, io.Discard) })
	guestCtx := func(ctx context.Context, args ...string) string {
		var o, e bytes.Buffer
		err := runCLI(ctx, append([]string{"exec", "cc", "--"}, args...), &o, &e)
		if err != nil {
			// The sidecar logs each forwarded or failed request, without
			// values.
			sup, _ := os.ReadFile(filepath.Join(stage, logsDir, supervisorLog))
			t.Fatalf("exec %q: %v\n%s%s\n%s:\n%s", args, err, o.String(), e.String(), supervisorLog, sup)
		}
		return o.String()
	}
	guest := func(args ...string) string { return guestCtx(ctx, args...) }

	// Claude Code retries a failed request 10 times by default, backing
	// off to about 30 s (a broken path took 181 s to fail, measured);
	// CLAUDE_CODE_MAX_RETRIES=0 makes it fail at the first error. The
	// timeout bounds a stand-in that never answers.
	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if got := guestCtx(cctx, "env", "CLAUDE_CODE_MAX_RETRIES=0", "/workspace/claude", "-p", "say pong"); strings.TrimSpace(got) != "pong" {
		t.Errorf("claude -p in the guest printed %q, want pong", got)
	}
	// Only pipelock's /etc/hosts names the test host: a request that
	// reached it went through the egress proxy.
	seen := si.requests()
	if len(seen) == 0 || seen[0].Get("X-Api-Key") != key {
		t.Errorf("the stand-in saw %d requests, x-api-key %q; want the real key", len(seen), headerOf(seen, "X-Api-Key"))
	}
	si.mu.Lock()
	hosts := slices.Clone(si.host)
	si.mu.Unlock()
	// The sidecar names the upstream without :443, as Claude Code does.
	if want := credUpstream; len(hosts) == 0 || hosts[0] != want {
		t.Errorf("the stand-in saw Host %q, want %q", hosts, want)
	}
	p, err := readPlan(stage)
	if err != nil {
		t.Fatal(err)
	}
	env := guest("env")
	if strings.Contains(env, key) || !strings.Contains(env, "ANTHROPIC_API_KEY="+p.Credentials[0].Placeholder+"\n") {
		t.Errorf("exec env: want the placeholder and not the key:\n%s", env)
	}

	// Every process on the machine: the guest's (the fake VM shares the
	// host's pid namespace), the supervisor, gvproxy, the relays, smolvm.
	self := strconv.Itoa(os.Getpid())
	procs, _ := os.ReadDir("/proc")
	for _, d := range procs {
		if _, err := strconv.Atoi(d.Name()); err != nil || d.Name() == self {
			continue
		}
		for _, f := range []string{"cmdline", "environ"} {
			if data, _ := os.ReadFile(filepath.Join("/proc", d.Name(), f)); bytes.Contains(data, []byte(key)) {
				t.Errorf("process %s holds the key in its %s: %q", d.Name(), f, bytes.ReplaceAll(data, []byte{0}, []byte{' '}))
			}
		}
	}
	// Every file under the guest's root, seen through the VM's own mount
	// namespace; the host's read-only /usr and /lib and the device and
	// kernel trees are not the guest's.
	var vmPID int
	for _, m := range f.state(t).Machines {
		vmPID = m.PID
	}
	if vmPID == 0 {
		t.Fatal("no running fake VM")
	}
	root := filepath.Join("/proc", strconv.Itoa(vmPID), "root") + "/" // a magic link: walk what it points at
	skip := map[string]bool{"/usr": true, "/bin": true, "/sbin": true, "/lib": true, "/lib32": true, "/lib64": true,
		"/libx32": true, "/proc": true, "/sys": true, "/dev": true, "/workspace/claude": true}
	files := scanForSecret(t, root, skip, key)
	if files < 5 {
		t.Errorf("only %d files under the guest's root: the scan did not see the guest", files)
	}
	scanForSecret(t, stage, nil, key)
	if err := runCLI(ctx, []string{"down", "cc"}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	scanForSecret(t, stage, nil, key)
}

// scanForSecret reports every regular file under root that holds secret,
// skipping the subtrees in skip (paths relative to root, with a leading
// slash), and returns how many files it read.
func scanForSecret(t *testing.T, root string, skip map[string]bool, secret string) int {
	t.Helper()
	n := 0
	root = strings.TrimSuffix(root, "/") + "/"
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		rel := "/" + strings.TrimPrefix(p, root)
		if skip[rel] {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		n++
		if data, _ := os.ReadFile(p); bytes.Contains(data, []byte(secret)) {
			t.Errorf("%s holds the key", rel)
		}
		return nil
	})
	return n
}

func headerOf(hs []http.Header, k string) string {
	if len(hs) == 0 {
		return ""
	}
	return hs[0].Get(k)
}

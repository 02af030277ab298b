//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func init() { fakes["http-sidecar"] = httpSidecar }

// httpSidecar stands in for a git-gate or supervise sidecar: an HTTP server
// on 127.0.0.1:PORT (its only argument) that names itself, and appends the
// request line of each request it serves to requests.log beside itself.
func httpSidecar(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: http-sidecar PORT")
		return 2
	}
	ln, err := net.Listen("tcp", "127.0.0.1:"+args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	logPath := filepath.Join(filepath.Dir(os.Args[0]), "requests.log")
	http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err == nil {
			fmt.Fprintf(f, "%s %s %s\n", r.Method, r.RequestURI, r.Host)
			f.Close()
		}
		io.WriteString(w, "sidecar here\n")
	}))
	return 1
}

// TestGuestEgressThroughRealPipelock: from inside the guest (fake VM, real
// gvproxy and gvforwarder), with the real pipelock running the config plan
// rendered, unchanged:
//   - the allowed host, a TLS test host reached by name, answers through
//     CONNECT, using the guest's own HTTPS_PROXY;
//   - a host off the list gets pipelock's refusal (403);
//   - http://proxy.internal:P sidecar URLs are reached directly (NO_PROXY),
//     not through pipelock, which would refuse them;
//   - 100 CONNECTs within a minute to the allowed host all pass.
func TestGuestEgressThroughRealPipelock(t *testing.T) {
	needFakeVM(t)
	host := newTestHost(t, "api.anthropic.com", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s\n", r.Host)
	}))
	b := newTestBottle(t, "")
	os.Remove(filepath.Join(b.path, "pipelock"))
	pipelockResolving(t, b.path, host)
	sidecar := linkAs(t, b.path, "http-sidecar")
	staticSmolbottle(t)
	f := useBottle(t, b)
	if err := os.WriteFile(filepath.Join(b.workspace, "ca.pem"), host.CAPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var out, errb bytes.Buffer
	if err := runCLI(ctx, b.upArgs("egress", "-git-gate", "-git-gate-cmd", sidecar+" {port}"), &out, &errb); err != nil {
		t.Fatalf("up: %v\n%s", err, errb.String())
	}
	t.Cleanup(func() { runCLI(context.Background(), []string{"down", "egress"}, io.Discard, io.Discard) })
	sh := func(script string) (string, string, int) {
		var o, e bytes.Buffer
		err := runCLI(ctx, []string{"exec", "egress", "--", "sh", "-c", script}, &o, &e)
		return o.String(), e.String(), exitCode(&e, err)
	}
	ca := guestWorkspace + "/ca.pem"

	got, stderr, code := sh("curl -sS --max-time 10 --cacert " + ca + " " + host.URL())
	if code != 0 || got != "hello from api.anthropic.com\n" {
		t.Errorf("allowed host through pipelock: %q %q (exit %d)", got, stderr, code)
	}
	got, stderr, code = sh("curl -sS --max-time 10 https://evil.example/")
	if code == 0 || !strings.Contains(stderr, "403") {
		t.Errorf("host off the list: %q %q (exit %d), want pipelock's 403", got, stderr, code)
	}
	got, stderr, code = sh(`curl -sS --max-time 10 "$SMOLBOTTLE_GIT_GATE_URL/info/refs"`)
	if code != 0 || got != "sidecar here\n" {
		t.Errorf("sidecar URL from the guest: %q %q (exit %d)", got, stderr, code)
	}
	reqs, _ := os.ReadFile(filepath.Join(b.path, "requests.log"))
	if !strings.Contains(string(reqs), "GET /info/refs proxy.internal:") {
		// Through a proxy the request line would carry an absolute URI.
		t.Errorf("the sidecar saw %q, want an origin-form request sent directly", reqs)
	}

	start := time.Now()
	got, stderr, code = sh(`n=0; for i in $(seq 100); do c=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 --cacert ` +
		ca + ` ` + host.URL() + `); [ "$c" = 200 ] && n=$((n+1)); done; echo $n`)
	if n, _ := strconv.Atoi(strings.TrimSpace(got)); code != 0 || n != 100 {
		t.Errorf("%s of 100 CONNECTs passed (exit %d) %s", strings.TrimSpace(got), code, stderr)
	}
	if d := time.Since(start); d > time.Minute {
		// Not a failure: on a slow machine the minute pipelock counts in
		// was never full, so the rate limit was not exercised either way.
		t.Logf("100 requests took %v, over a minute: the per-minute limit was not exercised", d)
	}

	stage := filepath.Join(b.state, "egress")
	events, _ := os.ReadFile(filepath.Join(stage, logsDir, "pipelock.jsonl"))
	if !strings.Contains(string(events), "evil.example") {
		t.Errorf("pipelock's log does not record the refusal:\n%.2000s", events)
	}
	if strings.Contains(string(events), "proxy.internal") {
		t.Errorf("a sidecar request went through pipelock:\n%.2000s", events)
	}
	// pipelock's standard output is its request log and nothing else.
	for _, l := range strings.Split(strings.TrimSpace(string(events)), "\n") {
		if !json.Valid([]byte(l)) {
			t.Errorf("pipelock's request log holds a line that is not JSON: %q", l)
		}
	}
	if err := runCLI(ctx, []string{"down", "egress"}, &out, &errb); err != nil {
		t.Fatalf("down: %v", err)
	}
	assertTornDown(t, b, f, "egress")
}

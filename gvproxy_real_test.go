package main

// TestRealGvproxy starts the real gvproxy v0.8.9 (bin/gvproxy, from make
// tools) with each rendered config. gvproxy exits 0 whatever happens (a
// deferred os.Exit in its main), so it is judged by what it does: its API
// socket accepts a connection and answers, and its stderr has no warning or
// error while it runs.

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	gvproxyStartTimeout = 10 * time.Second
	gvproxyStopTimeout  = 5 * time.Second
	maxSunPath          = 104 // macOS sun_path; Linux allows 108
)

// syncBuffer collects a child's stderr while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// badLogLines returns gvproxy's (logrus) lines at warning level or worse,
// and Go panics, except the one error gvproxy always logs when stopped.
func badLogLines(stderr string, stopped bool) []string {
	var bad []string
	sc := bufio.NewScanner(strings.NewReader(stderr))
	for sc.Scan() {
		l := sc.Text()
		if stopped && strings.Contains(l, `level=error msg="gvproxy exiting: signal caught"`) {
			continue
		}
		for _, m := range []string{"level=warning", "level=error", "level=fatal", "level=panic", "panic:"} {
			if strings.Contains(l, m) {
				bad = append(bad, l)
				break
			}
		}
	}
	return bad
}

func TestRealGvproxy(t *testing.T) {
	bin := realTool(t, "gvproxy")
	for _, c := range realisticCases() {
		if !strings.HasPrefix(c.name, "gvproxy-") {
			continue
		}
		for _, sockName := range []string{"gvproxy.sock", `a b:c"'\é [x]`} {
			t.Run(c.name+"/"+sockName, func(t *testing.T) {
				spec := c.intent.(gvproxyDoc)
				runGvproxy(t, bin, spec, sockName)
			})
		}
	}
}

func runGvproxy(t *testing.T, bin string, intent gvproxyDoc, sockName string) {
	// t.TempDir paths are long; the socket must fit in sun_path.
	dir, err := os.MkdirTemp("", "gv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, sockName)
	if len(sock) > maxSunPath {
		t.Fatalf("socket path %q is %d bytes, over %d", sock, len(sock), maxSunPath)
	}
	n := int(net.ParseIP(intent.Stack.GatewayIP).To4()[2])
	out, err := renderGvproxy(gvproxySpec{Net: netFor(n), SocketPath: sock})
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "gvproxy.yaml")
	if err := os.WriteFile(cfg, out, 0o600); err != nil {
		t.Fatal(err)
	}

	var stderr syncBuffer
	cmd := exec.Command(bin, "-config", cfg)
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	stopped := false
	defer func() {
		if !stopped {
			cmd.Process.Kill()
			<-done
		}
	}()

	client := unixHTTPClient(sock)
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(gvproxyStartTimeout)
	var lastErr error
	for {
		select {
		case <-done:
			t.Fatalf("gvproxy exited before answering on %s; stderr:\n%s", sock, stderr.String())
		default:
		}
		resp, err := client.Get("http://gvproxy/services/forwarder/all")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET /services/forwarder/all: got %s %q, want 200", resp.Status, body)
			}
			// No forwards are configured, so none may be listed.
			if got := strings.TrimSpace(string(body)); got != "[]" {
				t.Errorf("forwarders: got %s, want []", got)
			}
			break
		}
		lastErr = err
		if time.Now().After(deadline) {
			t.Fatalf("gvproxy did not answer on %s within %v: %v; stderr:\n%s", sock, gvproxyStartTimeout, lastErr, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if bad := badLogLines(stderr.String(), false); len(bad) > 0 {
		t.Errorf("gvproxy logged while running:\n%s", strings.Join(bad, "\n"))
	}
	// gvproxy binds the listen URL's Path, which must be exactly the path
	// we rendered (see checkListenPath).
	if fi, err := os.Lstat(sock); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("%s: got %v (%v), want a unix socket", sock, fi, err)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		stopped = true
	case <-time.After(gvproxyStopTimeout):
		t.Errorf("gvproxy still running %v after SIGTERM", gvproxyStopTimeout)
		return
	}
	if bad := badLogLines(stderr.String(), true); len(bad) > 0 {
		t.Errorf("gvproxy logged:\n%s", strings.Join(bad, "\n"))
	}
}

func TestBadLogLines(t *testing.T) {
	for _, tc := range []struct {
		in      string
		stopped bool
		want    int
	}{
		{`level=info msg="listening"`, false, 0},
		{`level=warning msg="invalid log level"`, false, 1},
		{`level=error msg="gvproxy exiting: signal caught"`, false, 1},
		{`level=error msg="gvproxy exiting: signal caught"`, true, 0},
		{"panic: bad address length\n\ngoroutine 1", true, 1},
	} {
		if got := len(badLogLines(tc.in, tc.stopped)); got != tc.want {
			t.Errorf("badLogLines(%q, %v): got %d lines, want %d", tc.in, tc.stopped, got, tc.want)
		}
	}
}

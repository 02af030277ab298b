package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The fake pipelock is the test binary run under the name "pipelock". It
// reads the config smolbottle rendered (only the keys it needs, but it
// refuses unknown top-level keys as pipelock does) and is a real HTTP
// CONNECT forward proxy on fetch_proxy.listen: it answers GET /health,
// refuses hosts outside api_allowlist with 403 (in mode strict, the only
// mode that enforces it) and tunnels the rest. It never resolves a name
// and never dials anything but 127.0.0.1: allowed names are mapped to
// local ports by hosts.json beside the config. Beside its own executable
// it logs argv and environment, and reads a control file.

func init() { fakes["pipelock"] = fakePipelock }

const (
	fakePipelockLog     = "pipelock.log"
	fakePipelockControl = "pipelock.control.json"
	fakePipelockHosts   = "hosts.json" // beside the config: name -> 127.0.0.1 port
)

type fakePipelockCtl struct {
	ExitEarly  string `json:"exit_early"`  // print this and exit 1 before listening
	Unhealthy  bool   `json:"unhealthy"`   // /health answers 503
	IgnoreTerm bool   `json:"ignore_term"` // SIGTERM does nothing
	SlowStart  string `json:"slow_start"`  // sleep this long before listening
}

// fakePipelockConfig is what the fake reads from the config.
type fakePipelockConfig struct {
	Mode          string
	Allow         []string
	Listen        string
	Forward       bool
	LogFile       string
	MetricsListen string
}

var fakePipelockTopKeys = map[string]bool{
	"version": true, "mode": true, "enforce": true, "api_allowlist": true, "fetch_proxy": true,
	"forward_proxy": true, "request_body_scanning": true, "tls_interception": true, "dlp": true,
	"logging": true, "metrics_listen": true, "kill_switch": true, "sentry": true, "internal": true,
	"trusted_domains": true, "ssrf": true, "flight_recorder": true, "mediation_envelope": true,
	"agents": true,
}

func fakePipelock(args []string) int {
	dir := filepath.Dir(os.Args[0])
	cwd, _ := os.Getwd()
	line, _ := json.Marshal(fakeRecord{Argv: args, Env: os.Environ(), Dir: cwd})
	if f, err := os.OpenFile(filepath.Join(dir, fakePipelockLog), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err == nil {
		f.Write(append(line, '\n'))
		f.Close()
	} else {
		fakeFatal(err)
	}
	var ctl fakePipelockCtl
	if b, err := os.ReadFile(filepath.Join(dir, fakePipelockControl)); err == nil {
		if err := json.Unmarshal(b, &ctl); err != nil {
			fakeFatal(err)
		}
	}
	if len(args) == 1 && args[0] == "version" {
		fmt.Print("pipelock version 2.3.0\n  build date: unknown\n")
		return 0
	}
	if len(args) == 0 || args[0] != "run" {
		fmt.Fprintln(os.Stderr, "Error: unknown command")
		return 1
	}
	var cfgPath string
	for i := 1; i < len(args); i++ {
		switch a := args[i]; {
		case (a == "--config" || a == "-c") && i+1 < len(args):
			i++
			cfgPath = args[i]
		case strings.HasPrefix(a, "--config="):
			cfgPath = strings.TrimPrefix(a, "--config=")
		default:
			fmt.Fprintf(os.Stderr, "Error: unknown flag: %s\n", a)
			return 1
		}
	}
	if ctl.ExitEarly != "" {
		fmt.Fprintln(os.Stderr, ctl.ExitEarly)
		return 1
	}
	src, err := os.ReadFile(cfgPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "Error: loading config: %v\n", err)
		return 1
	}
	cfg, err := parseFakePipelockConfig(string(src))
	if err != nil {
		fmt.Fprintf(os.Stderr, "Error: loading config: %v\n", err)
		return 1
	}
	hosts := map[string]int{}
	if b, err := os.ReadFile(filepath.Join(filepath.Dir(cfgPath), fakePipelockHosts)); err == nil {
		if err := json.Unmarshal(b, &hosts); err != nil {
			fakeFatal(err)
		}
	}
	if d, err := time.ParseDuration(ctl.SlowStart); err == nil {
		time.Sleep(d)
	}
	ap, err := netip.ParseAddrPort(cfg.Listen)
	if err != nil || !ap.Addr().IsLoopback() {
		fmt.Fprintf(os.Stderr, "fake: refusing to listen on %q: loopback only\n", cfg.Listen)
		return 1
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "Error: starting proxy: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "pipelock: listening on %s (mode %s)\n", cfg.Listen, cfg.Mode)
	p := &fakeProxy{cfg: cfg, hosts: hosts, unhealthy: ctl.Unhealthy}
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 5 * time.Second}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		for range sig {
			if !ctl.IgnoreTerm {
				srv.Close()
			}
		}
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintf(os.Stderr, "Error: %v\n", err)
		return 1
	}
	fmt.Fprintln(os.Stderr, "pipelock: stopped")
	return 0
}

// parseFakePipelockConfig reads the block YAML renderPipelock writes:
// every key and string double-quoted, two-space indents, "- " items.
func parseFakePipelockConfig(src string) (fakePipelockConfig, error) {
	var cfg fakePipelockConfig
	var parent string // the top-level key the indented lines belong to
	for n, line := range strings.Split(src, "\n") {
		t := strings.TrimSpace(line)
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		indent := len(line) - len(strings.TrimLeft(line, " "))
		if strings.HasPrefix(t, "- ") {
			v, err := strconv.Unquote(strings.TrimPrefix(t, "- "))
			if err != nil {
				return cfg, fmt.Errorf("line %d: %v", n+1, err)
			}
			if parent == "api_allowlist" {
				cfg.Allow = append(cfg.Allow, v)
			}
			continue
		}
		k, v, ok := strings.Cut(t, ":")
		if !ok {
			return cfg, fmt.Errorf("line %d: no key", n+1)
		}
		key, err := strconv.Unquote(k)
		if err != nil {
			return cfg, fmt.Errorf("line %d: key %s: %v", n+1, k, err)
		}
		v = strings.TrimSpace(v)
		if s, err := strconv.Unquote(v); err == nil {
			v = s
		}
		if indent == 0 {
			if !fakePipelockTopKeys[key] {
				return cfg, fmt.Errorf("line %d: unknown field %q", n+1, key)
			}
			parent = key
		}
		switch path := parent + "." + key; {
		case indent == 0 && key == "mode":
			cfg.Mode = v
		case indent == 0 && key == "metrics_listen":
			cfg.MetricsListen = v
		case path == "fetch_proxy.listen":
			cfg.Listen = v
		case path == "forward_proxy.enabled":
			cfg.Forward = v == "true"
		case path == "logging.file":
			cfg.LogFile = v
		}
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:8888"
	}
	if cfg.Mode == "" {
		cfg.Mode = "balanced"
	}
	return cfg, nil
}

// fakeAllowed applies pipelock's allow-list rule: "*.d" matches d's
// subdomains and d itself; other entries match exactly.
func fakeAllowed(allow []string, host string) bool {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	for _, a := range allow {
		a = strings.ToLower(a)
		if d, ok := strings.CutPrefix(a, "*."); ok {
			if host == d || strings.HasSuffix(host, "."+d) {
				return true
			}
		} else if host == a {
			return true
		}
	}
	return false
}

type fakeProxy struct {
	cfg       fakePipelockConfig
	hosts     map[string]int
	unhealthy bool
	mu        sync.Mutex
}

// event appends one JSON line to logging.file, as pipelock logs requests.
func (p *fakeProxy) event(host, action string) {
	if p.cfg.LogFile == "" {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	b, _ := json.Marshal(map[string]string{"host": host, "action": action})
	if f, err := os.OpenFile(p.cfg.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err == nil {
		f.Write(append(b, '\n'))
		f.Close()
	}
}

func (p *fakeProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && r.URL.Path == "/health" && r.URL.Host == "" {
		if p.unhealthy {
			http.Error(w, `{"status":"starting"}`, http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, `{"status":"healthy"}`)
		return
	}
	if r.Method != http.MethodConnect {
		p.event(r.Host, "blocked")
		http.Error(w, "fake: only CONNECT and /health", http.StatusForbidden)
		return
	}
	if !p.cfg.Forward {
		http.Error(w, "forward proxy disabled", http.StatusMethodNotAllowed)
		return
	}
	host, _, err := net.SplitHostPort(r.Host)
	if err != nil {
		http.Error(w, "bad CONNECT target", http.StatusBadRequest)
		return
	}
	if p.cfg.Mode == "strict" && !fakeAllowed(p.cfg.Allow, host) {
		p.event(host, "blocked")
		http.Error(w, "blocked by pipelock: domain not in api_allowlist", http.StatusForbidden)
		return
	}
	port, ok := p.hosts[strings.ToLower(host)]
	if !ok {
		p.event(host, "unreachable")
		http.Error(w, "fake: no local stand-in for "+host, http.StatusBadGateway)
		return
	}
	up, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 5*time.Second)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	p.event(host, "allowed")
	hj, ok := w.(http.Hijacker)
	if !ok {
		up.Close()
		http.Error(w, "no hijack", http.StatusInternalServerError)
		return
	}
	down, buf, err := hj.Hijack()
	if err != nil {
		up.Close()
		return
	}
	io.WriteString(down, "HTTP/1.1 200 Connection established\r\n\r\n")
	if n := buf.Reader.Buffered(); n > 0 {
		b, _ := buf.Reader.Peek(n)
		up.Write(b)
	}
	go func() { io.Copy(up, down); up.(*net.TCPConn).CloseWrite() }()
	io.Copy(down, up)
	down.Close()
	up.Close()
}

// fakePipelockBin is a fake pipelock set up for one test.
type fakePipelockBin struct {
	dir, path string
}

// newFakePipelock links the test binary as pipelock. The test fails if
// the fake never ran.
func newFakePipelock(t *testing.T) *fakePipelockBin {
	t.Helper()
	dir := t.TempDir()
	f := &fakePipelockBin{dir: dir, path: linkAs(t, dir, "pipelock")}
	t.Cleanup(func() {
		if b, _ := os.ReadFile(filepath.Join(dir, fakePipelockLog)); len(b) == 0 {
			t.Errorf("fake pipelock in %s was set up but never run", dir)
		}
	})
	return f
}

func (f *fakePipelockBin) control(t *testing.T, c fakePipelockCtl) {
	writeFakeControl(t, filepath.Join(f.dir, fakePipelockControl), c)
}

func (f *fakePipelockBin) records(t *testing.T) []fakeRecord {
	return readFakeRecords(t, filepath.Join(f.dir, fakePipelockLog))
}

// connectThrough asks the proxy at addr for a tunnel to target and
// returns the status code and, on 200, the open tunnel.
func connectThrough(ctx context.Context, addr, target string) (int, net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, nil, err
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	line := make([]byte, 0, 64)
	one := make([]byte, 1)
	for !strings.HasSuffix(string(line), "\r\n\r\n") {
		if _, err := c.Read(one); err != nil {
			c.Close()
			return 0, nil, err
		}
		line = append(line, one[0])
	}
	f := strings.Fields(string(line))
	if len(f) < 2 {
		c.Close()
		return 0, nil, fmt.Errorf("bad status line %q", line)
	}
	code, _ := strconv.Atoi(f[1])
	if code != 200 {
		c.Close()
		return code, nil, nil
	}
	c.SetDeadline(time.Time{})
	return code, c, nil
}

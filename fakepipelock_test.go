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
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The fake pipelock is the test binary run under the name "pipelock". The
// end-to-end tests run the real pipelock (bin/pipelock); the fake stays
// only for the sidecar tests that need a pipelock that misbehaves on
// command (exits at start, never gets healthy, ignores SIGTERM, starts
// slowly), which the real one cannot be made to do. It still loads a config
// as pipelock does, so that a config the real one refuses fails here too:
// unknown keys are fatal at every level (yaml KnownFields,
// internal/config/load.go:33-36 @ v2.3.0; the keys of each section
// smolbottle writes are listed in fakePipelockKeys), and the values are
// checked as internal/config/validate.go does for what smolbottle sets.
// It prints its version on stderr, as cobra's cmd.Printf does
// (internal/cli/version.go:21-24 @ v2.3.0; cobra command.go:1435-1446 @
// v1.10.2). It is a real HTTP CONNECT forward proxy on fetch_proxy.listen:
// it answers GET /health, refuses hosts outside api_allowlist with 403 (in
// mode strict) and tunnels the rest. It never resolves a name and never
// dials anything but 127.0.0.1: allowed names are mapped to local ports by
// hosts.json beside the config. Beside its own executable it logs argv and
// environment, and reads a control file.
//
// Linked beside a pipelockHostsWrap file, the same name runs the real
// pipelock instead (testhost_test.go).

// pipelockHostsWrap is the file beside a linked "pipelock" that turns it
// into the wrapper: run the real pipelock with its own /etc/hosts.
const pipelockHostsWrap = "pipelock.wrap.json"

func init() { fakes["pipelock"] = fakePipelock }

// pipelockWrapped is set where the wrapper exists (Linux).
var pipelockWrapped func(args []string, wrapFile string) int

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
	LogOutput     string
	LogFile       string
	MetricsListen string
	MaxPerMinute  int
}

// fakePipelockKeys lists pipelock's known keys, by parent: "" is the top
// level (internal/config/schema.go:204-259 @ v2.3.0); the sections are
// those smolbottle writes: forward_proxy (schema.go:374-378), fetch_proxy
// (:429-433), fetch_proxy.monitoring (:438-444), logging (:519-523),
// request_body_scanning (:597-603), sentry (:694-698). A section not
// listed here is one the fake does not model, and it refuses it.
var fakePipelockKeys = map[string][]string{
	"": {"version", "mode", "enforce", "explain_blocks", "api_allowlist", "suppress", "fetch_proxy",
		"forward_proxy", "websocket_proxy", "dlp", "canary_tokens", "response_scanning",
		"mcp_input_scanning", "mcp_tool_scanning", "mcp_tool_policy", "git_protection", "logging",
		"session_profiling", "adaptive_enforcement", "mcp_session_binding", "request_body_scanning",
		"kill_switch", "sentry", "metrics_listen", "emit", "tool_chain_detection", "mcp_ws_listener",
		"tls_interception", "cross_request_detection", "reverse_proxy", "scan_api", "address_protection",
		"seed_phrase_detection", "rules", "file_sentry", "sandbox", "flight_recorder",
		"mcp_binary_integrity", "mcp_tool_provenance", "behavioral_baseline", "airlock", "browser_shield",
		"media_policy", "a2a_scanning", "taint", "mediation_envelope", "redaction", "agents",
		"default_agent_identity", "bind_default_agent_identity", "license_key", "license_file",
		"license_public_key", "internal", "trusted_domains", "ssrf"},
	"forward_proxy": {"enabled", "max_tunnel_seconds", "idle_timeout_seconds", "sni_verification",
		"redirect_websocket_hosts"},
	"fetch_proxy": {"listen", "timeout_seconds", "max_response_mb", "user_agent", "monitoring"},
	"fetch_proxy.monitoring": {"max_url_length", "entropy_threshold", "subdomain_entropy_threshold",
		"max_requests_per_minute", "max_data_per_minute", "blocklist", "subdomain_entropy_exclusions"},
	"logging":               {"format", "output", "file", "include_allowed", "include_blocked"},
	"request_body_scanning": {"enabled", "action", "max_body_bytes", "scan_headers", "header_mode", "sensitive_headers", "ignore_headers"},
	"sentry":                {"enabled", "dsn", "environment", "sample_rate", "debug"},
}

func fakePipelock(args []string) int {
	dir := filepath.Dir(os.Args[0])
	if wrap := filepath.Join(dir, pipelockHostsWrap); pipelockWrapped != nil && fileExists(wrap) {
		return pipelockWrapped(args, wrap)
	}
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
		fmt.Fprint(os.Stderr, "pipelock version 2.3.0\n  build date: unknown\n")
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

// parseFakePipelockConfig reads the block YAML renderPipelock writes
// (every key and string double-quoted, two-space indents, "- " items),
// refuses unknown keys at every level and validates what smolbottle sets.
func parseFakePipelockConfig(src string) (fakePipelockConfig, error) {
	var cfg fakePipelockConfig
	var path []string // the keys the current line is nested in
	for n, line := range strings.Split(src, "\n") {
		t := strings.TrimSpace(line)
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		indent := len(line) - len(strings.TrimLeft(line, " "))
		if indent%2 != 0 {
			return cfg, fmt.Errorf("line %d: odd indent", n+1)
		}
		if strings.HasPrefix(t, "- ") {
			v, err := strconv.Unquote(strings.TrimPrefix(t, "- "))
			if err != nil {
				return cfg, fmt.Errorf("line %d: %v", n+1, err)
			}
			if strings.Join(path, ".") == "api_allowlist" {
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
		if indent/2 > len(path) {
			return cfg, fmt.Errorf("line %d: indented under nothing", n+1)
		}
		path = path[:indent/2]
		parent := strings.Join(path, ".")
		known, modelled := fakePipelockKeys[parent]
		if !modelled {
			return cfg, fmt.Errorf("line %d: fake: section %q is not modelled", n+1, parent)
		}
		if !slices.Contains(known, key) {
			return cfg, fmt.Errorf("line %d: field %s not found in type config", n+1, key)
		}
		path = append(path, key)
		v = strings.TrimSpace(v)
		if s, err := strconv.Unquote(v); err == nil {
			v = s
		}
		switch strings.Join(path, ".") {
		case "mode":
			cfg.Mode = v
		case "metrics_listen":
			cfg.MetricsListen = v
		case "fetch_proxy.listen":
			cfg.Listen = v
		case "fetch_proxy.monitoring.max_requests_per_minute":
			if cfg.MaxPerMinute, err = strconv.Atoi(v); err != nil {
				return cfg, fmt.Errorf("line %d: %v", n+1, err)
			}
		case "forward_proxy.enabled":
			cfg.Forward = v == "true"
		case "logging.output":
			cfg.LogOutput = v
		case "logging.file":
			cfg.LogFile = v
		}
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:8888"
	}
	if cfg.Mode == "" {
		cfg.Mode = "balanced"
	}
	// normalize first (internal/config/normalize.go:143-144 @ v2.3.0), so
	// validate.go:369's "must be >= 0" never sees a negative limit.
	if cfg.MaxPerMinute <= 0 {
		cfg.MaxPerMinute = 60
	}
	if cfg.LogOutput == "" { // normalize.go:149-150
		cfg.LogOutput = "stdout"
	}
	// internal/config/validate.go @ v2.3.0: :242-246, :250-252, :951-953.
	switch {
	case cfg.Mode != "strict" && cfg.Mode != "balanced" && cfg.Mode != "audit":
		return cfg, fmt.Errorf("invalid mode %q: must be strict, balanced, or audit", cfg.Mode)
	case cfg.Mode == "strict" && len(cfg.Allow) == 0:
		return cfg, errors.New("strict mode requires at least one domain in api_allowlist")
	// validate.go:264-273
	case cfg.LogOutput != "stdout" && cfg.LogOutput != "file" && cfg.LogOutput != "both":
		return cfg, fmt.Errorf("invalid logging output %q: must be stdout, file, or both", cfg.LogOutput)
	case cfg.LogOutput != "stdout" && cfg.LogFile == "":
		return cfg, fmt.Errorf("logging.file is required when output is %q", cfg.LogOutput)
	}
	if _, _, err := net.SplitHostPort(cfg.Listen); err != nil {
		return cfg, fmt.Errorf("invalid fetch_proxy.listen %q: %w", cfg.Listen, err)
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

// event writes one JSON line where logging.output says, as pipelock logs
// requests (internal/audit/logger.go:431-447 @ v2.3.0).
func (p *fakeProxy) event(host, action string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b, _ := json.Marshal(map[string]string{"host": host, "action": action})
	b = append(b, '\n')
	if p.cfg.LogOutput != "file" {
		os.Stdout.Write(b)
	}
	if p.cfg.LogOutput == "stdout" {
		return
	}
	if f, err := os.OpenFile(p.cfg.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err == nil {
		f.Write(b)
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

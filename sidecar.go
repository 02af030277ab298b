package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Sidecars are the host programs the guest reaches through the relays:
// pipelock (the egress proxy), git-gate and supervise. Each listens on one
// allocated loopback port, writes its output to a 0600 log under the
// stage that turns at 64 MiB (logFile), gets an allow-listed environment
// (env.go) without credentials or proxy variables and runs in its own
// process group, so that a stop
// reaches its children; the supervisor is their subreaper and kills what
// they leave behind (supervisor.go). Only the sidecar's own process dies
// with the supervisor (Pdeathsig, Linux only): children it started outlive
// a supervisor that is killed, until down (or the failed up) kills what is
// left of the supervisor's session. With -egress-proxy no pipelock is
// started; probeEgressProxy checks the given proxy instead.
const (
	sidecarHealthDeadline = 20 * time.Second
	sidecarStopGrace      = 5 * time.Second
	sidecarPollInterval   = 50 * time.Millisecond
	sidecarTailBytes      = 2 << 10
	egressProbeTimeout    = 3 * time.Second
)

// sidecarHealth says how a sidecar shows it is ready.
type sidecarHealth int

const (
	healthHTTP sidecarHealth = iota // GET /health on its port answers 200
	healthTCP                       // its port accepts a connection
)

// sidecarSpec is everything needed to start one sidecar.
type sidecarSpec struct {
	Name   string   // "pipelock", "git-gate", "supervise": names the log file
	Argv   []string // absolute program path, then its arguments
	Dir    string   // absolute working directory
	Env    []string // explicit environment (env.go)
	Port   int      // the loopback port it must serve
	Health sidecarHealth
	LogDir string // absolute; its log is LogDir/Name.log
	// OutLog, if set, is the file in LogDir its standard output goes to
	// instead (pipelock's request log).
	OutLog string
}

// sidecarProc is a started sidecar process. (bottle.go's sidecar is the
// plan's description of one.)
type sidecarProc struct {
	name    string
	port    int
	logPath string
	logFrom int64 // size of the log before this start: older runs' lines are not this one's
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has been reaped
	waitErr error         // valid once done is closed
}

var sidecarNameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)

// pipelockSidecar returns the spec that runs pipelock with its rendered
// config; its health check is GET /health on the agent-facing port.
func pipelockSidecar(path, configPath string, port int, dir, logDir string, env []string) sidecarSpec {
	return sidecarSpec{
		Name: "pipelock", Argv: []string{path, "run", "--config", configPath},
		Dir: dir, Env: env, Port: port, Health: healthHTTP, LogDir: logDir, OutLog: pipelockLogFile,
	}
}

var placeholderRE = regexp.MustCompile(`\{[a-z_]+\}`)

// expandTemplate substitutes {port}, {stage} and the other named vars in
// every element of an argument template. The result is an argv: no shell
// ever sees it, so values need no quoting. An unknown placeholder is an
// error, so a typo cannot reach the sidecar.
func expandTemplate(tmpl []string, vars map[string]string) ([]string, error) {
	if len(tmpl) == 0 {
		return nil, errors.New("empty sidecar command template")
	}
	out := make([]string, len(tmpl))
	for i, a := range tmpl {
		var bad string
		out[i] = placeholderRE.ReplaceAllStringFunc(a, func(p string) string {
			v, ok := vars[p[1:len(p)-1]]
			if !ok && bad == "" {
				bad = p
			}
			return v
		})
		if bad != "" {
			return nil, fmt.Errorf("unknown placeholder %s in sidecar argument %q", bad, a)
		}
	}
	return out, nil
}

// templateVars returns the placeholders a sidecar template may use.
func templateVars(port int, stage string) map[string]string {
	return map[string]string{"port": strconv.Itoa(port), "stage": stage}
}

// openLog opens (appending, so a second up keeps the first's lines) the
// 0600 log dir/name, refusing to follow a symlink.
func openLog(dir, name string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// logFile is a child's log (openLog), written through a pipe the owner
// reads. A write that would take it past logCapBytes turns it first: the
// write's lines that still fit go to the old file, which becomes
// NAME.1 (replacing the one before), and a new file takes the rest. It
// reports every write as done, so the child never blocks or fails on it;
// if no new file can be made, all it writes from then on is dropped.
type logFile struct {
	mu   sync.Mutex
	dir  string
	name string
	f    *os.File // nil once a turn failed
	n    int64    // the file's size
}

// newLogFile opens dir/name as a logFile.
func newLogFile(dir, name string) (*logFile, error) {
	l := &logFile{dir: dir, name: name}
	return l, l.open()
}

func (l *logFile) open() error {
	f, err := openLog(l.dir, l.name)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	l.f, l.n = f, fi.Size()
	return nil
}

func (l *logFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(p)
	if l.f != nil && l.n+int64(len(p)) > logCapBytes {
		i := bytes.LastIndexByte(p[:max(min(logCapBytes-l.n, int64(len(p))), 0)], '\n') + 1
		l.f.Write(p[:i])
		l.f.Close()
		l.f, p = nil, p[i:]
		path := filepath.Join(l.dir, l.name)
		os.Remove(path + ".1") // should it be an empty directory
		if os.Rename(path, path+".1") == nil {
			l.open()
		}
	}
	if l.f != nil {
		k, _ := l.f.Write(p)
		l.n += int64(k)
	}
	return n, nil
}

// Close closes the file; later writes are dropped.
func (l *logFile) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

// checkSidecarSpec validates spec at the boundary.
func checkSidecarSpec(spec sidecarSpec) error {
	switch {
	case !sidecarNameRE.MatchString(spec.Name):
		return fmt.Errorf("sidecar name %q is not valid", spec.Name)
	case len(spec.Argv) == 0 || !filepath.IsAbs(spec.Argv[0]):
		return fmt.Errorf("sidecar %s: program path %q is not absolute", spec.Name, strings.Join(spec.Argv[:min(1, len(spec.Argv))], ""))
	case !filepath.IsAbs(spec.Dir):
		return fmt.Errorf("sidecar %s: working directory %q is not absolute", spec.Name, spec.Dir)
	case !filepath.IsAbs(spec.LogDir):
		return fmt.Errorf("sidecar %s: log directory %q is not absolute", spec.Name, spec.LogDir)
	case spec.Port < 1 || spec.Port > 65535:
		return fmt.Errorf("sidecar %s: port %d is out of range", spec.Name, spec.Port)
	}
	return nil
}

// errPortTaken says another process bound a sidecar's port after
// allocPorts chose it.
var errPortTaken = errors.New("was taken between allocation and bind")

func portTakenError(name string, port int) error {
	return withHint(fmt.Errorf("sidecar %s: port %d %w", name, port, errPortTaken),
		"another program bound it first; run the command again to allocate new ports")
}

// startSidecar starts the sidecar and waits up to deadline for it to be
// healthy. On any failure the process is stopped and the error carries
// the tail of its log. ctx bounds only the wait: the sidecar outlives it.
func startSidecar(ctx context.Context, spec sidecarSpec, deadline time.Duration) (*sidecarProc, error) {
	if err := checkSidecarSpec(spec); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("sidecar %s: %w", spec.Name, err)
	}
	// A port someone else holds now would answer our health check for the
	// sidecar; refuse it up front. The window until the sidecar binds is
	// caught below when it exits with "address already in use".
	ln, err := net.Listen("tcp", loopbackAddr(spec.Port))
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, portTakenError(spec.Name, spec.Port)
	}
	if err != nil {
		return nil, fmt.Errorf("sidecar %s: %w", spec.Name, err)
	}
	ln.Close()
	stderr, err := newLogFile(spec.LogDir, spec.Name+".log")
	if err != nil {
		return nil, fmt.Errorf("sidecar %s: log: %w", spec.Name, err)
	}
	logFrom := stderr.n
	stdout := stderr // one pipe for both: exec shares an equal writer
	if spec.OutLog != "" {
		if stdout, err = newLogFile(spec.LogDir, spec.OutLog); err != nil {
			stderr.Close()
			return nil, fmt.Errorf("sidecar %s: log: %w", spec.Name, err)
		}
	}
	closeLogs := func() { stderr.Close(); stdout.Close() }
	cmd := exec.Command(spec.Argv[0], spec.Argv[1:]...)
	cmd.Dir = spec.Dir
	cmd.Env = spec.Env
	if cmd.Env == nil {
		cmd.Env = []string{} // nil would inherit everything, secrets included
	}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// A child of the sidecar's that left its group may hold the pipe: Wait
	// then gives up on it this long after the sidecar exits.
	cmd.WaitDelay = time.Second
	cmd.SysProcAttr = sidecarSysProcAttr()
	err = cmd.Start()
	if err != nil {
		closeLogs()
		if errors.Is(err, fs.ErrNotExist) && !fileExists(spec.Argv[0]) {
			return nil, withHint(fmt.Errorf("sidecar %s: program %q not found", spec.Name, spec.Argv[0]),
				"install it or point the bottle's config at it")
		}
		return nil, fmt.Errorf("sidecar %s: %w", spec.Name, err)
	}
	s := &sidecarProc{name: spec.Name, port: spec.Port, logPath: filepath.Join(spec.LogDir, spec.Name+".log"), logFrom: logFrom, cmd: cmd, done: make(chan struct{})}
	go func() {
		s.waitErr = cmd.Wait() // and all its output is in the logs
		closeLogs()
		close(s.done)
	}()
	if err := s.waitHealthy(ctx, spec.Health, deadline); err != nil {
		s.stop(sidecarStopGrace)
		return nil, withTail(err, s.logTail()) // once stopped, its output is all in
	}
	return s, nil
}

// waitHealthy polls the sidecar's port until it is healthy, the sidecar
// exits, the deadline passes or ctx is done.
func (s *sidecarProc) waitHealthy(ctx context.Context, h sidecarHealth, deadline time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	client := &http.Client{
		Timeout:   time.Second,
		Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
	}
	url := "http://" + loopbackAddr(s.port) + "/health"
	tick := time.NewTicker(sidecarPollInterval)
	defer tick.Stop()
	for {
		if s.healthy(ctx, client, url, h) {
			if owned, known := portOwnedByGroup(s.cmd.Process.Pid, s.port); known && !owned {
				return fmt.Errorf("%w; another program answers there", portTakenError(s.name, s.port))
			}
			return nil
		}
		select {
		case <-s.done:
			tail := s.logTail()
			if strings.Contains(strings.ToLower(tail), "address already in use") {
				return portTakenError(s.name, s.port)
			}
			how := "exit status 0"
			if s.waitErr != nil {
				how = s.waitErr.Error()
			}
			return fmt.Errorf("sidecar %s exited during startup: %s", s.name, how)
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("sidecar %s did not become healthy on %s within %v", s.name, loopbackAddr(s.port), deadline)
			}
			return fmt.Errorf("sidecar %s: %w", s.name, ctx.Err())
		case <-tick.C:
		}
	}
}

func (s *sidecarProc) healthy(ctx context.Context, client *http.Client, url string, h sidecarHealth) bool {
	if h == healthTCP {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", loopbackAddr(s.port))
		if err != nil {
			return false
		}
		c.Close()
		return true
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// logTail returns the end of what this start wrote to the sidecar's log.
func (s *sidecarProc) logTail() string {
	f, err := os.Open(s.logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	from := s.logFrom
	if fi, err := f.Stat(); err == nil {
		if fi.Size() < from { // it turned (logFile): all of it is this start's
			from = 0
		}
		from = max(from, fi.Size()-sidecarTailBytes)
	}
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return ""
	}
	b, _ := io.ReadAll(io.LimitReader(f, sidecarTailBytes))
	return string(b)
}

// stop sends SIGTERM to the sidecar's process group and SIGKILL after
// grace. It can be called more than once. It reports a sidecar that had
// to be killed.
func (s *sidecarProc) stop(grace time.Duration) error {
	select {
	case <-s.done:
		return nil
	default:
	}
	pgid := s.cmd.Process.Pid // Setpgid: the group is the leader's pid
	syscall.Kill(-pgid, syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-s.done:
		return nil
	case <-t.C:
	}
	syscall.Kill(-pgid, syscall.SIGKILL)
	<-s.done
	return fmt.Errorf("sidecar %s ignored SIGTERM for %v and was killed", s.name, grace)
}

// probeEgressProxy checks that the -egress-proxy given instead of pipelock
// answers as an HTTP proxy on 127.0.0.1:port (validate.go's
// checkEgressProxy has already held it to 127.0.0.1, the address the
// relay dials). It asks for a tunnel to a name that cannot exist and
// accepts any HTTP answer: a strict proxy refuses it, which is fine.
// Nothing leaves the host.
func probeEgressProxy(ctx context.Context, port int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ap := loopbackAddr(port)
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", ap)
	if err != nil {
		return withHint(fmt.Errorf("egress proxy %s: %w", ap, err), "start the proxy first, or drop -egress-proxy to use pipelock")
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	const target = "smolbottle-probe.invalid:443"
	if _, err := io.WriteString(c, "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n\r\n"); err != nil {
		return fmt.Errorf("egress proxy %s: %w", ap, err)
	}
	req, _ := http.NewRequest(http.MethodConnect, "http://"+target, nil)
	resp, err := http.ReadResponse(bufio.NewReader(io.LimitReader(c, 64<<10)), req)
	if err != nil {
		return fmt.Errorf("egress proxy %s does not answer as an HTTP proxy: %w", ap, err)
	}
	resp.Body.Close()
	return nil
}

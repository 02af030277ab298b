//go:build linux

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// The confined gvproxy. Stock gvproxy dials whatever the guest asks for
// (pkg/services/forwarder/tcp.go:34 @ v0.8.9) and its guest-reachable API on
// gateway:80 (cmd/gvproxy/main.go:160-168 @ v0.8.9) opens listeners and
// replaces files with sockets; no option turns that off. So gvproxy runs
//
//   - in a new user+network+mount+PID namespace whose only interface is lo:
//     every dial it makes fails, except to the relay listeners on
//     127.0.0.1:P; _confine is the namespace's init, so gvproxy dies with it;
//   - chrooted into a read-only tmpfs holding only its binary, its config and
//     the socket directory (bound at the same absolute path, because gvproxy
//     names the socket by path, and sealed read-only once gvproxy has made
//     its socket): the API can touch no host file;
//   - with every capability dropped and no_new_privs set: it is uid 0 of its
//     user namespace, which would otherwise hold a full capability set there;
//   - with its memory capped (RLIMIT_DATA, limits.go).
//
// The guest never reaches gvproxy's socket (its whole HTTP API): it gets
// the guest link front's (guestlink.go), which the owner runs.
//
// Process tree (each child dies with its parent through Pdeathsig):
//
//	owner (startConfined; the guest link front; relays: accept on
//	 │     127.0.0.1:P of the confined namespace -> dial 127.0.0.1:P in the
//	 │     host namespace; or, for a port in confineSpec.Serve, its own
//	 │     server on that listener)
//	 └─ smolbottle _confine   new user+net+mount+PID ns (its init); lo; opens
//	     │                    the relay listeners and hands them to the
//	     │                    owner; jail
//	     └─ smolbottle _dropexec -> gvproxy   chroot, caps dropped, no_new_privs, data capped
//
// _confine and _dropexec are internal subcommands: argv is built here only.
const (
	confineCmd  = "_confine"
	dropExecCmd = "_dropexec"

	// confineReadyTimeout bounds the jail's setup, and then gvproxy's
	// first answer: each, so up to twice this in all.
	confineReadyTimeout = 15 * time.Second
	// stopGrace is how long a SIGTERM gets before SIGKILL.
	stopGrace = 3 * time.Second

	jailBinary = "/gvproxy"
	jailConfig = "/gvproxy.yaml"
)

// confineSpec is what the launch side passes to startConfined.
type confineSpec struct {
	Gvproxy string    // absolute path of a statically linked gvproxy v0.8.9
	Net     bottleNet // the bottle's address plan
	Stage   string    // absolute stage directory (0700); sock/, link/, jail/ and gvproxy.yaml are made in it
	Ports   []int     // sidecar ports on the host's 127.0.0.1, relayed to the guest
	Log     io.Writer // gvproxy's and the inner side's stderr; nil discards
	// Serve maps some of Ports to a server in the owner's own process,
	// handed the listener inside the confined namespace instead of a relay
	// (servedListener): no host listener exists for such a port, so only
	// the guest, through gvproxy, can reach it.
	Serve map[int]func(net.Listener)
}

// confinedNet is a running confined gvproxy with its relays.
type confinedNet struct {
	SocketPath string // gvproxy's listen socket and API: smolbottle's alone
	LinkPath   string // the guest link front's socket: gvforwarder connects here
	InnerPID   int    // the _confine process
	GvproxyPID int    // as the host sees it

	cmd    *exec.Cmd
	link   *guestLink
	relays []io.Closer // a *relay or a *servedListener per port
	cancel context.CancelFunc
	done   chan struct{}
	err    error // set before done is closed
	once   sync.Once
	files  []string // removed on Close
}

// stagePaths are the fixed places of a stage used here.
func stagePaths(stage string) (sock, jail, config string) {
	return filepath.Join(stage, sockDir), filepath.Join(stage, jailDirName), filepath.Join(stage, gvproxyFile)
}

// startConfined starts gvproxy confined and the relays for spec.Ports, and
// returns once gvproxy's socket accepts and its API answers and the guest
// link front listens. Any failed step stops everything already started and
// returns an error naming the step and what to change. ctx bounds the whole
// life of the network: cancelling it is the same as Close. There is no way
// to ask it for an unconfined gvproxy: the selftest's negative control has
// its own starter (selftestcontrol.go), which nothing up, run or
// _supervise calls reaches (TestCoreNeverStartsStockGvproxy).
func startConfined(ctx context.Context, spec confineSpec) (*confinedNet, error) {
	if err := validateConfineSpec(spec); err != nil {
		return nil, err
	}
	// The jail holds the binary and nothing else: no loader, no libc.
	if err := checkStatic(spec.Gvproxy); err != nil {
		return nil, err
	}
	sock, jail, _ := stagePaths(spec.Stage)
	c, _, logw, logf, err := prepareGvproxy(spec, sock, jail)
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	c.cancel = cancel
	fail := func(err error) (*confinedNet, error) {
		c.Close()
		return nil, err
	}
	if err := c.startInner(runCtx, spec, logw, logf); err != nil {
		return fail(err)
	}
	if err := waitGvproxyReady(runCtx, c.SocketPath, c.done, confineReadyTimeout); err != nil {
		return fail(err)
	}
	// The guest gets the front's socket, never gvproxy's (guestlink.go).
	c.LinkPath = linkPath(spec.Stage)
	if err := mkdirPrivate(filepath.Dir(c.LinkPath)); err != nil {
		return fail(setupStepError("prepare the stage", err))
	}
	if c.link, err = startGuestLink(c.LinkPath, c.SocketPath, logf); err != nil {
		return fail(setupStepError("listen for the guest link", err))
	}
	context.AfterFunc(runCtx, func() { c.Close() })
	return c, nil
}

// prepareGvproxy makes dirs, clears a dead socket and writes gvproxy's
// config; it returns the network with its socket path set.
func prepareGvproxy(spec confineSpec, dirs ...string) (c *confinedNet, configPath string, logw io.Writer, logf func(string, ...any), err error) {
	logw = spec.Log
	if logw == nil {
		logw = io.Discard
	}
	logf = func(format string, args ...any) { fmt.Fprintf(logw, "smolbottle: net: "+format+"\n", args...) }
	sockDir, _, configPath := stagePaths(spec.Stage)
	c = &confinedNet{SocketPath: filepath.Join(sockDir, gvproxySock), done: make(chan struct{})}
	if len(c.SocketPath) > maxSocketPath {
		return nil, "", nil, nil, withHint(fmt.Errorf("socket path %q is %d bytes, over the %d-byte limit", c.SocketPath, len(c.SocketPath), maxSocketPath), "use a shorter stage directory")
	}
	for _, d := range dirs {
		if err := mkdirPrivate(d); err != nil {
			return nil, "", nil, nil, setupStepError("prepare the stage", err)
		}
	}
	// A previous owner killed with SIGKILL leaves dead sockets behind; gvproxy
	// refuses to start on an existing path.
	if err := os.Remove(c.SocketPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, "", nil, nil, setupStepError("prepare the stage", err)
	}
	c.files = []string{c.SocketPath, configPath}
	config, err := renderGvproxy(gvproxySpec{Net: spec.Net, SocketPath: c.SocketPath})
	if err != nil {
		return nil, "", nil, nil, setupStepError("render the gvproxy config", err)
	}
	if err := writeFileAtomic(configPath, config, 0o600); err != nil {
		return nil, "", nil, nil, setupStepError("write the gvproxy config", err)
	}
	return c, configPath, logw, logf, nil
}

func validateConfineSpec(spec confineSpec) error {
	if !filepath.IsAbs(spec.Gvproxy) {
		return fmt.Errorf("gvproxy path %q is not absolute", spec.Gvproxy)
	}
	if !filepath.IsAbs(spec.Stage) {
		return fmt.Errorf("stage directory %q is not absolute", spec.Stage)
	}
	if len(spec.Ports) == 0 {
		return errors.New("no sidecar ports to relay")
	}
	for _, p := range spec.Ports {
		if p < 1 || p > 65535 {
			return fmt.Errorf("sidecar port %d out of range 1..65535", p)
		}
	}
	for p := range spec.Serve {
		if !slices.Contains(spec.Ports, p) {
			return fmt.Errorf("served port %d is not among the sidecar ports", p)
		}
	}
	return nil
}

// checkStatic fails for a dynamically linked gvproxy, which cannot run in
// the jail: it holds no libraries.
func checkStatic(path string) error {
	if err := checkStaticELF(path); err != nil {
		return withHint(err, gvisorHint("gvproxy", defaultPreflightEnv(false)))
	}
	return nil
}

// setStop makes cancellation a SIGTERM with a bounded grace period.
func setStop(cmd *exec.Cmd) {
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = stopGrace
}

// startInner starts _confine in new namespaces. It answers on a unix
// socket pair with one status message; "ok" carries, as SCM_RIGHTS, the
// listening sockets it opened on 127.0.0.1:P inside the new network
// namespace, on which the relays here accept (relay.go).
func (c *confinedNet) startInner(ctx context.Context, spec confineSpec, logw io.Writer, logf func(string, ...any)) error {
	self, err := os.Executable()
	if err != nil {
		return setupStepError("find the smolbottle executable", err)
	}
	_, jailDir, configPath := stagePaths(spec.Stage)
	ports := make([]string, len(spec.Ports))
	for i, p := range spec.Ports {
		ports[i] = strconv.Itoa(p)
	}
	pair, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return setupStepError("start the confined side", err)
	}
	ours, theirs := os.NewFile(uintptr(pair[0]), "status"), os.NewFile(uintptr(pair[1]), "status")
	status, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		theirs.Close()
		return setupStepError("start the confined side", err)
	}
	defer status.Close()
	cmd := exec.CommandContext(ctx, self, confineCmd,
		"-gvproxy", spec.Gvproxy, "-config", configPath, "-socket", c.SocketPath,
		"-jail", jailDir, "-ports", strings.Join(ports, ","))
	cmd.Args[0] = "smolbottle"
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = []string{}, "/", logw, logw
	cmd.ExtraFiles = []*os.File{theirs} // fd 3
	cmd.SysProcAttr = nsAttr()          // the very namespaces doctor checks
	setStop(cmd)
	err = cmd.Start()
	theirs.Close()
	if err != nil {
		return withHint(setupStepError("create the user, network, mount and PID namespaces", err), namespaceHints(procSys)...)
	}
	c.cmd, c.InnerPID = cmd, cmd.Process.Pid
	go c.wait()

	line, fds, err := readStatus(ctx, status.(*net.UnixConn), len(spec.Ports), confineReadyTimeout)
	if err != nil {
		return setupStepError("start the confined side", fmt.Errorf("%v (%v)", err, c.exitReason()))
	}
	if err := parseStatus(line); err != nil {
		closeFDs(fds)
		return err
	}
	// gvproxy has a pid of its own inside the new PID namespace; the host
	// sees it as the only child of _confine.
	if c.GvproxyPID, err = onlyChild(c.InnerPID); err != nil {
		closeFDs(fds)
		return setupStepError("start the confined side", err)
	}
	if len(fds) != len(spec.Ports) {
		closeFDs(fds)
		return setupStepError("start the confined side", fmt.Errorf("got %d listening sockets, want %d", len(fds), len(spec.Ports)))
	}
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	portCap, bottleCap := relayCaps(lim.Cur)
	bottle := &connCap{max: bottleCap}
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "relay")
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			closeFDs(fds[i+1:])
			return setupStepError("take over the relay listeners", err)
		}
		if serve := spec.Serve[spec.Ports[i]]; serve != nil {
			sl := newServedListener(ln, "served", logf, portCap, bottle)
			c.relays = append(c.relays, sl)
			go serve(sl)
			continue
		}
		c.relays = append(c.relays, startRelay(ln, tcpDialer(loopbackAddr(spec.Ports[i])), logf, portCap, bottle))
	}
	return nil
}

// onlyChild returns the pid of the single child of pid.
func onlyChild(pid int) (int, error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, err
	}
	var kids []string
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		if err == nil {
			kids = append(kids, strings.Fields(string(b))...)
		}
	}
	if len(kids) != 1 {
		return 0, fmt.Errorf("process %d has children %v, want exactly gvproxy", pid, kids)
	}
	return strconv.Atoi(kids[0])
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		syscall.Close(fd)
	}
}

// parseStatus reads "ok" or "fail <step>\t<error>".
func parseStatus(line string) error {
	if line == "ok" {
		return nil
	}
	if rest, ok := strings.CutPrefix(line, "fail "); ok {
		step, msg, _ := strings.Cut(rest, "\t")
		err := setupStepError(step, errors.New(msg))
		if strings.Contains(msg, "operation not permitted") || strings.Contains(msg, "permission denied") {
			return withHint(err, namespaceHints(procSys)...)
		}
		return err
	}
	return setupStepError("start the confined side", fmt.Errorf("bad status %q", line))
}

// readStatus reads the one status message and the descriptors sent with it.
func readStatus(ctx context.Context, conn *net.UnixConn, maxFDs int, limit time.Duration) (string, []int, error) {
	conn.SetReadDeadline(time.Now().Add(limit))
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, 4096)
	oob := make([]byte, syscall.CmsgSpace(4*maxFDs))
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	switch {
	case errors.Is(err, io.EOF): // an empty read, which a status never is
		return "", nil, errors.New("it exited before reporting")
	case err != nil && ctx.Err() != nil:
		return "", nil, ctx.Err()
	case err != nil:
		return "", nil, fmt.Errorf("no report within %v: %v", limit, err)
	}
	var fds []int
	if oobn > 0 {
		msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return "", nil, err
		}
		for _, m := range msgs {
			got, err := syscall.ParseUnixRights(&m)
			if err != nil {
				closeFDs(fds)
				return "", nil, err
			}
			fds = append(fds, got...)
		}
	}
	return strings.TrimSuffix(string(buf[:n]), "\n"), fds, nil
}

func (c *confinedNet) wait() {
	c.err = c.cmd.Wait()
	close(c.done)
}

func (c *confinedNet) exitReason() string {
	select {
	case <-c.done:
		if c.err == nil {
			return "it exited"
		}
		return c.err.Error()
	case <-time.After(stopGrace):
		return "it is still running"
	}
}

// Done is closed when gvproxy (or the confined side) has exited.
func (c *confinedNet) Done() <-chan struct{} { return c.done }

// Close stops gvproxy, the inner side and the relays, and removes the
// sockets and the config. It is safe to call more than once.
func (c *confinedNet) Close() error {
	c.once.Do(func() {
		if c.cancel != nil {
			c.cancel()
		}
		if c.cmd != nil {
			<-c.done
		}
		if c.link != nil {
			c.link.Close()
		}
		for _, r := range c.relays {
			r.Close()
		}
		for _, f := range c.files {
			os.Remove(f)
		}
	})
	return nil
}

// waitGvproxyReady polls until gvproxy's socket accepts and its API
// answers. gvproxy's exit status says nothing (it always exits 0), so its
// socket is the only readiness signal.
func waitGvproxyReady(ctx context.Context, sock string, exited <-chan struct{}, limit time.Duration) error {
	client := unixHTTPClient(sock)
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(limit)
	var last error
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://gvproxy/services/forwarder/all", nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("API answered %s", resp.Status)
		}
		last = err
		select {
		case <-exited:
			return setupStepError("start gvproxy", errors.New("gvproxy exited before its socket answered; its log has the reason"))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return setupStepError("start gvproxy", fmt.Errorf("socket %q did not answer within %v: %v", sock, limit, last))
		}
	}
}

// setupStepError names the step of the confinement that failed.
func setupStepError(step string, err error) error {
	return fmt.Errorf("confine gvproxy: %s: %w", step, err)
}

// innerConfig is the parsed argv of _confine.
type innerConfig struct {
	gvproxy, config, socket, sockDir, jail string
	ports                                  []int
}

// runConfine is the inner side, already in its own namespaces. It sends
// one status message on fd 3 (with the relay listeners when all went well)
// and then lives as long as gvproxy does.
func runConfine(ctx context.Context, args []string, stderr io.Writer) error {
	// fd 3 came without close-on-exec: gvproxy must not inherit it.
	syscall.CloseOnExec(3)
	statusFile := os.NewFile(3, "status")
	conn, err := net.FileConn(statusFile)
	statusFile.Close()
	if err != nil {
		return fmt.Errorf("internal command: no status socket: %v", err)
	}
	status, ok := conn.(*net.UnixConn)
	if !ok {
		conn.Close()
		return errors.New("internal command: status is not a unix socket")
	}
	defer status.Close()
	report := func(step string, err error) error {
		fmt.Fprintf(status, "fail %s\t%s\n", step, strings.ReplaceAll(err.Error(), "\n", " "))
		return setupStepError(step, err)
	}
	fs := flag.NewFlagSet(confineCmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var ic innerConfig
	var ports string
	fs.StringVar(&ic.gvproxy, "gvproxy", "", "")
	fs.StringVar(&ic.config, "config", "", "")
	fs.StringVar(&ic.socket, "socket", "", "")
	fs.StringVar(&ic.jail, "jail", "", "")
	fs.StringVar(&ports, "ports", "", "")
	if err := fs.Parse(args); err != nil {
		return report("parse arguments", err)
	}
	ic.sockDir = filepath.Dir(ic.socket)
	for f := range strings.SplitSeq(ports, ",") {
		p, err := strconv.Atoi(f)
		if err != nil || p < 1 || p > 65535 {
			return report("parse arguments", fmt.Errorf("port %q", f))
		}
		ic.ports = append(ic.ports, p)
	}

	if err := setLinkUp("lo"); err != nil {
		return report("bring up lo in the new network namespace", err)
	}
	// The listeners are handed to the owner; this process never accepts.
	var listeners []*os.File
	defer func() {
		for _, f := range listeners {
			f.Close()
		}
	}()
	for _, p := range ic.ports {
		ln, err := net.Listen("tcp4", loopbackAddr(p))
		if err != nil {
			return report("listen on the relay port inside the namespace", err)
		}
		f, err := ln.(*net.TCPListener).File()
		ln.Close()
		if err != nil {
			return report("listen on the relay port inside the namespace", err)
		}
		listeners = append(listeners, f)
	}
	if err := buildJail(ic); err != nil {
		return report("build the read-only jail", err)
	}
	self, err := os.Executable()
	if err != nil {
		return report("start gvproxy", err)
	}
	cmd := exec.Command(self, dropExecCmd, "-root", ic.jail, "--", jailBinary, "-config", jailConfig)
	cmd.Args[0] = "smolbottle"
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = []string{}, "/", stderr, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return report("start gvproxy", err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	kill := func() {
		cmd.Process.Kill()
		<-exited
	}
	// Once gvproxy has created its socket, nothing in the jail needs to be
	// writable: seal the socket directory too, so the guest's API calls
	// cannot replace gvproxy's own socket or create any file. Connecting to
	// an existing socket on a read-only mount still works.
	if err := waitForSocket(ic.socket, exited, confineReadyTimeout); err != nil {
		kill()
		return report("start gvproxy", err)
	}
	if err := remount(ic.jail+ic.sockDir, true); err != nil {
		kill()
		return report("seal the socket directory", err)
	}
	fds := make([]int, len(listeners))
	for i, f := range listeners {
		fds[i] = int(f.Fd())
	}
	if _, _, err := status.WriteMsgUnix([]byte("ok\n"), syscall.UnixRights(fds...), nil); err != nil {
		kill()
		return fmt.Errorf("report to the owner: %v", err)
	}
	status.Close()
	for _, f := range listeners {
		f.Close()
	}
	listeners = nil

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sig)
	select {
	case <-exited:
		return fmt.Errorf("gvproxy exited: %v", waitErr)
	case <-sig:
	case <-ctx.Done():
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(stopGrace):
		cmd.Process.Kill()
		<-exited
	}
	return nil
}

// buildJail mounts the chroot for gvproxy: a tmpfs holding the binary (bind,
// read-only), the config (a copy) and the socket directory (bind, same
// absolute path; writable until gvproxy has made its socket, then sealed by
// runConfine), then remounts the tmpfs read-only. It runs in the private
// mount namespace, so the host sees none of it.
func buildJail(ic innerConfig) error {
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	j := ic.jail
	if err := syscall.Mount("tmpfs", j, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, "mode=0755,size=1m"); err != nil {
		return fmt.Errorf("mount tmpfs on %q: %w", j, err)
	}
	config, err := os.ReadFile(ic.config)
	if err != nil {
		return err
	}
	if err := os.WriteFile(j+jailConfig, config, 0o400); err != nil {
		return err
	}
	if err := os.WriteFile(j+jailBinary, nil, 0o500); err != nil {
		return err
	}
	if err := bindMount(ic.gvproxy, j+jailBinary, true); err != nil {
		return err
	}
	if err := os.MkdirAll(j+ic.sockDir, 0o700); err != nil {
		return err
	}
	if err := bindMount(ic.sockDir, j+ic.sockDir, false); err != nil {
		return err
	}
	if err := syscall.Mount("", j, "", syscall.MS_REMOUNT|syscall.MS_RDONLY|syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("remount the jail read-only: %w", err)
	}
	return nil
}

// bindMount binds src on dst, then remounts it (remount).
func bindMount(src, dst string, readOnly bool) error {
	if err := syscall.Mount(src, dst, "", syscall.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %q: %w", src, err)
	}
	return remount(dst, readOnly)
}

// remount sets nosuid, nodev and read-only (or, for the writable socket
// directory, noexec) on the bind mount at dst. A remount inside a user
// namespace must repeat the flags locked on the source mount, or the kernel
// refuses it: those statfs reports (ST_* bits) are kept.
func remount(dst string, readOnly bool) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dst, &st); err != nil {
		return err
	}
	flags := uintptr(syscall.MS_REMOUNT | syscall.MS_BIND | syscall.MS_NOSUID | syscall.MS_NODEV)
	locked := map[int64]uintptr{
		0x8:    syscall.MS_NOEXEC,
		0x400:  syscall.MS_NOATIME,
		0x800:  syscall.MS_NODIRATIME,
		0x1000: syscall.MS_RELATIME,
	}
	for bit, ms := range locked {
		if st.Flags&bit != 0 {
			flags |= ms
		}
	}
	if readOnly {
		flags |= syscall.MS_RDONLY
	} else {
		flags |= syscall.MS_NOEXEC
	}
	if err := syscall.Mount("", dst, "", flags, ""); err != nil {
		return fmt.Errorf("remount %q: %w", dst, err)
	}
	return nil
}

// waitForSocket waits until gvproxy has created its socket file.
func waitForSocket(path string, exited <-chan struct{}, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("gvproxy exited before creating %q; its log has the reason", path)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gvproxy did not create %q within %v", path, limit)
		}
	}
}

// runDropExec chroots, drops every capability, sets no_new_privs, caps the
// data segment and execs argv. It is the last step before gvproxy and runs single-threaded in
// effect: the calling thread is locked, and execve takes that thread's
// credentials.
func runDropExec(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet(dropExecCmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	root := fs.String("root", "", "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	argv := fs.Args()
	if *root == "" || len(argv) == 0 {
		return errors.New("internal command: want -root DIR -- PROGRAM ARGS")
	}
	runtime.LockOSThread()
	// Go starts children with only the descriptors it is given, but it does
	// not close what this process itself inherited without close-on-exec
	// (a shell's or a supervisor's); none of that may reach gvproxy.
	if err := closeOnExecInherited(); err != nil {
		return setupStepError("close inherited descriptors", err)
	}
	if err := syscall.Chroot(*root); err != nil {
		return setupStepError("chroot into the jail", err)
	}
	if err := syscall.Chdir("/"); err != nil {
		return setupStepError("chroot into the jail", err)
	}
	if err := dropCapabilities(); err != nil {
		return setupStepError("drop capabilities", err)
	}
	lim := &syscall.Rlimit{Cur: gvproxyMaxData, Max: gvproxyMaxData}
	if err := syscall.Setrlimit(syscall.RLIMIT_DATA, lim); err != nil {
		return setupStepError("cap gvproxy's memory", err)
	}
	err := syscall.Exec(argv[0], argv, []string{})
	return setupStepError("exec gvproxy", err)
}

const (
	prCapbsetDrop       = 24
	prSetSecurebits     = 28
	prSetNoNewPrivs     = 38
	prCapAmbient        = 47
	prCapAmbientClear   = 4
	linuxCapabilityV3   = 0x20080522
	secbitsLockedNoRoot = 0x2f // NOROOT, NOROOT_LOCKED, NO_SETUID_FIXUP(+_LOCKED), KEEP_CAPS_LOCKED
)

// dropCapabilities empties the bounding, ambient, inheritable, permitted
// and effective sets of the calling thread, sets securebits so that uid 0
// regains nothing on execve, and sets no_new_privs.
func dropCapabilities() error {
	prctl := func(op, arg uintptr) error {
		if _, _, e := syscall.RawSyscall6(syscall.SYS_PRCTL, op, arg, 0, 0, 0, 0); e != 0 {
			return e
		}
		return nil
	}
	for c := uintptr(0); c < 64; c++ {
		if err := prctl(prCapbsetDrop, c); err != nil && err != syscall.EINVAL {
			return fmt.Errorf("bounding set, capability %d: %w", c, err)
		}
	}
	if err := prctl(prCapAmbient, prCapAmbientClear); err != nil && err != syscall.EINVAL {
		return fmt.Errorf("ambient set: %w", err)
	}
	if err := prctl(prSetSecurebits, secbitsLockedNoRoot); err != nil {
		return fmt.Errorf("securebits: %w", err)
	}
	if err := prctl(prSetNoNewPrivs, 1); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	hdr := struct {
		version uint32
		pid     int32
	}{linuxCapabilityV3, 0}
	var data [2]struct{ effective, permitted, inheritable uint32 }
	if _, _, e := syscall.RawSyscall(syscall.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); e != 0 {
		return fmt.Errorf("capset: %w", e)
	}
	return nil
}

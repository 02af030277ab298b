package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The supervisor is the one host process that owns a running bottle's
// network: the sidecars, the confined gvproxy and its relays, and a canary
// listener on a host loopback port that the guest must not reach (the
// self-test probes it). up starts it detached, in a session of its own, so
// it outlives up; its children die with it (Pdeathsig), and what their
// own children leave behind is killed by down, or by a failed up, through
// the session (sweepSession). On Linux it is also the subreaper of all it
// starts (setSubreaper): a descendant whose parent dies, even one that
// left the session (setsid, a daemon), becomes its child; once the bottle
// is ready it reaps those that exit (an earlier one at the next SIGCHLD),
// and the last step of its teardown, once its sidecars and the confined
// gvproxy are stopped, kills and reaps every child left (reapOrphans). It records itself in <stage>/state.json, so
// down finds it after a crash and the next up finds a stale bottle instead
// of reusing it.
//
//	smolbottle _supervise STAGE
//
// up names itself in SMOLBOTTLE_UP (PID:START). The supervisor tells up
// it is ready by writing "ready CANARY_PORT" to file descriptor 3, or why
// it failed, and then closing it. It reads the real
// credential values from file descriptor 4, once, before it starts
// anything, and closes it (credproxy.go).

const (
	supervisorReadyTimeout = 60 * time.Second
	supervisorStopGrace    = 10 * time.Second
	supervisorLog          = "supervisor.log"
)

// runSupervise is the _supervise subcommand.
func runSupervise(ctx context.Context, args []string) error {
	// The up that started this process, read before anything can block:
	// if up dies before it marks the bottle ready (SIGKILL), nothing else
	// will tear down. up names itself in the environment; when this
	// process's parent is no longer that very process, init or a subreaper
	// has taken it over, and up is already dead.
	up := parentUp(os.Getenv(upIdentEnv), os.Getppid())
	if len(args) != 1 || !filepath.IsAbs(args[0]) {
		return usageError("%s STAGE: want one absolute stage directory", supervisorCmd)
	}
	// main marks inherited descriptors close-on-exec at best; here it must
	// hold, or the sidecars would inherit the ready and credential pipes.
	if err := closeOnExecInherited(); err != nil {
		return fmt.Errorf("close inherited descriptors: %w", err)
	}
	ready := os.NewFile(3, "ready")
	report := func(msg string) {
		if ready != nil {
			io.WriteString(ready, msg+"\n")
			ready.Close()
			ready = nil
		}
	}
	creds := os.NewFile(4, "credentials")
	err := supervise(ctx, args[0], creds, up, func(canary int) { report("ready " + strconv.Itoa(canary)) })
	if err != nil {
		report("error " + strings.ReplaceAll(err.Error(), "\n", " "))
	}
	return err
}

// supervise starts everything, reports readiness and then holds it all
// until ctx ends or any part dies, and tears it all down either way.
func supervise(ctx context.Context, stage string, creds io.ReadCloser, upIdent procIdent, ready func(canary int)) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer stop()
	if err := setSubreaper(); err != nil {
		return fmt.Errorf("become the sidecars' subreaper: %w", err)
	}
	defer reapOrphans(nil, true) // deferred first: runs after every stop
	p, err := readPlan(stage)
	if err != nil {
		creds.Close()
		return err
	}
	values, err := readCredValues(creds, p.Credentials)
	creds.Close()
	if err != nil {
		return err
	}
	if upIdent.PID == 0 {
		return errors.New("the up that started the supervisor is gone")
	}
	// Descriptors: the soft limit up to the hard one, so that the relays'
	// caps (relayCaps) leave relayFDReserve for the control paths.
	raiseNoFile()

	// The canary: a live listener on host loopback that no relay reaches.
	canary, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("canary listener: %w", err)
	}
	defer canary.Close()
	go func() {
		for {
			c, err := canary.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("CANARY: the guest reached a host port it must not reach\n"))
			c.Close()
		}
	}()

	var procs []*sidecarProc
	defer func() { // all at once: the stops share one grace period
		var wg sync.WaitGroup
		for _, s := range procs {
			wg.Go(func() { s.stop(sidecarStopGrace) })
		}
		wg.Wait()
	}()
	died := make(chan error, len(p.Sidecars)+1)
	env := sidecarEnv(os.Environ())
	serve := map[int]func(net.Listener){}
	for _, sc := range p.Sidecars {
		if sc.External {
			if err := probeEgressProxy(ctx, sc.Port, egressProbeTimeout); err != nil {
				return err
			}
			continue
		}
		if sc.Name == credSidecar {
			// Served here, inside the confined namespace only.
			srv := credServer(newCredProxy(proxyName+":"+strconv.Itoa(sc.Port), p.Credentials, values,
				loopbackAddr(p.Sidecars[0].Port), credUpstream+":443", nil, os.Stderr))
			defer srv.Close()
			serve[sc.Port] = func(ln net.Listener) { srv.Serve(ln) }
			continue
		}
		spec, err := sidecarSpecFor(p, sc, env)
		if err != nil {
			return err
		}
		s, err := startSidecar(ctx, spec, sidecarHealthDeadline)
		if err != nil {
			return err
		}
		procs = append(procs, s)
		go func() {
			<-s.done
			died <- fmt.Errorf("sidecar %s exited: %v", s.name, s.waitErr)
		}()
	}

	gvlog, err := newLogFile(filepath.Join(stage, logsDir), "gvproxy.log")
	if err != nil {
		return err
	}
	defer gvlog.Close()
	ports := make([]int, len(p.Sidecars))
	for i, sc := range p.Sidecars {
		ports[i] = sc.Port
	}
	cn, err := startConfined(ctx, confineSpec{Gvproxy: p.Tools.Gvproxy, Net: p.Net, Stage: p.Stage, Ports: ports, Log: gvlog, Serve: serve})
	if err != nil {
		return err
	}
	defer cn.Close()
	go func() {
		<-cn.Done()
		died <- errors.New("the confined gvproxy exited")
	}()

	self, err := procStart(os.Getpid())
	if err != nil {
		return err
	}
	st := bottleState{Slug: p.Slug, Machine: p.Machine, Subnet: p.Net.N,
		Supervisor: procIdent{PID: os.Getpid(), Start: self}, Canary: canary.Addr().(*net.TCPAddr).Port,
		Gvproxy: cn.GvproxyPID, Up: upIdent}
	data, _ := json.Marshal(st)
	if err := writeFileAtomic(filepath.Join(stage, stateFile), data, 0o600); err != nil {
		return err
	}
	ready(st.Canary)
	keep := []int{cn.InnerPID} // the children whose exec.Cmd reaps them
	for _, s := range procs {
		keep = append(keep, s.cmd.Process.Pid)
	}
	chld := make(chan os.Signal, 1)
	signal.Notify(chld, syscall.SIGCHLD)
	defer signal.Stop(chld)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-died:
			return err
		case <-chld: // an orphan that exited stays a zombie until reaped
			reapOrphans(keep, false)
		case <-tick.C:
			if cur, ok, err := readState(stage); err == nil && ok && !cur.Ready && !upIdent.alive() {
				return errors.New("up died before the bottle was ready: tearing down")
			}
		}
	}
}

// upIdentEnv carries up's pid and start time ("PID:START") to the
// supervisor it starts.
const upIdentEnv = "SMOLBOTTLE_UP"

// parentUp returns the up named by ident ("PID:START") when it is the
// process ppid, this process's parent, still; else nothing (PID 0).
func parentUp(ident string, ppid int) procIdent {
	pid, start, ok := strings.Cut(ident, ":")
	up := procIdent{}
	var err error
	if up.PID, err = strconv.Atoi(pid); !ok || err != nil || up.PID != ppid {
		return procIdent{}
	}
	if up.Start, err = strconv.ParseUint(start, 10, 64); err != nil || !up.alive() {
		return procIdent{}
	}
	return up
}

// raiseNoFile sets the soft descriptor limit to the hard one.
func raiseNoFile() {
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
}

// startSupervisor starts `smolbottle _supervise STAGE` detached and waits
// until it reports ready or failed. The supervisor's output goes to
// logs/supervisor.log; a failure carries its last lines.
func startSupervisor(ctx context.Context, self string, p *plan) (bottleState, error) {
	logf, err := openLog(filepath.Join(p.Stage, logsDir), supervisorLog)
	if err != nil {
		return bottleState{}, err
	}
	defer logf.Close()
	// The log keeps every attempt; a failure shows only this one's lines.
	var from int64
	if fi, err := logf.Stat(); err == nil {
		from = fi.Size()
	}
	values, err := credValues(p.Credentials, os.Getenv)
	if err != nil {
		return bottleState{}, withHint(err, "export it in the shell that runs smolbottle up")
	}
	defer clear(values)
	r, w, err := os.Pipe()
	if err != nil {
		return bottleState{}, err
	}
	defer r.Close()
	// The credential values go through a pipe of their own, which the
	// supervisor reads first thing.
	cr, cw, err := os.Pipe()
	if err != nil {
		w.Close()
		return bottleState{}, err
	}
	defer cw.Close()
	cmd := exec.Command(self, supervisorCmd, p.Stage)
	cmd.Args[0] = "smolbottle"
	upStart, err := procStart(os.Getpid())
	if err != nil {
		return bottleState{}, err
	}
	cmd.Env = append(supervisorEnv(os.Environ()), fmt.Sprintf("%s=%d:%d", upIdentEnv, os.Getpid(), upStart))
	cmd.Dir = p.Stage
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{w, cr}
	// A session of its own: the terminal's SIGINT goes to up, which then
	// runs down; the supervisor must not die half-way on its own.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	w.Close()
	cr.Close()
	if err != nil {
		return bottleState{}, fmt.Errorf("start the supervisor: %w", err)
	}
	pid := cmd.Process.Pid
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }() // reap it if it exits while up still runs

	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(r).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	// On failure the supervisor is stopped and waited for, so that its own
	// teardown (sidecars, gvproxy) is over before up's removes the stage.
	fail := func(err error) (bottleState, error) {
		syscall.Kill(pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(supervisorStopGrace):
			syscall.Kill(pid, syscall.SIGKILL)
			<-exited
		}
		sweepSession(pid)
		return bottleState{}, withTail(err, fileTail(logf.Name(), from, 2<<10))
	}
	// Written after the start, so a small pipe buffer cannot block up; a
	// supervisor that died first makes this fail, and its log says why.
	_, err = cw.Write(values)
	cw.Close()
	if err != nil {
		return fail(fmt.Errorf("hand the credentials to the supervisor: %w", err))
	}
	select {
	case <-ctx.Done():
		return fail(ctx.Err())
	case <-time.After(supervisorReadyTimeout):
		return fail(fmt.Errorf("the supervisor did not become ready within %v", supervisorReadyTimeout))
	case s := <-line:
		if msg, ok := strings.CutPrefix(s, "error "); ok {
			return fail(errors.New(msg))
		}
		if !strings.HasPrefix(s, "ready ") {
			return fail(errors.New("the supervisor exited before it was ready"))
		}
	}
	st, ok, err := readState(p.Stage)
	if err != nil || !ok || st.Supervisor.PID != pid {
		return fail(errors.New("the supervisor did not record its state"))
	}
	return st, nil
}

// stopSupervisor stops a recorded supervisor: SIGTERM, then SIGKILL after
// the grace period; then it kills what is left of its session. A pid that
// now belongs to another process is not signalled.
func stopSupervisor(id procIdent) error {
	if id.alive() {
		syscall.Kill(id.PID, syscall.SIGTERM)
		if !waitGone(id, supervisorStopGrace) {
			syscall.Kill(id.PID, syscall.SIGKILL)
			if !waitGone(id, 2*time.Second) {
				return fmt.Errorf("supervisor pid %d does not die", id.PID)
			}
		}
	}
	sweepSession(id.PID)
	return nil
}

// sweepSession kills what is left of a dead supervisor's session (it
// calls setsid, so the session id is its pid): a sidecar's children that
// outlived their leader, whom Pdeathsig alone reaches, when the supervisor
// was killed. Linux does not reuse a pid that a live session still holds,
// so a process in session sid was started under that supervisor; if the
// pid is alive again, it is another process's, and nothing is touched.
// An empty session frees the pid, which may then be reused while /proc is
// read; a process that took it and called setsid has session sid too. So
// the process whose pid is sid is never killed, and before each kill the
// sweep checks again that no process has pid sid, and stops if one does.
// What it cannot tell apart: the children of such a process after it
// exited again within the sweep.
func sweepSession(sid int) {
	var pids []int
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		if pid, err := strconv.Atoi(d.Name()); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	sweepSessionOf(sid, pids,
		func(pid int) bool { _, err := procStart(pid); return err == nil },
		func(pid int) (string, error) { return procStat(pid, 6) },
		func(pid int) { syscall.Kill(pid, syscall.SIGKILL) })
}

// sweepSessionOf is sweepSession over the given pids, with the process
// table read through lives (a process has this pid) and session (its
// /proc/PID/stat session field), and kill to signal.
func sweepSessionOf(sid int, pids []int, lives func(int) bool, session func(int) (string, error), kill func(int)) {
	if lives(sid) {
		return
	}
	want := strconv.Itoa(sid)
	for _, pid := range pids {
		if pid == sid {
			continue
		}
		if s, err := session(pid); err != nil || s != want {
			continue
		}
		if lives(sid) {
			return
		}
		kill(pid)
	}
}

// reapOrphans waits for this process's children outside keep that have
// exited, or, with kill, kills (SIGKILL) and waits for every one, and then
// for those each leaves it, until no kill succeeds. keep holds the pids an
// exec.Cmd waits for; with kill, none is left. A child's pid is not reused
// before it is waited for, so the scan, the kill and the wait name the
// same process.
func reapOrphans(keep []int, kill bool) {
	for again := true; again; {
		again = false
		for _, pid := range childPids() {
			state, _ := procStat(pid, 3)
			if !slices.Contains(keep, pid) && (kill && syscall.Kill(pid, syscall.SIGKILL) == nil || state == "Z") {
				syscall.Wait4(pid, nil, 0, nil)
				again = kill
			}
		}
	}
}

// childPids lists this process's children: the processes whose
// /proc/PID/stat names it as parent (field 4). /proc/PID/task/TID/children
// is not used: proc(5) says exiting children can hide others there.
func childPids() (pids []int) {
	self := strconv.Itoa(os.Getpid())
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		if pid, err := strconv.Atoi(d.Name()); err == nil {
			if ppid, err := procStat(pid, 4); err == nil && ppid == self {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// waitGone polls for at most d until id is gone; it reports whether it is.
func waitGone(id procIdent, d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if !id.alive() {
			return true
		}
	}
	return false
}

// sidecarSpecFor returns how to start one of the plan's sidecars.
func sidecarSpecFor(p *plan, sc sidecar, env []string) (sidecarSpec, error) {
	logs := filepath.Join(p.Stage, logsDir)
	if sc.Name == "pipelock" {
		return pipelockSidecar(p.Tools.Pipelock, filepath.Join(p.Stage, pipelockFile), sc.Port, p.Stage, logs, env), nil
	}
	if len(sc.Command) == 0 {
		return sidecarSpec{}, fmt.Errorf("sidecar %s has no command: pass -%s-cmd", sc.Name, sc.Name)
	}
	argv, err := expandTemplate(sc.Command, templateVars(sc.Port, p.Stage))
	if err != nil {
		return sidecarSpec{}, err
	}
	return sidecarSpec{Name: sc.Name, Argv: argv, Dir: p.Stage, Env: env, Port: sc.Port, Health: healthTCP, LogDir: logs}, nil
}

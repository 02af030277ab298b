package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestLs(t *testing.T) {
	b := newTestBottle(t, "")
	for _, slug := range []string{"run", "old", "idle", "half", "busy"} {
		p, err := resolvePlan(context.Background(), b.opts(slug), b.env(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := p.writeStage(); err != nil {
			t.Fatal(err)
		}
	}
	writeState(t, filepath.Join(b.state, "run"), bottleState{Slug: "run", Supervisor: selfIdent(t), Ready: true})
	// An up killed midway: its supervisor lives, the machine may not.
	writeState(t, filepath.Join(b.state, "half"), bottleState{Slug: "half", Supervisor: selfIdent(t), Up: procIdent{PID: os.Getpid(), Start: 1}})
	writeState(t, filepath.Join(b.state, "busy"), bottleState{Slug: "busy", Supervisor: selfIdent(t), Up: selfIdent(t)})
	writeState(t, filepath.Join(b.state, "old"), bottleState{Slug: "old", Supervisor: procIdent{PID: os.Getpid(), Start: 1}})
	os.Mkdir(filepath.Join(b.state, "not-a-stage"), 0o700)
	t.Setenv("SMOLBOTTLE_STATE", b.state)

	var out, errb bytes.Buffer
	if err := runCLI(context.Background(), []string{"ls", "-json"}, &out, &errb); err != nil {
		t.Fatalf("ls: %v %s", err, errb.String())
	}
	var got []bottleInfo
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("ls -json: %v\n%s", err, out.String())
	}
	want := map[string]string{"idle": "planned", "old": "stale", "run": "running", "half": "stale", "busy": "starting"}
	if len(got) != len(want) {
		t.Fatalf("ls = %+v, want %d bottles", got, len(want))
	}
	for _, g := range got {
		if want[g.Slug] != g.State || g.Machine != machineName(g.Slug) {
			t.Errorf("bottle %+v, want state %q", g, want[g.Slug])
		}
	}
	out.Reset()
	if err := runCLI(context.Background(), []string{"ls"}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out.Bytes(), []byte("SLUG")) || !bytes.Contains(out.Bytes(), []byte("stale")) {
		t.Errorf("ls table:\n%s", out.String())
	}
}

// staticSmolbottle builds smolbottle without cgo, as the guest needs it,
// and points up at it.
func staticSmolbottle(t *testing.T) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "smolbottle")
	cmd := exec.Command("go", "build", "-o", out, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("static build: %v\n%s", err, b)
	}
	testOnlyGuestSelf = out
	t.Cleanup(func() { testOnlyGuestSelf = "" })
}

// useBottle points the process environment at the test bottle, for tests
// that drive the CLI through run.
func useBottle(t *testing.T, b testBottle) *fakeSmolvmBin {
	t.Setenv("PATH", b.path)
	t.Setenv("SMOLBOTTLE_STATE", b.state)
	t.Setenv("ANTHROPIC_API_KEY", testSecret)
	return &fakeSmolvmBin{dir: b.path, path: filepath.Join(b.path, "smolvm")}
}

// processesMentioning lists live processes whose argv or root holds s.
func processesMentioning(t *testing.T, s string) []string {
	t.Helper()
	var out []string
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		// gvproxy's argv is /gvproxy -config /gvproxy.yaml: it is found by
		// its root, the jail in the stage.
		// Every smolvm call runs in the stage: it is found by its cwd.
		root, _ := os.Readlink(filepath.Join("/proc", d.Name(), "root"))
		cwd, _ := os.Readlink(filepath.Join("/proc", d.Name(), "cwd"))
		if err == nil && (bytes.Contains(b, []byte(s)) || strings.Contains(root, s) || strings.Contains(cwd, s)) {
			stat, _ := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
			if !bytes.Contains(stat, []byte(") Z ")) { // a zombie holds nothing
				out = append(out, d.Name()+": "+strings.ReplaceAll(string(b), "\x00", " "))
			}
		}
	}
	return out
}

// assertTornDown checks that a bottle left nothing but its logs: no
// process that names its stage, no machine, no file outside logs/, and no
// secret value anywhere in the stage.
func assertTornDown(t *testing.T, b testBottle, f *fakeSmolvmBin, slug string) {
	t.Helper()
	stage := filepath.Join(b.state, slug)
	var left []string
	for range 100 { // Pdeathsig is asynchronous: give the kernel a moment
		if left = processesMentioning(t, stage); len(left) == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(left) > 0 {
		t.Errorf("processes left running: %q", left)
	}
	if _, ok := f.state(t).Machines[machineName(slug)]; ok {
		t.Errorf("machine %s left behind", machineName(slug))
	}
	entries, _ := os.ReadDir(stage)
	for _, e := range entries {
		if e.Name() != logsDir {
			t.Errorf("%s left in the stage", e.Name())
		}
	}
	filepath.WalkDir(stage, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if data, _ := os.ReadFile(p); bytes.Contains(data, []byte(testSecret)) {
				t.Errorf("%s holds the secret value", p)
			}
		}
		return nil
	})
	for _, r := range f.records(t) {
		if strings.Contains(strings.Join(r.Argv, " "), testSecret) {
			t.Errorf("smolvm argv holds the secret value: %q", r.Argv)
		}
	}
}

func (b testBottle) upArgs(slug string, extra ...string) []string {
	return append([]string{"up", "-q", "-image", b.image, "-workspace", b.workspace, slug}, extra...)
}

// TestUpGuestNetworkNeverComesUp makes every guest exec fail: up must say
// so, and tear down the supervisor, the sidecar, gvproxy and the machine.
func TestUpGuestNetworkNeverComesUp(t *testing.T) {
	b := newTestBottle(t, "")
	staticSmolbottle(t)
	f := useBottle(t, b)
	f.control(t, fakeControl{Fail: map[string]string{"exec": "connect: guest agent did not answer"}})
	var out, errb bytes.Buffer
	err := runCLI(context.Background(), b.upArgs("net"), &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "prepare the guest") {
		t.Fatalf("up = %v, want the first guest step (prepare) to fail", err)
	}
	if !madeMachine(t, f) {
		t.Errorf("up failed before creating the machine; the fault was meant for the guest network")
	}
	assertTornDown(t, b, f, "net")
	for _, log := range []string{"supervisor.log", "pipelock.log", "gvproxy.log"} {
		if _, err := os.Stat(filepath.Join(b.state, "net", logsDir, log)); err != nil {
			t.Errorf("log %s not kept: %v", log, err)
		}
	}
	// The kept logs do not stop the slug from being planned again.
	if err := runCLI(context.Background(), []string{"plan", "-image", b.image, "-workspace", b.workspace, "net"}, &out, &errb); err != nil {
		t.Errorf("plan after a failed up: %v", err)
	}
}

// TestUpTeardownFails: when the teardown of a failed up fails too, up says
// both, keeps the failure's own hints, and says how to finish the
// teardown; typed, that command does.
func TestUpTeardownFails(t *testing.T) {
	b := newTestBottle(t, "")
	staticSmolbottle(t)
	f := useBottle(t, b)
	f.control(t, fakeControl{Fail: map[string]string{"exec": "connect: guest agent did not answer", "delete": "database is locked"}})
	var out, errb bytes.Buffer
	code := exitCode(&errb, runCLI(context.Background(), b.upArgs("td"), &out, &errb))
	const want = "smolbottle: hint: finish the teardown with: smolbottle down td\n"
	if code != 1 || !strings.Contains(errb.String(), "(and teardown: ") || !strings.HasSuffix(errb.String(), want) {
		t.Fatalf("up with a failing teardown: exit %d\n%s\nwant it to end with %q", code, errb.String(), want)
	}
	f.control(t, fakeControl{})
	if err := runCLI(context.Background(), []string{"down", "td"}, &out, &errb); err != nil {
		t.Fatalf("down td, as the hint says: %v", err)
	}
	assertTornDown(t, b, f, "td")
}

// TestUpSidecarFails gives git-gate a command that exits at once.
func TestUpSidecarFails(t *testing.T) {
	b := newTestBottle(t, "")
	staticSmolbottle(t)
	f := useBottle(t, b)
	var out, errb bytes.Buffer
	err := runCLI(context.Background(), b.upArgs("side", "-git-gate", "-git-gate-cmd", "/bin/false {port}"), &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "git-gate") {
		t.Fatalf("up = %v, want a git-gate failure", err)
	}
	if madeMachine(t, f) {
		t.Errorf("machine created although a sidecar failed")
	}
	assertTornDown(t, b, f, "side")
}

// TestUpMachineAlreadyExists: a machine of the same name that up did not
// create is reported and left alone, and up finds it before it runs
// create: the teardown of a create interrupted before smolvm saw the name
// taken would delete it.
func TestUpMachineAlreadyExists(t *testing.T) {
	b := newTestBottle(t, "")
	staticSmolbottle(t)
	f := useBottle(t, b)
	if out, err := exec.Command(f.path, "machine", "create", "--name", machineName("dup"), "--image", b.image).CombinedOutput(); err != nil {
		t.Fatalf("pre-create: %v %s", err, out)
	}
	var out, errb bytes.Buffer
	err := runCLI(context.Background(), b.upArgs("dup"), &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("up = %v, want already exists", err)
	}
	exitCode(&errb, err)
	if hint := "smolvm machine delete --name smolbottle-dup -f"; !strings.Contains(errb.String(), hint) {
		t.Errorf("stderr %q lacks the hint %q", errb.String(), hint)
	}
	if _, ok := f.state(t).Machines[machineName("dup")]; !ok {
		t.Errorf("up deleted a machine it did not create")
	}
	creates := 0
	for _, r := range f.records(t) {
		if len(r.Argv) > 2 && r.Argv[1] == "create" && r.Argv[2] == "--name" {
			creates++
		}
	}
	if creates != 1 {
		t.Errorf("smolvm machine create ran %d times, want once (the test's own)", creates)
	}
	if left := processesMentioning(t, filepath.Join(b.state, "dup")); len(left) > 0 {
		t.Errorf("processes left: %q", left)
	}
}

// writtenPlan plans the bottle opts describes and writes its stage.
func writtenPlan(t *testing.T, b testBottle, opts planOptions) *plan {
	t.Helper()
	p, err := resolvePlan(context.Background(), opts, b.env(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.writeStage(); err != nil {
		t.Fatal(err)
	}
	return p
}

// startTestSupervisor plans the bottle opts describes, writes its stage
// and starts its supervisor, planning again when a port was taken between
// its allocation and the sidecar's bind by another test, as up does.
func startTestSupervisor(t *testing.T, b testBottle, opts planOptions) (*plan, bottleState) {
	t.Helper()
	self, _ := os.Executable()
	for try := 1; ; try++ {
		p := writtenPlan(t, b, opts)
		st, err := startSupervisor(context.Background(), self, p)
		if err == nil {
			return p, st
		}
		if !errors.Is(err, errPortTaken) || try == upPortTries {
			t.Fatal(err)
		}
	}
}

// TestSupervisorKilled kills the supervisor with SIGKILL: its children die
// with it, ls and plan see a stale bottle, and down cleans it up, twice.
func TestSupervisorKilled(t *testing.T) {
	b := newTestBottle(t, "")
	f := useBottle(t, b)
	p, st := startTestSupervisor(t, b, b.opts("kill"))
	if n := len(processesMentioning(t, p.Stage)); n < 2 {
		t.Fatalf("%d processes name the stage, want the supervisor and its children", n)
	}
	gvStart, err := procStart(st.Gvproxy)
	if err != nil {
		t.Fatalf("gvproxy pid %d from the state file: %v", st.Gvproxy, err)
	}
	if err := syscall.Kill(st.Supervisor.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for range 200 {
		if !st.Supervisor.alive() {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	gv := procIdent{PID: st.Gvproxy, Start: gvStart}
	for i := 0; i < 200 && gv.alive(); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if gv.alive() {
		t.Errorf("gvproxy (pid %d) outlived its supervisor", gv.PID)
	}
	bottles, _ := listBottles(b.state)
	if len(bottles) != 1 || bottles[0].State != "stale" {
		t.Errorf("ls = %+v, want one stale bottle", bottles)
	}
	if _, err := resolvePlan(context.Background(), b.opts("kill"), b.env(t)); err == nil || !strings.Contains(err.Error(), "stale") {
		t.Errorf("plan over a stale bottle = %v, want refused", err)
	}
	for i := range 2 {
		var out, errb bytes.Buffer
		if err := runCLI(context.Background(), []string{"down", "kill"}, &out, &errb); err != nil {
			t.Fatalf("down #%d: %v", i+1, err)
		}
	}
	deletes := 0
	for _, r := range f.records(t) {
		if strings.Join(r.Argv, " ") == "machine delete --name smolbottle-kill -f" {
			deletes++
		}
	}
	if deletes == 0 {
		t.Errorf("down of a crashed bottle did not delete its machine")
	}
	assertTornDown(t, b, f, "kill")
}

func init() { fakes["forking-sidecar"] = forkingSidecar }

// forkingSidecar stands in for a git-gate whose child daemonizes:
//
//	forking-sidecar PORT    runs "fork" to its end, then accepts on 127.0.0.1:PORT
//	forking-sidecar fork    starts "daemon long" and "daemon short", each in a
//	                        session of its own (setsid), and exits at once
//	forking-sidecar daemon NAME
//	                        writes "PID START" to NAME.pid beside the program;
//	                        long then sleeps, short exits after 500 ms
func forkingSidecar(args []string) int {
	switch {
	case len(args) == 1 && args[0] == "fork":
		for _, name := range []string{"long", "short"} {
			cmd := exec.Command(os.Args[0], "daemon", name)
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			if err := cmd.Start(); err != nil {
				return 1
			}
		}
		return 0
	case len(args) == 2 && args[0] == "daemon":
		start, _ := procStart(os.Getpid())
		pidFile := filepath.Join(filepath.Dir(os.Args[0]), args[1]+".pid")
		os.WriteFile(pidFile, fmt.Appendf(nil, "%d %d", os.Getpid(), start), 0o600)
		if args[1] == "short" {
			time.Sleep(500 * time.Millisecond)
			return 0
		}
		time.Sleep(time.Hour)
		return 0
	case len(args) == 1:
		if err := exec.Command(os.Args[0], "fork").Run(); err != nil {
			return 1
		}
		ln, err := net.Listen("tcp", "127.0.0.1:"+args[0])
		if err != nil {
			return 1
		}
		for {
			c, err := ln.Accept()
			if err != nil {
				return 1
			}
			c.Close()
		}
	}
	return 2
}

// TestSupervisorKillsOrphans: a sidecar's child that left the sidecar's
// process group and the supervisor's session (a double fork and setsid),
// which neither stopping the sidecar nor down's session sweep reaches,
// becomes the supervisor's child (its subreaper): one that exits while the
// bottle runs is reaped, and the supervisor's teardown kills the rest.
func TestSupervisorKillsOrphans(t *testing.T) {
	b := newTestBottle(t, "")
	useBottle(t, b)
	opts := b.opts("orphan")
	opts.GitGate, opts.GitGateCmd = true, linkAs(t, b.path, "forking-sidecar")+" {port}"
	_, st := startTestSupervisor(t, b, opts)
	t.Cleanup(func() { stopSupervisor(st.Supervisor) })
	daemon := func(name string) procIdent {
		var id procIdent
		for range 250 {
			if data, err := os.ReadFile(filepath.Join(b.path, name+".pid")); err == nil {
				if _, err := fmt.Sscanf(string(data), "%d %d", &id.PID, &id.Start); err == nil {
					return id
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("the sidecar's daemon %s wrote no pid", name)
		return id
	}
	gone := func(id procIdent, zombieToo bool) bool {
		for range 250 {
			if state, _ := procStat(id.PID, 3); !id.alive() || zombieToo && state == "Z" {
				return true
			}
			time.Sleep(20 * time.Millisecond)
		}
		return false
	}
	long, short := daemon("long"), daemon("short")
	t.Cleanup(func() {
		if long.alive() {
			syscall.Kill(long.PID, syscall.SIGKILL)
		}
	})
	sup := strconv.Itoa(st.Supervisor.PID)
	if ppid, err := procStat(long.PID, 4); err != nil || ppid != sup {
		t.Fatalf("the orphaned daemon's parent is %q (%v), want the supervisor %s", ppid, err, sup)
	}
	if sid, err := procStat(long.PID, 6); err != nil || sid == sup {
		t.Fatalf("the daemon's session is %q (%v): want one of its own, out of the sweep's reach", sid, err)
	}
	if !gone(short, false) {
		t.Errorf("the orphan that exited while the bottle ran is left a zombie of the supervisor")
	}
	if err := stopSupervisor(st.Supervisor); err != nil {
		t.Fatal(err)
	}
	if !gone(long, true) {
		t.Errorf("the sidecar's daemon (pid %d) outlived the supervisor's teardown", long.PID)
	}
}

// TestSupervisorPortTaken takes pipelock's port between allocation and
// bind: the supervisor fails, says so and leaves nothing running.
func TestSupervisorPortTaken(t *testing.T) {
	b := newTestBottle(t, "")
	p := writtenPlan(t, b, b.opts("port"))
	ln, err := net.Listen("tcp", loopbackAddr(p.Sidecars[0].Port))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	self, _ := os.Executable()
	_, err = startSupervisor(context.Background(), self, p)
	if err == nil || !strings.Contains(err.Error(), "taken between allocation and bind") {
		t.Fatalf("startSupervisor = %v, want port taken", err)
	}
	time.Sleep(100 * time.Millisecond)
	if left := processesMentioning(t, p.Stage); len(left) > 0 {
		t.Errorf("processes left: %q", left)
	}
}

// TestSupervisorPortTakenReplans: when a sidecar's port is taken between
// allocation and bind (here by a listener; in life, by any program's
// outbound connection taking the freed ephemeral port), up plans new ports
// and starts the supervisor again instead of failing. The guest directory
// up filled before keeps its binaries and its 0755 mode: the self-test
// runs as the image's user, who must still reach them.
func TestSupervisorPortTakenReplans(t *testing.T) {
	b := newTestBottle(t, "")
	staticSmolbottle(t)
	p, err := resolvePlan(context.Background(), b.opts("replan"), b.env(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.writeStage(); err != nil {
		t.Fatal(err)
	}
	self, _ := os.Executable()
	if err := fillGuestDir(p, self); err != nil {
		t.Fatal(err)
	}
	taken := p.Sidecars[0].Port
	ln, err := net.Listen("tcp", loopbackAddr(taken))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	replans := 0
	replan := func() (*plan, error) {
		replans++
		return resolvePlan(context.Background(), b.opts("replan"), b.env(t))
	}
	np, st, err := startSupervisorPorts(context.Background(), self, p, replan, &progress{})
	if err != nil {
		t.Fatalf("startSupervisorPorts: %v", err)
	}
	defer stopSupervisor(st.Supervisor)
	if replans != 1 || np.Sidecars[0].Port == taken {
		t.Errorf("replanned %d times, pipelock on %d (taken: %d); want one new plan with a new port", replans, np.Sidecars[0].Port, taken)
	}
	if on, err := readPlan(p.Stage); err != nil || on.Sidecars[0].Port != np.Sidecars[0].Port {
		t.Errorf("the stage's plan.json is not the plan that runs: %v", err)
	}
	guest := filepath.Join(p.Stage, guestDir)
	for name, want := range map[string]os.FileMode{"": guestDirMode, "gvforwarder": guestBinMode, "smolbottle": guestBinMode} {
		fi, err := os.Stat(filepath.Join(guest, name))
		if err != nil {
			t.Errorf("guest/%s after a replan: %v", name, err)
		} else if fi.Mode().Perm() != want {
			t.Errorf("guest/%s after a replan is mode %v, want %v", name, fi.Mode().Perm(), want)
		}
	}
	if err := stopSupervisor(st.Supervisor); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if left := processesMentioning(t, p.Stage); len(left) > 0 {
		t.Errorf("processes left: %q", left)
	}
}

func TestLifecycleArgs(t *testing.T) {
	b := newTestBottle(t, "")
	f := useBottle(t, b)
	p, err := resolvePlan(context.Background(), b.opts("args"), b.env(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.writeStage(); err != nil {
		t.Fatal(err)
	}
	ps, err := resolvePlan(context.Background(), b.opts("stale"), b.env(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := ps.writeStage(); err != nil {
		t.Fatal(err)
	}
	writeState(t, ps.Stage, bottleState{Slug: "stale", Supervisor: procIdent{PID: os.Getpid(), Start: 1}})
	colon := filepath.Join(b.dir, "a:b")
	os.WriteFile(colon, nil, 0o600)
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"down", "never-planned"}, 0, ""},
		{[]string{"down"}, 2, "down takes one SLUG"},
		{[]string{"exec", "args"}, 2, "exec takes SLUG -- CMD"},
		{[]string{"exec", "nope", "--", "true"}, 1, `no bottle "nope"`},
		{[]string{"exec", "args", "--", "true"}, 1, `bottle "args" is not up`},
		{[]string{"cp", "args", b.image, "/tmp/x"}, 1, `bottle "args" is not up`},
		{[]string{"exec", "stale", "--", "true"}, 1, `bottle "stale" is stale`},
		{[]string{"cp", "args", b.workspace, "/tmp/x"}, 1, "is a directory"},
		{[]string{"cp", "args", colon, "/tmp/x"}, 1, "smolvm would misread"},
		{[]string{"cp", "args", "/nonexistent/file", "/tmp/x"}, 1, "no such file"},
		{[]string{"cp", "args", b.image}, 2, "cp takes SLUG HOST_FILE GUEST_PATH"},
		{[]string{"up", "-image", b.image, "-git-gate-cmd", "x", "args"}, 2, "-git-gate-cmd given without -git-gate"},
	}
	for _, tt := range tests {
		var out, errb bytes.Buffer
		err := runCLI(context.Background(), tt.args, &out, &errb)
		code := exitCode(&errb, err)
		if code != tt.code || !strings.Contains(errb.String(), tt.want) {
			t.Errorf("%q: exit %d stderr %q, want %d and %q", tt.args, code, errb.String(), tt.code, tt.want)
		}
	}
	var out, errb bytes.Buffer
	// down -n says what down does: after a mere plan, no machine delete.
	if err := runCLI(context.Background(), []string{"down", "-n", "args"}, &out, &errb); err != nil || strings.Contains(out.String(), "machine delete") || !strings.Contains(out.String(), "plan.json") {
		t.Errorf("down -n: %v\n%s", err, out.String())
	}
	if _, err := os.Stat(filepath.Join(p.Stage, smolfileName)); err != nil {
		t.Errorf("down -n removed files: %v", err)
	}
	// A bottle that was only planned never ran a machine: down removes its
	// stage and deletes no machine (one of that name may be another
	// stage's).
	if err := runCLI(context.Background(), []string{"down", "args"}, &out, &errb); err != nil {
		t.Fatalf("down after plan: %v", err)
	}
	for _, r := range f.records(t) {
		if len(r.Argv) > 1 && r.Argv[1] == "delete" {
			t.Errorf("down of a planned-only bottle ran %q", r.Argv)
		}
	}
	assertTornDown(t, b, f, "args")
}

// madeMachine reports whether the fake ran machine create (not --help).
func madeMachine(t *testing.T, f *fakeSmolvmBin) bool {
	for _, r := range f.records(t) {
		if len(r.Argv) > 2 && r.Argv[1] == "create" && r.Argv[2] == "--name" {
			return true
		}
	}
	return false
}

// TestUpInterrupted cancels up (as SIGINT does) while the machine boots:
// up returns, and what it started is gone, the machine it created too.
func TestUpInterrupted(t *testing.T) {
	b := newTestBottle(t, "")
	staticSmolbottle(t)
	f := useBottle(t, b)
	f.control(t, fakeControl{Hang: map[string]bool{"start": true}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		var out, errb bytes.Buffer
		done <- runCLI(ctx, b.upArgs("intr"), &out, &errb)
	}()
	// Wait until up is inside machine start, then interrupt it.
	deadline := time.Now().Add(30 * time.Second)
	for !madeMachine(t, f) || !startRan(t, f) {
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("up never reached machine start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("interrupted up succeeded")
		}
		if !strings.HasPrefix(err.Error(), "interrupted: ") {
			t.Errorf("interrupted up = %q, want it to say it was interrupted", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("up did not return after the interrupt")
	}
	assertTornDown(t, b, f, "intr")
}

func startRan(t *testing.T, f *fakeSmolvmBin) bool {
	for _, r := range f.records(t) {
		if len(r.Argv) > 2 && r.Argv[1] == "start" && r.Argv[2] == "--name" {
			return true
		}
	}
	return false
}

// TestUpLocked: while one plan, up or down holds a bottle's stage, an up
// or a plan of it is refused before it touches anything.
func TestUpLocked(t *testing.T) {
	b := newTestBottle(t, "")
	staticSmolbottle(t)
	f := useBottle(t, b)
	unlock, err := lockStage(filepath.Join(b.state, "busy"))
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	var out, errb bytes.Buffer
	err = runCLI(context.Background(), b.upArgs("busy"), &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "another smolbottle plan, up or down is working on stage") {
		t.Fatalf("up = %v, want refused", err)
	}
	err = runCLI(context.Background(), []string{"plan", "-image", b.image, "-workspace", b.workspace, "busy"}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "another smolbottle plan, up or down is working on stage") {
		t.Fatalf("plan = %v, want refused", err)
	}
	for _, r := range f.records(t) {
		if len(r.Argv) > 2 && r.Argv[2] == "--name" {
			t.Errorf("a refused up ran %q", r.Argv)
		}
	}
	if _, err := os.Stat(filepath.Join(b.state, "busy")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused up or plan created the stage")
	}
	// Bad input is refused before the lock: nothing is written at all.
	os.RemoveAll(b.state)
	err = runCLI(context.Background(), []string{"up", "-image", filepath.Join(b.dir, "missing.tar"), "nolock"}, &out, &errb)
	if err == nil {
		t.Fatal("up with a missing image succeeded")
	}
	if _, err := os.Stat(b.state); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("up with bad input wrote the state root")
	}
}

// TestDownTrustsOnlyItsOwnStage: down reads plan.json and state.json only
// from a private stage of the user's, each a file of theirs that nobody
// else may write, and removes only what is directly in the stage, whatever
// plan.json lists.
func TestDownTrustsOnlyItsOwnStage(t *testing.T) {
	b := newTestBottle(t, "")
	t.Setenv("SMOLBOTTLE_STATE", b.state)
	ctx := context.Background()
	victim := filepath.Join(b.dir, "victim")
	// plant writes slug's stage, then has its plan.json list the victim,
	// the stage itself and the stage's parent for removal.
	plant := func(t *testing.T, slug string, edit func(m map[string]any)) string {
		t.Helper()
		if err := os.WriteFile(victim, []byte("keep me"), 0o600); err != nil {
			t.Fatal(err)
		}
		p, err := resolvePlan(ctx, b.opts(slug), b.env(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := p.writeStage(); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(p.Stage, planFile)
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatal(err)
		}
		c := m["cleanup"].(map[string]any)
		c["remove"] = append(c["remove"].([]any), victim, p.Stage, filepath.Join(p.Stage, ".."))
		if edit != nil {
			edit(m)
		}
		data, _ = json.Marshal(m)
		if err := writeFileAtomic(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p.Stage
	}
	const nobody = 65534
	tests := []struct {
		name     string
		set      func(t *testing.T, stage string)
		want     string
		needRoot bool // to give a file away
	}{
		// down removes the rest: see the end of the loop.
		{"plan lists paths outside the stage", func(*testing.T, string) {}, "down removes only what is directly in the stage", false},
		{"stage open to all", func(_ *testing.T, stage string) { os.Chmod(stage, 0o777) }, "smolbottle makes it 0700", false},
		{"stage group-readable", func(_ *testing.T, stage string) { os.Chmod(stage, 0o750) }, "smolbottle makes it 0700", false},
		{"plan writable by others", func(_ *testing.T, stage string) { os.Chmod(filepath.Join(stage, planFile), 0o666) }, "smolbottle writes it 0600", false},
		{"plan a symlink", func(t *testing.T, stage string) {
			moved := filepath.Join(b.dir, "moved-plan.json")
			if err := os.Rename(filepath.Join(stage, planFile), moved); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(moved, filepath.Join(stage, planFile)); err != nil {
				t.Fatal(err)
			}
		}, "is a symlink", false},
		{"stage not ours", func(_ *testing.T, stage string) { os.Chown(stage, nobody, nobody) }, "is not owned by you", true},
		{"plan not ours", func(_ *testing.T, stage string) { os.Chown(filepath.Join(stage, planFile), nobody, nobody) }, "is not owned by you", true},
		{"state not ours", func(_ *testing.T, stage string) {
			writeState(t, stage, bottleState{Slug: filepath.Base(stage), Supervisor: procIdent{PID: 1 << 22, Start: 1}})
			os.Chown(filepath.Join(stage, stateFile), nobody, nobody)
		}, "is not owned by you", true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.needRoot && os.Getuid() != 0 {
				t.Skip("giving a file to another user needs root")
			}
			slug := "trust" + strconv.Itoa(i)
			stage := plant(t, slug, nil)
			tt.set(t, stage)
			var out, errb bytes.Buffer
			err := runCLI(ctx, []string{"down", slug}, &out, &errb)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("down = %v, want %q", err, tt.want)
			}
			if _, err := os.Stat(victim); err != nil {
				t.Errorf("down removed a path outside its stage: %v", err)
			}
			if _, err := os.Stat(filepath.Join(stage, logsDir)); err != nil {
				t.Errorf("down removed the stage or its logs: %v", err)
			}
			_, err = os.Stat(filepath.Join(stage, smolfileName))
			if gone := errors.Is(err, os.ErrNotExist); gone != (i == 0) {
				t.Errorf("Smolfile removed: %v, want %v (only a trusted plan is torn down)", gone, i == 0)
			}
		})
	}
	// A stage reached through a symlink (as a stage pointer may name one)
	// is refused, even when its plan names that very path.
	link := filepath.Join(b.dir, "link")
	real := plant(t, "viasymlink", func(m map[string]any) { m["stage"] = link })
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if _, err := readPlan(link); err == nil || !strings.Contains(err.Error(), "is a symlink") {
		t.Errorf("readPlan through a symlinked stage = %v, want it refused", err)
	}
}

// TestMarkReadyWithoutState: a stage whose state file is gone says so,
// and markReady writes none.
func TestMarkReadyWithoutState(t *testing.T) {
	stage := t.TempDir()
	err := markReady(stage)
	if err == nil || strings.Contains(err.Error(), "<nil>") || !strings.Contains(err.Error(), stateFile+" is gone") {
		t.Errorf("markReady without a state file = %v, want that it is gone", err)
	}
	if _, err := os.Stat(filepath.Join(stage, stateFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("markReady wrote a state file: %v", err)
	}
}

// TestStageThroughSymlinkIntoWorkspace: a stage whose path leads through a
// symlink into the workspace is refused, since the guest could rewrite it.
func TestStageThroughSymlinkIntoWorkspace(t *testing.T) {
	b := newTestBottle(t, "")
	link := filepath.Join(b.dir, "link")
	if err := os.Symlink(b.workspace, link); err != nil {
		t.Fatal(err)
	}
	opts := b.opts("sym")
	opts.Stage = filepath.Join(link, "stage")
	_, err := resolvePlan(context.Background(), opts, b.env(t))
	if err == nil || !strings.Contains(err.Error(), "overlap") {
		t.Fatalf("resolvePlan = %v, want the overlap refused", err)
	}
	if _, err := os.Stat(filepath.Join(b.workspace, "stage")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the stage was created inside the workspace")
	}
}

func TestJudgeProbes(t *testing.T) {
	pl := startupProbePlan(netFor(9), []int{4001}, 4002)
	pass := make([]probeResult, len(pl.Probes))
	for i, p := range pl.Probes {
		pass[i] = probeResult{Name: p.Name, Kind: p.Kind, Pass: true}
	}
	if err := judgeProbes(pl, pass); err != nil {
		t.Errorf("all rows pass: %v", err)
	}
	leak := slices.Clone(pass)
	for i := range leak {
		if strings.Contains(leak[i].Name, "canary") {
			leak[i].Pass, leak[i].Detail = false, "connected to 192.168.9.254:4002"
		}
	}
	if err := judgeProbes(pl, leak); err == nil || !strings.Contains(err.Error(), "host loopback canary 192.168.9.254:4002 (connected") {
		t.Errorf("a forbidden row that connected: %v, want it named", err)
	}
	if err := judgeProbes(pl, pass[:len(pass)-1]); err == nil || !strings.Contains(err.Error(), "results for") {
		t.Errorf("a missing row: %v, want refused", err)
	}
}

// TestParentUp: the supervisor takes its parent for up only while the
// parent is the very process up named (pid and start time); a subreaper or
// init that inherited it after up died is not.
func TestParentUp(t *testing.T) {
	self := selfIdent(t)
	ident := fmt.Sprintf("%d:%d", self.PID, self.Start)
	if got := parentUp(ident, self.PID); got != self {
		t.Errorf("parentUp(%q, own pid) = %v, want %v", ident, got, self)
	}
	for _, tc := range []struct {
		ident string
		ppid  int
	}{
		{ident, 1}, // up is gone: init took the supervisor over
		{fmt.Sprintf("%d:%d", self.PID, self.Start+1), self.PID}, // the pid is another process's now
		{"", self.PID}, {"x:1", self.PID}, {fmt.Sprint(self.PID), self.PID},
	} {
		if got := parentUp(tc.ident, tc.ppid); got.PID != 0 {
			t.Errorf("parentUp(%q, %d) = %v, want none", tc.ident, tc.ppid, got)
		}
	}
}

// TestSweepSession: a process left in a dead supervisor's session (a
// sidecar's child, which Pdeathsig does not reach) is killed; nothing is
// touched while the session's leader lives.
func TestSweepSession(t *testing.T) {
	leader := exec.Command("sh", "-c", "sleep 300 & echo $!; exec sleep 300")
	leader.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	out, err := leader.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := leader.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	left, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(left, syscall.SIGKILL)
	dead := func() bool {
		state, err := procStat(left, 3)
		return err != nil || state == "Z"
	}
	sweepSession(leader.Process.Pid)
	if dead() {
		t.Fatal("the sweep killed a process while its session's leader lives")
	}
	leader.Process.Kill()
	leader.Wait()
	if dead() {
		t.Fatal("the session's other process died with its leader: nothing to sweep")
	}
	sweepSession(leader.Process.Pid)
	for deadline := time.Now().Add(5 * time.Second); !dead(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the process left in the dead supervisor's session still runs")
		}
	}
}

// TestSweepSessionPidReused: the session's pid, freed when the session
// emptied, may be taken while the sweep runs by a process that calls
// setsid and so has that session id too: the process whose pid is the
// session id is never killed, and the sweep stops as soon as a process
// with that pid exists.
func TestSweepSessionPidReused(t *testing.T) {
	const sid = 4242
	leaderBack := false
	var killed []int
	lives := func(pid int) bool { return pid == sid && leaderBack }
	session := func(pid int) (string, error) { return strconv.Itoa(sid), nil }
	kill := func(pid int) {
		killed = append(killed, pid)
		if pid == 11 {
			leaderBack = true // the pid is reused after this kill
		}
	}
	sweepSessionOf(sid, []int{sid, 10, 11, 12}, lives, session, kill)
	if !slices.Equal(killed, []int{10, 11}) {
		t.Fatalf("killed %v, want [10 11]: never pid %d, nothing once it lives again", killed, sid)
	}
	killed = nil
	sweepSessionOf(sid, []int{10}, lives, session, kill)
	if len(killed) != 0 {
		t.Fatalf("killed %v while pid %d lives", killed, sid)
	}
}

// TestUpFailedStageLeavesNoPointer: an up -stage that fails after it
// recorded the slug's pointer removes the pointer with the rest: only the
// stage's logs are left.
func TestUpFailedStageLeavesNoPointer(t *testing.T) {
	b := newTestBottle(t, "")
	staticSmolbottle(t)
	f := useBottle(t, b)
	f.control(t, fakeControl{Fail: map[string]string{"exec": "connect: guest agent did not answer"}})
	stage := filepath.Join(b.dir, "other")
	var out, errb bytes.Buffer
	err := runCLI(context.Background(), b.upArgs("ptr", "-stage", stage), &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "prepare the guest") {
		t.Fatalf("up = %v, want the first guest step (prepare) to fail", err)
	}
	if _, err := os.Lstat(stageLinkPath(b.state, "ptr")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the failed up left its stage pointer: %v", err)
	}
	entries, _ := os.ReadDir(stage)
	for _, e := range entries {
		if e.Name() != logsDir {
			t.Errorf("%s left in the stage", e.Name())
		}
	}
	if left := processesMentioning(t, stage); len(left) > 0 {
		t.Errorf("processes left: %q", left)
	}
}

// TestUpFailedPointerLeavesOnlyLogs: an up that fails right after writing
// the stage (its pointer cannot be recorded) tears the stage down to its
// logs, as any later failure does.
func TestUpFailedPointerLeavesOnlyLogs(t *testing.T) {
	b := newTestBottle(t, "")
	staticSmolbottle(t)
	useBottle(t, b)
	stage := filepath.Join(b.dir, "other")
	if err := os.MkdirAll(stageLinkPath(b.state, "ptr"), 0o700); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if err := runCLI(context.Background(), b.upArgs("ptr", "-stage", stage), &out, &errb); err == nil {
		t.Fatal("up succeeded with a directory where its pointer goes")
	}
	entries, _ := os.ReadDir(stage)
	for _, e := range entries {
		if e.Name() != logsDir {
			t.Errorf("%s left in the stage", e.Name())
		}
	}
}

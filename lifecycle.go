package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"
)

// bottleInfo is one line of smolbottle ls.
type bottleInfo struct {
	Slug    string `json:"slug"`
	State   string `json:"state"` // planned, starting, running, stale
	Machine string `json:"machine"`
	Subnet  string `json:"subnet"`
	Stage   string `json:"stage"`
}

// listBottles reads every stage under root, and every stage a pointer
// under root names (bottles planned with -stage). A stage with a state
// file is running, starting or stale (bottleState.stateWord); one with only
// a plan is planned.
func listBottles(root string) ([]bottleInfo, error) {
	entries, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var stages []string
	for _, e := range entries {
		if e.IsDir() {
			stages = append(stages, filepath.Join(root, e.Name()))
		}
	}
	for _, stage := range linkedStages(root) { // bottles planned with -stage
		if !slices.Contains(stages, stage) {
			stages = append(stages, stage)
		}
	}
	var out []bottleInfo
	for _, stage := range stages {
		p, err := readPlan(stage)
		if err != nil {
			continue // not a stage: ls reports bottles, not every directory
		}
		b := bottleInfo{Slug: p.Slug, State: "planned", Machine: p.Machine, Subnet: p.Net.Subnet.String(), Stage: stage}
		if st, ok, err := readState(stage); err == nil && ok {
			b.State = st.stateWord()
		}
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Slug < out[j].Slug || out[i].Slug == out[j].Slug && out[i].Stage < out[j].Stage
	})
	return out, nil
}

// progress prints long steps on stderr with the time since up began; -q
// silences it.
type progress struct {
	w     io.Writer
	start time.Time
}

func (p *progress) step(format string, args ...any) {
	if p.w == nil {
		return
	}
	fmt.Fprintf(p.w, "smolbottle: [%5.1fs] %s\n", time.Since(p.start).Seconds(), fmt.Sprintf(format, args...))
}

// upOptions are up's flags beyond the plan's.
type upOptions struct {
	planOptions
	Quiet bool
}

// bottleUp plans the bottle, starts its supervisor, creates and starts the
// machine, brings up the guest network and runs the egress self-test. Any
// failure, or ctx ending (SIGINT), tears down whatever was started and
// leaves only the logs.
func bottleUp(ctx context.Context, opts upOptions, stderr io.Writer) (p *plan, err error) {
	prog := &progress{w: stderr, start: time.Now()}
	if opts.Quiet {
		prog.w = nil
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	replan := func() (*plan, error) {
		return resolvePlan(ctx, opts.planOptions, planEnv{Getenv: os.Getenv, Preflight: defaultPreflightEnv(true)})
	}
	p, err = replan()
	if err != nil {
		return nil, err
	}
	// Bad input has been refused without writing anything. From here on
	// the stage is locked, and checked free again under the lock: another
	// up may have taken it since resolvePlan looked.
	unlock, err := lockBottle(p)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := checkStageFree(p.Stage); err != nil {
		return nil, err
	}
	if err := checkStageLink(p); err != nil {
		return nil, err
	}
	// Only a machine this up created is deleted on failure. The teardown is
	// set before the first write, so a failed up leaves only logs: the
	// stage's, once the pointer recordStage wrote for a -stage is removed
	// too. A teardown that fails keeps the stage, and the pointer by which
	// down finds it.
	created := false
	defer func() {
		if err != nil {
			if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
				err = fmt.Errorf("interrupted: %w", err)
			}
			prog.step("failed; tearing down")
			if derr := teardown(context.WithoutCancel(ctx), p, created); derr != nil {
				var h hinted
				errors.As(err, &h)
				err = withHint(fmt.Errorf("%w (and teardown: %v)", err, derr), append(h.hints, "finish the teardown with: "+downCommand(p.Slug, p.Stage))...)
			} else {
				forgetStage(p.Slug, p.Stage)
			}
		}
	}()
	if err := p.writeStage(); err != nil {
		return p, err
	}
	if err := recordStage(p); err != nil {
		return p, err
	}
	if err := fillGuestDir(p, self); err != nil {
		return p, err
	}
	prog.step("starting the supervisor: confined gvproxy, relays, sidecars")
	var st bottleState
	p, st, err = startSupervisorPorts(ctx, self, p, replan, prog)
	if err != nil {
		return p, err
	}
	sv, err := newSmolvm(p.Tools.Smolvm, p.Stage, os.Environ())
	if err != nil {
		return p, err
	}
	steps := upMachineSteps(p)
	taken := func(err error) error {
		return withHint(fmt.Errorf("machine %s already exists: %w", p.Machine, err),
			"a crashed bottle or someone else holds it; if nothing uses it: smolvm machine delete --name "+p.Machine+" -f")
	}
	if exists, err := sv.exists(ctx, steps.Check.create.Name); err != nil || exists {
		if exists {
			err = taken(errors.New("smolvm machine ls lists it"))
		}
		return p, err
	}
	prog.step("creating machine %s (image import may take a while)", p.Machine)
	if err := sv.create(ctx, steps.Create.create); err != nil {
		if isAlreadyExists(err) {
			return p, taken(err)
		}
		// Any other failure, an interrupt included, may have left a
		// half-made machine of ours: delete tolerates one that is not there.
		created = true
		return p, err
	}
	created = true
	prog.step("starting machine %s (first boot)", p.Machine)
	if err := sv.start(ctx, p.Machine); err != nil {
		return p, err
	}
	prog.step("preparing the guest for gvforwarder (root, /dev/net/tun)")
	if err := prepareGuest(ctx, sv, p, steps.Prepare); err != nil {
		return p, err
	}
	prog.step("starting gvforwarder in the guest")
	if _, err := sv.execDetached(ctx, p.Machine, steps.Forwarder.exec, steps.Forwarder.cmd...); err != nil {
		return p, fmt.Errorf("start gvforwarder in the guest: %w", err)
	}
	prog.step("configuring the guest network")
	out := &tailBuffer{max: sidecarTailBytes}
	o := steps.GuestNet.exec
	o.Stderr = out
	if err := sv.exec(ctx, p.Machine, o, steps.GuestNet.cmd...); err != nil {
		return p, withTail(fmt.Errorf("the guest network did not come up: %w", err), out.String())
	}
	prog.step("egress self-test from inside the guest")
	if err := egressSelfTest(ctx, sv, p, steps.Probe.exec, st); err != nil {
		return p, err
	}
	if err := markReady(p.Stage); err != nil {
		return p, err
	}
	prog.step("ready: %s", p.Machine)
	return p, nil
}

// upPortTries bounds how often up plans new ports when one was taken
// between its allocation (net.Listen on 127.0.0.1:0, then closed) and the
// sidecar's bind: the freed port is back in the kernel's ephemeral range,
// where any program's outbound connection may take it. The machine is
// created only after the supervisor has started, and a supervisor that
// failed to start has stopped what it started, so planning again only has
// to rewrite the stage.
const upPortTries = 3

// startSupervisorPorts starts the supervisor for p and, when a sidecar's
// port was taken first, plans the bottle again with new ports (replan),
// rewrites the stage and starts it again. It returns the plan that runs.
// Rewriting the stage makes its directories private again, the guest
// directory included, so that is filled again too (fillGuestDir, 0755).
func startSupervisorPorts(ctx context.Context, self string, p *plan, replan func() (*plan, error), prog *progress) (*plan, bottleState, error) {
	st, err := startSupervisor(ctx, self, p)
	for try := 1; err != nil && strings.Contains(err.Error(), errPortTaken.Error()) && try < upPortTries; try++ {
		prog.step("a sidecar port was taken before its sidecar bound it; planning new ports")
		np, rerr := replan()
		if rerr != nil {
			return p, st, errors.Join(err, rerr)
		}
		if np.Stage != p.Stage {
			return p, st, fmt.Errorf("planning again gave stage %q, not %q", np.Stage, p.Stage)
		}
		p = np
		if err = p.writeStage(); err != nil {
			return p, st, err
		}
		if err = fillGuestDir(p, self); err != nil {
			return p, st, err
		}
		st, err = startSupervisor(ctx, self, p)
	}
	return p, st, err
}

// fillGuestDir copies the binaries the guest runs into the read-only
// guest directory: gvforwarder, and smolbottle itself for the guest
// network and the self-test. Both must be static, since they run inside
// whatever image the user brings. The guest sees them with their host
// owner and mode (virtiofs), and the self-test runs as the image's user,
// whatever uid that is: so the directory is 0755 and the binaries 0555.
// Nothing in them is secret.
func fillGuestDir(p *plan, self string) error {
	if testOnlyGuestSelf != "" {
		self = testOnlyGuestSelf
	}
	if err := checkStaticELF(self); err != nil {
		return withHint(fmt.Errorf("smolbottle itself cannot run in the guest: %w", err), hintStaticSelf)
	}
	dir := filepath.Join(p.Stage, guestDir)
	for name, src := range map[string]string{"gvforwarder": p.Tools.Gvforwarder, "smolbottle": self} {
		data, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		if err := writeFileAtomic(filepath.Join(dir, name), data, guestBinMode); err != nil {
			return fmt.Errorf("copy %s into the guest directory: %w", name, err)
		}
	}
	return os.Chmod(dir, guestDirMode)
}

// The guest binaries' modes: readable and executable by every guest uid,
// writable by none.
const (
	guestBinMode = 0o555
	guestDirMode = 0o755
)

// prepareGuest runs _guestnet -prepare, as root when smolvm has exec
// --user, else as the image's USER. It makes /dev/net/tun when missing and
// reports its uid: gvforwarder and the network setup need root, so an
// image whose USER is not root cannot run on a smolvm without exec --user.
func prepareGuest(ctx context.Context, sv *smolvm, p *plan, step machineStep) error {
	out, errb := &capBuffer{max: guestReportMax}, &tailBuffer{max: sidecarTailBytes}
	o := step.exec
	o.Stdout, o.Stderr = out, errb
	if err := sv.exec(ctx, p.Machine, o, step.cmd...); err != nil {
		return withTail(fmt.Errorf("prepare the guest: %w", err), errb.String())
	}
	rep, err := parsePrepareReport(out.buf.String())
	if err != nil {
		return err
	}
	if rep.UID != 0 {
		return errNoGuestRoot(rep.UID, p.Tools.SmolvmExecUser)
	}
	return nil
}

// errNoGuestRoot is up's error when the root steps did not run as root.
func errNoGuestRoot(uid int, hasUser bool) error {
	if hasUser {
		return fmt.Errorf("smolvm machine exec --user root ran as uid %d in the guest", uid)
	}
	return withHint(fmt.Errorf("the image's USER is uid %d, and this smolvm has no `machine exec --user` (%s)", uid, capExecUser.Adds),
		"gvforwarder must run as root in the guest: "+capExecUser.For,
		"use an image whose USER is root, or a smolvm with `machine exec --user`")
}

// egressSelfTest runs the probes from inside the guest: proxy.internal
// resolves and every sidecar answers; other names, a direct address, the
// supervisor's canary on host loopback, the metadata address and IPv6 all
// fail. A forbidden probe that succeeds stops the bottle.
func egressSelfTest(ctx context.Context, sv *smolvm, p *plan, o execOpts, st bottleState) error {
	ports := make([]int, len(p.Sidecars))
	for i, s := range p.Sidecars {
		ports[i] = s.Port
	}
	pl := startupProbePlan(p.Net, ports, st.Canary)
	planJSON, err := json.Marshal(pl)
	if err != nil {
		return err
	}
	out, errb := &capBuffer{max: guestReportMax}, &tailBuffer{max: sidecarTailBytes}
	o.Stdout, o.Stderr = out, errb
	if err := sv.exec(ctx, p.Machine, o, guestBinDir+"/smolbottle", probeCmd, "-plan", string(planJSON)); err != nil {
		return withTail(fmt.Errorf("egress self-test did not run: %w", err), errb.String())
	}
	var res []probeResult
	if err := json.Unmarshal(out.buf.Bytes(), &res); err != nil { // an overflow is cut short: invalid
		return fmt.Errorf("egress self-test output: %w", err)
	}
	if err := judgeProbes(pl, res); err != nil {
		return withHint(err, "the bottle was stopped; logs are in "+filepath.Join(p.Stage, logsDir))
	}
	return nil
}

// judgeProbes fails unless every row of pl came back and passed, and names
// each one that did not.
func judgeProbes(pl probePlan, res []probeResult) error {
	var failed []string
	for _, r := range res {
		if !r.Pass {
			failed = append(failed, r.Name+" ("+r.Detail+")")
		}
	}
	if len(res) != len(pl.Probes) {
		failed = append(failed, fmt.Sprintf("%d results for %d probes", len(res), len(pl.Probes)))
	}
	if len(failed) > 0 {
		return fmt.Errorf("egress self-test failed: %s", strings.Join(failed, "; "))
	}
	return nil
}

// bottleDown stops and deletes everything of a bottle but its logs. It
// is idempotent: each step tolerates what is already gone.
func bottleDown(ctx context.Context, p *plan) error {
	unlock, err := lockBottle(p)
	if err != nil {
		return err
	}
	defer unlock()
	// Only a bottle that was up (its supervisor recorded itself before the
	// machine was created) owns the machine of its name: down after a mere
	// plan must not delete a machine another stage's bottle runs.
	_, up, err := readState(p.Stage)
	if err != nil {
		return err
	}
	return teardown(ctx, p, up)
}

// teardown stops the supervisor, deletes the machine when deleteMachine is
// set, and removes the stage but its logs. It removes only the entries of
// p.Cleanup.Remove that are directly in the stage: the plan is read back
// from disk, and a path anywhere else is left alone and reported.
func teardown(ctx context.Context, p *plan, deleteMachine bool) error {
	var errs []error
	if st, ok, err := readState(p.Stage); err != nil {
		errs = append(errs, err)
	} else if ok {
		if err := stopSupervisor(st.Supervisor); err != nil {
			errs = append(errs, err)
		}
	}
	if deleteMachine && p.Tools.Smolvm != "" {
		sv, err := newSmolvm(p.Tools.Smolvm, p.Stage, os.Environ())
		if err == nil {
			err = sv.delete(ctx, p.Machine)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("delete machine %s: %w", p.Machine, err))
		}
	}
	if len(errs) > 0 {
		// Keep the stage: its state file is what the next down needs.
		return errors.Join(errs...)
	}
	for _, path := range p.Cleanup.Remove {
		if filepath.Clean(path) != path || filepath.Dir(path) != p.Stage || path == p.Stage {
			errs = append(errs, withHint(fmt.Errorf("not removing %q: the plan lists it, but down removes only what is directly in the stage %q", path, p.Stage),
				"smolbottle never plans that: see who changed "+filepath.Join(p.Stage, planFile)+", and remove the path by hand only if it is the bottle's"))
			continue
		}
		if err := os.RemoveAll(path); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// openBottle finds the plan of slug's bottle: in -stage DIR when given,
// else in the slug's default stage, else where the slug's pointer says
// (a bottle planned with -stage).
func openBottle(slug, stage string) (*plan, error) {
	if err := checkSlug(slug); err != nil {
		return nil, usageError("%v", err)
	}
	explicit := stage != ""
	var err error
	if stage, err = stageFor(planOptions{Slug: slug, Stage: stage}, os.Getenv); err != nil {
		return nil, err
	}
	// The slug's default stage may hold none, or (made with -stage) another
	// slug's bottle: then its pointer says where it is.
	p, err := readPlan(stage)
	if !explicit && (errors.Is(err, fs.ErrNotExist) || err == nil && p.Slug != slug) {
		root, rerr := stateRoot(os.Getenv)
		if rerr != nil {
			return nil, rerr
		}
		linked, lerr := readStageLink(root, slug)
		switch {
		case lerr == nil:
			stage = linked
			p, err = readPlan(stage)
		case !errors.Is(lerr, fs.ErrNotExist):
			return nil, lerr
		}
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errNoBottle{slug, stage}
	}
	if errors.Is(err, syscall.ENOTDIR) {
		return nil, withHint(fmt.Errorf("stage %q is not a directory", stage), "-stage names the directory a bottle was planned in")
	}
	if err == nil && p.Slug != slug {
		return nil, fmt.Errorf("stage %q holds bottle %q, not %q", stage, p.Slug, slug)
	}
	return p, err
}

// errNoBottle says a slug has no stage.
type errNoBottle struct{ slug, stage string }

func (e errNoBottle) Error() string {
	return fmt.Sprintf("no bottle %q (no plan in %q)", e.slug, e.stage)
}

// requireUp refuses a bottle that is only planned or whose supervisor is
// gone: a command there would run without the bottle's network.
func requireUp(p *plan) error {
	st, ok, err := readState(p.Stage)
	switch {
	case err != nil:
		return err
	case !ok:
		return withHint(fmt.Errorf("bottle %q is not up", p.Slug), "start it as planned with: "+upCommand(p))
	case !st.Supervisor.alive():
		return withHint(fmt.Errorf("bottle %q is stale: its supervisor (pid %d) is gone", p.Slug, st.Supervisor.PID),
			"clean it up with: "+downCommand(p.Slug, p.Stage))
	}
	return nil
}

// guestExec runs command in the bottle's machine; no credential is passed
// (the guest has placeholders only); the guest's exit status passes
// through as exitStatus. Stdin reaches the guest only when interactive:
// without -i or -t smolvm runs the command without reading its own stdin
// (src/cli/machine.rs:2761-2771,2787-2794 @ v1.9.3), so smolvm gets none.
func guestExec(ctx context.Context, p *plan, workdir string, interactive, tty bool, command []string, stdout, stderr io.Writer) error {
	sv, err := newSmolvm(p.Tools.Smolvm, p.Stage, os.Environ())
	if err != nil {
		return err
	}
	o := execOpts{Workdir: workdir, Stdout: stdout, Stderr: stderr, Interactive: interactive, TTY: tty}
	if interactive {
		o.Stdin = os.Stdin
	}
	return sv.exec(ctx, p.Machine, o, command...)
}

// stateWord is ls's word for a recorded bottle: running only when its
// supervisor lives and up finished; starting while up still works on it;
// stale (down cleans it up) otherwise.
func (st bottleState) stateWord() string {
	switch {
	case !st.Supervisor.alive():
		return "stale"
	case st.Ready:
		return "running"
	case st.Up.alive():
		return "starting"
	}
	return "stale"
}

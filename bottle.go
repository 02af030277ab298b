package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Guest-side paths. The guest binaries directory is mounted read-only; the
// guest link front's socket (not gvproxy's API) is bridged in by smolvm
// --mount-socket.
const (
	guestWorkspace = "/workspace"
	guestBinDir    = "/opt/smolbottle"
	guestSocket    = "/run/smolbottle/gvproxy.sock"
	guestTap       = "tap0"
	defaultBackend = "smolmachines"
	defaultCPUs    = 4
	defaultMemMiB  = 4096
)

// backend is one way of running a bottle. Only smolmachines exists; the
// registry keeps the plan independent of it.
type backend interface {
	// preflight finds and checks everything the backend runs.
	preflight(ctx context.Context, env preflightEnv) ([]check, tools, error)
	// upCommands lists the commands up runs for p, in order.
	upCommands(p *plan) [][]string
	// cleanup lists what down stops, deletes, removes and keeps.
	cleanup(p *plan) cleanupPlan
}

var backends = map[string]backend{defaultBackend: smolmachines{}}

// backendNames lists the registered backends in a stable order.
func backendNames() []string { return slices.Sorted(maps.Keys(backends)) }

// planOptions are the user's choices, as parsed from flags.
type planOptions struct {
	Slug         string
	Image        string
	Workspace    string
	Allow        []string
	GitGate      bool
	Supervise    bool
	CPUs         int
	MemMiB       int
	Stage        string
	Backend      string
	EgressProxy  string // HOST:PORT of a running proxy used instead of pipelock
	GitGateCmd   string // argument template of git-gate, split at spaces
	SuperviseCmd string // argument template of supervise, split at spaces
	JSON         bool

	gitGate, supervise []string // the templates, checked
}

// sidecar is one host service the guest may reach at proxy.internal:Port.
type sidecar struct {
	Name     string `json:"name"`
	Port     int    `json:"port"`
	GuestURL string `json:"guest_url"`
	EnvVar   string `json:"env_var,omitempty"`
	External bool   `json:"external,omitempty"` // already running; not started by up
	// Command is the argument template git-gate and supervise start from:
	// {port} and {stage} are substituted, and no shell ever sees it.
	Command []string `json:"command,omitempty"`
}

// plannedFile is one file or directory the plan writes.
type plannedFile struct {
	Path    string `json:"path"`
	Mode    string `json:"mode"`
	Purpose string `json:"purpose"`
	data    []byte
}

// plan is a resolved bottle: everything up needs, nothing started.
type plan struct {
	Slug        string        `json:"slug"`
	Backend     string        `json:"backend"`
	Machine     string        `json:"machine"`
	Stage       string        `json:"stage"`
	Image       string        `json:"image"`
	Workspace   string        `json:"workspace"`
	CPUs        int           `json:"cpus"`
	MemMiB      int           `json:"memory_mib"`
	Net         bottleNet     `json:"network"`
	Sidecars    []sidecar     `json:"sidecars"`
	MetricsPort int           `json:"metrics_port,omitempty"`
	Allow       []string      `json:"allow"`
	GuestEnv    []envVar      `json:"guest_env"`
	Credentials []credential  `json:"credentials"` // names and guest placeholders, never values
	Files       []plannedFile `json:"files"`
	Commands    [][]string    `json:"commands"`
	Cleanup     cleanupPlan   `json:"cleanup"`
	Tools       tools         `json:"tools"`
}

// cleanupPlan is what down does for a bottle.
type cleanupPlan struct {
	Stop   []string   `json:"stop"`
	Delete [][]string `json:"delete"`
	Remove []string   `json:"remove"`
	Keep   []string   `json:"keep"`
}

// planEnv is the outside world a plan reads; tests replace it.
type planEnv struct {
	Getenv    func(string) string
	Preflight preflightEnv
	// AllocPorts is allocPorts; a golden test makes the ports fixed.
	AllocPorts func(n int) ([]int, error)
	// Rand is where credential placeholders come from (crypto/rand when
	// nil); a golden test makes them fixed.
	Rand io.Reader
}

// resolvePlan validates opts, runs the preflight, derives the network and
// ports and renders every file, without writing anything.
func resolvePlan(ctx context.Context, opts planOptions, env planEnv) (*plan, error) {
	p := &plan{Slug: opts.Slug, Backend: opts.Backend, CPUs: opts.CPUs, MemMiB: opts.MemMiB}
	if err := checkSlug(opts.Slug); err != nil {
		return nil, usageError("%v", err)
	}
	p.Machine = machineName(opts.Slug)
	be, ok := backends[opts.Backend]
	if !ok {
		return nil, usageError("unknown backend %q (known: %s)", opts.Backend, strings.Join(backendNames(), ", "))
	}
	if opts.CPUs < minCPUs || opts.CPUs > maxCPUs {
		return nil, usageError("-cpus %d is outside %d-%d", opts.CPUs, minCPUs, maxCPUs)
	}
	if opts.MemMiB < minMemMiB || opts.MemMiB > maxMemMiB {
		return nil, usageError("-mem %d MiB is outside %d-%d", opts.MemMiB, minMemMiB, maxMemMiB)
	}
	var err error
	if p.Image, err = checkImage(opts.Image); err != nil {
		return nil, err
	}
	if p.Workspace, err = checkWorkspace(opts.Workspace); err != nil {
		return nil, err
	}
	if p.Allow, err = checkAllowList(opts.Allow); err != nil {
		return nil, err
	}
	if opts.gitGate, err = checkCommandTemplate("-git-gate-cmd", opts.GitGateCmd, opts.GitGate, env.Preflight); err != nil {
		return nil, err
	}
	if opts.supervise, err = checkCommandTemplate("-supervise-cmd", opts.SuperviseCmd, opts.Supervise, env.Preflight); err != nil {
		return nil, err
	}
	egressPort := 0
	if opts.EgressProxy != "" {
		if egressPort, err = checkEgressProxy(opts.EgressProxy); err != nil {
			return nil, err
		}
	}
	if p.Stage, err = stageFor(opts, env.Getenv); err != nil {
		return nil, err
	}
	if err := checkSocketPaths(p.Stage); err != nil {
		return nil, err
	}
	// The stage's guest directory is a volume of the machine too.
	if err := checkVolumeSource("the stage's guest directory", filepath.Join(p.Stage, guestDir)); err != nil {
		return nil, withHint(err, "pass -stage DIR, or set SMOLBOTTLE_STATE, to a directory outside them")
	}
	if within(p.Stage, p.Workspace) || within(p.Workspace, p.Stage) {
		return nil, fmt.Errorf("stage %q and workspace %q overlap: the guest would see the stage (gvproxy's socket, configs, logs) through the workspace", p.Stage, p.Workspace)
	}
	if err := checkStageFree(p.Stage); err != nil {
		return nil, err
	}

	root, rootErr := stateRoot(env.Getenv)
	pe := env.Preflight
	pe.Pipelock = egressPort == 0
	if rootErr == nil {
		pe.CacheDir = root
	}
	// Before the preflight runs any program (hostReach).
	reach := hostReach(env.Getenv, pe, root)
	reach.Workspace, reach.Image, reach.Stage = p.Workspace, p.Image, p.Stage
	for _, s := range []struct {
		flag string
		argv []string
	}{{"-git-gate-cmd", opts.gitGate}, {"-supervise-cmd", opts.supervise}} {
		for i, a := range hostArgs(s.argv) {
			what := s.flag + "'s argument"
			if i == 0 {
				what = s.flag + "'s program"
			}
			reach.Programs = append(reach.Programs, [2]string{what, a})
		}
	}
	if err := checkGuestReach(reach); err != nil {
		return nil, err
	}
	if _, p.Tools, err = be.preflight(ctx, pe); err != nil {
		return nil, err
	}
	for _, t := range p.Tools.paths() {
		if !slices.ContainsFunc(reach.Programs, func(c [2]string) bool { return c[1] == t }) {
			return nil, fmt.Errorf("the preflight found %q, which the guest-reach check did not see: a program appeared on PATH while smolbottle ran; run it again", t)
		}
	}

	held := liveSubnets(reach.Recorded, p.Slug)
	if p.Net, err = pickSubnet(p.Slug, func(n int) bool { return held[n] }); err != nil {
		return nil, err
	}

	alloc := env.AllocPorts
	if alloc == nil {
		alloc = allocPorts
	}
	if err := p.allocSidecars(opts, egressPort, alloc); err != nil {
		return nil, err
	}
	rnd := env.Rand
	if rnd == nil {
		rnd = rand.Reader
	}
	if p.Credentials, err = newCredentials(env.Getenv, rnd); err != nil {
		return nil, err
	}
	p.GuestEnv = guestEnv(p.Sidecars, p.Credentials)
	if err := p.render(); err != nil {
		return nil, err
	}
	p.Commands = be.upCommands(p)
	p.Cleanup = be.cleanup(p)
	return p, nil
}

// checkCommandTemplate validates a sidecar's argument template and resolves
// its program to an absolute path. The template is split at spaces (no
// quoting: no shell ever sees it); {port} and {stage} are substituted when
// the sidecar starts. A template without its sidecar enabled is refused
// rather than ignored.
func checkCommandTemplate(flagName, tmpl string, enabled bool, pe preflightEnv) ([]string, error) {
	sidecarFlag := "-" + strings.TrimSuffix(strings.TrimPrefix(flagName, "-"), "-cmd")
	if tmpl == "" && enabled {
		// Nothing else would serve the port: smolbottle ships no git
		// gateway or supervisor of its own.
		return nil, withHint(usageError("%s needs %s: smolbottle ships no %s server, it starts yours", sidecarFlag, flagName, sidecarFlag[1:]),
			"pass "+flagName+" '/path/to/server --port {port}' ({port} and {stage} are substituted)")
	}
	if tmpl == "" {
		return nil, nil
	}
	if !enabled {
		return nil, usageError("%s given without %s", flagName, sidecarFlag)
	}
	if err := checkText(flagName, tmpl); err != nil {
		return nil, err
	}
	argv := strings.Fields(tmpl)
	if _, err := expandTemplate(argv, templateVars(1, "/")); err != nil {
		return nil, usageError("%s: %v", flagName, err)
	}
	switch {
	case filepath.IsAbs(argv[0]):
	case strings.ContainsRune(argv[0], '/'): // ./gg names that file, as a shell would
		path, err := filepath.Abs(argv[0])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", flagName, err)
		}
		argv[0] = path
	default:
		path, err := findProgram(argv[0], pe)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", flagName, err)
		}
		argv[0] = path
	}
	return argv, nil
}

// hostReach returns what no guest may reach on this host, before any
// program is run: PATH, smolbottle, home, the state root with the bottles
// it records, and every entry findProgram could pick for the programs the
// preflight runs (whatever it is now: a link that dangles now may not
// later), so that the one it picks is checked whenever it picks it.
func hostReach(getenv func(string) string, pe preflightEnv, root string) guestReach {
	r := guestReach{Root: root, Home: getenv("HOME"), Self: pe.Self, ExeDir: pe.ExeDir, Path: pe.Path}
	for _, name := range toolNames(pe) {
		for _, d := range programDirs(pe) {
			if p := filepath.Join(d, name); lexists(p) {
				r.Programs = append(r.Programs, [2]string{name, p})
			}
		}
	}
	if root != "" {
		r.Recorded = recordedBottles(root)
	}
	return r
}

// toolNames are the programs the preflight looks up and runs.
func toolNames(pe preflightEnv) []string {
	if pe.Pipelock {
		return []string{"smolvm", "gvproxy", "gvforwarder", "pipelock"}
	}
	return []string{"smolvm", "gvproxy", "gvforwarder"}
}

func lexists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// stageFor returns the stage directory: -stage, or the slug's directory
// under the state root.
func stageFor(opts planOptions, getenv func(string) string) (string, error) {
	dir := opts.Stage
	if dir == "" {
		root, err := stateRoot(getenv)
		if err != nil {
			return "", err
		}
		dir = filepath.Join(root, opts.Slug)
	}
	abs, err := checkHostPath("stage", dir)
	if err != nil {
		return "", err
	}
	// Compared with the workspace, which is resolved too: through a
	// symlink, a stage could otherwise land inside the workspace, where the
	// guest could rewrite pipelock's config or the plan down trusts.
	real, err := resolveExisting(abs)
	if err != nil {
		return "", fmt.Errorf("stage %q: %w", abs, err)
	}
	if fi, err := os.Stat(real); err == nil && !fi.IsDir() {
		return "", withHint(fmt.Errorf("stage %q is not a directory", real), "-stage names a directory smolbottle creates or already made")
	}
	return checkHostPath("stage", real)
}

// allocSidecars gives pipelock (or the external proxy), and git-gate and
// supervise when enabled, one loopback port each, plus pipelock's metrics
// port, which is never relayed to the guest.
func (p *plan) allocSidecars(opts planOptions, egressPort int, allocPorts func(int) ([]int, error)) error {
	n := 0
	if egressPort == 0 {
		n += 2 // pipelock and its metrics
	}
	n++ // the credential sidecar
	if opts.GitGate {
		n++
	}
	if opts.Supervise {
		n++
	}
	ports, err := allocPorts(n)
	if err != nil {
		return err
	}
	next := func() int { v := ports[0]; ports = ports[1:]; return v }
	if egressPort == 0 {
		p.Sidecars = append(p.Sidecars, sidecar{Name: "pipelock", Port: next()})
		p.MetricsPort = next()
	} else {
		p.Sidecars = append(p.Sidecars, sidecar{Name: "egress-proxy", Port: egressPort, External: true})
	}
	p.Sidecars = append(p.Sidecars, sidecar{Name: credSidecar, Port: next(), EnvVar: "ANTHROPIC_BASE_URL"})
	if opts.GitGate {
		p.Sidecars = append(p.Sidecars, sidecar{Name: "git-gate", Port: next(), EnvVar: "SMOLBOTTLE_GIT_GATE_URL", Command: opts.gitGate})
	}
	if opts.Supervise {
		p.Sidecars = append(p.Sidecars, sidecar{Name: "supervise", Port: next(), EnvVar: "SMOLBOTTLE_SUPERVISE_URL", Command: opts.supervise})
	}
	for i := range p.Sidecars {
		p.Sidecars[i].GuestURL = "http://" + proxyName + ":" + strconv.Itoa(p.Sidecars[i].Port)
	}
	return nil
}

// noProxy names what the guest reaches without the egress proxy: itself,
// and the sidecars at proxy.internal. Without proxy.internal here, curl
// and git send a sidecar's http:// URL to pipelock as an absolute-URI
// request, which pipelock checks against the allow-list like a CONNECT and
// refuses (internal/proxy/proxy.go:1837-1843 @ v2.3.0); Claude Code sends
// its ANTHROPIC_BASE_URL requests through the egress proxy too (measured
// with 2.1.332).
const noProxy = "localhost,127.0.0.1," + proxyName

// guestEnv is the guest's environment: the egress proxy for every client
// that honours the usual variables, with an http:// scheme because Claude
// Code rejects an https proxy URL; one URL variable per other sidecar; and
// each credential's placeholder, never its value.
func guestEnv(sidecars []sidecar, creds []credential) []envVar {
	proxy := sidecars[0].GuestURL
	env := []envVar{
		{"HTTPS_PROXY", proxy},
		{"HTTP_PROXY", proxy},
		{"https_proxy", proxy},
		{"http_proxy", proxy},
		{"NO_PROXY", noProxy},
		{"no_proxy", noProxy},
		{"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"},
	}
	for _, s := range sidecars[1:] {
		env = append(env, envVar{s.EnvVar, s.GuestURL})
	}
	for _, c := range creds {
		env = append(env, envVar{c.Env, c.Placeholder})
	}
	return env
}

// render produces every file of the stage in memory.
func (p *plan) render() error {
	sock := filepath.Join(p.Stage, sockDir, gvproxySock)
	smol, err := renderSmolfile(smolfileSpec{
		Image:   p.Image,
		Workdir: guestWorkspace,
		CPUs:    p.CPUs,
		MemMiB:  p.MemMiB,
		Volumes: []string{
			p.Workspace + ":" + guestWorkspace,
			filepath.Join(p.Stage, guestDir) + ":" + guestBinDir + ":ro",
		},
		Env: p.GuestEnv,
	})
	if err != nil {
		return fmt.Errorf("render Smolfile: %w", err)
	}
	gv, err := renderGvproxy(gvproxySpec{Net: p.Net, SocketPath: sock})
	if err != nil {
		return fmt.Errorf("render gvproxy config: %w", err)
	}
	dir := func(name, purpose string) plannedFile {
		return plannedFile{Path: filepath.Join(p.Stage, name), Mode: "0700", Purpose: purpose}
	}
	file := func(name, purpose string, data []byte) plannedFile {
		return plannedFile{Path: filepath.Join(p.Stage, name), Mode: "0600", Purpose: purpose, data: data}
	}
	p.Files = []plannedFile{
		dir("", "stage directory"),
		dir(sockDir, "gvproxy's API socket, smolbottle's alone; sealed read-only once gvproxy made it"),
		dir(linkDir, "guest link socket, bridged into the guest: one VM link, nothing else"),
		dir(guestDir, "binaries mounted read-only at "+guestBinDir+" (filled by up)"),
		dir(logsDir, "logs, kept by down"),
		file(smolfileName, "smolvm machine definition", smol),
		file(gvproxyFile, "gvproxy config", gv),
	}
	if !p.Sidecars[0].External {
		pl, err := renderPipelock(pipelockSpec{
			Port:        p.Sidecars[0].Port,
			MetricsPort: p.MetricsPort,
			Allow:       p.Allow,
		})
		if err != nil {
			return fmt.Errorf("render pipelock config: %w", err)
		}
		p.Files = append(p.Files, file(pipelockFile, "egress proxy config", pl))
	}
	p.Files = append(p.Files, file(planFile, "this plan, machine-readable", nil))
	return nil
}

// writeStage creates the stage directory and writes every planned file.
// When any step fails, whatever this call created is removed again.
func (p *plan) writeStage() (err error) {
	if err := os.MkdirAll(filepath.Dir(p.Stage), 0o700); err != nil {
		return fmt.Errorf("create %q: %w", filepath.Dir(p.Stage), err)
	}
	_, statErr := os.Lstat(p.Stage)
	created := errors.Is(statErr, os.ErrNotExist)
	var made []string
	defer func() {
		if err == nil {
			return
		}
		if created {
			os.RemoveAll(p.Stage)
			return
		}
		for _, m := range slices.Backward(made) {
			os.Remove(m)
		}
	}()
	for _, f := range p.Files {
		if f.Mode != "0700" {
			continue
		}
		_, statErr := os.Lstat(f.Path)
		if err := mkdirPrivate(f.Path); err != nil {
			return fmt.Errorf("create %q: %w", f.Path, err)
		}
		if errors.Is(statErr, os.ErrNotExist) {
			made = append(made, f.Path)
		}
	}
	for _, f := range p.Files {
		if f.Mode != "0600" {
			continue
		}
		data := f.data
		if filepath.Base(f.Path) == planFile {
			if data, err = json.MarshalIndent(p, "", "  "); err != nil {
				return err
			}
			data = append(data, '\n')
		}
		_, statErr := os.Lstat(f.Path)
		if err := writeFileAtomic(f.Path, data, 0o600); err != nil {
			return fmt.Errorf("write %q: %w", f.Path, err)
		}
		if errors.Is(statErr, os.ErrNotExist) {
			made = append(made, f.Path)
		}
	}
	return nil
}

// writeText prints the plan for a person.
func (p *plan) writeText(w io.Writer) {
	fmt.Fprintf(w, "bottle     %s\n", p.Slug)
	fmt.Fprintf(w, "backend    %s\n", p.Backend)
	fmt.Fprintf(w, "machine    %s\n", p.Machine)
	fmt.Fprintf(w, "stage      %s\n", p.Stage)
	fmt.Fprintf(w, "image      %s\n", p.Image)
	fmt.Fprintf(w, "workspace  %s -> %s\n", p.Workspace, guestWorkspace)
	fmt.Fprintf(w, "resources  %d cpus, %d MiB\n", p.CPUs, p.MemMiB)
	fmt.Fprintf(w, "network    %s  gateway %s  guest %s  %s %s\n",
		p.Net.Subnet, p.Net.Gateway, p.Net.Guest, proxyName, p.Net.HostVIP)
	fmt.Fprintf(w, "\nsidecars (guest reaches exactly these ports at %s)\n", proxyName)
	for _, s := range p.Sidecars {
		host, note := fmt.Sprintf("127.0.0.1:%-5d", s.Port), ""
		if s.External {
			note = "  (already running)"
		}
		if s.Name == credSidecar {
			host, note = "no host port   ", "  (served by the supervisor in gvproxy's network namespace: only the guest reaches it)"
		}
		fmt.Fprintf(w, "  %-13s %s  %s%s\n", s.Name, host, s.GuestURL, note)
	}
	if p.MetricsPort != 0 {
		fmt.Fprintf(w, "  %-13s 127.0.0.1:%-5d  not reachable from the guest\n", "metrics", p.MetricsPort)
	}
	fmt.Fprintf(w, "\negress allow-list\n")
	for _, a := range p.Allow {
		fmt.Fprintf(w, "  %s\n", a)
	}
	fmt.Fprintf(w, "\nfiles\n")
	for _, f := range p.Files {
		fmt.Fprintf(w, "  %s  %s  (%s)\n", f.Mode, f.Path, f.Purpose)
	}
	fmt.Fprintf(w, "\nguest environment\n")
	for _, e := range p.GuestEnv {
		// A placeholder spends the host's key through this bottle's
		// sidecar, from its guest, while it runs: it stays out of
		// terminals and logs (plan.json and the Smolfile are 0600).
		v := e.Value
		if slices.ContainsFunc(p.Credentials, func(c credential) bool { return c.Env == e.Name }) {
			v = "<placeholder, random per bottle; in plan.json>"
		}
		fmt.Fprintf(w, "  %s=%s\n", e.Name, v)
	}
	fmt.Fprintf(w, "\ncredentials (the guest holds placeholders; the %s sidecar swaps in the host's values)\n", credSidecar)
	for _, c := range p.Credentials {
		fmt.Fprintf(w, "  %-23s header %s, to https://%s via the egress proxy\n", c.Env, c.Header, credUpstream)
	}
	if len(p.Credentials) == 0 {
		fmt.Fprintf(w, "  none: neither ANTHROPIC_API_KEY nor CLAUDE_CODE_OAUTH_TOKEN is set; the sidecar refuses every request\n")
	}
	fmt.Fprintf(w, "\nup would run\n")
	for _, c := range p.Commands {
		fmt.Fprintf(w, "  $ %s\n", shellQuote(c))
	}
	p.Cleanup.writeText(w)
}

// writeText prints the cleanup plan.
func (c cleanupPlan) writeText(w io.Writer) {
	fmt.Fprintf(w, "\ndown would\n")
	for _, s := range c.Stop {
		fmt.Fprintf(w, "  stop    %s\n", s)
	}
	for _, d := range c.Delete {
		fmt.Fprintf(w, "  run     $ %s\n", shellQuote(d))
	}
	for _, r := range c.Remove {
		fmt.Fprintf(w, "  remove  %s\n", r)
	}
	for _, k := range c.Keep {
		fmt.Fprintf(w, "  keep    %s\n", k)
	}
}

// smolmachines runs bottles with smol-machines' smolvm.
type smolmachines struct{}

func (smolmachines) preflight(ctx context.Context, env preflightEnv) ([]check, tools, error) {
	return preflight(ctx, env)
}

// upCommands lists, in order, what up runs: the supervisor (confined
// gvproxy, relays, sidecars), then the machine without any smolvm network
// and with the guest link front's socket (linkPath, guestlink.go) bridged
// in, then the guest network and the egress self-test from the read-only
// guest binaries. The smolvm argv come from the same builders up calls, so
// the plan prints what runs.
func (smolmachines) upCommands(p *plan) [][]string {
	t := p.Tools
	cmds := [][]string{
		{"smolbottle", supervisorCmd, p.Stage},
		{t.Gvproxy, "-config", filepath.Join(p.Stage, gvproxyFile)},
	}
	if !p.Sidecars[0].External {
		cmds = append(cmds, pipelockSidecar(t.Pipelock, filepath.Join(p.Stage, pipelockFile), p.Sidecars[0].Port, p.Stage, "", nil).Argv)
	}
	for _, step := range upMachineSteps(p).list() {
		args, err := step.args(t.SmolvmExecUser)
		if err != nil {
			args = []string{"# cannot build: " + err.Error()}
		} else {
			args = append([]string{t.Smolvm}, args...)
		}
		cmds = append(cmds, args)
	}
	return cmds
}

// machineStep is one smolvm call of up.
type machineStep struct {
	sub    string // ls, create, start or exec
	create createSpec
	exec   execOpts
	cmd    []string
}

func (s machineStep) args(hasUser bool) ([]string, error) {
	switch s.sub {
	case "create":
		return createArgs(s.create)
	case "exec":
		return execArgs(s.create.Name, s.exec, hasUser, s.cmd)
	case "ls":
		return lsArgs, nil
	}
	return nameArgs(s.sub, s.create.Name)
}

// machineSteps are the smolvm calls up makes, by name.
type machineSteps struct {
	// Check makes sure no machine has the name yet: the teardown of a
	// create that fails before smolvm sees the name taken deletes it.
	Check, Create, Start machineStep
	// Prepare runs as root (or learns that it cannot): it makes
	// /dev/net/tun when the image's container lacks it, before gvforwarder
	// opens it, and reports the uid it ran as.
	Prepare   machineStep
	Forwarder machineStep // gvforwarder, detached, as root
	GuestNet  machineStep // configures tap0, as root
	Probe     machineStep // the egress self-test, as the image's user
}

// list returns the steps in the order up runs them.
func (m machineSteps) list() []machineStep {
	return []machineStep{m.Check, m.Create, m.Start, m.Prepare, m.Forwarder, m.GuestNet, m.Probe}
}

// upMachineSteps builds up's smolvm calls. gvforwarder needs root in the
// guest (it creates tap0): with exec --user the root steps ask for root;
// without it (smolvm 1.9.3) they run as the image's USER, and Prepare's
// report makes up refuse an image whose USER is not root. Every internal
// step runs in "/", so a workspace the image's user cannot enter does not
// matter to them.
func upMachineSteps(p *plan) machineSteps {
	spec := createSpec{
		Name:     p.Machine,
		Image:    p.Image,
		ImageDir: !isArchiveName(p.Image), // as checked, not as it is now
		Smolfile: filepath.Join(p.Stage, smolfileName),
		Sockets:  []socketMount{{Host: linkPath(p.Stage), Guest: guestSocket}},
	}
	root := execOpts{Workdir: "/"}
	if p.Tools.SmolvmExecUser {
		root.User = "root"
	}
	detached := root
	detached.Detach = true
	self := guestBinDir + "/smolbottle"
	return machineSteps{
		Check:   machineStep{sub: "ls", create: spec},
		Create:  machineStep{sub: "create", create: spec},
		Start:   machineStep{sub: "start", create: spec},
		Prepare: machineStep{sub: "exec", create: spec, exec: root, cmd: []string{self, guestNetCmd, "-prepare"}},
		Forwarder: machineStep{sub: "exec", create: spec, exec: detached, cmd: []string{guestBinDir + "/gvforwarder",
			"-url", "unix://" + guestSocket, "-iface", guestTap, "-preexisting",
			"-mtu", strconv.Itoa(gvproxyMTU), "-stop-if-exist", ""}},
		GuestNet: machineStep{sub: "exec", create: spec, exec: root, cmd: []string{self, guestNetCmd,
			"-iface", guestTap, "-subnet", p.Net.Subnet.String(), "-root", "/"}},
		// The plan is filled in by up: it names the supervisor's canary port.
		Probe: machineStep{sub: "exec", create: spec, exec: execOpts{Workdir: "/"}, cmd: []string{self, probeCmd,
			"-plan", "<egress self-test: JSON rows>"}},
	}
}

// cleanup lists what down does: stop the supervisor (which takes gvproxy,
// the relays and the sidecars with it), delete the machine with -f (without
// it smolvm prompts and exits 0 without deleting), remove the stage but its
// logs.
func (smolmachines) cleanup(p *plan) cleanupPlan {
	owned := []string{"gvproxy", "relays"}
	for _, s := range p.Sidecars {
		if !s.External {
			owned = append(owned, s.Name)
		}
	}
	c := cleanupPlan{
		Stop:   []string{"the supervisor and what it owns: " + strings.Join(owned, ", ")},
		Delete: [][]string{append([]string{p.Tools.Smolvm}, mustArgs(nameArgs("delete", p.Machine))...)},
		Keep:   []string{filepath.Join(p.Stage, logsDir)},
	}
	for _, f := range p.Files {
		if f.Path != p.Stage && filepath.Base(f.Path) != logsDir {
			c.Remove = append(c.Remove, f.Path)
		}
	}
	c.Remove = append(c.Remove, filepath.Join(p.Stage, jailDirName), filepath.Join(p.Stage, stateFile))
	return c
}

// mustArgs is for argv built from names validated when the plan was made.
func mustArgs(args []string, err error) []string {
	if err != nil {
		return []string{"# cannot build: " + err.Error()}
	}
	return args
}

// The hidden subcommands the plan names: up starts the supervisor with
// supervisorCmd, and runs the start-up self-test (probe.go) in the guest
// with probeCmd.
const (
	supervisorCmd = "_supervise"
	probeCmd      = "_probe"
)

// readPlan reads the plan a stage was written from, as readStageFile
// says: down removes what it lists and runs the smolvm it names.
func readPlan(stage string) (*plan, error) {
	b, err := readStageFile(stage, planFile)
	if err != nil {
		return nil, err
	}
	var p plan
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(stage, planFile), err)
	}
	if p.Stage != stage {
		return nil, fmt.Errorf("%s was written for stage %q", filepath.Join(stage, planFile), p.Stage)
	}
	return &p, nil
}

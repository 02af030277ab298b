// Smolbottle runs an AI coding agent (Claude Code by default) inside a
// smolvm microVM whose only network is a confined gvproxy user-mode network.
// From inside the guest exactly one name resolves, proxy.internal, and
// exactly the sidecar ports answer there: the egress proxy (pipelock) and
// the credential sidecar always, a git gateway (git-gate) and a
// supervision channel (supervise) when enabled. Every other destination is
// unreachable.
//
// Usage:
//
//	smolbottle plan [flags] SLUG
//	smolbottle up [flags] [-q] SLUG
//	smolbottle run [flags] [-q] [-keep] SLUG [-- CMD [ARG...]]
//	smolbottle exec [-i] [-t] [-w DIR] [-stage DIR] SLUG -- CMD [ARG...]
//	smolbottle cp [-stage DIR] SLUG HOST_FILE GUEST_PATH
//	smolbottle down [-n] [-stage DIR] SLUG
//	smolbottle ls [-json]
//	smolbottle doctor
//	smolbottle selftest [-v] [-unconfined]
//	smolbottle version
//	smolbottle COMMAND -h
//
// Plan resolves a bottle without starting anything: it runs the preflight,
// checks the image as smolvm will read it (a docker save archive or a root
// filesystem directory), derives the bottle's subnet from its slug,
// allocates one loopback port per sidecar, writes the stage directory and
// prints what up would run and what down would undo. -json prints the
// same plan as JSON.
//
// Up plans the bottle, then starts a supervisor that owns the confined
// gvproxy, the guest link front, the relays and the sidecars; creates and
// starts the machine with no smolvm network and the link front's socket
// bridged in (one VM link, none of gvproxy's API); prepares the guest as
// root (/dev/net/tun), starts gvforwarder there, configures the guest
// network and runs the egress self-test from inside the guest. A forbidden
// destination that answers stops the bottle; SIGINT, SIGTERM and SIGHUP
// tear down what was started. Run is up, then the agent with a terminal in
// /workspace, then down unless -keep. Exec runs a command in a running bottle and passes
// its exit status through. Cp copies one file in. Down stops the
// supervisor and everything it owns, deletes the machine and removes the
// stage but its logs; it is idempotent and works after a crash; -n prints
// what it would do. Ls lists bottles as planned, starting (up at work),
// running or stale (needs down), those planned with -stage included.
//
// Every subcommand finds the programs it runs the same way: in
// smolbottle's own directory first, then on PATH (make build and make
// install put them side by side). Doctor prints what the preflight finds:
// each program with its path and version, whether smolvm is
// smol-machines' and has the flags the design needs, whether smolbottle
// itself is static, and whether the jail's user, network, mount and PID
// namespaces can be created; then which credentials the host has (names
// only) and how they are used.
// Selftest proves the confinement: it runs the real gvproxy confined and
// the real gvforwarder in namespaces it creates and prints the
// reachability matrix.
//
// Exit status is 0 on success, 1 on failure and 2 on a usage error; exec
// and run exit with the guest command's status.
//
// Security: smolbottle trusts the smolvm, gvproxy, gvforwarder and pipelock
// binaries it finds beside itself or on PATH, in that order, and checks
// their versions. It writes only under the stage directory (default
// ~/.local/state/smolbottle/SLUG), a lock file beside it (.NAME.lock,
// NAME the stage directory's) and, for a stage elsewhere, the lock of the
// slug's default stage (one slug, one stage), and in the state root a passing
// preflight's cache (preflight.json) and, for a stage elsewhere, a pointer
// file (SLUG.stage): directories 0700, files 0600, each written whole,
// except the guest binaries (guest/, 0755 with 0555 files: the
// image's user, any uid, runs them; nothing in them is secret). Child
// programs get an explicit environment and argv, never a shell, and no
// descriptor but stdio and what they are handed. Nothing listens on
// anything but 127.0.0.1 or a unix socket in a 0700 directory. The guest
// writes its workspace and is given a directory image whole, so plan, up
// and doctor refuse, before running any program, a workspace or image (of
// this bottle or any other recorded one) that holds the state root, a
// stage, smolbottle, a PATH directory, a program smolbottle runs, or your
// home directory, or that lies inside another bottle's workspace or
// image, or holds one; plan.json and state.json are read back only from a
// private stage of yours. A guest cannot wear the host down: its streams
// are capped, gvproxy's memory too (1 GiB), a sidecar's log and gvproxy's
// turn at 64 MiB (NAME.1), and what a child or the guest prints in an
// error reaches the terminal escaped.
//
// Credentials never enter the VM. Up reads ANTHROPIC_API_KEY and
// CLAUDE_CODE_OAUTH_TOKEN (each one token of visible ASCII) from its own
// environment and hands them to the
// supervisor through a pipe; no value is written to the stage, a log, an
// argv, the Smolfile or smolvm's environment. The guest gets
// ANTHROPIC_BASE_URL=http://proxy.internal:PORT and, for each credential
// the host has, a placeholder random per bottle in its place. The
// supervisor's credential sidecar, which has no host port (it is served
// in gvproxy's network namespace, for this bottle's guest alone), forwards a
// request to https://api.anthropic.com, through the egress proxy, only when
// it carries this bottle's placeholder in that credential's own header, and
// only to /v1/messages or /v1/messages/count_tokens; it swaps in the real
// value on the way out. So the guest can learn its placeholder (worthless outside
// this bottle), which credential kinds the host has, and the replies of
// the Messages API; it can spend the key through that API while the bottle
// runs. It cannot learn the key itself, use it for any other path or host,
// or reach the sidecar of another bottle.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"text/tabwriter"
)

func main() {
	// A closing terminal (SIGHUP) tears down like ^C.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	// Children get stdio and what they are handed, never what this
	// process inherited without close-on-exec.
	closeOnExecInherited() // best effort here; _dropexec insists (jail.go)
	err := runCLI(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(os.Stderr, err))
}

// runCLI is the whole program; it returns instead of exiting so that every
// deferred cleanup runs.
func runCLI(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return withHint(usageError("no subcommand"), "smolbottle help lists the subcommands")
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	case "version", "-version", "--version":
		if len(args) > 1 {
			return usageError("version takes no arguments")
		}
		fmt.Fprintln(stdout, "smolbottle", buildVersion())
		return nil
	case "plan":
		return cmdPlan(ctx, args[1:], stdout, stderr)
	case "doctor":
		return cmdDoctor(ctx, args[1:], stdout, stderr)
	case "ls":
		return cmdLs(ctx, args[1:], stdout, stderr)
	case "up":
		return cmdUp(ctx, args[1:], stdout, stderr)
	case "down":
		return cmdDown(ctx, args[1:], stdout, stderr)
	case "exec":
		return cmdExec(ctx, args[1:], stdout, stderr)
	case "cp":
		return cmdCp(ctx, args[1:], stdout, stderr)
	case "run":
		return cmdRun(ctx, args[1:], stdout, stderr)
	case supervisorCmd:
		return runSupervise(ctx, args[1:])
	case nsCheckCmd:
		return runNSCheck()
	case "selftest":
		return cmdSelftest(ctx, args[1:], stdout, stderr)
	case confineCmd, dropExecCmd, guestNetCmd, probeCmd, selftestHostCmd, selftestPeerCmd, selftestGuestCmd:
		return runNetInternal(ctx, args, stdout, stderr) // internal: argv built by the network code only
	default:
		return withHint(usageError("unknown subcommand %q", args[0]), "smolbottle help lists the subcommands")
	}
}

// usage is printed by `smolbottle help`; each subcommand's -h prints its
// own usage (commandHelp).
const usage = `Usage: smolbottle COMMAND [flags] [SLUG]

Commands:
  plan SLUG              resolve a bottle, write its stage, print the plan; start nothing
  up SLUG                plan, start the supervisor and the machine, self-test the egress
  run SLUG [-- CMD...]   up, the agent (default claude) with a terminal, then down
  exec SLUG -- CMD...    run a command in a running bottle; its exit status passes through
  cp SLUG FILE PATH      copy one host file into the guest at PATH
  down SLUG              stop and delete everything but the logs (-n: only print)
  ls                     list bottles: planned, starting, running or stale
  doctor                 check smolvm, gvproxy, gvforwarder, pipelock and namespaces
  selftest               prove the confinement: the reachability matrix, in namespaces
  version                print the version

Run smolbottle COMMAND -h for a command's flags.

An image is a docker save archive of an image that holds the agent:
  $ docker build -t smolbottle-agent examples/agent-image
  $ docker save smolbottle-agent -o agent.tar

Examples:
  $ smolbottle plan -image agent.tar -workspace ~/src/app demo
  $ smolbottle run -image agent.tar -allow api.anthropic.com -allow '*.npmjs.org' demo
  $ smolbottle exec demo -- npm test
  $ smolbottle down demo
  $ smolbottle doctor

Exit status: 0 success, 1 failure, 2 usage error; exec and run pass the guest's through.
`

// commandHelp is the synopsis and summary each subcommand's -h prints
// above its flags.
var commandHelp = map[string]string{
	"plan": `Usage: smolbottle plan [flags] SLUG

Resolve a bottle without starting anything: run the preflight, check the
image, derive the subnet and ports, write the stage and print what up would
run and what down would undo.
`,
	"up": `Usage: smolbottle up [flags] SLUG

Plan the bottle, start its supervisor (confined gvproxy, relays, sidecars),
create and start the machine and self-test the egress from inside the guest.
`,
	"run": `Usage: smolbottle run [flags] SLUG [-- CMD [ARG...]]

Up, then CMD (default: claude) with a terminal in /workspace, then down
unless -keep. The command's exit status passes through.
`,
	"exec": `Usage: smolbottle exec [flags] SLUG -- CMD [ARG...]

Run a command in a running bottle; its exit status passes through.
`,
	"cp": `Usage: smolbottle cp [flags] SLUG HOST_FILE GUEST_PATH

Copy one host file into a running bottle.
`,
	"down": `Usage: smolbottle down [flags] SLUG

Stop the supervisor and everything it owns, delete the machine of a bottle
that was up, and remove the stage but its logs. Idempotent.
`,
	"ls": `Usage: smolbottle ls [flags]

List bottles as planned, starting (up at work), running or stale (needs
down), including those planned with -stage.
`,
	"doctor": `Usage: smolbottle doctor

Report each program smolbottle runs (path, version, static or not) and
whether namespaces can be created. Programs are looked up in smolbottle's
own directory first, then on PATH.
`,
	"selftest": `Usage: smolbottle selftest [flags]

Prove the confinement: run the real gvproxy confined and the real
gvforwarder in namespaces this command creates, and print the
reachability matrix.
`,
}

// writeCommandHelp prints a subcommand's synopsis and its flags.
func writeCommandHelp(w io.Writer, fs *flag.FlagSet) {
	name := strings.TrimPrefix(fs.Name(), "smolbottle ")
	fmt.Fprint(w, commandHelp[name])
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n == 0 {
		return
	}
	fmt.Fprint(w, "\nFlags:\n")
	out := fs.Output()
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(out)
}

// buildVersion is the module version and, in a binary built from a checkout,
// the VCS revision it was built from (+dirty with uncommitted changes).
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	return versionOf(bi)
}

func versionOf(bi *debug.BuildInfo) string {
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch {
		case s.Key == "vcs.revision":
			rev = s.Value
		case s.Key == "vcs.modified" && s.Value == "true":
			dirty = "+dirty"
		}
	}
	if rev != "" {
		v += " rev " + rev + dirty
	}
	return v
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// helpWriter is a FlagSet's output: it swallows the flag package's own
// messages (flagError rewords them) and remembers where -h prints.
type helpWriter struct{ w io.Writer }

func (helpWriter) Write(p []byte) (int, error) { return len(p), nil }

// newFlagSet returns a FlagSet that returns its errors instead of exiting
// or printing; -h prints the subcommand's usage on stdout.
func newFlagSet(name string, stdout io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("smolbottle "+name, flag.ContinueOnError)
	fs.SetOutput(helpWriter{stdout})
	fs.Usage = func() {}
	return fs
}

// parseInterleaved parses flags that may come before or after the
// positional arguments (smolbottle plan SLUG -image x works like
// smolbottle plan -image x SLUG) and returns the positionals. Errors come
// back as usage errors; -h prints the help and returns flag.ErrHelp.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				if hw, ok := fs.Output().(helpWriter); ok {
					writeCommandHelp(hw.w, fs)
				}
			}
			return nil, flagError(strings.TrimPrefix(fs.Name(), "smolbottle "), err)
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// parsePlanFlags parses the flags plan (and later up and run) accept.
func parsePlanFlags(fs *flag.FlagSet, args []string) (planOptions, error) {
	opts := planOptions{}
	var allow stringList
	fs.StringVar(&opts.Image, "image", "", "`PATH` of a docker save archive (.tar, .tar.gz, .tgz) or a root filesystem directory")
	fs.StringVar(&opts.Workspace, "workspace", ".", "`DIR` mounted at /workspace")
	fs.Var(&allow, "allow", "egress allow-list entry, repeatable: `HOST` or *.DOMAIN (default api.anthropic.com; -allow replaces it)")
	fs.BoolVar(&opts.GitGate, "git-gate", false, "add the git gateway sidecar, started from -git-gate-cmd (required with it)")
	fs.BoolVar(&opts.Supervise, "supervise", false, "add the supervision sidecar, started from -supervise-cmd (required with it)")
	fs.StringVar(&opts.GitGateCmd, "git-gate-cmd", "", "the git gateway's `ARGV`, split at spaces; {port} and {stage} are substituted")
	fs.StringVar(&opts.SuperviseCmd, "supervise-cmd", "", "the supervision sidecar's `ARGV`, as for -git-gate-cmd")
	fs.StringVar(&opts.EgressProxy, "egress-proxy", "", "`ADDR` 127.0.0.1:PORT of a proxy already running, used instead of pipelock")
	fs.IntVar(&opts.CPUs, "cpus", defaultCPUs, "`N` virtual CPUs")
	fs.IntVar(&opts.MemMiB, "mem", defaultMemMiB, "memory in `MiB`")
	fs.StringVar(&opts.Stage, "stage", "", "stage `DIR` (default ~/.local/state/smolbottle/SLUG)")
	fs.StringVar(&opts.Backend, "backend", defaultBackend, "bottle backend `NAME`")
	if fs.Name() == "smolbottle plan" {
		fs.BoolVar(&opts.JSON, "json", false, "print the plan as JSON")
	}
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return opts, err
	}
	switch len(pos) {
	case 0:
		return opts, withHint(usageError("missing SLUG"), fs.Name()+" -h shows the usage")
	case 1:
		opts.Slug = pos[0]
	default:
		return opts, usageError("too many arguments: %q", pos[1:])
	}
	opts.Allow = allow
	return opts, nil
}

// cmdPlan implements smolbottle plan.
func cmdPlan(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	opts, err := parsePlanFlags(newFlagSet("plan", stdout), args)
	if err != nil {
		return err
	}
	p, err := resolvePlan(ctx, opts, planEnv{Getenv: os.Getenv, Preflight: defaultPreflightEnv(true)})
	if err != nil {
		return err
	}
	// As up does: under the stage's lock, and the stage checked free again,
	// so that plan never rewrites plan.json under an up or a down.
	unlock, err := lockBottle(p)
	if err != nil {
		return err
	}
	defer unlock()
	if err := checkStageFree(p.Stage); err != nil {
		return err
	}
	if err := checkStageLink(p); err != nil {
		return err
	}
	if err := p.writeStage(); err != nil {
		return err
	}
	if err := recordStage(p); err != nil {
		return err
	}
	if opts.JSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(p)
	}
	p.writeText(stdout)
	return nil
}

// cmdDoctor implements smolbottle doctor.
func cmdDoctor(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("doctor", stdout)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError("doctor takes no arguments")
	}
	// doctor runs every program it finds: none may be where a guest could
	// have written it (a PATH directory in a bottle's workspace).
	pe := defaultPreflightEnv(true)
	root, _ := stateRoot(os.Getenv)
	if err := checkGuestReach(hostReach(os.Getenv, pe, root)); err != nil {
		return err
	}
	checks, _, err := preflightFresh(ctx, pe)
	writeChecks(stdout, checks)
	writeCredentialModel(stdout, os.Getenv)
	if err != nil {
		// The report above already says what to fix; repeat only the verdict.
		return errors.New(err.Error())
	}
	return nil
}

// cmdSelftest implements smolbottle selftest.
func cmdSelftest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o selftestOptions
	fs := newFlagSet("selftest", stdout)
	fs.StringVar(&o.gvproxy, "gvproxy", "", "gvproxy v0.8.9, statically linked (default: found as every subcommand finds it, smolbottle's own directory, then PATH)")
	fs.StringVar(&o.gvforwarder, "gvforwarder", "", "gvforwarder v0.8.9 (default: found as gvproxy is)")
	fs.BoolVar(&o.verbose, "v", false, "print gvproxy's and gvforwarder's logs")
	fs.BoolVar(&o.unconfined, "unconfined", false, "run the matrix against stock, unconfined gvproxy (rows are expected to FAIL: it shows what the confinement prevents)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError("selftest takes no arguments")
	}
	return runSelftest(ctx, o, stdout, stderr)
}

// writeCredentialModel tells which credentials the host has (names only)
// and how a bottle uses them.
func writeCredentialModel(w io.Writer, getenv func(string) string) {
	fmt.Fprintf(w, "\ncredentials\n")
	for _, k := range credKinds {
		state := "not set"
		if getenv(k.Env) != "" {
			state = "set: the guest gets a random placeholder, sent as " + k.Header
		}
		fmt.Fprintf(w, "  %-23s  %s\n", k.Env, state)
	}
	fmt.Fprintf(w, "  the real values stay in the supervisor's memory: its %s sidecar swaps them in\n", credSidecar)
	fmt.Fprintf(w, "  and sends them only to https://%s, through the egress proxy\n", credUpstream)
	if getenv("ANTHROPIC_API_KEY") == "" && getenv("CLAUDE_CODE_OAUTH_TOKEN") == "" {
		fmt.Fprintf(w, "  fix: export ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN before up, or claude in the guest cannot log in\n")
	}
}

// cmdLs implements smolbottle ls.
func cmdLs(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("ls", stdout)
	asJSON := fs.Bool("json", false, "print the list as JSON")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError("ls takes no arguments")
	}
	root, err := stateRoot(os.Getenv)
	if err != nil {
		return err
	}
	bottles, err := listBottles(root)
	if err != nil {
		return err
	}
	if *asJSON {
		if bottles == nil {
			bottles = []bottleInfo{}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(bottles)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SLUG\tSTATE\tMACHINE\tSUBNET\tSTAGE")
	for _, b := range bottles {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", b.Slug, b.State, b.Machine, b.Subnet, b.Stage)
	}
	return tw.Flush()
}

// bottleFlags are the flags of the commands that act on an existing
// bottle: down, exec, cp.
func bottleFlags(fs *flag.FlagSet) *string {
	return fs.String("stage", "", "the bottle's stage `DIR`, if it was planned with -stage")
}

// splitCommand splits argv at the first "--".
func splitCommand(args []string) (before, cmd []string) {
	for i, a := range args {
		if a == "--" {
			return args[:i], args[i+1:]
		}
	}
	return args, nil
}

// cmdUp implements smolbottle up.
func cmdUp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("up", stdout)
	quiet := fs.Bool("q", false, "no progress on stderr")
	opts, err := parsePlanFlags(fs, args)
	if err != nil {
		return err
	}
	p, err := bottleUp(ctx, upOptions{planOptions: opts, Quiet: *quiet}, stderr)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "bottle %s is up: machine %s, subnet %s; smolbottle exec %s -- CMD, smolbottle down %s\n",
		p.Slug, p.Machine, p.Net.Subnet, p.Slug, p.Slug)
	return nil
}

// cmdDown implements smolbottle down.
func cmdDown(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("down", stdout)
	stage := bottleFlags(fs)
	dry := fs.Bool("n", false, "print what down would do; do nothing")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError("down takes one SLUG")
	}
	p, err := openBottle(pos[0], *stage)
	var none errNoBottle
	if errors.As(err, &none) {
		fmt.Fprintf(stdout, "nothing to do: %v\n", err)
		return nil
	}
	if err != nil {
		return err
	}
	if *dry {
		// What bottleDown does: only a bottle that was up has a
		// supervisor to stop and a machine to delete.
		c := p.Cleanup
		if _, up, err := readState(p.Stage); err != nil {
			return err
		} else if !up {
			c.Stop, c.Delete = nil, nil
		}
		c.writeText(stdout)
		return nil
	}
	if err := bottleDown(ctx, p); err != nil {
		return err
	}
	forgetStage(p.Slug, p.Stage)
	fmt.Fprintf(stdout, "bottle %s is down; logs kept in %s\n", p.Slug, filepath.Join(p.Stage, logsDir))
	return nil
}

// cmdExec implements smolbottle exec SLUG -- CMD [ARG...]. The guest's
// exit status becomes smolbottle's.
func cmdExec(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("exec", stdout)
	stage := bottleFlags(fs)
	tty := fs.Bool("t", false, "allocate a terminal (implies -i)")
	interactive := fs.Bool("i", false, "pass standard input to the command")
	workdir := fs.String("w", guestWorkspace, "working `DIR` in the guest")
	flags, command := splitCommand(args)
	pos, err := parseInterleaved(fs, flags)
	if err != nil {
		return err
	}
	if len(pos) != 1 || len(command) == 0 {
		return usageError("exec takes SLUG -- CMD [ARG...]")
	}
	p, err := openBottle(pos[0], *stage)
	if err != nil {
		return err
	}
	if err := requireUp(p); err != nil {
		return err
	}
	return guestExec(ctx, p, *workdir, *interactive || *tty, *tty, command, stdout, stderr)
}

// cmdCp implements smolbottle cp SLUG HOST_FILE GUEST_PATH.
func cmdCp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cp", stdout)
	stage := bottleFlags(fs)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 3 {
		return usageError("cp takes SLUG HOST_FILE GUEST_PATH")
	}
	p, err := openBottle(pos[0], *stage)
	if err != nil {
		return err
	}
	host, err := checkHostPath("host file", pos[1])
	if err != nil {
		return err
	}
	if fi, err := os.Stat(host); err != nil {
		return fmt.Errorf("host file %q: %w", host, err)
	} else if fi.IsDir() {
		return withHint(fmt.Errorf("%q is a directory; smolvm copies single files", host),
			"put the directory in the workspace, which the guest sees at "+guestWorkspace)
	}
	if err := requireUp(p); err != nil {
		return err
	}
	sv, err := newSmolvm(p.Tools.Smolvm, p.Stage, os.Environ())
	if err != nil {
		return err
	}
	return sv.cp(ctx, host, p.Machine, pos[2])
}

// cmdRun implements smolbottle run: up, the agent with a TTY in the
// workspace, then down unless -keep. The agent's exit status passes
// through.
func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("run", stdout)
	quiet := fs.Bool("q", false, "no progress on stderr")
	keep := fs.Bool("keep", false, "leave the bottle running after the command exits")
	flags, command := splitCommand(args)
	opts, err := parsePlanFlags(fs, flags)
	if err != nil {
		return err
	}
	if len(command) == 0 {
		command = []string{"claude"}
	}
	p, err := bottleUp(ctx, upOptions{planOptions: opts, Quiet: *quiet}, stderr)
	if err != nil {
		return err
	}
	term := isTerminal(os.Stdin)
	runErr := guestExec(ctx, p, guestWorkspace, term, term, command, stdout, stderr)
	if *keep {
		return runErr
	}
	if err := bottleDown(context.WithoutCancel(ctx), p); err != nil {
		return errors.Join(runErr, err)
	}
	forgetStage(p.Slug, p.Stage)
	return runErr
}

// isTerminal reports whether f looks like a terminal: a character device
// (a pipe or a file gets no -t; smolvm itself puts only a real TTY in raw
// mode).
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0 && fi.Name() != os.DevNull
}

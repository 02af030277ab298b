// Smolbottle runs an AI coding agent (Claude Code by default) inside a
// smolvm microVM whose only network is a confined gvproxy user-mode network.
// From inside the guest exactly one name resolves, proxy.internal, and
// exactly the host-side sidecar ports answer there: the egress proxy
// (pipelock) always, a git gateway (git-gate) and a supervision channel
// (supervise) when enabled. Every other destination is unreachable.
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
//
// Plan resolves a bottle without starting anything: it runs the preflight,
// derives the bottle's subnet from its slug, allocates one loopback port per
// sidecar, writes the stage directory and prints what up would run and what
// down would undo. -json prints the same plan as JSON.
//
// Up plans the bottle, then starts a supervisor that owns the confined
// gvproxy, its relays and the sidecars; creates and starts the machine with
// no smolvm network and gvproxy's socket bridged in; starts gvforwarder in
// the guest, configures the guest network and runs the egress self-test
// from inside the guest. A forbidden destination that answers stops the
// bottle. Run is up, then the agent with a terminal in /workspace, then
// down unless -keep. Exec runs a command in a running bottle and passes
// its exit status through. Cp copies one file in. Down stops the
// supervisor and everything it owns, deletes the machine and removes the
// stage but its logs; it is idempotent and works after a crash; -n prints
// what it would do. Ls lists bottles as planned, running or stale.
//
// Doctor prints what the preflight finds: each program with its path and
// version, whether the smolvm on PATH is smol-machines' and has the flags
// the design needs, and whether user and network namespaces can be created.
// Selftest proves the confinement: it runs the real gvproxy confined and
// the real gvforwarder in namespaces it creates and prints the
// reachability matrix.
//
// Exit status is 0 on success, 1 on failure and 2 on a usage error; exec
// and run exit with the guest command's status.
//
// Security: smolbottle trusts the smolvm, gvproxy, gvforwarder and pipelock
// binaries it finds on PATH (or beside itself) and checks their versions. It
// writes only under the stage directory (default
// ~/.local/state/smolbottle/SLUG): directories 0700, files 0600, each
// written whole. No secret value is ever written: ANTHROPIC_API_KEY and
// CLAUDE_CODE_OAUTH_TOKEN reach the guest as references smolvm resolves from
// its environment. Child programs get an explicit environment and argv,
// never a shell. Nothing listens on anything but 127.0.0.1 or a unix socket
// in a 0700 directory.
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
	"runtime/debug"
	"strings"
	"syscall"
)

// errUsage marks an error that is the caller's fault: exit status 2.
var errUsage = errors.New("usage")

// usageError wraps a message as a usage error.
func usageError(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errUsage}, args...)...)
}

func main() {
	// A closing terminal (SIGHUP) tears down like ^C.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	// Children get stdio and what they are handed, never what this
	// process inherited without close-on-exec.
	closeOnExecInherited()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(os.Stderr, err))
}

// exitCode prints err the way every smolbottle error is printed and returns
// the exit status: 0 success, 1 failure, 2 usage.
func exitCode(stderr io.Writer, err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	}
	var ec exitStatus
	if errors.As(err, &ec) {
		return int(ec)
	}
	msg := err.Error()
	if errors.Is(err, errUsage) {
		msg = trimUsagePrefix(msg)
	}
	fmt.Fprintf(stderr, "smolbottle: error: %s\n", msg)
	var h hinted
	if errors.As(err, &h) {
		for _, line := range h.hints {
			fmt.Fprintf(stderr, "smolbottle: hint: %s\n", line)
		}
	}
	if errors.Is(err, errUsage) {
		return 2
	}
	return 1
}

// exitStatus is returned when a guest command's exit status must pass
// through unchanged and nothing more is to be printed.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// hinted carries hint lines printed after the error line.
type hinted struct {
	err   error
	hints []string
}

func (h hinted) Error() string { return h.err.Error() }
func (h hinted) Unwrap() error { return h.err }

// withHint attaches hint lines to err.
func withHint(err error, hints ...string) error { return hinted{err, hints} }

func trimUsagePrefix(msg string) string {
	const p = "usage: "
	if len(msg) >= len(p) && msg[:len(p)] == p {
		return msg[len(p):]
	}
	return msg
}

// run is the whole program; it returns instead of exiting so that every
// deferred cleanup runs.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return usageError("no subcommand")
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	case "version":
		fmt.Fprintln(stdout, "smolbottle", version())
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
		return runSelftest(ctx, args[1:], stdout, stderr)
	case confineCmd, dropExecCmd, guestNetCmd, probeCmd, selftestHostCmd, selftestPeerCmd, selftestGuestCmd:
		return runNetInternal(ctx, args, stdout, stderr) // internal: argv built by the network code only
	default:
		return usageError("unknown subcommand %q", args[0])
	}
}

// usage is printed by `smolbottle help` and on a usage error.
const usage = `Usage: smolbottle COMMAND [flags] [SLUG]

Commands:
  plan SLUG              resolve a bottle, write its stage, print the plan; start nothing
  up SLUG                plan, start the supervisor and the machine, self-test the egress
  run SLUG [-- CMD...]   up, the agent (default claude) with a terminal, then down
  exec SLUG -- CMD...    run a command in a running bottle; its exit status passes through
  cp SLUG FILE PATH      copy one host file into the guest at PATH
  down SLUG              stop and delete everything but the logs (-n: only print)
  ls                     list bottles: planned, running or stale
  doctor                 check smolvm, gvproxy, gvforwarder, pipelock and namespaces
  selftest               prove the confinement: the reachability matrix, in namespaces
  version                print the version

Plan flags (also for up and run):
  -image PATH          local OCI/docker archive (.tar, .tar.gz, .tgz) or rootfs directory
  -workspace DIR       mounted at /workspace (default: current directory)
  -allow HOST          egress allow-list entry, repeatable: NAME or *.DOMAIN
                       (default api.anthropic.com; giving -allow replaces it)
  -git-gate            add the git gateway sidecar, started from -git-gate-cmd
  -git-gate-cmd ARGV   its command; {port} and {stage} are substituted, split at spaces
  -supervise           add the supervision sidecar, started from -supervise-cmd
  -supervise-cmd ARGV  its command, as for -git-gate-cmd
  -egress-proxy ADDR   use a proxy already running on 127.0.0.1:PORT instead of pipelock
  -cpus N              virtual CPUs (default 4)
  -mem MIB             memory in MiB (default 4096)
  -stage DIR           stage directory (default ~/.local/state/smolbottle/SLUG)
  -backend NAME        bottle backend (default smolmachines)
  -json                print the plan as JSON (plan only)
  -q                   no progress on stderr (up and run)
  -keep                leave the bottle running after the agent exits (run only)

Examples:
  $ docker save node:22 -o node.tar
  $ smolbottle plan -image node.tar -workspace ~/src/app demo
  $ smolbottle run -image agent.tar -allow api.anthropic.com -allow '*.npmjs.org' demo
  $ smolbottle exec demo -- npm test
  $ smolbottle down demo
  $ smolbottle doctor

Exit status: 0 success, 1 failure, 2 usage error; exec and run pass the guest's through.
`

// version reports the module version stamped by go install, if any.
func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "(devel)"
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// parseInterleaved parses flags that may come before or after the
// positional arguments (smolbottle plan SLUG -image x works like
// smolbottle plan -image x SLUG) and returns the positionals.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// newFlagSet returns a FlagSet that reports errors to stderr and returns
// them instead of exiting.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("smolbottle "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	return fs
}

// parsePlanFlags parses the flags plan (and later up and run) accept.
func parsePlanFlags(fs *flag.FlagSet, args []string) (planOptions, error) {
	opts := planOptions{}
	var allow stringList
	fs.StringVar(&opts.Image, "image", "", "")
	fs.StringVar(&opts.Workspace, "workspace", ".", "")
	fs.Var(&allow, "allow", "")
	fs.BoolVar(&opts.GitGate, "git-gate", false, "")
	fs.BoolVar(&opts.Supervise, "supervise", false, "")
	fs.StringVar(&opts.GitGateCmd, "git-gate-cmd", "", "")
	fs.StringVar(&opts.SuperviseCmd, "supervise-cmd", "", "")
	fs.StringVar(&opts.EgressProxy, "egress-proxy", "", "")
	fs.IntVar(&opts.CPUs, "cpus", defaultCPUs, "")
	fs.IntVar(&opts.MemMiB, "mem", defaultMemMiB, "")
	fs.StringVar(&opts.Stage, "stage", "", "")
	fs.StringVar(&opts.Backend, "backend", defaultBackend, "")
	fs.BoolVar(&opts.JSON, "json", false, "")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return opts, flagError(err)
	}
	switch len(pos) {
	case 0:
		return opts, usageError("missing SLUG")
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
	opts, err := parsePlanFlags(newFlagSet("plan", stderr), args)
	if err != nil {
		return err
	}
	p, err := resolvePlan(ctx, opts, planEnv{Getenv: os.Getenv, Preflight: defaultPreflightEnv(true)})
	if err != nil {
		return err
	}
	if err := p.writeStage(); err != nil {
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
	fs := newFlagSet("doctor", stderr)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return flagError(err)
	}
	if len(pos) > 0 {
		return usageError("doctor takes no arguments")
	}
	checks, _, err := preflightFresh(ctx, defaultPreflightEnv(true))
	writeChecks(stdout, checks)
	if err != nil {
		// The report above already says what to fix; repeat only the verdict.
		return errors.New(err.Error())
	}
	return nil
}

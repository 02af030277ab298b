package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The fake smolvm is the test binary run under the name "smolvm". It is a
// contract with smol-machines/smolvm's source at v1.9.3: it parses argv the
// way that release's clap definitions do (a subset: the flags listed
// below), keeps machines in a JSON file beside its own executable,
// reproduces smolvm's messages and exit codes, and boots a fake VM on start
// (fakevm_test.go) in which exec, exec --detach and cp run. Every
// behaviour smolbottle relies on is a row of the contract table
// (smolvmcontract_test.go), which cites the source line and is checked
// against this fake. Capabilities later releases add are switched on by
// name (fakeControl.Caps), never by a guessed version. Beside itself it
// also reads a control file (faults on request) and appends every argv and
// environment it received to a log. Messages the source does not give are
// marked "fake:" so nobody mistakes them for smolvm's.

func init() { fakes["smolvm"] = fakeSmolvm }

const (
	fakeSmolvmState   = "smolvm.state.json"
	fakeSmolvmControl = "smolvm.control.json"
	fakeSmolvmLog     = "smolvm.log"
	fakeSmolvmLock    = "smolvm.lock"
	fakeSmolvmGuests  = "guest"
)

// fakeControl makes the fake misbehave on request.
type fakeControl struct {
	// Mode picks the CLI: "" smolvm 1.9.3, "nomount" one without
	// --mount-socket, "celesto" CelestoAI's unrelated CLI of the same name.
	Mode string `json:"mode"`
	// Caps switches on what releases after 1.9.3 add, by name:
	// "exec-user" (machine exec --user, smolvm PR #1148; its exact form is
	// unverified, modelled as --user USER) and "tun" (/dev/net/tun bound
	// into image containers, smolvm PR #1146). The preflight tests'
	// fake-smolvm.mode file beside the binary sets Mode and Caps too, as
	// words.
	Caps       []string          `json:"caps"`
	Fail       map[string]string `json:"fail"`        // subcommand -> agent error message
	Hang       map[string]bool   `json:"hang"`        // subcommand -> never return
	IgnoreTerm bool              `json:"ignore_term"` // a hang ignores SIGTERM
}

// Capability names of fakeControl.Caps.
const (
	fakeCapExecUser = "exec-user"
	fakeCapTun      = "tun"
)

func (c fakeControl) has(cap string) bool { return slices.Contains(c.Caps, cap) }

// fakeMachine is one machine record.
type fakeMachine struct {
	Name    string            `json:"name"`
	State   string            `json:"state"`
	PID     int               `json:"pid,omitempty"`
	Image   string            `json:"image"`      // as the record keeps it: local:HASH, local-dir:PATH or verbatim
	Layers  string            `json:"layers"`     // fake: the staged archive or directory of a local image
	Init    bool              `json:"init"`       // the first start completed (the image is in place)
	User    string            `json:"image_user"` // the image config's User, read at the first start
	Network bool              `json:"network"`
	Volumes []string          `json:"volumes"`
	Sockets []string          `json:"sockets"`
	Env     []string          `json:"env"`
	Secrets map[string]string `json:"secrets"` // guest variable -> host variable
	Workdir string            `json:"workdir"`
	Labels  map[string]string `json:"labels"`
	Guests  []int             `json:"guests,omitempty"` // detached exec processes (host pids: the VM has no pid namespace)
}

type fakeState struct {
	Machines map[string]*fakeMachine `json:"machines"`
}

// fakeRecord is one logged invocation.
type fakeRecord struct {
	Argv []string `json:"argv"`
	Env  []string `json:"env"`
	Dir  string   `json:"dir"`
}

type fakeFlag struct {
	long  string
	short byte
	value bool
}

var fakeSmolvmFlags = map[string][]fakeFlag{
	"create": {
		{"name", 'n', true}, {"label", 0, true}, {"image", 'I', true}, {"max-image-size", 0, true},
		{"cpus", 0, true}, {"mem", 0, true}, {"storage", 0, true}, {"overlay", 0, true},
		{"volume", 'v', true}, {"port", 'p', true}, {"net", 0, false}, {"net-backend", 0, true},
		{"dns", 0, true}, {"network", 0, true}, {"allow-cidr", 0, true}, {"allow-host", 0, true},
		{"outbound-localhost-only", 0, false}, {"gpu", 0, false}, {"gpu-vram", 0, true}, {"rosetta", 0, false},
		{"expose-socket", 0, true}, {"mount-socket", 0, true}, {"init", 0, true}, {"env", 'e', true},
		{"workdir", 'w', true}, {"ssh-agent", 0, false}, {"cuda", 0, false}, {"auto-graph", 0, false},
		{"docker-socket", 0, false}, {"secret-env", 0, true}, {"secret-file", 0, true},
		{"smolfile", 's', true}, {"from", 0, true},
	},
	"start": {{"name", 'n', true}, {"forkable", 0, false}, {"fork-pool-size", 0, true},
		{"cuda-vram-limit-mib", 0, true}, {"proxy", 0, true}, {"no-proxy", 0, true}},
	"stop":   {{"name", 'n', true}},
	"delete": {{"name", 'n', true}, {"force", 'f', false}, {"cascade", 0, false}},
	"status": {{"name", 'n', true}, {"json", 0, false}},
	"ls":     {{"verbose", 'v', false}, {"json", 0, false}},
	"exec": {{"name", 0, true}, {"workdir", 'w', true}, {"env", 'e', true}, {"secret-env", 0, true},
		{"secret-file", 0, true}, {"timeout", 0, true}, {"interactive", 'i', false}, {"tty", 't', false},
		{"stream", 0, false}, {"detach", 'd', false}},
	"cp": {{"mode", 0, true}, {"uid", 0, true}, {"gid", 0, true}},
}

var fakeAliases = map[string]string{"rm": "delete", "list": "ls"}

// fakeArgs is a parsed machine subcommand line.
type fakeArgs struct {
	flags    map[string][]string // long name -> values ("" for a switch)
	pos      []string
	trailing []string
	dashdash bool
}

func (a fakeArgs) has(name string) bool { return len(a.flags[name]) > 0 }

func (a fakeArgs) get(name string) string {
	if v := a.flags[name]; len(v) > 0 {
		return v[len(v)-1]
	}
	return ""
}

// fakeExit carries the exit code out of the fake's subcommand functions.
type fakeExit struct {
	code int
	msg  string
}

func clapError(sub, msg string) fakeExit {
	return fakeExit{2, fmt.Sprintf("error: %s\n\nUsage: smolvm machine %s [OPTIONS]\n\nFor more information, try '--help'.\n", msg, sub)}
}

func smolError(format string, args ...any) fakeExit {
	return fakeExit{1, "Error: " + fmt.Sprintf(format, args...) + "\n"}
}

func fakeSmolvm(args []string) int {
	dir := filepath.Dir(os.Args[0])
	fakeLogInvocation(dir, args)
	ctl := fakeReadControl(dir)
	// clap's #[command(version)] (src/main.rs:17 @ v1.9.3).
	const version = "1.9.3"
	switch ctl.Mode {
	case "celesto":
		if len(args) == 1 && args[0] == "--version" {
			fmt.Print("smolvm, version 0.3.1\n")
			return 0
		}
		fmt.Fprint(os.Stderr, "Usage: smolvm [OPTIONS] COMMAND [ARGS]...\nError: No such command 'machine'.\n")
		return 2
	}
	if len(args) == 1 && (args[0] == "--version" || args[0] == "-V") {
		fmt.Printf("smolvm %s\n", version)
		return 0
	}
	if len(args) == 2 && args[0] == "machine" && (args[1] == "--help" || args[1] == "-h") {
		fmt.Print("Usage: smolvm machine <COMMAND>\n\nCommands:\n")
		for _, c := range []string{"run", "exec", "create", "start", "fork", "fork-release", "stop", "delete",
			"status", "egress-events", "ls", "update", "images", "prune", "shell", "cp", "monitor", "data-dir"} {
			fmt.Printf("  %s\n", c)
		}
		return 0
	}
	if len(args) == 0 || (args[0] != "machine" && args[0] != "vm") {
		if len(args) == 0 {
			fmt.Fprint(os.Stderr, "Usage: smolvm <COMMAND>\n")
			return 2
		}
		fmt.Fprintf(os.Stderr, "error: unrecognized subcommand '%s'\n", args[0])
		return 2
	}
	if len(args) < 2 {
		fmt.Fprint(os.Stderr, "Usage: smolvm machine <COMMAND>\n")
		return 2
	}
	sub := args[1]
	if a, ok := fakeAliases[sub]; ok {
		sub = a
	}
	spec, ok := fakeSmolvmFlags[sub]
	if !ok {
		fmt.Fprintf(os.Stderr, "fake: smolvm machine %s is not faked\n", sub)
		return 99
	}
	switch {
	case sub == "exec" && ctl.has(fakeCapExecUser):
		spec = append(slices.Clone(spec), fakeFlag{"user", 0, true}) // PR #1148, form unverified
	case sub == "create" && ctl.Mode == "nomount":
		spec = slices.DeleteFunc(slices.Clone(spec), func(f fakeFlag) bool { return f.long == "mount-socket" })
	}
	if slices.Contains(args[2:], "--help") || slices.Contains(args[2:], "-h") {
		fakeHelp(sub, spec)
		return 0
	}
	pa, ex := fakeParse(sub, spec, args[2:])
	if ex == nil {
		ex = fakeCheckArgs(sub, pa)
	}
	if ex != nil {
		fmt.Fprint(os.Stderr, ex.msg)
		return ex.code
	}
	if ctl.Hang[sub] {
		fakeHang(ctl.IgnoreTerm)
	}
	if msg, ok := ctl.Fail[sub]; ok {
		fmt.Fprintf(os.Stderr, "Error: agent operation failed: %s: %s\n", sub, msg)
		return 1
	}
	res := fakeRun(dir, sub, pa, ctl)
	if res.msg != "" {
		fmt.Fprint(os.Stderr, res.msg)
	}
	return res.code
}

func fakeLogInvocation(dir string, args []string) {
	cwd, _ := os.Getwd()
	line, _ := json.Marshal(fakeRecord{Argv: args, Env: os.Environ(), Dir: cwd})
	f, err := os.OpenFile(filepath.Join(dir, fakeSmolvmLog), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		fakeFatal(err) // a fake that cannot log must not pass a test
	}
	f.Write(append(line, '\n'))
	f.Close()
}

// fakeFatal ends the fake on its own failure, with an exit code no real
// smolvm path produces.
func fakeFatal(err error) {
	fmt.Fprintf(os.Stderr, "fake: internal error: %v\n", err)
	os.Exit(98)
}

func fakeReadControl(dir string) fakeControl {
	var c fakeControl
	if b, err := os.ReadFile(filepath.Join(dir, fakeSmolvmControl)); err == nil {
		if err := json.Unmarshal(b, &c); err != nil {
			fakeFatal(err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "fake-smolvm.mode")); err == nil {
		for _, w := range strings.Fields(string(b)) {
			switch w {
			case fakeCapExecUser, fakeCapTun:
				c.Caps = append(c.Caps, w)
			case "nomount", "celesto":
				c.Mode = w
			default:
				fakeFatal(fmt.Errorf("fake-smolvm.mode: unknown word %q", w))
			}
		}
	}
	switch c.Mode {
	case "", "nomount", "celesto":
	default:
		fakeFatal(fmt.Errorf("control: unknown mode %q", c.Mode))
	}
	for _, cap := range c.Caps {
		if cap != fakeCapExecUser && cap != fakeCapTun {
			fakeFatal(fmt.Errorf("control: unknown capability %q", cap))
		}
	}
	return c
}

func fakeHang(ignoreTerm bool) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM)
	for range ch {
		if !ignoreTerm {
			os.Exit(143)
		}
	}
}

func fakeHelp(sub string, spec []fakeFlag) {
	fmt.Printf("Usage: smolvm machine %s [OPTIONS]\n\nOptions:\n", sub)
	for _, f := range spec {
		short := "    "
		if f.short != 0 {
			short = "-" + string(f.short) + ", "
		}
		val := ""
		if f.value {
			val = " <" + strings.ToUpper(strings.ReplaceAll(f.long, "-", "_")) + ">"
		}
		fmt.Printf("  %s--%s%s\n          fake help text\n", short, f.long, val)
	}
	fmt.Printf("  -h, --help\n          Print help\n")
}

// fakeParse parses argv as clap would for spec: unknown flags and
// missing values are errors (exit 2); "--" ends the options.
func fakeParse(sub string, spec []fakeFlag, args []string) (fakeArgs, *fakeExit) {
	pa := fakeArgs{flags: map[string][]string{}}
	byLong := map[string]fakeFlag{}
	byShort := map[byte]fakeFlag{}
	for _, f := range spec {
		byLong[f.long] = f
		if f.short != 0 {
			byShort[f.short] = f
		}
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			pa.dashdash = true
			pa.trailing = args[i+1:]
			return pa, nil
		case strings.HasPrefix(a, "--"):
			name, val, hasVal := strings.Cut(a[2:], "=")
			f, ok := byLong[name]
			if !ok {
				e := clapError(sub, fmt.Sprintf("unexpected argument '--%s' found", name))
				return pa, &e
			}
			if f.value && !hasVal {
				if i+1 >= len(args) {
					e := clapError(sub, fmt.Sprintf("a value is required for '--%s' but none was supplied", name))
					return pa, &e
				}
				i++
				val = args[i]
			}
			pa.flags[f.long] = append(pa.flags[f.long], val)
		case strings.HasPrefix(a, "-") && len(a) > 1:
			for j := 1; j < len(a); j++ {
				f, ok := byShort[a[j]]
				if !ok {
					e := clapError(sub, fmt.Sprintf("unexpected argument '-%c' found", a[j]))
					return pa, &e
				}
				if !f.value {
					pa.flags[f.long] = append(pa.flags[f.long], "")
					continue
				}
				val := a[j+1:]
				if val == "" {
					if i+1 >= len(args) {
						e := clapError(sub, fmt.Sprintf("a value is required for '-%c' but none was supplied", a[j]))
						return pa, &e
					}
					i++
					val = args[i]
				}
				pa.flags[f.long] = append(pa.flags[f.long], val)
				break
			}
		default:
			pa.pos = append(pa.pos, a)
		}
	}
	return pa, nil
}

// fakeCheckArgs applies the positional, required and conflict rules.
func fakeCheckArgs(sub string, pa fakeArgs) *fakeExit {
	fail := func(msg string) *fakeExit { e := clapError(sub, msg); return &e }
	switch sub {
	case "cp":
		if len(pa.pos) != 2 {
			return fail("cp takes exactly SRC and DST")
		}
		return nil
	case "exec":
		// The real CLI (trailing_var_arg) would also take a command without
		// "--"; the fake is stricter because smolbottle always writes it.
		if len(pa.pos) > 0 && !pa.dashdash {
			return fail(fmt.Sprintf("fake: exec command %q not after '--'", pa.pos[0]))
		}
		if len(pa.trailing) == 0 {
			return fail("the following required arguments were not provided:\n  <COMMAND>...")
		}
		if pa.has("detach") && (pa.has("interactive") || pa.has("tty") || pa.has("stream")) {
			return fail("the argument '--detach' cannot be used with '--interactive', '--tty' or '--stream'")
		}
		if t := pa.get("timeout"); pa.has("timeout") {
			if d, err := time.ParseDuration(t); err != nil || d <= 0 {
				return fail(fmt.Sprintf("invalid value '%s' for '--timeout <TIMEOUT>'", t))
			}
		}
		return nil
	case "create":
		if len(pa.pos) > 0 {
			return fail(fmt.Sprintf("unexpected argument '%s' found", pa.pos[0]))
		}
	case "delete":
		if !pa.has("name") {
			return fail("the following required arguments were not provided:\n  --name <NAME>")
		}
	}
	if len(pa.pos) > 0 {
		return fail(fmt.Sprintf("unexpected argument '%s' found", pa.pos[0]))
	}
	if len(pa.trailing) > 0 && sub != "create" {
		return fail(fmt.Sprintf("unexpected argument '%s' found", pa.trailing[0]))
	}
	return nil
}

// fakeLocked runs fn with the state file locked, saving it afterwards.
func fakeLocked(dir string, fn func(st *fakeState) fakeExit) fakeExit {
	lf, err := os.OpenFile(filepath.Join(dir, fakeSmolvmLock), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		fakeFatal(err)
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		fakeFatal(err)
	}
	st := fakeState{Machines: map[string]*fakeMachine{}}
	if b, err := os.ReadFile(filepath.Join(dir, fakeSmolvmState)); err == nil {
		if err := json.Unmarshal(b, &st); err != nil {
			fakeFatal(err)
		}
	}
	res := fn(&st)
	b, _ := json.MarshalIndent(st, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, fakeSmolvmState), b, 0o600); err != nil {
		fakeFatal(err)
	}
	return res
}

func fakeRun(dir, sub string, pa fakeArgs, ctl fakeControl) fakeExit {
	name := pa.get("name")
	if name == "" {
		name = "default" // what smolvm does without --name
	}
	switch sub {
	case "create":
		return fakeLocked(dir, func(st *fakeState) fakeExit { return fakeCreate(dir, st, pa) })
	case "start":
		return fakeLocked(dir, func(st *fakeState) fakeExit {
			m := st.Machines[name]
			if m == nil {
				return smolError("vm not found: %s", name)
			}
			if m.State == "running" {
				fmt.Printf("Machine '%s' already running (PID: %d)\n", name, m.PID)
				return fakeExit{}
			}
			fmt.Fprintf(os.Stderr, "Starting machine '%s'...\n", name)
			// smolvm boots the VM first and stops it again when a secret or
			// the image fails (src/cli/vm_common.rs:1474-1519 @ v1.9.3); the
			// fake checks first, with the same outcome: not running.
			if ex := fakeResolveSecrets(m.Secrets); ex != nil {
				return *ex
			}
			if ex := fakeFirstStart(m); ex != nil {
				return *ex
			}
			pid, err := fakeVMStart(dir, m, ctl.has(fakeCapTun))
			if err != nil {
				return smolError("fake: start machine %s: %v", name, err)
			}
			m.State, m.PID, m.Init = "running", pid, true
			fmt.Printf("Machine '%s' running (PID: %d)\n", name, m.PID)
			return fakeExit{}
		})
	case "stop":
		return fakeLocked(dir, func(st *fakeState) fakeExit {
			m := st.Machines[name]
			if m == nil {
				return smolError("vm not found: %s", name)
			}
			if m.State != "running" {
				fmt.Printf("Stopped machine: %s\n", name) // src/cli/vm_common.rs:1964 @ v1.9.3
				return fakeExit{}
			}
			fakeKillGuests(m)
			fakeVMStop(dir, m.PID)
			m.State, m.PID = "stopped", 0
			fmt.Printf("Stopped machine: %s\n", name)
			return fakeExit{}
		})
	case "delete":
		return fakeLocked(dir, func(st *fakeState) fakeExit {
			if st.Machines[name] == nil {
				return smolError("vm not found: %s", name)
			}
			if !pa.has("force") {
				fmt.Fprintf(os.Stderr, "Delete machine '%s'? [y/N] ", name)
				line, _ := bufio.NewReader(os.Stdin).ReadString('\n')
				if a := strings.TrimSpace(line); a != "y" && a != "Y" {
					fmt.Println("Cancelled")
					return fakeExit{}
				}
			}
			fakeKillGuests(st.Machines[name])
			fakeVMStop(dir, st.Machines[name].PID)
			delete(st.Machines, name)
			os.RemoveAll(filepath.Join(dir, fakeSmolvmGuests, name))
			fmt.Printf("Deleted machine: %s\n", name)
			return fakeExit{}
		})
	case "status":
		return fakeLocked(dir, func(st *fakeState) fakeExit {
			m := st.Machines[name]
			switch {
			case m == nil && pa.has("json"):
				return smolError("config operation failed: machine status: machine '%s' not found", name)
			case m == nil:
				return smolError("vm not found: %s", name)
			case pa.has("json"):
				b, _ := json.MarshalIndent(fakeStatusJSON(m), "", "  ")
				fmt.Println(string(b))
			case m.State == "running": // src/cli/vm_common.rs:2438-2441; src/cli/mod.rs:40-42 @ v1.9.3
				fmt.Printf("Machine '%s': running (PID: %d)\n", name, m.PID)
			default: // vm_common.rs:2451-2452; the state's wording is unverified (smolbottle reads only the exit status)
				fmt.Printf("Machine '%s': %s\n", name, m.State)
			}
			return fakeExit{}
		})
	case "ls":
		return fakeLocked(dir, func(st *fakeState) fakeExit {
			names := make([]string, 0, len(st.Machines))
			for n := range st.Machines {
				names = append(names, n)
			}
			slices.Sort(names)
			all := []map[string]any{}
			for _, n := range names {
				all = append(all, fakeStatusJSON(st.Machines[n]))
			}
			b, _ := json.MarshalIndent(all, "", "  ")
			fmt.Println(string(b))
			return fakeExit{}
		})
	case "exec":
		return fakeExec(dir, name, pa)
	case "cp":
		return fakeCp(dir, pa)
	}
	return fakeExit{99, "fake: unreachable\n"}
}

func fakeStatusJSON(m *fakeMachine) map[string]any {
	var pid any
	if m.PID != 0 {
		pid = m.PID
	}
	return map[string]any{
		"name": m.Name, "state": m.State, "pid": pid, "created_at": "2026-11-26T00:00:00Z",
		"image": m.Image, "entrypoint": []string{}, "cmd": []string{}, "ephemeral": false,
		"labels": m.Labels, "network": m.Network, "cpus": 4, "memory_mib": 8192, "storage_gb": 20,
		"overlay_gb": 10, "mounts": len(m.Volumes), "ports": 0, "gpu": false, "gpu_vram_mib": nil,
		"cuda": false, "forkable": false, "cuda_fork_pool_size": nil, "cuda_vram_limit_mib": nil,
		"forkpoint_held": false, "restart_policy": "never", "restart_max_retries": 0, "restart_count": 0,
		"health_cmd": nil, "health_interval_secs": nil, "health_timeout_secs": nil, "health_retries": nil,
		"health_startup_grace_secs": nil,
	}
}

func fakeCreate(dir string, st *fakeState, pa fakeArgs) fakeExit {
	var ex *fakeExit
	name := pa.get("name")
	if name == "" {
		name = fmt.Sprintf("vm-%d", len(st.Machines)+1) // smolvm auto-generates vm-<id>
	}
	if err := checkMachineName(name); err != nil {
		return smolError("fake: invalid machine name: %v", err)
	}
	if st.Machines[name] != nil {
		return smolError("config operation failed: create machine: machine '%s' already exists or is being created", name)
	}
	m := &fakeMachine{Name: name, State: "created", Secrets: map[string]string{}, Labels: map[string]string{}}
	sf := fakeSmolfile{}
	if p := pa.get("smolfile"); p != "" {
		b, err := os.ReadFile(p)
		if err != nil {
			return smolError("config operation failed: load smolfile: %v", err)
		}
		if sf, err = parseFakeSmolfile(string(b)); err != nil {
			return smolError("config operation failed: load smolfile: %v", err)
		}
	}
	m.Image = sf.str("image") // stored verbatim (src/cli/smolfile.rs:142 @ v1.9.3)
	if v := pa.get("image"); v != "" {
		if m.Image, m.Layers, ex = fakeResolveImage(dir, v); ex != nil {
			return *ex
		}
	}
	m.Workdir = sf.str("workdir")
	if v := pa.get("workdir"); v != "" {
		m.Workdir = v
	}
	m.Network = sf["net"] == true || len(sf.strs("ports")) > 0 || sf["network"] != nil
	for _, f := range []string{"net", "port", "dns", "network", "allow-cidr", "allow-host", "outbound-localhost-only"} {
		m.Network = m.Network || pa.has(f)
	}
	if ex := fakeImageFetchable(m); ex != nil {
		return *ex
	}
	for _, v := range append(sf.strs("volumes"), pa.flags["volume"]...) {
		if ex := fakeCheckVolume(v); ex != nil {
			return *ex
		}
		m.Volumes = append(m.Volumes, v)
	}
	seen := map[string]bool{}
	for _, s := range pa.flags["mount-socket"] {
		_, guest, ok := strings.Cut(s, ":")
		if !ok || !strings.HasPrefix(guest, "/") || strings.ContainsAny(guest, ";|") || seen[guest] {
			return smolError("invalid mount path: %s", s)
		}
		seen[guest] = true
		m.Sockets = append(m.Sockets, s)
	}
	m.Env = append(sf.strs("env"), pa.flags["env"]...)
	if sec, ok := sf["secrets"].(map[string]any); ok {
		for g, ref := range sec {
			if h, ok := ref.(map[string]any)["from_env"].(string); ok {
				m.Secrets[g] = h
			}
		}
	}
	// create only checks the references' shape (src/cli/vm_common.rs:621-625
	// @ v1.9.3); their values are resolved at every start and exec.
	for g, h := range fakeSecretEnv(pa.flags["secret-env"]) {
		m.Secrets[g] = h
	}
	for _, l := range pa.flags["label"] {
		k, v, _ := strings.Cut(l, "=")
		m.Labels[k] = v
	}
	st.Machines[name] = m
	fmt.Printf("Created machine: %s\n", name)
	return fakeExit{}
}

// fakeRunning looks the machine up the way exec and cp do: they never
// start it.
func fakeRunning(dir, name string) (*fakeMachine, *fakeExit) {
	var m *fakeMachine
	res := fakeLocked(dir, func(st *fakeState) fakeExit {
		m = st.Machines[name]
		switch {
		case m == nil:
			return smolError("vm not found: %s", name)
		case m.State != "running":
			return smolError("agent operation failed: connect: machine '%s' is not running. Use 'smolvm machine start --name %s' first.", name, name)
		}
		return fakeExit{}
	})
	if res.msg != "" {
		return nil, &res
	}
	return m, nil
}

func fakeExec(dir, name string, pa fakeArgs) fakeExit {
	m, ex := fakeRunning(dir, name)
	if ex != nil {
		return *ex
	}
	// The record's secrets, then this exec's --secret-env, resolved from
	// smolvm's own environment at every exec (src/cli/machine.rs:2714-2725
	// @ v1.9.3); the values travel to the guest only inside the request.
	var resolved []string
	for _, refs := range []map[string]string{m.Secrets, fakeSecretEnv(pa.flags["secret-env"])} {
		if ex := fakeResolveSecrets(refs); ex != nil {
			return *ex
		}
		for _, g := range sortedKeys(refs) {
			resolved = append(resolved, g+"="+os.Getenv(refs[g]))
		}
	}
	// exec runs as the image's USER (src/cli/machine.rs:2754,2790;
	// src/cli/vm_common.rs:318-320,347 @ v1.9.3) unless a --user the fake
	// advertises says otherwise.
	user := m.User
	if pa.has("user") {
		user = pa.get("user")
	}
	home := "/root"
	if user != "" && user != "root" && user != "0" {
		home = "/" // fake: smolvm takes HOME from the image's passwd (crates/smolvm-agent/src/oci.rs:500)
	}
	env := []string{"PATH=" + fakeVMPath, "HOME=" + home}
	env = append(env, m.Env...)
	env = append(env, resolved...)
	for _, e := range pa.flags["env"] {
		if k, _, ok := strings.Cut(e, "="); ok && k != "" {
			env = append(env, e)
		} else if v, ok := os.LookupEnv(e); ok && e != "" {
			env = append(env, e+"="+v)
		} // malformed entries are dropped silently, as smolvm does
	}
	wd := pa.get("workdir")
	if wd == "" {
		wd = m.Workdir
	}
	if wd == "" {
		wd = "/"
	}
	req := fakeVMRequest{Op: "exec", Argv: pa.trailing, Env: env, Dir: wd, User: user, Detach: pa.has("detach")}
	if t := pa.get("timeout"); t != "" {
		req.Timeout, _ = time.ParseDuration(t) // checked by fakeCheckArgs
	}
	var files []*os.File
	if !req.Detach {
		stdin := os.Stdin
		if !pa.has("interactive") {
			null, err := os.Open(os.DevNull)
			if err != nil {
				fakeFatal(err)
			}
			defer null.Close()
			stdin = null
		}
		files = []*os.File{stdin, os.Stdout, os.Stderr}
	}
	reply, ex := fakeCall(dir, m, req, files...)
	if ex != nil {
		return *ex
	}
	if req.Detach {
		fakeLocked(dir, func(st *fakeState) fakeExit {
			if m := st.Machines[name]; m != nil {
				m.Guests = append(m.Guests, reply.PID)
			}
			return fakeExit{}
		})
		fmt.Printf("%d\n", reply.PID)
	}
	return fakeExit{code: reply.Code}
}

// fakeCall sends a request to the machine's VM and turns the VM's own
// failures into the fake's exit.
func fakeCall(dir string, m *fakeMachine, req fakeVMRequest, files ...*os.File) (fakeVMReply, *fakeExit) {
	reply, err := fakeVMCall(dir, m.PID, req, files...)
	switch {
	case err != nil:
		e := smolError("agent operation failed: connect: fake: the VM of machine '%s' does not answer: %v", m.Name, err)
		return reply, &e
	case reply.Err != "" && reply.Code == 127: // the command could not be run
		return reply, &fakeExit{127, reply.Err + "\n"}
	case reply.Err != "":
		e := smolError("%s", reply.Err)
		return reply, &e
	}
	return reply, nil
}

// fakeKillGuests ends the machine's detached processes.
func fakeKillGuests(m *fakeMachine) {
	for _, pid := range m.Guests {
		syscall.Kill(-pid, syscall.SIGKILL)
	}
	m.Guests = nil
}

func fakeCp(dir string, pa fakeArgs) fakeExit {
	src, dst := pa.pos[0], pa.pos[1]
	if name, p, ok := strings.Cut(src, ":"); ok { // smolvm splits SRC first
		m, ex := fakeRunning(dir, name)
		if ex != nil {
			return *ex
		}
		reply, ex := fakeCall(dir, m, fakeVMRequest{Op: "read", Path: p})
		if ex != nil {
			return *ex
		}
		if err := os.WriteFile(dst, reply.Data, 0o600); err != nil {
			return smolError("io operation failed: %v", err)
		}
		return fakeExit{}
	}
	name, p, ok := strings.Cut(dst, ":")
	if !ok {
		return smolError("fake: cp needs exactly one machine:path side")
	}
	m, ex := fakeRunning(dir, name)
	if ex != nil {
		return *ex
	}
	if !strings.HasPrefix(p, "/") {
		return smolError("fake: guest path %s is not absolute", p)
	}
	fi, err := os.Stat(src)
	if err != nil {
		return smolError("io operation failed: open %s: %v", src, err)
	}
	if !fi.Mode().IsRegular() {
		return smolError("io operation failed: read %s: Is a directory (os error 21)", src)
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return smolError("io operation failed: %v", err)
	}
	if _, ex := fakeCall(dir, m, fakeVMRequest{Op: "write", Path: p, Data: b}); ex != nil {
		return *ex
	}
	fmt.Fprintf(os.Stderr, "fake: uploaded %d bytes\n", len(b)) // smolvm draws a progress bar (src/cli/machine.rs:4977-4984 @ v1.9.3)
	return fakeExit{}
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// fakeSmolfile is a parsed Smolfile: top-level keys, with sub-tables as
// nested maps.
type fakeSmolfile map[string]any

func (f fakeSmolfile) str(k string) string { s, _ := f[k].(string); return s }

func (f fakeSmolfile) strs(k string) []string {
	var out []string
	if a, ok := f[k].([]any); ok {
		for _, v := range a {
			s, _ := v.(string)
			out = append(out, s)
		}
	}
	return out
}

// The Smolfile schema (crates/smolvm-smolfile/src/lib.rs:225-352 @ v1.9.3): every struct denies
// unknown fields.
var (
	fakeSmolfileTop = map[string]string{
		"image": "string", "entrypoint": "strings", "cmd": "strings", "env": "strings",
		"secrets": "secrets", "workdir": "string", "cpus": "int", "memory": "int", "net": "bool",
		"gpu": "bool", "gpu_vram": "int", "rosetta": "bool", "cuda": "bool", "auto_graph": "bool",
		"docker_socket": "bool", "storage": "int", "overlay": "int", "ports": "strings",
		"volumes": "strings", "init": "strings", "artifact": "table", "pack": "table", "dev": "table",
		"network": "table", "fork": "table", "health": "table", "restart": "table", "auth": "table",
		"service": "table",
	}
	fakeSmolfileTables = map[string]map[string]string{
		"network":  {"allow_hosts": "strings", "allow_cidrs": "strings"},
		"dev":      {"volumes": "strings", "env": "strings", "init": "strings", "workdir": "string", "ports": "strings"},
		"artifact": {"cpus": "int", "memory": "int", "entrypoint": "strings", "cmd": "strings", "oci_platform": "string"},
		"pack":     {"cpus": "int", "memory": "int", "entrypoint": "strings", "cmd": "strings", "oci_platform": "string"},
		"fork":     {"enabled": "bool", "pool_size": "int", "cuda_vram_limit_mib": "int"},
		"health":   {"exec": "strings", "interval": "string", "timeout": "string", "retries": "int", "startup_grace": "string"},
		"restart":  {"policy": "string", "max_retries": "int", "max_backoff": "string"},
		"auth":     {"ssh_agent": "bool"},
		"service":  {"port": "int", "protocol": "string", "listen": "int"},
	}
)

// parseFakeSmolfile reads the TOML subset renderSmolfile writes (basic
// strings, integers, booleans, string arrays, [tables], one-line inline
// tables) and checks every key and type against the schema.
func parseFakeSmolfile(src string) (fakeSmolfile, error) {
	top := fakeSmolfile{}
	cur := map[string]any(top)
	curName := ""
	lines := strings.Split(src, "\n")
	for i := 0; i < len(lines); i++ {
		line := strings.TrimSpace(lines[i])
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "[") {
			curName = strings.Trim(line, "[] ")
			if _, ok := top[curName]; ok {
				return nil, fmt.Errorf("duplicate table [%s]", curName)
			}
			kind := fakeSmolfileTop[curName]
			if kind != "table" && kind != "secrets" {
				return nil, fmt.Errorf("unknown field `%s`", curName)
			}
			cur = map[string]any{}
			top[curName] = cur
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("line %d: expected key = value", i+1)
		}
		k, v = fakeUnquoteKey(strings.TrimSpace(k)), strings.TrimSpace(v)
		if strings.HasPrefix(v, "[") && !strings.HasSuffix(v, "]") {
			for i+1 < len(lines) && !strings.HasSuffix(strings.TrimSpace(v), "]") {
				i++
				v += strings.TrimSpace(lines[i])
			}
		}
		val, err := fakeTOMLValue(v)
		if err != nil {
			return nil, fmt.Errorf("line %d: %v", i+1, err)
		}
		if _, dup := cur[k]; dup {
			return nil, fmt.Errorf("line %d: duplicate key `%s`", i+1, k)
		}
		var want string
		switch {
		case curName == "":
			want = fakeSmolfileTop[k]
		case curName == "secrets":
			want = "secret"
		default:
			want = fakeSmolfileTables[curName][k]
		}
		if want == "" || want == "table" || want == "secrets" {
			return nil, fmt.Errorf("unknown field `%s`", k)
		}
		if err := fakeTOMLType(want, val); err != nil {
			return nil, fmt.Errorf("`%s`: %v", k, err)
		}
		cur[k] = val
	}
	return top, nil
}

func fakeUnquoteKey(k string) string {
	if u, err := strconv.Unquote(k); err == nil {
		return u
	}
	return k
}

func fakeTOMLType(want string, v any) error {
	ok := false
	switch want {
	case "string":
		_, ok = v.(string)
	case "int":
		_, ok = v.(int64)
	case "bool":
		_, ok = v.(bool)
	case "strings":
		var a []any
		if a, ok = v.([]any); ok {
			for _, e := range a {
				if _, s := e.(string); !s {
					ok = false
				}
			}
		}
	case "secret":
		var t map[string]any
		if t, ok = v.(map[string]any); ok {
			_, env := t["from_env"].(string)
			_, file := t["from_file"].(string)
			ok = len(t) == 1 && (env || file)
		}
	}
	if !ok {
		return fmt.Errorf("invalid type: want %s, got %T", want, v)
	}
	return nil
}

// fakeTOMLValue parses one value: "string", integer, bool, [array] or
// { inline = "table" }.
func fakeTOMLValue(v string) (any, error) {
	switch {
	case strings.HasPrefix(v, `"`):
		s, rest, err := fakeTOMLString(v)
		if err != nil {
			return nil, err
		}
		if strings.TrimSpace(rest) != "" {
			return nil, fmt.Errorf("trailing %q", rest)
		}
		return s, nil
	case v == "true" || v == "false":
		return v == "true", nil
	case strings.HasPrefix(v, "["):
		out := []any{}
		rest := strings.TrimSpace(v[1:])
		for !strings.HasPrefix(rest, "]") {
			s, r, err := fakeTOMLString(rest)
			if err != nil {
				return nil, err
			}
			out = append(out, s)
			rest = strings.TrimPrefix(strings.TrimSpace(r), ",")
			rest = strings.TrimSpace(rest)
			if rest == "" {
				return nil, errors.New("unterminated array")
			}
		}
		return out, nil
	case strings.HasPrefix(v, "{") && strings.HasSuffix(v, "}"):
		t := map[string]any{}
		body := strings.TrimSpace(v[1 : len(v)-1])
		for body != "" {
			k, r, ok := strings.Cut(body, "=")
			if !ok {
				return nil, fmt.Errorf("bad inline table %q", v)
			}
			s, r2, err := fakeTOMLString(strings.TrimSpace(r))
			if err != nil {
				return nil, err
			}
			t[fakeUnquoteKey(strings.TrimSpace(k))] = s
			body = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(r2), ","))
		}
		return t, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("unsupported value %q", v)
	}
	return n, nil
}

// fakeTOMLString reads one basic string at the start of s. TOML's escapes
// are a subset of Go's.
func fakeTOMLString(s string) (string, string, error) {
	if !strings.HasPrefix(s, `"`) {
		return "", "", fmt.Errorf("expected a string at %q", s)
	}
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '"':
			u, err := strconv.Unquote(s[:i+1])
			return u, s[i+1:], err
		}
	}
	return "", "", fmt.Errorf("unterminated string %q", s)
}

// fakeSmolvmBin is a fake smolvm set up for one test.
type fakeSmolvmBin struct {
	dir, path string
}

// newFakeSmolvm links the test binary as smolvm in a fresh directory. The
// test fails if the fake never ran.
func newFakeSmolvm(t *testing.T) *fakeSmolvmBin {
	t.Helper()
	dir := t.TempDir()
	f := &fakeSmolvmBin{dir: dir, path: linkAs(t, dir, "smolvm")}
	t.Cleanup(func() {
		if len(f.records(t)) == 0 {
			t.Errorf("fake smolvm in %s was set up but never run", dir)
		}
		// A test that leaves a machine running must not leave its VM.
		for _, m := range f.state(t).Machines {
			fakeKillGuests(m)
			fakeVMStop(dir, m.PID)
		}
	})
	return f
}

// driver returns a smolvm driver for the fake with parent as the parent
// environment and a fresh working directory.
func (f *fakeSmolvmBin) driver(t *testing.T, parent []string) *smolvm {
	t.Helper()
	s, err := newSmolvm(f.path, t.TempDir(), parent)
	if err != nil {
		t.Fatal(err)
	}
	s.waitDelay = 2 * time.Second
	// Under -race every exit of the test binary sleeps a second unless told
	// otherwise; the allow-list rightly drops GORACE, so the test adds it.
	s.env = append(s.env, "GORACE=atexit_sleep_ms=0")
	return s
}

func (f *fakeSmolvmBin) control(t *testing.T, c fakeControl) {
	writeFakeControl(t, filepath.Join(f.dir, fakeSmolvmControl), c)
}

func (f *fakeSmolvmBin) records(t *testing.T) []fakeRecord {
	return readFakeRecords(t, filepath.Join(f.dir, fakeSmolvmLog))
}

// writeFakeControl writes a fake's control file.
func writeFakeControl(t *testing.T, path string, c any) {
	t.Helper()
	b, _ := json.Marshal(c)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// readFakeRecords reads the invocations a fake logged; none when it never ran.
func readFakeRecords(t *testing.T, path string) []fakeRecord {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []fakeRecord
	for line := range strings.Lines(string(b)) {
		var r fakeRecord
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

func (f *fakeSmolvmBin) state(t *testing.T) fakeState {
	t.Helper()
	st := fakeState{}
	b, err := os.ReadFile(filepath.Join(f.dir, fakeSmolvmState))
	if errors.Is(err, os.ErrNotExist) {
		return st
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// guestFile reads a file from the machine's guest, through its VM.
func (f *fakeSmolvmBin) guestFile(t *testing.T, name, p string) ([]byte, error) {
	t.Helper()
	m := f.state(t).Machines[name]
	if m == nil || m.State != "running" {
		return nil, fmt.Errorf("machine %q is not running", name)
	}
	reply, err := fakeVMCall(f.dir, m.PID, fakeVMRequest{Op: "read", Path: p})
	if err == nil && reply.Err != "" {
		err = errors.New(reply.Err)
	}
	return reply.Data, err
}

package main

import (
	"archive/tar"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The contract between smolbottle and smolvm: every argv form smolbottle
// runs, and every output and exit status it relies on, as smolvm's source
// has it at v1.9.3 (commit 21b51875) or as the pull request that changes
// it says. TestSmolvmContract holds the fake smolvm to each row;
// TestSmolvmContractCoversCalls checks that every form smolbottle's
// builders produce has a row. An argv with --image - gets {image} on
// its standard input, as smolbottle passes an archive. Placeholders:
// {image} a docker save archive, {oci} an OCI archive, {smolfile} the Smolfile, {file} a host
// file, {sock} a host path for --mount-socket.
type contractRow struct {
	name string
	cite string
	caps []string // capabilities switched on in the fake (smolvm PRs)
	user string   // the image config's User
	// smolfile is appended to the Smolfile (whose image is {image} too).
	smolfile string
	// before runs first, each expected to exit 0, with the secret set.
	before [][]string
	unset  bool // run argv without ANTHROPIC_API_KEY in the environment
	argv   []string
	code   int
	stdout string // a regexp the output must match; "" for any
	stderr string
	// noStdout is a regexp the output must not match.
	noStdout string
}

const contractMachine = "sb-c"

var (
	ctCreate = []string{"machine", "create", "--name", contractMachine, "--image", "{image}", "--smolfile", "{smolfile}",
		"--mount-socket", "{sock}:/run/smolbottle/gvproxy.sock"}
	ctCreateStdin = []string{"machine", "create", "--name", contractMachine, "--image", "-", "--smolfile", "{smolfile}",
		"--mount-socket", "{sock}:/run/smolbottle/gvproxy.sock"}
	ctStart   = []string{"machine", "start", "--name", contractMachine}
	ctRunning = [][]string{ctCreate, ctStart}
	ctExec    = []string{"machine", "exec", "--name", contractMachine, "-w", "/"}
	ctSecret  = "[secrets]\nANTHROPIC_API_KEY = { from_env = \"ANTHROPIC_API_KEY\" }\n"
)

func ctExecArgs(flags []string, cmd ...string) []string {
	return slices.Concat(ctExec, flags, []string{"--"}, cmd)
}

var smolvmContract = []contractRow{
	{name: "version", cite: "src/main.rs:17 (clap version) @ v1.9.3",
		argv: []string{"--version"}, stdout: `^smolvm 1\.9\.3\n$`},
	{name: "machine subcommands", cite: "src/cli/machine.rs:2923,3590 @ v1.9.3",
		argv: []string{"machine", "--help"}, stdout: `(?m)^\s+create\b`},
	{name: "create has --mount-socket", cite: "src/cli/machine.rs:3037-3038 @ v1.9.3",
		argv: []string{"machine", "create", "--help"}, stdout: `(?m)^\s+--mount-socket <`},
	{name: "exec has no --user", cite: "src/cli/machine.rs:2626-2674 @ v1.9.3",
		argv: []string{"machine", "exec", "--help"}, stdout: `(?m)^\s+--timeout <`, noStdout: `--user`},
	{name: "exec --user appears", cite: "smol-machines/smolvm PR #1148 (form unverified)", caps: []string{fakeCapExecUser},
		argv: []string{"machine", "exec", "--help"}, stdout: `(?m)^\s+--user <`},

	{name: "create resolves --image", cite: "src/cli/machine.rs:3163-3176; src/cli/vm_common.rs:721 @ v1.9.3",
		argv: ctCreate, stdout: `^Created machine: sb-c\n`},
	{name: "create only checks secrets", cite: "src/cli/vm_common.rs:621-625 @ v1.9.3",
		smolfile: ctSecret, unset: true, argv: ctCreate},
	{name: "ls --json with no machine", cite: "src/cli/vm_common.rs:2549-2562 @ v1.9.3",
		argv: lsArgs, stdout: `^\[\]\n$`},
	{name: "ls --json names each machine", cite: "src/cli/vm_common.rs:2564-2571,2484-2486 @ v1.9.3",
		before: [][]string{ctCreate}, argv: lsArgs, stdout: `(?s)^\[\n  \{\n.*"name": "sb-c",\n.*\}\n\]\n$`},
	{name: "create reads an archive on standard input", cite: "src/data/image_source.rs:57-59,250-279 @ v1.9.3",
		argv: ctCreateStdin, stdout: `^Created machine: sb-c\n`},
	{name: "a machine made from standard input starts", cite: "src/data/image_source.rs:200-206; src/cli/vm_common.rs:1503-1519 @ v1.9.3",
		before: [][]string{ctCreateStdin}, argv: ctStart, stdout: `Machine 'sb-c' running`},
	{name: "create twice", cite: "src/cli/vm_common.rs:531-536; src/main.rs:214-215 @ v1.9.3",
		before: [][]string{ctCreate}, argv: ctCreate, code: 1,
		stderr: `^Error: config operation failed: create machine: machine 'sb-c' already exists or is being created\n$`},
	{name: "create refuses a protected volume source", cite: "src/data/storage.rs:52-68,173-187; src/data/errors.rs:128 @ v1.9.3",
		smolfile: "volumes = [\"/run:/w\"]\n", argv: ctCreate, code: 1,
		stderr: `^Error: mount operation failed: validate host path: source path on host is a protected system path and cannot be mounted: /run\n$`},
	{name: "create refuses a missing --image", cite: "src/data/image_source.rs:210-222 @ v1.9.3",
		argv: []string{"machine", "create", "--name", contractMachine, "--image", "/nonexistent/i.tar"}, code: 1,
		stderr: `^Error: config operation failed: --image: cannot read archive /nonexistent/i.tar: `},

	{name: "start", cite: "src/cli/vm_common.rs:1655 @ v1.9.3",
		before: [][]string{ctCreate}, argv: ctStart, stdout: `^Machine 'sb-c' running \(PID: \d+\)\n$`},
	{name: "start resolves secrets from its environment", cite: "src/cli/vm_common.rs:1497,498-507; src/secrets.rs:411-414,452 @ v1.9.3",
		smolfile: ctSecret, before: [][]string{ctCreate}, unset: true, argv: ctStart, code: 1,
		stderr: `(?m)^Error: config operation failed: resolve secret 'ANTHROPIC_API_KEY': env_unset\n$`},
	{name: "a Smolfile-only local image fails the first start",
		cite:   "src/cli/machine.rs:3163-3176; src/cli/smolfile.rs:142; src/cli/vm_common.rs:1503-1519; crates/smolvm-agent/src/oci.rs:758-759 @ v1.9.3",
		before: [][]string{{"machine", "create", "--name", contractMachine, "--smolfile", "{smolfile}"}}, argv: ctStart, code: 1,
		stderr: `image reference must start with alphanumeric character`},
	{name: "only docker save archives", cite: "crates/smolvm-agent/src/storage.rs:1180-1191,1293-1302 @ v1.9.3",
		before: [][]string{{"machine", "create", "--name", contractMachine, "--image", "{oci}", "--smolfile", "{smolfile}"}},
		argv:   ctStart, code: 1, stderr: `manifest\.json not found in tar`},

	{name: "exec runs as the image's USER", cite: "src/cli/machine.rs:2754,2790; src/cli/vm_common.rs:318-320,347 @ v1.9.3",
		user: "1000", before: ctRunning, argv: ctExecArgs(nil, "id", "-u"), stdout: `^1000\n$`},
	{name: "exec as a root image", cite: "src/cli/vm_common.rs:347 @ v1.9.3",
		before: ctRunning, argv: ctExecArgs(nil, "id", "-u"), stdout: `^0\n$`},
	{name: "exec --user is refused by 1.9.3", cite: "src/cli/machine.rs:2626-2674 @ v1.9.3",
		before: ctRunning, argv: ctExecArgs([]string{"--user", "root"}, "true"), code: 2,
		stderr: `^error: unexpected argument '--user' found`},
	{name: "exec --user root", cite: "smol-machines/smolvm PR #1148 (form unverified)", caps: []string{fakeCapExecUser},
		user: "1000", before: ctRunning, argv: ctExecArgs([]string{"--user", "root"}, "id", "-u"), stdout: `^0\n$`},
	{name: "no /dev/net/tun in the container", cite: "crates/smolvm-agent/src/oci.rs:938-1017,1034-1044 @ v1.9.3",
		before: ctRunning, argv: ctExecArgs(nil, "test", "-e", "/dev/net/tun"), code: 1},
	{name: "/dev/net/tun bound in", cite: "smol-machines/smolvm PR #1146", caps: []string{fakeCapTun},
		before: ctRunning, argv: ctExecArgs(nil, "test", "-c", "/dev/net/tun")},
	{name: "root makes the tun node", cite: "crates/smolvm-agent/src/oci.rs:505-515,1034-1044; crates/smolvm-agent/src/crun.rs:155-165 @ v1.9.3",
		before: ctRunning, argv: ctExecArgs(nil, "sh", "-c", "mkdir -p /dev/net && mknod /dev/net/tun c 10 200 && test -c /dev/net/tun")},
	{name: "another user cannot", cite: "crates/smolvm-agent/src/oci.rs:505-515 (capabilities of a non-root process: unverified) @ v1.9.3",
		user: "1000", before: ctRunning, argv: ctExecArgs(nil, "mknod", "/tmp/tun", "c", "10", "200"), code: 1},
	{name: "exec --detach prints the pid", cite: "src/cli/machine.rs:2750-2758 @ v1.9.3",
		before: ctRunning, argv: ctExecArgs([]string{"--detach"}, "sleep", "1"), stdout: `^\d+\n$`},
	{name: "exec --user root --detach", cite: "src/cli/machine.rs:2750-2758 @ v1.9.3; smol-machines/smolvm PR #1148 (form unverified)",
		caps: []string{fakeCapExecUser}, user: "1000", before: ctRunning,
		argv: ctExecArgs([]string{"--user", "root", "--detach"}, "sleep", "1"), stdout: `^\d+\n$`},
	{name: "exec exits with the guest's status", cite: "src/cli/machine.rs:2797; src/cli/vm_common.rs:192-209 @ v1.9.3",
		before: ctRunning, argv: ctExecArgs(nil, "sh", "-c", "exit 7"), code: 7},
	{name: "exec resolves the record's secrets", cite: "src/cli/machine.rs:2714; src/secrets.rs:452 @ v1.9.3",
		smolfile: ctSecret, before: ctRunning, unset: true, argv: ctExecArgs(nil, "true"), code: 1,
		stderr: `(?m)^Error: config operation failed: resolve secret 'ANTHROPIC_API_KEY': env_unset\n$`},
	{name: "exec -i -t", cite: "src/cli/machine.rs:2658-2664,2761-2771 @ v1.9.3",
		before: ctRunning, argv: ctExecArgs([]string{"-i", "-t"}, "true")},
	{name: "exec --secret-env and -e", cite: "src/cli/machine.rs:2640-2653,2714-2725 @ v1.9.3",
		before: ctRunning, argv: ctExecArgs([]string{"-e", "A=b", "--secret-env", "K=ANTHROPIC_API_KEY", "-i", "-t"}, "sh", "-c", `test "$A$K" = b`+testSecret)},
	{name: "exec in the machine's workdir", cite: "src/cli/machine.rs:2694-2699 @ v1.9.3",
		before: ctRunning, argv: []string{"machine", "exec", "--name", contractMachine, "--", "true"}},
	{name: "exec never starts a machine", cite: "src/cli/vm_common.rs:112-118; src/data/errors.rs:194 @ v1.9.3",
		before: [][]string{ctCreate}, argv: ctExecArgs(nil, "true"), code: 1,
		stderr: `^Error: agent operation failed: connect: machine 'sb-c' is not running\. Use 'smolvm machine start --name sb-c' first\.\n$`},
	{name: "exec on no machine", cite: "src/cli/vm_common.rs:80-86; src/data/errors.rs:72 @ v1.9.3",
		argv: ctExecArgs(nil, "true"), code: 1, stderr: `^Error: vm not found: sb-c\n$`},

	{name: "status --json", cite: "src/cli/vm_common.rs:2469-2490,2524-2540 @ v1.9.3",
		before: ctRunning, argv: []string{"machine", "status", "--name", contractMachine, "--json"},
		stdout: `"name": "sb-c"[\s\S]*"state": "running"|"state": "running"[\s\S]*"name": "sb-c"`},
	{name: "status --json of no machine", cite: "src/cli/vm_common.rs:2530-2535 @ v1.9.3",
		argv: []string{"machine", "status", "--name", contractMachine, "--json"}, code: 1,
		stderr: `^Error: config operation failed: machine status: machine 'sb-c' not found\n$`},
	{name: "ls --json", cite: "src/cli/vm_common.rs:2549-2560 @ v1.9.3",
		argv: []string{"machine", "ls", "--json"}, stdout: `^\[\]\n$`},
	{name: "stop", cite: "src/cli/vm_common.rs:2032 @ v1.9.3",
		before: ctRunning, argv: []string{"machine", "stop", "--name", contractMachine}, stdout: `^Stopped machine: sb-c\n$`},
	{name: "delete -f", cite: "src/cli/machine.rs:3974-3982; src/cli/vm_common.rs:2403 @ v1.9.3",
		before: ctRunning, argv: []string{"machine", "delete", "--name", contractMachine, "-f"}, stdout: `^Deleted machine: sb-c\n$`},
	{name: "delete -f of no machine", cite: "src/cli/vm_common.rs:2262-2269; src/data/errors.rs:72 @ v1.9.3",
		argv: []string{"machine", "delete", "--name", contractMachine, "-f"}, code: 1, stderr: `^Error: vm not found: sb-c\n$`},
	{name: "cp a host file in", cite: "src/cli/machine.rs:4922-4984 @ v1.9.3",
		before: ctRunning, argv: []string{"machine", "cp", "{file}", contractMachine + ":/tmp/f"}},
	{name: "cp splits SRC at its first ':'", cite: "src/cli/machine.rs:4926-4928; src/cli/vm_common.rs:80-86 @ v1.9.3",
		before: ctRunning, argv: []string{"machine", "cp", "/x:y", contractMachine + ":/tmp/f"}, code: 1, stderr: `^Error: vm not found: /x\n$`},
}

// TestSmolvmContract runs every row against the fake smolvm.
func TestSmolvmContract(t *testing.T) {
	needFakeVM(t)
	for _, row := range smolvmContract {
		t.Run(strings.ReplaceAll(row.name, " ", "_"), func(t *testing.T) {
			t.Parallel()
			if row.cite == "" {
				t.Fatal("the row cites no source")
			}
			fake := newFakeSmolvm(t)
			fake.control(t, fakeControl{Caps: row.caps})
			dir := t.TempDir()
			image, oci, sf, file := filepath.Join(dir, "img.tar"), filepath.Join(dir, "oci.tar"), filepath.Join(dir, "Smolfile"), filepath.Join(dir, "f")
			writeTestImage(t, image, row.user)
			writeOCIArchive(t, oci)
			if err := os.WriteFile(sf, []byte("image = \""+image+"\"\n"+row.smolfile), 0o600); err != nil {
				t.Fatal(err)
			}
			os.WriteFile(file, []byte("x"), 0o600)
			expand := func(argv []string) []string {
				r := strings.NewReplacer("{image}", image, "{oci}", oci, "{smolfile}", sf, "{file}", file, "{sock}", filepath.Join(dir, "gv.sock"))
				out := make([]string, len(argv))
				for i, a := range argv {
					out[i] = r.Replace(a)
				}
				return out
			}
			smolvm := func(argv []string, secret bool) (string, string, int) {
				cmd := exec.Command(fake.path, expand(argv)...)
				if i := slices.Index(argv, "--image"); i >= 0 && i+1 < len(argv) && argv[i+1] == "-" {
					f, err := os.Open(image)
					if err != nil {
						t.Fatal(err)
					}
					defer f.Close()
					cmd.Stdin = f
				}
				cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "GORACE=atexit_sleep_ms=0"}
				if secret {
					cmd.Env = append(cmd.Env, "ANTHROPIC_API_KEY="+testSecret)
				}
				var o, e bytes.Buffer
				cmd.Stdout, cmd.Stderr = &o, &e
				err := cmd.Run()
				code := 0
				if ee, ok := err.(*exec.ExitError); ok {
					code = ee.ExitCode()
				} else if err != nil {
					t.Fatal(err)
				}
				return o.String(), e.String(), code
			}
			for _, b := range row.before {
				if o, e, code := smolvm(b, true); code != 0 {
					t.Fatalf("%q: exit %d\n%s%s", b, code, o, e)
				}
			}
			o, e, code := smolvm(row.argv, !row.unset)
			if code != row.code {
				t.Errorf("%q: exit %d, want %d (%s)\nstdout %q\nstderr %q", row.argv, code, row.code, row.cite, o, e)
			}
			for _, c := range []struct {
				what, got, re string
				want          bool
			}{{"stdout", o, row.stdout, true}, {"stderr", e, row.stderr, true}, {"stdout", o, row.noStdout, false}} {
				if c.re != "" && regexp.MustCompile(c.re).MatchString(c.got) != c.want {
					t.Errorf("%q: %s %q; want it to match %v %q (%s)", row.argv, c.what, c.got, c.want, c.re, row.cite)
				}
			}
		})
	}
}

// writeOCIArchive writes an OCI image layout archive (what
// `skopeo copy … oci-archive:` makes): no manifest.json.
func writeOCIArchive(t *testing.T, path string) {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for name, data := range map[string]string{"oci-layout": `{"imageLayoutVersion":"1.0.0"}`, "index.json": `{"schemaVersion":2,"manifests":[]}`} {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg})
		tw.Write([]byte(data))
	}
	tw.Close()
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

// ctForm is the shape of an argv: the subcommand and its flags, without
// values and without what follows "--".
func ctForm(argv []string) string {
	var f []string
	for i, a := range argv {
		if a == "--" {
			break
		}
		if i < 2 || strings.HasPrefix(a, "-") {
			f = append(f, a)
		}
	}
	if len(f) > 2 {
		slices.Sort(f[2:])
	}
	return strings.Join(f, " ")
}

// TestSmolvmContractCoversCalls checks that every argv form smolbottle's
// builders produce has a row in the contract.
func TestSmolvmContractCoversCalls(t *testing.T) {
	have := map[string]bool{}
	for _, row := range smolvmContract {
		have[ctForm(row.argv)] = true
	}
	var calls [][]string
	for _, hasUser := range []bool{false, true} {
		p := &plan{Machine: "smolbottle-x", Stage: "/st/x", Image: "/img.tar", Net: netFor(7)}
		p.Tools.SmolvmExecUser = hasUser
		for _, step := range upMachineSteps(p).list() {
			argv, err := step.args(hasUser)
			if err != nil {
				t.Fatal(err)
			}
			calls = append(calls, argv)
		}
	}
	calls = append(calls, mustArgs(nameArgs("delete", "smolbottle-x")))
	cp, err := cpArgs("/h/f", "smolbottle-x", "/g/f")
	if err != nil {
		t.Fatal(err)
	}
	// The preflight's probes.
	calls = append(calls, cp, []string{"--version"}, []string{"machine", "--help"},
		[]string{"machine", "create", "--help"}, []string{"machine", "exec", "--help"})
	// smolbottle exec: the user's command, with and without a workdir, -i
	// and -t.
	for _, o := range []execOpts{{}, {Workdir: "/w", Interactive: true, TTY: true}} {
		argv, err := execArgs("smolbottle-x", o, false, []string{"true"})
		if err != nil {
			t.Fatal(err)
		}
		calls = append(calls, argv)
	}
	for _, c := range calls {
		if f := ctForm(c); !have[f] {
			t.Errorf("smolbottle runs smolvm %q (form %q), which no contract row covers", c, f)
		}
	}
}

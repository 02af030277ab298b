package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestSmolvmEnv(t *testing.T) {
	t.Parallel()
	parent := []string{
		"PATH=/usr/bin", "HOME=/home/u", "USER=u", "LOGNAME=u", "TMPDIR=/tmp",
		"XDG_DATA_HOME=/x", "SMOLVM_DATA_DIR=/d", "RUST_LOG=debug", "LANG=C.UTF-8", "LC_ALL=C",
		"HTTPS_PROXY=http://127.0.0.1:1", "https_proxy=http://a", "Http_Proxy=x", "ALL_PROXY=y",
		"no_proxy=*", "NO_PROXY=*", "ANTHROPIC_API_KEY=sk-x", "SSH_AUTH_SOCK=/s", "GOFLAGS=-x",
		"LD_PRELOAD=/evil.so", "PATH=/bin", "=broken", "noequals",
	}
	want := []string{
		"HOME=/home/u", "LANG=C.UTF-8", "LC_ALL=C", "LOGNAME=u", "PATH=/bin", "RUST_LOG=debug",
		"SMOLVM_DATA_DIR=/d", "TMPDIR=/tmp", "USER=u", "XDG_DATA_HOME=/x",
	}
	if got := smolvmEnv(parent); !slices.Equal(got, want) {
		t.Errorf("smolvmEnv:\n got %q\nwant %q", got, want)
	}
}

func TestValidMachineName(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"sb-demo", true}, {"a", true}, {"A_1-b", true}, {strings.Repeat("a", 128), true},
		{"", false}, {strings.Repeat("a", 129), false}, {"-a", false}, {"_a", false},
		{"a-", false}, {"a--b", false}, {"a.b", false}, {"a b", false}, {"a/b", false},
	} {
		if err := checkMachineName(tc.name); (err == nil) != tc.ok {
			t.Errorf("checkMachineName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestCreateArgs(t *testing.T) {
	t.Parallel()
	sock := socketMount{Host: "/stage/sock/gvproxy.sock", Guest: "/run/smolbottle/gvproxy.sock"}
	for _, tc := range []struct {
		desc string
		spec createSpec
		want []string // nil: an error is expected
	}{
		{"minimal", createSpec{Name: "sb-x", Image: "/img.tar", Smolfile: "/stage/Smolfile"},
			[]string{"machine", "create", "--name", "sb-x", "--image", "-", "--smolfile", "/stage/Smolfile"}},
		{"directory image", createSpec{Name: "sb-x", Image: "/rootfs", ImageDir: true, Smolfile: "/stage/Smolfile"},
			[]string{"machine", "create", "--name", "sb-x", "--image", "/rootfs", "--smolfile", "/stage/Smolfile"}},
		{"socket", createSpec{Name: "sb-x", Image: "/img.tar", Smolfile: "/s/Smolfile", Sockets: []socketMount{sock}},
			[]string{"machine", "create", "--name", "sb-x", "--image", "-", "--smolfile", "/s/Smolfile",
				"--mount-socket", "/stage/sock/gvproxy.sock:/run/smolbottle/gvproxy.sock"}},
		{"bad name", createSpec{Name: "x--y", Image: "/img.tar", Smolfile: "/s"}, nil},
		{"relative smolfile", createSpec{Name: "x", Image: "/img.tar", Smolfile: "Smolfile"}, nil},
		{"colon in host socket", createSpec{Name: "x", Image: "/img.tar", Smolfile: "/s", Sockets: []socketMount{{"/a:b/s.sock", "/run/s"}}}, nil},
		{"relative host socket", createSpec{Name: "x", Image: "/img.tar", Smolfile: "/s", Sockets: []socketMount{{"s.sock", "/run/s"}}}, nil},
		{"relative guest socket", createSpec{Name: "x", Image: "/img.tar", Smolfile: "/s", Sockets: []socketMount{{"/s.sock", "run/s"}}}, nil},
		{"pipe in guest socket", createSpec{Name: "x", Image: "/img.tar", Smolfile: "/s", Sockets: []socketMount{{"/s.sock", "/run/a|b"}}}, nil},
		{"guest socket twice", createSpec{Name: "x", Image: "/img.tar", Smolfile: "/s", Sockets: []socketMount{sock, sock}}, nil},
		{"no image", createSpec{Name: "x", Smolfile: "/s"}, nil},
		{"relative image", createSpec{Name: "x", Image: "img.tar", Smolfile: "/s"}, nil},
	} {
		got, err := createArgs(tc.spec)
		if tc.want == nil {
			if err == nil {
				t.Errorf("%s: createArgs = %q, want an error", tc.desc, got)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%s: createArgs =\n %q, %v\nwant %q", tc.desc, got, err, tc.want)
		}
		for _, a := range got {
			if a == "--net" || a == "-p" || a == "-e" || strings.HasPrefix(a, "--allow") || strings.HasPrefix(a, "--port") {
				t.Errorf("%s: createArgs has network or env flag %q", tc.desc, a)
			}
		}
	}
}

func TestNameArgs(t *testing.T) {
	t.Parallel()
	for sub, want := range map[string][]string{
		"start":  {"machine", "start", "--name", "m"},
		"delete": {"machine", "delete", "--name", "m", "-f"},
	} {
		if got, err := nameArgs(sub, "m"); err != nil || !slices.Equal(got, want) {
			t.Errorf("nameArgs(%q) = %q, %v; want %q", sub, got, err, want)
		}
	}
	for _, sub := range []string{"exec", "stop"} {
		if _, err := nameArgs(sub, "m"); err == nil {
			t.Errorf("nameArgs(%s) succeeded", sub)
		}
	}
}

func TestExecArgs(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		desc    string
		opts    execOpts
		hasUser bool
		cmd     []string
		want    []string // nil: an error is expected
	}{
		{"plain", execOpts{}, false, []string{"true"},
			[]string{"machine", "exec", "--name", "m", "--", "true"}},
		{"dash command", execOpts{}, false, []string{"-x", "--name", "y"},
			[]string{"machine", "exec", "--name", "m", "--", "-x", "--name", "y"}},
		{"everything", execOpts{Workdir: "/workspace", Interactive: true, TTY: true},
			false, []string{"claude"},
			[]string{"machine", "exec", "--name", "m", "-w", "/workspace", "-i", "-t", "--", "claude"}},
		{"user supported", execOpts{User: "root", Detach: true}, true, []string{"/opt/sb/gvforwarder"},
			[]string{"machine", "exec", "--name", "m", "--user", "root", "--detach", "--", "/opt/sb/gvforwarder"}},
		{"user unsupported", execOpts{User: "root"}, false, []string{"id"}, nil},
		{"user like a flag", execOpts{User: "--"}, true, []string{"id"}, nil},
		{"no command", execOpts{}, false, nil, nil},
		{"empty command", execOpts{}, false, []string{""}, nil},
		{"detach with tty", execOpts{Detach: true, TTY: true}, false, []string{"x"}, nil},
		{"relative workdir", execOpts{Workdir: "work"}, false, []string{"x"}, nil},
	} {
		got, err := execArgs("m", tc.opts, tc.hasUser, tc.cmd)
		if tc.want == nil {
			if err == nil {
				t.Errorf("%s: execArgs = %q, want an error", tc.desc, got)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%s: execArgs =\n %q, %v\nwant %q", tc.desc, got, err, tc.want)
		}
	}
}

func TestCpArgs(t *testing.T) {
	t.Parallel()
	got, err := cpArgs("/home/u/notes.md", "m", "/workspace/notes.md")
	want := []string{"machine", "cp", "/home/u/notes.md", "m:/workspace/notes.md"}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("cpArgs = %q, %v; want %q", got, err, want)
	}
	for _, tc := range [][3]string{
		{"notes.md", "m", "/w/notes.md"},        // relative host path
		{"/a/b:c.md", "m", "/w/c.md"},           // smolvm would read it as machine "/a/b"
		{"/a/notes.md", "m", "w/notes.md"},      // relative guest path
		{"/a/notes.md", "m", "/w/"},             // a directory
		{"/a/notes.md", "bad name", "/w/n.txt"}, // machine name
	} {
		if got, err := cpArgs(tc[0], tc[1], tc[2]); err == nil {
			t.Errorf("cpArgs(%q) = %q, want an error", tc, got)
		}
	}
}

func TestHelpHasFlag(t *testing.T) {
	t.Parallel()
	help := `Run a command in a machine

Usage: smolvm machine exec [OPTIONS] -- <COMMAND>...

Options:
      --name <NAME>          Machine name; see also --user in newer releases
  -w, --workdir <WORKDIR>    Working directory
  -e, --env <ENV>            Set --timeout too
  -i, --interactive
      --timeout=<DURATION>
`
	for flag, want := range map[string]bool{
		"--name": true, "--workdir": true, "-w": true, "-i": true, "--timeout": true,
		"--user": false, "-n": false, "--env": true, "--interactive": true, "--stream": false,
	} {
		if got := helpHasFlag(help, flag); got != want {
			t.Errorf("helpHasFlag(%q) = %v, want %v", flag, got, want)
		}
	}
}

func TestClassify(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		sub, stderr string
		code        int
		status      int    // want exitStatus(status) when > 0
		msg         string // want *smolvmError with this Msg
	}{
		{"machine exec", "", 3, 3, ""},
		{"machine exec", "guest says hi\n", 1, 1, ""},
		{"machine exec", "boom\nError: vm not found: m\n", 1, 0, "vm not found: m"},
		{"machine exec", "error: unexpected argument '-n' found\n\nUsage: x\n", 2, 0, "rejected arguments: unexpected argument '-n' found"},
		{"machine exec", "guest error: x\n", 2, 2, ""},
		{"machine start", "Error: agent operation failed: start: kvm\n", 1, 0, "agent operation failed: start: kvm"},
		{"machine stop", "odd\n", 1, 0, ""},
		{"machine exec", "", -1, 0, "killed by a signal"},
	} {
		err := classify(tc.sub, tc.code, tc.stderr)
		var es exitStatus
		if tc.status > 0 {
			if !errors.As(err, &es) || int(es) != tc.status {
				t.Errorf("classify(%q, %d, %q) = %v, want exit status %d", tc.sub, tc.code, tc.stderr, err, tc.status)
			}
			continue
		}
		e := smolvmErrorAs(err)
		if e == nil || e.Msg != tc.msg {
			t.Errorf("classify(%q, %d, %q) = %#v, want message %q", tc.sub, tc.code, tc.stderr, err, tc.msg)
		}
	}
}

// smolvmFixture is a fake smolvm plus what a create needs: a local image
// directory, a workspace volume, a rendered Smolfile and a socket path.
type smolvmFixture struct {
	fake     *fakeSmolvmBin
	s        *smolvm
	image    string // a directory image without a config: its USER is root
	smolfile string
	sock     string
}

const testSecret = "sk-ant-test-0123456789-very-secret"

func newSmolvmFixture(t *testing.T) *smolvmFixture {
	t.Helper()
	fake := newFakeSmolvm(t)
	// smolvm 1.9.3 as released: no capabilities switched on.
	stage := t.TempDir()
	for _, d := range []string{"image", "workspace"} {
		if err := os.Mkdir(filepath.Join(stage, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	sf, err := renderSmolfile(smolfileSpec{
		Image: filepath.Join(stage, "image"), Workdir: "/workspace", CPUs: 2, MemMiB: 2048,
		Volumes: []string{filepath.Join(stage, "workspace") + ":/workspace"},
		Env:     []envVar{{"TERM", "xterm-256color"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(stage, "Smolfile")
	if err := os.WriteFile(path, sf, 0o600); err != nil {
		t.Fatal(err)
	}
	parent := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "HTTPS_PROXY=http://127.0.0.1:9",
		"http_proxy=http://127.0.0.1:9", "ANTHROPIC_API_KEY=" + testSecret, "SECRET_TOO=also-" + testSecret}
	return &smolvmFixture{fake: fake, s: fake.driver(t, parent), image: filepath.Join(stage, "image"),
		smolfile: path, sock: filepath.Join(stage, "gv.sock")}
}

func (f *smolvmFixture) create(t *testing.T, name string) {
	t.Helper()
	err := f.s.create(context.Background(), createSpec{
		Name: name, Image: f.image, ImageDir: true, Smolfile: f.smolfile,
		Sockets: []socketMount{{Host: f.sock, Guest: "/run/smolbottle/gvproxy.sock"}},
	})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
}

// The calls below are the tests' own: up and down never stop, list or
// ask the status of a machine, so the driver has none of them. They go
// through the driver's one call wrapper, as its own calls do.

// machineStatus is the part of a status --json object (and of an ls --json
// element) the tests read (src/cli/vm_common.rs:2469-2490 @ v1.9.3).
type machineStatus struct {
	Name    string `json:"name"`
	State   string `json:"state"` // created|running|stopped|failed|unreachable|frozen
	PID     *int   `json:"pid"`
	Network bool   `json:"network"`
}

func (s *smolvm) stop(ctx context.Context, name string) error {
	_, err := s.call(ctx, smolvmCall{args: []string{"machine", "stop", "--name", name}})
	return err
}

func (s *smolvm) status(ctx context.Context, name string) (machineStatus, error) {
	var st machineStatus
	out, err := s.call(ctx, smolvmCall{args: []string{"machine", "status", "--name", name, "--json"}})
	if err == nil {
		err = json.Unmarshal(out, &st)
	}
	return st, err
}

func (s *smolvm) list(ctx context.Context) ([]machineStatus, error) {
	var all []machineStatus
	out, err := s.call(ctx, smolvmCall{args: []string{"machine", "ls", "--json"}})
	if err == nil {
		err = json.Unmarshal(out, &all)
	}
	return all, err
}

func (s *smolvm) version(ctx context.Context) (string, error) {
	out, err := s.call(ctx, smolvmCall{args: []string{"--version"}})
	return string(out), err
}

// isNotRunning reports whether err says the machine is not running
// (src/data/errors.rs:194 @ v1.9.3).
func isNotRunning(err error) bool {
	e := smolvmErrorAs(err)
	return e != nil && strings.Contains(e.Msg, "is not running. Use 'smolvm machine start")
}

func TestSmolvmLifecycle(t *testing.T) {
	t.Parallel()
	needFakeVM(t)
	ctx := context.Background()
	f := newSmolvmFixture(t)
	s := f.s
	const name = "sb-life"

	v, err := s.version(ctx)
	if err != nil || v != "smolvm 1.9.3\n" {
		t.Fatalf("version = %v, %v", v, err)
	}
	f.create(t, name)
	st, err := s.status(ctx, name)
	if err != nil || st.State != "created" || st.Network {
		t.Fatalf("status after create = %+v, %v; want created without network", st, err)
	}
	if err := s.start(ctx, name); err != nil {
		t.Fatalf("start: %v", err)
	}
	if err := s.start(ctx, name); err != nil {
		t.Fatalf("second start: %v", err)
	}
	st, err = s.status(ctx, name)
	if err != nil || st.State != "running" || st.PID == nil {
		t.Fatalf("status after start = %+v, %v", st, err)
	}
	vm := *st.PID
	if !fakeIsVM(vm) {
		t.Fatalf("machine pid %d is not a running fake VM", vm)
	}

	src := filepath.Join(t.TempDir(), "notes.md")
	if err := os.WriteFile(src, []byte("hello guest\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.cp(ctx, src, name, "/workspace/notes.md"); err != nil {
		t.Fatalf("cp: %v", err)
	}
	var out bytes.Buffer
	if err := s.exec(ctx, name, execOpts{Workdir: "/workspace", Stdout: &out}, "cat", "notes.md"); err != nil {
		t.Fatalf("exec cat: %v", err)
	}
	if out.String() != "hello guest\n" {
		t.Errorf("exec cat printed %q", out.String())
	}

	all, err := s.list(ctx)
	if err != nil || len(all) != 1 || all[0].Name != name || all[0].State != "running" {
		t.Errorf("list = %+v, %v", all, err)
	}
	if err := s.stop(ctx, name); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if fakeIsVM(vm) {
		t.Errorf("the VM %d outlived stop", vm)
	}
	if err := s.stop(ctx, name); err != nil {
		t.Fatalf("second stop: %v", err)
	}
	if err := s.delete(ctx, name); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if err := s.delete(ctx, name); err != nil {
		t.Fatalf("delete of a deleted machine: %v", err)
	}
	if _, err := s.status(ctx, name); err == nil || !strings.HasSuffix(err.Error(), "machine 'sb-life' not found") {
		t.Errorf("status after delete = %v, want not found", err)
	}
	if err := s.stop(ctx, name); !isNotFound(err) {
		t.Errorf("stop after delete = %v, want not found", err)
	}
	if all, err := s.list(ctx); err != nil || len(all) != 0 {
		t.Errorf("list after delete = %+v, %v", all, err)
	}

	for _, r := range f.fake.records(t) {
		if r.Dir != s.dir {
			t.Errorf("smolvm %q ran in %q, want %q", r.Argv, r.Dir, s.dir)
		}
		if len(r.Argv) > 1 && r.Argv[0] == "machine" && r.Argv[1] != "ls" && r.Argv[1] != "cp" &&
			!slices.Contains(r.Argv, "--name") {
			t.Errorf("smolvm %q without --name", r.Argv)
		}
		if len(r.Argv) > 1 && r.Argv[1] == "delete" && !slices.Contains(r.Argv, "-f") {
			t.Errorf("smolvm %q without -f", r.Argv)
		}
		for _, a := range r.Argv {
			if a == "--net" || a == "-p" || strings.HasPrefix(a, "--allow") || a == "--proxy" {
				t.Errorf("smolvm %q has network flag %q", r.Argv, a)
			}
		}
		for _, e := range r.Env {
			k, _, _ := strings.Cut(e, "=")
			if isProxyVar(k) {
				t.Errorf("smolvm %q saw proxy variable %q", r.Argv, e)
			}
		}
	}
}

func TestSmolvmMissing(t *testing.T) {
	t.Parallel()
	s, err := newSmolvm(filepath.Join(t.TempDir(), "smolvm"), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.version(context.Background())
	if err == nil || !strings.Contains(err.Error(), "smolvm not found at") {
		t.Fatalf("version with no smolvm = %v", err)
	}
	var h hinted
	if !errors.As(err, &h) {
		t.Errorf("error %v has no hint", err)
	}
	f := newFakeSmolvm(t)
	gone, err := newSmolvm(f.path, filepath.Join(t.TempDir(), "gone"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gone.version(context.Background()); err == nil || strings.Contains(err.Error(), "smolvm not found") {
		t.Errorf("version with a missing working directory = %v", err)
	}
	f.driver(t, nil).version(context.Background()) // the fake must run once
	if _, err := newSmolvm("smolvm", "/", nil); err == nil {
		t.Error("newSmolvm accepted a relative path")
	}
}

func TestSmolvmCreateExists(t *testing.T) {
	t.Parallel()
	f := newSmolvmFixture(t)
	f.create(t, "sb-dup")
	err := f.s.create(context.Background(), createSpec{Name: "sb-dup", Image: f.image, ImageDir: true, Smolfile: f.smolfile})
	if !isAlreadyExists(err) {
		t.Fatalf("second create = %v, want already exists", err)
	}
	want := "smolvm machine create: config operation failed: create machine: machine 'sb-dup' already exists or is being created"
	if err.Error() != want {
		t.Errorf("error = %q\nwant %q", err, want)
	}
}

func TestSmolvmCreateFaults(t *testing.T) {
	t.Parallel()
	f := newSmolvmFixture(t)
	ctx := context.Background()
	bad := filepath.Join(t.TempDir(), "Smolfile")
	for _, tc := range []struct{ smolfile, image, want string }{
		{"", "/nonexistent/image.tar", `image "/nonexistent/image.tar": open /nonexistent/image.tar: no such file or directory`},
		{"user = \"node\"\n", "", "unknown field `user`"},
		{"[network]\ndeny_cidrs = []\n", "", "unknown field `deny_cidrs`"},
		{"[secrets]\nK = { from_env = \"K\", from_file = \"/k\" }\n", "", "invalid type"},
		{"cpus = \"2\"\n", "", "invalid type"},
		{"volumes = [\"/nonexistent/dir:/w\"]\n", "", "mount source not found: /nonexistent/dir"},
		{"volumes = [\"/run:/w\"]\n", "", "source path on host is a protected system path and cannot be mounted: /run"},
	} {
		if err := os.WriteFile(bad, []byte(tc.smolfile), 0o600); err != nil {
			t.Fatal(err)
		}
		image := f.image
		if tc.image != "" {
			image = tc.image
		}
		err := f.s.create(ctx, createSpec{Name: "sb-bad", Image: image, ImageDir: tc.image == "", Smolfile: bad})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("create with %q = %v, want %q", tc.smolfile, err, tc.want)
		}
	}
	if st := f.fake.state(t); len(st.Machines) != 0 {
		t.Errorf("failed creates left machines: %v", st.Machines)
	}
}

func TestSmolvmStartFails(t *testing.T) {
	t.Parallel()
	f := newSmolvmFixture(t)
	f.create(t, "sb-nostart")
	f.fake.control(t, fakeControl{Fail: map[string]string{"start": "krun_start_enter returned: -22 (EINVAL)"}})
	err := f.s.start(context.Background(), "sb-nostart")
	want := "smolvm machine start: agent operation failed: start: krun_start_enter returned: -22 (EINVAL)"
	if err == nil || err.Error() != want {
		t.Fatalf("start = %v\nwant %s", err, want)
	}
	if st, err := f.s.status(context.Background(), "sb-nostart"); err != nil || st.State != "created" {
		t.Errorf("after a failed start: %+v, %v; want created", st, err)
	}
}

func TestSmolvmExecStopped(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newSmolvmFixture(t)
	f.create(t, "sb-stopped")
	err := f.s.exec(ctx, "sb-stopped", execOpts{}, "true")
	if !isNotRunning(err) {
		t.Fatalf("exec on a created machine = %v, want not running", err)
	}
	want := "smolvm machine exec: agent operation failed: connect: machine 'sb-stopped' is not running. Use 'smolvm machine start --name sb-stopped' first."
	if err.Error() != want {
		t.Errorf("error = %q\nwant %q", err, want)
	}
	if st, _ := f.s.status(ctx, "sb-stopped"); st.State != "created" {
		t.Errorf("exec changed the state to %q", st.State)
	}
	if err := f.s.exec(ctx, "sb-nope", execOpts{}, "true"); !isNotFound(err) {
		t.Errorf("exec on an unknown machine = %v, want not found", err)
	}
	if err := f.s.cp(ctx, f.smolfile, "sb-stopped", "/tmp/x"); !isNotRunning(err) {
		t.Errorf("cp to a created machine = %v, want not running", err)
	}
}

func TestSmolvmExecExitCode(t *testing.T) {
	t.Parallel()
	needFakeVM(t)
	ctx := context.Background()
	f := newSmolvmFixture(t)
	f.create(t, "sb-exit")
	if err := f.s.start(ctx, "sb-exit"); err != nil {
		t.Fatal(err)
	}
	for _, code := range []int{3, 1, 2, 124} {
		var stderr bytes.Buffer
		err := f.s.exec(ctx, "sb-exit", execOpts{Stderr: &stderr}, "sh", "-c", "echo oops >&2; exit "+strconv.Itoa(code))
		var es exitStatus
		if !errors.As(err, &es) || int(es) != code {
			t.Errorf("exec exit %d = %v, want exitStatus(%d)", code, err, code)
		}
		if stderr.String() != "oops\n" {
			t.Errorf("guest stderr = %q", stderr.String())
		}
		if got := exitCode(&bytes.Buffer{}, err); got != code {
			t.Errorf("exitCode = %d, want %d", got, code)
		}
	}
	if err := f.s.exec(ctx, "sb-exit", execOpts{}, "true"); err != nil {
		t.Errorf("exec true = %v", err)
	}
}

// TestSmolvmNoCredential: the parent environment holds a credential, and
// smolvm never sees it, in its environment or its arguments; the guest
// holds no credential either (the credential sidecar keeps them).
func TestSmolvmNoCredential(t *testing.T) {
	t.Parallel()
	needFakeVM(t)
	ctx := context.Background()
	f := newSmolvmFixture(t)
	f.create(t, "sb-secret")
	if err := f.s.start(ctx, "sb-secret"); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err := f.s.exec(ctx, "sb-secret", execOpts{Stdout: &out}, "printenv", "ANTHROPIC_API_KEY")
	if err != exitStatus(1) || out.Len() != 0 {
		t.Errorf("printenv ANTHROPIC_API_KEY in the guest = %q, %v; want nothing, exit status 1", out.String(), err)
	}
	if err := f.s.delete(ctx, "sb-secret"); err != nil {
		t.Fatal(err)
	}
	records := f.fake.records(t)
	if len(records) < 4 {
		t.Fatalf("the fake recorded %d calls, want create, start, exec and delete", len(records))
	}
	for _, r := range records {
		if slices.ContainsFunc(slices.Concat(r.Argv, r.Env), func(a string) bool { return strings.Contains(a, testSecret) }) {
			t.Errorf("smolvm %q saw the credential (env %q)", r.Argv, r.Env)
		}
	}
}

func TestSmolvmExecCancel(t *testing.T) {
	t.Parallel()
	needFakeVM(t)
	for _, ignoreTerm := range []bool{false, true} {
		f := newSmolvmFixture(t)
		f.create(t, "sb-hang")
		if err := f.s.start(context.Background(), "sb-hang"); err != nil {
			t.Fatal(err)
		}
		f.fake.control(t, fakeControl{Hang: map[string]bool{"exec": true}, IgnoreTerm: ignoreTerm})
		f.s.waitDelay = 300 * time.Millisecond
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		start := time.Now()
		err := f.s.exec(ctx, "sb-hang", execOpts{}, "true")
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("ignoreTerm=%v: exec = %v, want deadline exceeded", ignoreTerm, err)
		}
		if d := time.Since(start); d > 15*time.Second { // bounded, with room for a loaded machine
			t.Errorf("ignoreTerm=%v: exec returned after %v", ignoreTerm, d)
		}
	}
}

func TestSmolvmExecUser(t *testing.T) {
	t.Parallel()
	needFakeVM(t)
	ctx := context.Background()
	f := newSmolvmFixture(t)
	f.create(t, "sb-user")
	if err := f.s.start(ctx, "sb-user"); err != nil {
		t.Fatal(err)
	}
	if err := f.s.exec(ctx, "sb-user", execOpts{User: "root"}, "true"); err == nil || !strings.Contains(err.Error(), "no machine exec --user") {
		t.Errorf("exec --user on 1.9.3 = %v", err)
	}
	if ok, err := f.s.hasFlag(ctx, "exec", "--workdir"); !ok || err != nil {
		t.Errorf("hasFlag(exec, --workdir) = %v, %v", ok, err)
	}

	newer := newSmolvmFixture(t)
	newer.fake.control(t, fakeControl{Caps: []string{fakeCapExecUser}}) // smolvm PR #1148
	newer.create(t, "sb-user")
	if err := newer.s.start(ctx, "sb-user"); err != nil {
		t.Fatal(err)
	}
	if err := newer.s.exec(ctx, "sb-user", execOpts{User: "root"}, "true"); err != nil {
		t.Errorf("exec --user on a newer smolvm = %v", err)
	}
	helps := 0
	for _, r := range newer.fake.records(t) {
		if slices.Contains(r.Argv, "--help") {
			helps++
		}
	}
	if err := newer.s.exec(ctx, "sb-user", execOpts{User: "root"}, "true"); err != nil || helps != 1 {
		t.Errorf("second exec --user = %v after %d help probes, want 1", err, helps)
	}
}

func TestSmolvmCp(t *testing.T) {
	t.Parallel()
	needFakeVM(t)
	ctx := context.Background()
	f := newSmolvmFixture(t)
	f.create(t, "sb-cp")
	if err := f.s.start(ctx, "sb-cp"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	colon := filepath.Join(dir, "a:b.txt")
	if err := os.WriteFile(colon, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.txt")
	if err := os.Symlink(f.smolfile, link); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ src, want string }{
		{dir, "is a directory"},
		{colon, "holds ':'"},
		{filepath.Join(dir, "missing"), "no such file"},
		{"/dev/null", "not a regular file"},
	} {
		err := f.s.cp(ctx, tc.src, "sb-cp", "/workspace/x")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("cp %q = %v, want %q", tc.src, err, tc.want)
		}
	}
	if err := f.s.cp(ctx, link, "sb-cp", "/etc/smolfile"); err != nil {
		t.Errorf("cp of a symlink to a file = %v", err)
	}
	want, _ := os.ReadFile(f.smolfile)
	if got, err := f.fake.guestFile(t, "sb-cp", "/etc/smolfile"); err != nil || !bytes.Equal(got, want) {
		t.Errorf("guest file = %q, %v", got, err)
	}
}

// TestFakeSmolvmRejects checks that the fake refuses what smolvm 1.9.3
// refuses, so the driver tests mean something.
func TestFakeSmolvmRejects(t *testing.T) {
	t.Parallel()
	f := newSmolvmFixture(t)
	f.create(t, "sb-rej")
	run := func(stdin string, args ...string) (int, string, string) {
		cmd := exec.Command(f.fake.path, args...)
		cmd.Dir = f.s.dir
		cmd.Stdin = strings.NewReader(stdin)
		cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return code, out.String(), errb.String()
	}
	for _, tc := range []struct {
		args []string
		code int
		err  string
	}{
		{[]string{"machine", "create", "myvm"}, 2, "error: unexpected argument 'myvm' found"},
		{[]string{"machine", "create", "--name", "x", "--bogus"}, 2, "error: unexpected argument '--bogus' found"},
		{[]string{"machine", "exec", "-n", "sb-rej", "--", "true"}, 2, "error: unexpected argument '-n' found"},
		{[]string{"machine", "exec", "--name", "sb-rej"}, 2, "<COMMAND>"},
		{[]string{"machine", "exec", "--name", "sb-rej", "echo", "hi"}, 2, "not after '--'"},
		{[]string{"machine", "exec", "--name", "sb-rej", "--user", "root", "--", "id"}, 2, "'--user'"},
		{[]string{"machine", "exec", "--name", "sb-rej", "--timeout", "0", "--", "id"}, 2, "invalid value '0'"},
		{[]string{"machine", "exec", "--name", "sb-rej", "-d", "-t", "--", "id"}, 2, "cannot be used with"},
		{[]string{"machine", "delete"}, 2, "--name <NAME>"},
		{[]string{"machine", "start", "--name", "nope"}, 1, "Error: vm not found: nope\n"},
		{[]string{"machine", "status", "--name", "nope", "--json"}, 1, "Error: config operation failed: machine status: machine 'nope' not found\n"},
		{[]string{"machine", "status", "--name", "nope"}, 1, "Error: vm not found: nope\n"},
		{[]string{"inspect"}, 2, "unrecognized subcommand"},
	} {
		code, _, stderr := run("", tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.err) {
			t.Errorf("smolvm %q: exit %d, stderr %q; want exit %d and %q", tc.args, code, stderr, tc.code, tc.err)
		}
	}
	code, stdout, _ := run("", "machine", "delete", "--name", "sb-rej")
	if code != 0 || stdout != "Cancelled\n" {
		t.Errorf("delete without -f: exit %d, stdout %q; want 0 and Cancelled", code, stdout)
	}
	if _, err := f.s.status(context.Background(), "sb-rej"); err != nil {
		t.Errorf("delete without -f deleted the machine: %v", err)
	}
}

// FuzzExecArgs checks that whatever the options, the guest command comes
// last, verbatim, right after "--", and the name right after --name.
func FuzzExecArgs(f *testing.F) {
	f.Add("m", "/w", "u", true, false, "claude", "--name")
	f.Add("x", "", "", false, true, "-t", "--")
	f.Add("x", "/", "--", true, false, "--", "--")
	f.Fuzz(func(t *testing.T, name, wd, user string, tty, det bool, c0, c1 string) {
		o := execOpts{Workdir: wd, TTY: tty, Detach: det, User: user}
		cmd := []string{c0, c1}
		args, err := execArgs(name, o, true, cmd)
		if err != nil {
			return
		}
		n := len(args)
		if n < 7 || args[n-3] != "--" || args[n-2] != c0 || args[n-1] != c1 {
			t.Fatalf("execArgs = %q: command not last after --", args)
		}
		if !slices.Equal(args[:4], []string{"machine", "exec", "--name", name}) {
			t.Fatalf("execArgs = %q: bad head", args)
		}
		if i := slices.Index(args, "--"); i != n-3 {
			t.Fatalf("execArgs = %q: an earlier -- at %d", args, i)
		}
	})
}

// TestFakeSmolvmModes covers the smolvm builds the preflight tells apart:
// CelestoAI's CLI of the same name, and a smolvm without --mount-socket.
func TestFakeSmolvmModes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	celesto := newFakeSmolvm(t)
	celesto.control(t, fakeControl{Mode: "celesto"})
	// The preflight tells it apart by its version line.
	if v, err := celesto.driver(t, nil).version(ctx); err != nil || smolvmVersionRE.MatchString(v) {
		t.Errorf("version of CelestoAI's smolvm = %q, %v; want a line the preflight refuses", v, err)
	}

	f := newSmolvmFixture(t)
	f.fake.control(t, fakeControl{Mode: "nomount"})
	if ok, err := f.s.hasFlag(ctx, "create", "--mount-socket"); ok || err != nil {
		t.Errorf("hasFlag(create, --mount-socket) = %v, %v on a smolvm without it", ok, err)
	}
	err := f.s.create(ctx, createSpec{Name: "sb-nomount", Image: f.image, ImageDir: true, Smolfile: f.smolfile,
		Sockets: []socketMount{{Host: f.sock, Guest: "/run/s.sock"}}})
	if e := smolvmErrorAs(err); e == nil || e.Code != 2 || !strings.Contains(e.Msg, "'--mount-socket'") {
		t.Errorf("create with --mount-socket on a smolvm without it = %v", err)
	}
	if ok, err := f.s.hasFlag(ctx, "exec", "--user"); ok || err != nil {
		t.Errorf("hasFlag(exec, --user) = %v, %v on smolvm 1.9.3", ok, err)
	}
	withUser := newFakeSmolvm(t)
	withUser.control(t, fakeControl{Caps: []string{fakeCapExecUser}})
	if ok, err := withUser.driver(t, nil).hasFlag(ctx, "exec", "--user"); !ok || err != nil {
		t.Errorf("hasFlag(exec, --user) = %v, %v with the exec-user capability", ok, err)
	}
}

func TestParseDetachedPID(t *testing.T) {
	t.Parallel()
	for out, want := range map[string]int{
		"4242\n": 4242, "Started process (PID: 17)\n": 17, "pid 9": 9, "": 0, "no pid here\n": 0, "-3\n": 0,
	} {
		got, err := parseDetachedPID(out)
		if got != want || (err == nil) != (want > 0) {
			t.Errorf("parseDetachedPID(%q) = %d, %v; want %d", out, got, err, want)
		}
	}
}

func TestSmolvmExecDetached(t *testing.T) {
	t.Parallel()
	needFakeVM(t)
	if runtime.GOOS != "linux" {
		t.Skip("processAlive reads /proc")
	}
	ctx := context.Background()
	f := newSmolvmFixture(t)
	f.create(t, "sb-detach")
	if err := f.s.start(ctx, "sb-detach"); err != nil {
		t.Fatal(err)
	}
	pid, err := f.s.execDetached(ctx, "sb-detach", execOpts{}, "sleep", "60")
	if err != nil {
		t.Fatalf("execDetached: %v", err)
	}
	t.Cleanup(func() { syscall.Kill(-pid, syscall.SIGKILL) })
	if !processAlive(pid) {
		t.Fatalf("detached guest process %d is not running", pid)
	}
	if err := f.s.stop(ctx, "sb-detach"); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); processAlive(pid); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("guest process %d outlived the machine's stop", pid)
		}
	}
}

// TestCreateImageKindAsChecked: an archive the plan checked, swapped since
// for a link to a directory (a guest that can write it could), is refused
// at create; it is never shared as a directory image.
func TestCreateImageKindAsChecked(t *testing.T) {
	t.Parallel()
	f := newSmolvmFixture(t)
	ctx := context.Background()
	link := filepath.Join(t.TempDir(), "agent.tar")
	if err := os.Symlink(f.image, link); err != nil { // f.image is a root filesystem directory
		t.Fatal(err)
	}
	spec := upMachineSteps(&plan{Machine: "sb-swap", Stage: t.TempDir(), Image: link, Net: netFor(9)}).Create.create
	spec.Smolfile = f.smolfile
	if exists, err := f.s.exists(ctx, spec.Name); exists || err != nil {
		t.Fatalf("exists = %v, %v before create", exists, err)
	}
	if err := f.s.create(ctx, spec); err == nil || !strings.Contains(err.Error(), "no longer a regular file") {
		t.Errorf("create of a swapped archive = %v, want it refused", err)
	}
	if st := f.fake.state(t); len(st.Machines) != 0 {
		t.Errorf("a machine was made: %v", st.Machines)
	}
}

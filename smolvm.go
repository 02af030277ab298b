package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// smolvm CLI facts this driver relies on, read in smol-machines/smolvm's
// source at v1.9.3 (the contract table in smolvmcontract_test.go holds the
// fake smolvm to each, with its line):
//   - every command error is "Error: <msg>" on stderr with exit 1
//     (src/main.rs:214-215); clap's argument errors are "error: …" with
//     exit 2;
//   - without --name a command acts on "default", so every machine
//     subcommand that takes a name gets --name (cp names it as NAME:PATH
//     instead); exec accepts only the long form (src/cli/machine.rs:2631-2633);
//   - delete without -f prompts, so -f is always passed;
//   - exec never starts a machine and exits with the guest's exit code;
//     exec --detach prints the guest pid (src/cli/machine.rs:2758);
//   - exec runs as the image's USER: 1.9.3 has no exec --user
//     (src/cli/machine.rs:2626-2674, src/cli/vm_common.rs:318-320,347);
//     smolvm PR #1148 adds one, whose exact form is unverified;
//   - a local image is resolved only when given as create --image
//     (src/cli/machine.rs:3163-3176); an image named only in the Smolfile
//     is stored verbatim and handed to the registry puller at the first
//     start (src/cli/vm_common.rs:1503-1519), which refuses a path;
//   - local archives must be `docker save` archives, flattened by crane in
//     the guest (crates/smolvm-agent/src/storage.rs:1180-1191,1293-1302);
//   - a Smolfile's [secrets] are resolved from smolvm's own environment at
//     every start and exec (src/cli/vm_common.rs:1497, src/cli/machine.rs:2714;
//     src/secrets.rs:411-414,452): smolbottle writes none, and smolvm's
//     environment is an allow-list that holds no credential (env.go);
//   - start falls back to the host's proxy variables for the in-guest image
//     pull, so they are scrubbed from smolvm's environment;
//   - cp splits its first argument at the first ':', so a host path holding
//     ':' is misread as a machine path; it copies single regular files only;
//   - create refuses volume sources under protected host paths
//     (src/data/storage.rs:52-68,173-187).
const (
	smolvmWaitDelay   = 10 * time.Second // after SIGTERM on cancel, before SIGKILL
	smolvmTailBytes   = 4 << 10          // stderr kept for error messages
	smolvmMaxStdout   = 4 << 20          // captured stdout: machine SUB --help
	smolvmMaxCopy     = 4 << 30          // per-transfer cap of machine cp
	smolvmExists      = "already exists or is being created"
	smolvmNotFoundPfx = "vm not found: "
)

// smolvm runs one smolvm binary with a pinned working directory (volume
// host paths are resolved against it) and an explicit environment.
type smolvm struct {
	path      string   // absolute, resolved once in preflight
	dir       string   // absolute working directory of every call
	env       []string // allow-listed subset of the parent environment, sorted
	waitDelay time.Duration

	mu    sync.Mutex
	helps map[string]string // machine subcommand -> its --help text
}

// newSmolvm returns a driver for the smolvm binary at path. parent is the
// environment smolbottle itself received (os.Environ()); smolvm gets only
// its allow-listed part.
func newSmolvm(path, dir string, parent []string) (*smolvm, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("smolvm path %q is not absolute", path)
	}
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("smolvm working directory %q is not absolute", dir)
	}
	return &smolvm{
		path:      path,
		dir:       dir,
		env:       smolvmEnv(parent),
		waitDelay: smolvmWaitDelay,
		helps:     map[string]string{},
	}, nil
}

var guestUserRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$`) // name, uid or uid:gid

// socketMount is one --mount-socket HOST_PATH:GUEST_PATH bridge.
type socketMount struct {
	Host  string // absolute host path of a unix socket
	Guest string // absolute guest path
}

// createSpec is everything machine create is given. The image goes on the
// argv (--image), since smolvm resolves a local image only there; the
// volumes and env are in the Smolfile; the machine gets no network device
// (no --net, -p or egress flag ever appears).
//
// An archive goes on create's standard input (--image -), opened by
// create: given a path, smolvm hard-links the file into its image cache,
// keyed by its hash, and reuses a cache entry unchecked
// (src/data/image_source.rs:236-243,294-296 @ v1.9.3), so whoever can
// write the archive (a guest, when it is in a workspace) would change the
// image of every later machine made from a copy of it; from standard input
// smolvm stores a copy of its own (:250-279).
type createSpec struct {
	Name     string
	Image    string        // absolute path of a `docker save` archive or a root filesystem directory
	ImageDir bool          // Image is a root filesystem directory, given by path
	Smolfile string        // absolute path
	Sockets  []socketMount // host unix sockets bridged into the guest
}

// createArgs returns the argv (after the binary) of machine create.
func createArgs(spec createSpec) ([]string, error) {
	if err := checkMachineName(spec.Name); err != nil {
		return nil, err
	}
	if !filepath.IsAbs(spec.Smolfile) {
		return nil, fmt.Errorf("smolfile path %q is not absolute", spec.Smolfile)
	}
	if !filepath.IsAbs(spec.Image) {
		return nil, fmt.Errorf("image path %q is not absolute", spec.Image)
	}
	// --image wins over the Smolfile's image (src/cli/smolfile.rs:142 @
	// v1.9.3) and is the only place a local path is resolved.
	image := "-"
	if spec.ImageDir {
		image = spec.Image
	}
	args := []string{"machine", "create", "--name", spec.Name, "--image", image, "--smolfile", spec.Smolfile}
	seen := map[string]bool{}
	for _, m := range spec.Sockets {
		if err := checkSocketMount(m); err != nil {
			return nil, err
		}
		if seen[m.Guest] {
			return nil, fmt.Errorf("guest socket path %q is mounted twice", m.Guest)
		}
		seen[m.Guest] = true
		args = append(args, "--mount-socket", m.Host+":"+m.Guest)
	}
	return args, nil
}

// checkSocketMount applies the --mount-socket rules (src/cli/machine.rs:143-200 @ v1.9.3):
// the argument is split at the first ':', the guest path must be absolute
// and free of ';' and '|'.
func checkSocketMount(m socketMount) error {
	switch {
	case !filepath.IsAbs(m.Host):
		return fmt.Errorf("host socket path %q is not absolute", m.Host)
	case strings.Contains(m.Host, ":"):
		return fmt.Errorf("host socket path %q holds ':', which smolvm would split", m.Host)
	case !strings.HasPrefix(m.Guest, "/"):
		return fmt.Errorf("guest socket path %q is not absolute", m.Guest)
	case strings.ContainsAny(m.Guest, ";|\n"):
		return fmt.Errorf("guest socket path %q holds ';', '|' or a newline", m.Guest)
	}
	return nil
}

// nameArgs returns the argv of the machine subcommands that take only a
// name: start and delete -f.
func nameArgs(sub, name string) ([]string, error) {
	if err := checkMachineName(name); err != nil {
		return nil, err
	}
	args := []string{"machine", sub, "--name", name}
	switch sub {
	case "start":
	case "delete":
		args = append(args, "-f")
	default:
		return nil, fmt.Errorf("machine %s is not a name-only subcommand", sub)
	}
	return args, nil
}

// execOpts are the options of one machine exec.
type execOpts struct {
	Workdir     string // guest directory; "" for the machine's default
	User        string // needs a smolvm with exec --user (PR #1148; not 1.9.3)
	Interactive bool   // -i: keep stdin open
	TTY         bool   // -t: allocate a pseudo-terminal
	Detach      bool   // -d: print the guest pid and return

	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// execArgs returns the argv of machine exec. hasUser says whether the
// installed smolvm has exec --user.
func execArgs(name string, o execOpts, hasUser bool, cmd []string) ([]string, error) {
	if err := checkMachineName(name); err != nil {
		return nil, err
	}
	if len(cmd) == 0 || cmd[0] == "" {
		return nil, errors.New("exec needs a command")
	}
	if o.Detach && (o.Interactive || o.TTY) {
		return nil, errors.New("exec --detach cannot be combined with -i or -t")
	}
	args := []string{"machine", "exec", "--name", name}
	if o.Workdir != "" {
		if !strings.HasPrefix(o.Workdir, "/") {
			return nil, fmt.Errorf("guest workdir %q is not absolute", o.Workdir)
		}
		args = append(args, "-w", o.Workdir)
	}
	if o.User != "" {
		if !hasUser {
			return nil, withHint(errors.New("this smolvm has no machine exec --user"),
				"smolvm 1.9.3 runs exec as the image's USER; smol-machines/smolvm PR #1148 adds --user")
		}
		if !guestUserRE.MatchString(o.User) {
			return nil, fmt.Errorf("guest user %q is not valid", o.User)
		}
		args = append(args, "--user", o.User)
	}
	if o.Interactive {
		args = append(args, "-i")
	}
	if o.TTY {
		args = append(args, "-t")
	}
	if o.Detach {
		args = append(args, "--detach")
	}
	args = append(args, "--")
	return append(args, cmd...), nil
}

// cpArgs returns the argv of machine cp for copying hostFile into the
// machine, after checking the things smolvm would get wrong or refuse.
func cpArgs(hostFile, name, guestPath string) ([]string, error) {
	if err := checkMachineName(name); err != nil {
		return nil, err
	}
	if !filepath.IsAbs(hostFile) {
		return nil, fmt.Errorf("host path %q is not absolute", hostFile)
	}
	if strings.Contains(hostFile, ":") {
		return nil, withHint(fmt.Errorf("host path %q holds ':', which smolvm cp reads as machine:path", hostFile),
			"copy or link the file to a path without ':' first")
	}
	if !strings.HasPrefix(guestPath, "/") {
		return nil, fmt.Errorf("guest path %q is not absolute", guestPath)
	}
	if strings.HasSuffix(guestPath, "/") {
		return nil, fmt.Errorf("guest path %q names a directory; give the file's full path", guestPath)
	}
	return []string{"machine", "cp", hostFile, name + ":" + guestPath}, nil
}

// checkCopySource refuses what machine cp cannot copy: it opens a single
// regular file (following symlinks, as smolvm's File::open does), up to
// 4 GiB.
func checkCopySource(hostFile string) error {
	fi, err := os.Stat(hostFile)
	if err != nil {
		return err
	}
	switch {
	case fi.IsDir():
		return withHint(fmt.Errorf("%q is a directory; smolvm cp copies single regular files only", hostFile),
			"put trees in the workspace volume, or pipe a tar archive through exec -i")
	case !fi.Mode().IsRegular():
		return fmt.Errorf("%q is not a regular file", hostFile)
	case fi.Size() > smolvmMaxCopy:
		return fmt.Errorf("%q is %d bytes; smolvm cp copies at most 4 GiB", hostFile, fi.Size())
	}
	return nil
}

// smolvmError is a failure smolvm itself reported ("Error: …", exit 1) or
// an argument smolvm rejected (clap's "error: …", exit 2).
type smolvmError struct {
	Sub  string // the call, e.g. "machine exec"
	Code int
	Msg  string // smolvm's message without "Error: "
	Tail string // stderr tail
}

func (e *smolvmError) Error() string {
	if e.Msg != "" {
		return "smolvm " + e.Sub + ": " + e.Msg
	}
	return fmt.Sprintf("smolvm %s: exit status %d\n%s", e.Sub, e.Code, strings.TrimSpace(e.Tail))
}

func smolvmErrorAs(err error) *smolvmError {
	var e *smolvmError
	if errors.As(err, &e) {
		return e
	}
	return nil
}

// isNotFound reports whether err says the machine does not exist
// (src/data/errors.rs:72 @ v1.9.3).
func isNotFound(err error) bool {
	e := smolvmErrorAs(err)
	return e != nil && strings.HasPrefix(e.Msg, smolvmNotFoundPfx)
}

// isAlreadyExists reports whether err says create found the name taken.
func isAlreadyExists(err error) bool {
	e := smolvmErrorAs(err)
	return e != nil && strings.Contains(e.Msg, smolvmExists)
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.buf) }

// capBuffer keeps the first max bytes and notes whether more came.
type capBuffer struct {
	max      int
	buf      bytes.Buffer
	overflow bool
}

func (c *capBuffer) Write(p []byte) (int, error) {
	room := c.max - c.buf.Len()
	if len(p) > room {
		c.overflow = true
		c.buf.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return c.buf.Write(p)
}

// smolvmCall is one invocation.
type smolvmCall struct {
	args   []string
	stdin  io.Reader
	stdout io.Writer // nil: captured and returned
	stderr io.Writer // receives stderr too when set
}

// call runs smolvm and classifies its failure. It returns the captured
// stdout when call.stdout is nil.
func (s *smolvm) call(ctx context.Context, c smolvmCall) ([]byte, error) {
	// sub names the call in errors: "machine exec", "--version".
	sub := c.args[0]
	if len(c.args) >= 2 && c.args[0] == "machine" {
		sub = "machine " + c.args[1]
	}

	cmd := exec.CommandContext(ctx, s.path, c.args...)
	cmd.Dir = s.dir
	cmd.Env = slices.Clone(s.env)
	cmd.Stdin = c.stdin
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = s.waitDelay
	cmd.SysProcAttr = diesWithParent() // a killed up leaves no smolvm call running
	out := &capBuffer{max: smolvmMaxStdout}
	if c.stdout != nil {
		cmd.Stdout = c.stdout
	} else {
		cmd.Stdout = out
	}
	tail := &tailBuffer{max: smolvmTailBytes}
	if c.stderr != nil {
		cmd.Stderr = io.MultiWriter(c.stderr, tail)
	} else {
		cmd.Stderr = tail
	}
	err := cmd.Run()
	if out.overflow {
		return nil, fmt.Errorf("smolvm %s: more than %d bytes of output", sub, smolvmMaxStdout)
	}
	if err == nil {
		return out.buf.Bytes(), nil
	}
	if errors.Is(err, fs.ErrNotExist) && !fileExists(s.path) {
		return nil, withHint(fmt.Errorf("smolvm not found at %q", s.path),
			"install smol-machines' smolvm 1.9.3 or later (https://smolmachines.com) and put it on PATH")
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return nil, fmt.Errorf("smolvm %s: %w", sub, ctxErr)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return nil, fmt.Errorf("smolvm %s: %w", sub, err)
	}
	return out.buf.Bytes(), classify(sub, ee.ExitCode(), tail.String())
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// classify turns a non-zero exit into a *smolvmError, or into exitStatus
// when it came from the guest. smolvm prints its own error last, after any
// buffered guest output, so the last line decides; exit 2 is clap's only
// when stderr opens with "error: " (nothing ran in the guest then).
func classify(sub string, code int, stderr string) error {
	last := lastLine(stderr)
	switch {
	case code == 1 && strings.HasPrefix(last, "Error: "):
		return &smolvmError{Sub: sub, Code: code, Msg: strings.TrimPrefix(last, "Error: "), Tail: stderr}
	case code == 2 && strings.HasPrefix(stderr, "error: "):
		first, _, _ := strings.Cut(stderr, "\n")
		return &smolvmError{Sub: sub, Code: code, Msg: "rejected arguments: " + strings.TrimPrefix(first, "error: "), Tail: stderr}
	case code < 0:
		return &smolvmError{Sub: sub, Code: code, Msg: "killed by a signal", Tail: stderr}
	case sub == "machine exec":
		return exitStatus(code)
	}
	return &smolvmError{Sub: sub, Code: code, Tail: stderr}
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\r\n")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return strings.TrimRight(s, "\r")
}

// create creates the machine; an existing name is an error that
// isAlreadyExists recognises.
func (s *smolvm) create(ctx context.Context, spec createSpec) error {
	args, err := createArgs(spec)
	if err != nil {
		return err
	}
	var stdin io.Reader
	if !spec.ImageDir {
		// O_NONBLOCK: a FIFO put in its place does not hang the open.
		image, err := os.OpenFile(spec.Image, os.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return fmt.Errorf("image %q: %w", spec.Image, err)
		}
		defer image.Close()
		if fi, err := image.Stat(); err != nil || !fi.Mode().IsRegular() {
			return fmt.Errorf("image %q is no longer a regular file", spec.Image)
		}
		stdin = image
	} else if fi, err := os.Stat(spec.Image); err != nil || !fi.IsDir() {
		return fmt.Errorf("image %q is no longer a directory", spec.Image)
	}
	_, err = s.call(ctx, smolvmCall{args: args, stdin: stdin})
	return err
}

// lsArgs lists the machines as JSON; it reads smolvm's records only
// (src/cli/vm_common.rs:2549-2571 @ v1.9.3), where machine status --name
// would make the name's storage disks (src/agent/manager.rs:861-905).
var lsArgs = []string{"machine", "ls", "--json"}

// exists reports whether smolvm has a machine of that name.
func (s *smolvm) exists(ctx context.Context, name string) (bool, error) {
	out, err := s.call(ctx, smolvmCall{args: lsArgs})
	if err != nil {
		return false, err
	}
	var ms []struct{ Name string }
	if err := json.Unmarshal(out, &ms); err != nil {
		return false, fmt.Errorf("smolvm machine ls --json: %w", err)
	}
	for _, m := range ms {
		if m.Name == name {
			return true, nil
		}
	}
	return false, nil
}

// start boots a created or stopped machine; an already running one is
// fine.
func (s *smolvm) start(ctx context.Context, name string) error {
	args, err := nameArgs("start", name)
	if err != nil {
		return err
	}
	_, err = s.call(ctx, smolvmCall{args: args})
	return err
}

// delete stops and deletes the machine. A machine that does not exist is
// already deleted, so teardown can be repeated.
func (s *smolvm) delete(ctx context.Context, name string) error {
	args, err := nameArgs("delete", name)
	if err != nil {
		return err
	}
	_, err = s.call(ctx, smolvmCall{args: args})
	if isNotFound(err) {
		return nil
	}
	return err
}

// exec runs cmd in the machine. A non-zero guest exit comes back as
// exitStatus; smolvm's own failures as *smolvmError.
func (s *smolvm) exec(ctx context.Context, name string, o execOpts, cmd ...string) error {
	hasUser := false
	if o.User != "" {
		var err error
		if hasUser, err = s.hasFlag(ctx, "exec", "--user"); err != nil {
			return err
		}
	}
	args, err := execArgs(name, o, hasUser, cmd)
	if err != nil {
		return err
	}
	stdout := o.Stdout
	if stdout == nil {
		stdout = io.Discard
	}
	_, err = s.call(ctx, smolvmCall{args: args, stdin: o.Stdin, stdout: stdout, stderr: o.Stderr})
	return err
}

// execDetached starts cmd in the machine without waiting for it (exec
// --detach, used for gvforwarder) and returns the guest pid smolvm prints.
func (s *smolvm) execDetached(ctx context.Context, name string, o execOpts, cmd ...string) (int, error) {
	o.Detach, o.Interactive, o.TTY = true, false, false
	out := &capBuffer{max: 4 << 10}
	o.Stdout = out
	if err := s.exec(ctx, name, o, cmd...); err != nil {
		return 0, err
	}
	return parseDetachedPID(out.buf.String())
}

// parseDetachedPID reads the pid exec --detach prints: the last field of
// its output that is a positive integer (the exact wording around it is
// not in the reference).
func parseDetachedPID(out string) (int, error) {
	f := strings.Fields(out)
	for i := len(f) - 1; i >= 0; i-- {
		if pid, err := strconv.Atoi(strings.Trim(f[i], "().,:")); err == nil && pid > 0 {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("smolvm machine exec --detach printed no pid: %q", firstLine(out, nil))
}

// cp copies one regular host file to an absolute guest path.
func (s *smolvm) cp(ctx context.Context, hostFile, name, guestPath string) error {
	args, err := cpArgs(hostFile, name, guestPath)
	if err != nil {
		return err
	}
	if err := checkCopySource(hostFile); err != nil {
		return err
	}
	_, err = s.call(ctx, smolvmCall{args: args})
	return err
}

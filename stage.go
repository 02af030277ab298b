package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// The stage directory holds one bottle's rendered files, sockets, state and
// logs. It is 0700. Every file smolbottle renders into it is 0600 and
// written whole (temp file plus rename), so a crash never leaves half a
// config; the exceptions are guest/ (0755, its binaries 0555: the guest's
// own user must run them) and logs/, which the processes append to. No
// credential value is ever written here: the stage holds only the guest's
// placeholders.
//
//	<stage>/plan.json      the plan, also the marker that the directory is ours
//	<stage>/Smolfile       smolvm machine definition
//	<stage>/gvproxy.yaml   gvproxy config
//	<stage>/pipelock.yaml  egress proxy config
//	<stage>/sock/          gvproxy's API socket, smolbottle's alone (gvproxy creates it, then its jail seals the directory read-only)
//	<stage>/link/          the guest link front's socket, the one smolvm bridges into the guest (guestlink.go)
//	<stage>/jail/          gvproxy's chroot mount point, empty outside its namespace
//	<stage>/guest/         binaries mounted read-only into the guest
//	<stage>/logs/          logs, kept by down (pipelock's: pipelock.jsonl)
//	<stage>/state.json     pids of a running bottle, written by the supervisor; up marks it ready
const (
	planFile        = "plan.json"
	stateFile       = "state.json"
	smolfileName    = "Smolfile"
	gvproxyFile     = "gvproxy.yaml"
	pipelockFile    = "pipelock.yaml"
	sockDir         = "sock"
	jailDirName     = "jail"
	guestDir        = "guest"
	logsDir         = "logs"
	gvproxySock     = "gvproxy.sock"
	pipelockLogFile = "pipelock.jsonl"
	linkDir         = "link"
	linkSock        = "guest.sock"
)

// stateRoot returns the directory under which bottles are staged by
// default: $SMOLBOTTLE_STATE, else $XDG_STATE_HOME/smolbottle, else
// ~/.local/state/smolbottle. It also holds the preflight cache and the
// stage pointers, so a relative value, which would put them wherever
// smolbottle happens to run, is refused for SMOLBOTTLE_STATE and HOME,
// and ignored for XDG_STATE_HOME, as the XDG Base Directory Specification
// 0.8 says (section 2, "Basics": a relative path there "should" be
// considered invalid and ignored).
func stateRoot(getenv func(string) string) (string, error) {
	if d := getenv("SMOLBOTTLE_STATE"); d != "" {
		fix := "set SMOLBOTTLE_STATE to an absolute directory, or unset it"
		if err := checkText("SMOLBOTTLE_STATE", d); err != nil {
			return "", withHint(err, fix)
		}
		if !filepath.IsAbs(d) {
			return "", withHint(fmt.Errorf("SMOLBOTTLE_STATE %q is not an absolute path", d), fix)
		}
		return d, nil
	}
	if d := getenv("XDG_STATE_HOME"); d != "" && filepath.IsAbs(d) {
		if err := checkText("XDG_STATE_HOME", d); err != nil {
			return "", withHint(err, "set XDG_STATE_HOME to an absolute directory, or set SMOLBOTTLE_STATE")
		}
		return filepath.Join(d, "smolbottle"), nil
	}
	home := getenv("HOME")
	if home == "" {
		return "", withHint(errors.New("cannot choose a stage directory: HOME is not set"), "pass -stage DIR")
	}
	fix := "set HOME to an absolute directory, set SMOLBOTTLE_STATE, or pass -stage DIR"
	if err := checkText("HOME", home); err != nil {
		return "", withHint(err, fix)
	}
	if !filepath.IsAbs(home) {
		return "", withHint(fmt.Errorf("HOME %q is not an absolute path", home), fix)
	}
	return filepath.Join(home, ".local", "state", "smolbottle"), nil
}

// linkPath is the guest link front's socket: the one smolvm bridges in.
func linkPath(stage string) string { return filepath.Join(stage, linkDir, linkSock) }

// checkSocketPaths refuses a stage whose unix socket paths (gvproxy's and
// the guest link's; the relays use no socket files) would not fit in
// sun_path on every host.
func checkSocketPaths(stage string) error {
	longest := filepath.Join(stage, sockDir, gvproxySock)
	if l := linkPath(stage); len(l) > len(longest) {
		longest = l
	}
	if len(longest) > maxSocketPath {
		return withHint(fmt.Errorf("stage %q is too long for a unix socket: %q is %d bytes, the limit is %d",
			stage, longest, len(longest), maxSocketPath), "pass -stage with a shorter directory, such as /tmp/sb-SLUG")
	}
	return nil
}

// bottleState is what the supervisor records (and up marks ready) so that
// down works after a crash and the next up finds a stale bottle instead of
// silently reusing it.
type bottleState struct {
	Slug       string    `json:"slug"`
	Machine    string    `json:"machine"`
	Subnet     int       `json:"subnet"`
	Supervisor procIdent `json:"supervisor"`
	Canary     int       `json:"canary"`  // host loopback port the guest must not reach
	Gvproxy    int       `json:"gvproxy"` // pid of the confined gvproxy, for the record
	Up         procIdent `json:"up"`      // the up that started the supervisor
	Ready      bool      `json:"ready"`   // set by up once the bottle passed its self-test
}

// markReady records that up finished: until then a supervisor whose up is
// gone is a half-made bottle, which it tears down itself and ls calls stale.
func markReady(stage string) error {
	st, ok, err := readState(stage)
	if err == nil && !ok {
		err = fmt.Errorf("%s is gone", filepath.Join(stage, stateFile))
	}
	if err != nil {
		return fmt.Errorf("record that up finished: %v", err)
	}
	if !st.Supervisor.alive() { // its network is gone: the self-test proved nothing
		return fmt.Errorf("the supervisor (pid %d) exited before up finished; see %s", st.Supervisor.PID, filepath.Join(stage, logsDir, supervisorLog))
	}
	st.Ready = true
	data, _ := json.Marshal(st)
	return writeFileAtomic(filepath.Join(stage, stateFile), data, 0o600)
}

// procIdent names a process across pid reuse: the pid plus its start time
// in clock ticks since boot (/proc/PID/stat field 22).
type procIdent struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
}

// alive reports whether the process is still the one recorded.
func (p procIdent) alive() bool {
	if p.PID <= 0 {
		return false
	}
	start, err := procStart(p.PID)
	return err == nil && start == p.Start
}

// procStart reads a process's start time from /proc.
func procStart(pid int) (uint64, error) {
	f, err := procStat(pid, 22)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(f, 10, 64)
}

// procStat returns field n (numbered from 1, as in proc(5)) of
// /proc/PID/stat, n >= 3.
func procStat(pid, n int) (string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", err
	}
	// The command name (field 2) may hold spaces and parentheses: fields
	// are counted after its last ')'.
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || n < 3 || len(f) <= n-3 {
		return "", fmt.Errorf("/proc/%d/stat: malformed, or no field %d", pid, n)
	}
	return f[n-3], nil
}

// readState returns the stage's state file; ok is false when there is none.
// It is read as readStageFile says: down signals the pid it names.
func readState(stage string) (st bottleState, ok bool, err error) {
	b, err := readStageFile(stage, stateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return st, false, nil
	}
	if err != nil {
		return st, false, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, false, fmt.Errorf("%s: %w", filepath.Join(stage, stateFile), err)
	}
	return st, true, nil
}

// checkStageFree refuses a stage that holds a live or stale bottle, or a
// directory that smolbottle did not create.
func checkStageFree(stage string) error {
	st, ok, err := readState(stage)
	if err != nil {
		return err
	}
	if ok {
		down := downCommand(st.Slug, stage)
		if st.Supervisor.alive() {
			return withHint(fmt.Errorf("stage %q already holds a live bottle %q (supervisor pid %d)", stage, st.Slug, st.Supervisor.PID),
				"stop it with: "+down)
		}
		return withHint(fmt.Errorf("stage %q holds a stale bottle %q: its supervisor (pid %d) is gone", stage, st.Slug, st.Supervisor.PID),
			"clean it up with: "+down)
	}
	entries, err := os.ReadDir(stage)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stage %q: %w", stage, err)
	}
	if len(entries) == 0 || len(entries) == 1 && entries[0].Name() == logsDir && entries[0].IsDir() {
		return nil // new, or what down leaves of an earlier bottle: its logs
	}
	if _, err := os.Stat(filepath.Join(stage, planFile)); err != nil {
		return withHint(fmt.Errorf("stage %q exists and was not made by smolbottle", stage), "pass -stage with a new or empty directory")
	}
	return nil
}

// The stage's trust rule. down removes what plan.json lists and runs the
// smolvm it names, exec and cp run that smolvm too, and down signals the
// supervisor state.json names: so both files are read only from a stage
// that is a private directory of the user's (not a symlink, owned by them,
// nothing for group or others, as mkdirPrivate makes it), and only when
// the file itself is a private file of theirs (readPrivateFile, which also
// vets the stage pointers and the preflight cache).

// maxStageFile bounds what is read of plan.json or state.json; a real one
// is a few KiB.
const maxStageFile = 1 << 20

// readStageFile reads name (plan.json or state.json) from stage under the
// trust rule above. A missing file is fs.ErrNotExist, whatever the stage:
// where there is nothing to read there is nothing to trust.
func readStageFile(stage, name string) ([]byte, error) {
	b, err := readPrivateFile(filepath.Join(stage, name), "stage file", maxStageFile)
	if err != nil {
		return nil, err
	}
	if err := checkStageDir(stage); err != nil {
		return nil, err
	}
	return b, nil
}

// checkStageDir refuses a stage that is not a private directory of the
// user's.
func checkStageDir(stage string) error {
	fi, err := os.Lstat(stage)
	if err != nil {
		return err
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return withHint(fmt.Errorf("stage %q is a symlink; smolbottle reads a plan or state only in a real directory", stage),
			"if the directory it points to is yours, pass -stage with that directory")
	case !fi.IsDir():
		return fmt.Errorf("stage %q is not a directory", stage)
	case st == nil || int(st.Uid) != os.Getuid():
		return withHint(fmt.Errorf("stage %q is not owned by you; smolbottle trusts the plan and state only of a stage you own", stage),
			"leave this stage alone; a bottle of yours lives in a directory you own")
	case fi.Mode().Perm()&0o077 != 0:
		return withHint(fmt.Errorf("stage %q is mode %v; smolbottle makes it 0700, so others may have changed its plan or state", stage, fi.Mode().Perm()),
			"if nobody else wrote into it, make it private again: "+shellQuote([]string{"chmod", "700", stage}))
	}
	return nil
}

// readPrivateFile reads a file smolbottle wrote 0600 for itself, after
// checking that it still is one: a regular file (not a symlink, not a FIFO
// that would hang the read) owned by the user, with no permission for
// group or others, and at most limit bytes. what names the file in errors;
// fs.ErrNotExist when there is none.
func readPrivateFile(path, what string, limit int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%s %q is a symlink", what, path)
		}
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("%s %q is not a regular file", what, path)
	case st == nil || int(st.Uid) != os.Getuid():
		return nil, withHint(fmt.Errorf("%s %q is not owned by you", what, path),
			"smolbottle trusts only files you own: leave it alone, or remove it if it is in a directory of yours")
	case fi.Mode().Perm()&0o077 != 0:
		return nil, withHint(fmt.Errorf("%s %q is mode %v; smolbottle writes it 0600", what, path, fi.Mode().Perm()),
			"if nobody else changed it, make it private again: "+shellQuote([]string{"chmod", "600", path}))
	case fi.Size() > limit:
		return nil, fmt.Errorf("%s %q is larger than %d bytes", what, path, limit)
	}
	return io.ReadAll(io.LimitReader(f, limit))
}

// writeFileAtomic writes data to path with the given mode through a
// temporary file in the same directory and a rename, so readers see the old
// file or the new one, never a torn one, and a planted symlink at path is
// replaced, not followed.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	return nil
}

// mkdirPrivate creates dir with mode 0700, or makes sure an existing one
// is a real directory (not a symlink) owned by us and not open to others.
func mkdirPrivate(dir string) error {
	err := os.Mkdir(dir, 0o700)
	if err == nil || !errors.Is(err, fs.ErrExist) {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%q exists and is not a directory", dir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Getuid() {
		return fmt.Errorf("%q is owned by uid %d, not by us", dir, st.Uid)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return os.Chmod(dir, 0o700)
	}
	return nil
}

// lockStage takes an exclusive lock for the stage, so that two ups, or an
// up and a plan or a down, never work on one bottle at once: between the
// check that the stage is free and the supervisor recording itself, another
// would otherwise see the stage free too, or a plan rewrite plan.json. The lock is a 0600 file beside the
// stage (the stage itself may not exist yet) and is released by the
// returned function or when the process ends.
func lockStage(stage string) (unlock func(), err error) {
	parent := filepath.Dir(stage)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(parent, "."+filepath.Base(stage)+".lock"), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock stage %q: %w", stage, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, withHint(fmt.Errorf("another smolbottle plan, up or down is working on stage %q", stage),
				"wait for it to finish, then run the command again")
		}
		return nil, fmt.Errorf("lock stage %q: %w", stage, err)
	}
	return func() { f.Close() }, nil
}

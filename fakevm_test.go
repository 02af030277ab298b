//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The fake VM is what `smolvm machine start` boots in the fake smolvm: the
// test binary run under the name "smolvm-vm", detached (its own session,
// no parent-death signal: the fake smolvm exits at once) in new user,
// network and mount namespaces, uid and gid 0 mapped to the caller's.
//
//	fake smolvm (start)  -> smolvm-vm DIR ROOT SPEC
//	                         lo up; ROOT: tmpfs with read-only binds of /usr,
//	                         /bin, /sbin, /lib*, the device nodes, tmpfs /etc,
//	                         /tmp, /run, the Smolfile volumes and the
//	                         --mount-socket sockets; chroot ROOT
//	fake smolvm (exec)   -> DIR/vmPID.sock: one JSON request, the caller's
//	                         stdin, stdout and stderr as SCM_RIGHTS; the
//	                         command runs in the VM, the exit code comes back
//
// The guest's own files are not visible on the host: its root is a tmpfs
// in the VM's mount namespace, and gvforwarder's tap0 lives in the VM's
// network namespace, so the only way out is the bridged gvproxy socket.
// stop and delete kill the detached guest processes and the VM; the
// namespaces go with it. There is no pid namespace, so the pids exec
// --detach prints are host pids, and no /proc in the guest: a bind of the
// host's would show the host's processes. Messages of the fake's own
// making start "fake:".

func init() { fakes[fakeVMName] = fakeVM }

const (
	fakeVMName = "smolvm-vm"
	// fakeVMBootLimit bounds the VM's setup; it takes milliseconds.
	fakeVMBootLimit = 10 * time.Second
	// fakeVMStopLimit bounds the wait for a killed VM to be gone.
	fakeVMStopLimit = 5 * time.Second
	fakeVMTun       = "/dev/net/tun"
)

// fakeVMSpec is what the VM is booted with, from the machine record.
type fakeVMSpec struct {
	Volumes []string `json:"volumes"` // HOST:GUEST[:ro|:rw]
	Sockets []string `json:"sockets"` // HOST:GUEST
	Tun     string   `json:"tun"`     // host device bound at /dev/net/tun
}

// fakeVMSocket is the control socket of the VM with the given pid.
func fakeVMSocket(dir string, pid int) string {
	return filepath.Join(dir, fmt.Sprintf("vm%d.sock", pid))
}

var fakeVMSupport = sync.OnceValue(func() error {
	f, err := os.OpenFile(fakeVMTun, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	f.Close()
	cmd := exec.Command("/bin/true")
	cmd.Env, cmd.Dir = []string{}, "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET | syscall.CLONE_NEWNS,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
	}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("user, network and mount namespaces: %v", err)
	}
	return nil
})

// needFakeVM skips a test whose machines boot a fake VM where the system
// cannot run one, and fails it in CI, where it must.
func needFakeVM(t testing.TB) {
	t.Helper()
	err := fakeVMSupport()
	switch {
	case err == nil:
	case os.Getenv("CI") != "":
		t.Fatalf("the fake VM cannot run in CI: %v", err)
	default:
		t.Skipf("the fake VM cannot run here: %v", err)
	}
}

// fakeVMStart boots the machine's VM and returns its pid once it serves
// its control socket. Warnings (skipped socket bridges) go to stderr.
func fakeVMStart(dir string, m *fakeMachine, tun string) (int, error) {
	if tun == "" {
		tun = fakeVMTun
	}
	// gvforwarder opens the device as the caller's own uid: a user
	// namespace grants no access to a node the caller cannot open.
	f, err := os.OpenFile(tun, os.O_RDWR, 0)
	if err != nil {
		return 0, fmt.Errorf("the fake VM needs %s: %v", tun, err)
	}
	f.Close()
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	root := filepath.Join(dir, fakeSmolvmGuests, m.Name)
	if err := os.MkdirAll(root, 0o700); err != nil {
		return 0, err
	}
	spec, _ := json.Marshal(fakeVMSpec{Volumes: m.Volumes, Sockets: m.Sockets, Tun: tun})
	logf, err := os.OpenFile(filepath.Join(dir, "vm-"+m.Name+".log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	sr, sw, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer sr.Close()
	cmd := exec.Command(self, dir, root, string(spec))
	cmd.Args[0] = fakeVMName
	cmd.Env, cmd.Dir = []string{"PATH=" + fakeVMPath}, "/"
	cmd.Stdout, cmd.Stderr, cmd.ExtraFiles = logf, logf, []*os.File{sw}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET | syscall.CLONE_NEWNS,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
		Setsid:      true,
	}
	err = cmd.Start()
	sw.Close()
	if err != nil {
		return 0, fmt.Errorf("create the VM's user, network and mount namespaces: %v", err)
	}
	pid := cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(sr)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	timeout := time.After(fakeVMBootLimit)
	for {
		select {
		case line, ok := <-lines:
			verb, rest, _ := strings.Cut(line, " ")
			switch {
			case !ok:
				cmd.Process.Kill()
				return 0, fmt.Errorf("the VM exited during boot: %v", <-exited)
			case verb == "warn":
				fmt.Fprintf(os.Stderr, "fake: warning: %s\n", rest)
				continue
			case verb == "ok":
				// The VM outlives this process; init reaps it.
				return pid, nil
			default:
				cmd.Process.Kill()
				<-exited
				return 0, errors.New(rest)
			}
		case <-timeout:
			cmd.Process.Kill()
			<-exited
			return 0, fmt.Errorf("the VM did not boot within %v", fakeVMBootLimit)
		}
	}
}

// fakeVMStop kills the VM with pid, if it is still one, and waits until it
// is gone.
func fakeVMStop(dir string, pid int) {
	if pid <= 0 || !fakeIsVM(pid) {
		return
	}
	syscall.Kill(pid, syscall.SIGKILL)
	for deadline := time.Now().Add(fakeVMStopLimit); fakeIsVM(pid) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	os.Remove(fakeVMSocket(dir, pid))
}

// fakeIsVM reports whether pid is a live fake VM (not a zombie, not a
// process that took over a recycled pid).
func fakeIsVM(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if _, rest, _ := strings.Cut(string(stat), ") "); strings.HasPrefix(rest, "Z") || strings.HasPrefix(rest, "X") {
		return false
	}
	argv, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	arg0, _, _ := bytes.Cut(argv, []byte{0})
	return err == nil && string(arg0) == fakeVMName
}

// fakeVMCall sends one request to the VM with pid, with files (stdin,
// stdout, stderr of an exec) as SCM_RIGHTS, and returns its reply.
func fakeVMCall(dir string, pid int, req fakeVMRequest, files ...*os.File) (fakeVMReply, error) {
	var reply fakeVMReply
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: fakeVMSocket(dir, pid), Net: "unix"})
	if err != nil {
		return reply, err
	}
	defer c.Close()
	b, err := json.Marshal(req)
	if err != nil {
		return reply, err
	}
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	var oob []byte
	if len(fds) > 0 {
		oob = syscall.UnixRights(fds...)
	}
	if _, _, err := c.WriteMsgUnix(append(b, '\n'), oob, nil); err != nil {
		return reply, err
	}
	if err := json.NewDecoder(c).Decode(&reply); err != nil {
		return reply, fmt.Errorf("no answer from the VM: %v", err)
	}
	return reply, nil
}

// fakeVM is the VM process. argv: DIR ROOT SPEC. It reports its boot on
// fd 3 ("warn ..." lines, then "ok" or "fail ...") and then serves until
// it is killed.
func fakeVM(args []string) int {
	syscall.CloseOnExec(3) // no guest process may hold the status pipe
	status := os.NewFile(3, "status")
	if len(args) != 3 {
		fmt.Fprintf(status, "fail fake VM: want DIR ROOT SPEC, got %q\n", args)
		return 2
	}
	var spec fakeVMSpec
	if err := json.Unmarshal([]byte(args[2]), &spec); err != nil {
		fmt.Fprintf(status, "fail fake VM: spec: %v\n", err)
		return 2
	}
	ln, err := fakeVMBoot(args[0], args[1], spec, func(msg string) { fmt.Fprintf(status, "warn %s\n", msg) })
	if err != nil {
		fmt.Fprintf(status, "fail %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		return 1
	}
	fmt.Fprintln(status, "ok")
	status.Close()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			fmt.Fprintf(os.Stderr, "fake VM: accept: %v\n", err)
			return 1
		}
		go fakeVMServe(c)
	}
}

// fakeVMBoot builds the guest and returns the control listener.
func fakeVMBoot(dir, root string, spec fakeVMSpec, warn func(string)) (*net.UnixListener, error) {
	sock := fakeVMSocket(dir, os.Getpid())
	if len(sock) > maxSocketPath {
		return nil, fmt.Errorf("control socket path %q is over %d bytes", sock, maxSocketPath)
	}
	os.Remove(sock)
	// Opened before the chroot: the listener keeps working after it.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		return nil, err
	}
	if err := setLinkUp("lo"); err != nil {
		return nil, fmt.Errorf("bring up lo: %w", err)
	}
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return nil, fmt.Errorf("make mounts private: %w", err)
	}
	tmpfs := func(dst, mode string, flags uintptr) error {
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		if err := syscall.Mount("tmpfs", dst, "tmpfs", flags|syscall.MS_NOSUID|syscall.MS_NODEV, "mode="+mode); err != nil {
			return fmt.Errorf("mount tmpfs on %q: %w", dst, err)
		}
		return nil
	}
	if err := tmpfs(root, "0755", 0); err != nil {
		return nil, err
	}
	// The host's programs, read-only; merged-/usr symlinks stay symlinks.
	for _, d := range []string{"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"} {
		fi, err := os.Lstat(d)
		switch {
		case errors.Is(err, os.ErrNotExist):
			continue
		case err != nil:
			return nil, err
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(d)
			if err != nil {
				return nil, err
			}
			if err := os.Symlink(target, root+d); err != nil {
				return nil, err
			}
		case fi.IsDir():
			if err := os.Mkdir(root+d, 0o755); err != nil {
				return nil, err
			}
			if err := bindMount(d, root+d, true); err != nil {
				return nil, err
			}
		}
	}
	if err := fakeVMDevices(root, spec.Tun); err != nil {
		return nil, err
	}
	for _, d := range []struct{ path, mode string }{{"/etc", "0755"}, {"/tmp", "1777"}, {"/run", "0755"}} {
		if err := tmpfs(root+d.path, d.mode, syscall.MS_NOEXEC); err != nil {
			return nil, err
		}
	}
	for name, data := range map[string]string{
		"passwd": "root:x:0:0:root:/root:/bin/sh\n",
		"group":  "root:x:0:\n",
		"hosts":  "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
	} {
		if err := os.WriteFile(root+"/etc/"+name, []byte(data), 0o644); err != nil {
			return nil, err
		}
	}
	if err := os.Mkdir(root+"/root", 0o700); err != nil {
		return nil, err
	}
	for _, v := range spec.Volumes {
		parts := strings.Split(v, ":")
		ro := false
		if n := len(parts); n > 2 && (parts[n-1] == "ro" || parts[n-1] == "rw") {
			ro, parts = parts[n-1] == "ro", parts[:n-1]
		}
		if len(parts) != 2 {
			return nil, fmt.Errorf("volume %q: want HOST:GUEST[:ro]", v)
		}
		dst := root + filepath.Clean(parts[1])
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return nil, fmt.Errorf("volume %q: %v", v, err)
		}
		if err := syscall.Mount(parts[0], dst, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
			return nil, fmt.Errorf("volume %q: bind: %w", v, err)
		}
		if ro {
			if err := remount(dst, true); err != nil {
				return nil, fmt.Errorf("volume %q: %w", v, err)
			}
		}
	}
	// smolvm bridges a host socket over vsock and skips, with a warning, a
	// bridge that does not come up; a bind mount of the socket file gives
	// the guest the same connect semantics.
	for _, s := range spec.Sockets {
		host, guest, _ := strings.Cut(s, ":")
		fi, err := os.Stat(host)
		if err == nil && fi.Mode()&os.ModeSocket == 0 {
			err = errors.New("not a socket")
		}
		if err != nil {
			warn(fmt.Sprintf("socket bridge %s skipped: %v", s, err))
			continue
		}
		dst := root + filepath.Clean(guest)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return nil, fmt.Errorf("socket %q: %v", s, err)
		}
		if err := os.WriteFile(dst, nil, 0o600); err != nil {
			return nil, fmt.Errorf("socket %q: %v", s, err)
		}
		if err := syscall.Mount(host, dst, "", syscall.MS_BIND, ""); err != nil {
			return nil, fmt.Errorf("socket %q: bind: %w", s, err)
		}
	}
	if err := syscall.Chroot(root); err != nil {
		return nil, fmt.Errorf("chroot %q: %w", root, err)
	}
	if err := os.Chdir("/"); err != nil {
		return nil, err
	}
	return ln, nil
}

// fakeVMDevices binds the device nodes a guest needs. The binds keep the
// nodes usable (no nodev); tun is checked by opening it, as gvforwarder
// will.
func fakeVMDevices(root, tun string) error {
	if err := os.MkdirAll(root+"/dev/net", 0o755); err != nil {
		return err
	}
	for _, d := range []struct{ host, guest string }{
		{"/dev/null", "/dev/null"}, {"/dev/zero", "/dev/zero"}, {"/dev/urandom", "/dev/urandom"},
		{"/dev/random", "/dev/random"}, {tun, "/dev/net/tun"},
	} {
		if err := os.WriteFile(root+d.guest, nil, 0o600); err != nil {
			return err
		}
		if err := syscall.Mount(d.host, root+d.guest, "", syscall.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %w", d.host, err)
		}
	}
	f, err := os.OpenFile(root+"/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("/dev/net/tun is not usable in the VM's namespaces: %v", err)
	}
	f.Close()
	for name, target := range map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
		"stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"} {
		if err := os.Symlink(target, root+"/dev/"+name); err != nil {
			return err
		}
	}
	return nil
}

// fakeVMServe answers one request. An exec brings the caller's stdin,
// stdout and stderr; a caller that goes away kills its command.
func fakeVMServe(c *net.UnixConn) {
	defer c.Close()
	req, files, err := fakeVMReadRequest(c)
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	reply := fakeVMReply{}
	switch {
	case err != nil:
		reply = fakeVMReply{Code: 1, Err: fmt.Sprintf("fake: VM: request: %v", err)}
	case req.Op == "write":
		err = os.MkdirAll(filepath.Dir(req.Path), 0o755)
		if err == nil {
			err = os.WriteFile(req.Path, req.Data, 0o600)
		}
		if err != nil {
			reply = fakeVMReply{Code: 1, Err: fmt.Sprintf("io operation failed: %v", err)}
		}
	case req.Op == "read":
		if reply.Data, err = os.ReadFile(req.Path); err != nil {
			reply = fakeVMReply{Code: 1, Err: fmt.Sprintf("io operation failed: %v", err)}
		}
	case req.Op == "exec":
		reply = fakeVMExec(c, req, files)
	default:
		reply = fakeVMReply{Code: 1, Err: fmt.Sprintf("fake: VM: unknown op %q", req.Op)}
	}
	json.NewEncoder(c).Encode(reply)
}

// fakeVMReadRequest reads the request line and the descriptors sent with it.
func fakeVMReadRequest(c *net.UnixConn) (fakeVMRequest, []*os.File, error) {
	var req fakeVMRequest
	var files []*os.File
	var line []byte
	buf, oob := make([]byte, 64<<10), make([]byte, syscall.CmsgSpace(3*4))
	for !bytes.HasSuffix(line, []byte("\n")) {
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if oobn > 0 {
			msgs, perr := syscall.ParseSocketControlMessage(oob[:oobn])
			for _, m := range msgs {
				if fds, err := syscall.ParseUnixRights(&m); err == nil {
					for _, fd := range fds {
						files = append(files, os.NewFile(uintptr(fd), "passed"))
					}
				}
			}
			if perr != nil {
				return req, files, perr
			}
		}
		line = append(line, buf[:n]...)
		if err != nil {
			return req, files, err
		}
		if n == 0 {
			return req, files, io.ErrUnexpectedEOF
		}
	}
	return req, files, json.Unmarshal(line, &req)
}

// fakeVMExec runs one command in the guest.
func fakeVMExec(c *net.UnixConn, req fakeVMRequest, files []*os.File) fakeVMReply {
	switch req.User {
	case "", "root", "0", "0:0":
	default:
		return fakeVMReply{Code: 1, Err: fmt.Sprintf("fake: exec --user %s: the fake VM maps only root", req.User)}
	}
	if len(req.Argv) == 0 {
		return fakeVMReply{Code: 1, Err: "fake: exec without a command"}
	}
	if !req.Detach && len(files) != 3 {
		return fakeVMReply{Code: 1, Err: fmt.Sprintf("fake: exec got %d descriptors, want stdin, stdout, stderr", len(files))}
	}
	if err := os.MkdirAll(req.Dir, 0o755); err != nil {
		return fakeVMReply{Code: 1, Err: fmt.Sprintf("fake: exec: workdir: %v", err)}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if req.Timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, req.Timeout)
		defer cancel()
	}
	cmd := exec.Command(req.Argv[0], req.Argv[1:]...)
	cmd.Env, cmd.Dir = req.Env, req.Dir
	// Every guest process dies with the VM, as it would with a real one.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: !req.Detach, Setsid: req.Detach, Pdeathsig: syscall.SIGKILL}
	if req.Detach {
		// The VM's own log takes the output of what runs detached.
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			return fakeVMReply{Code: 127, Err: fmt.Sprintf("fake: exec %s: %v", req.Argv[0], err)}
		}
		go cmd.Wait()
		return fakeVMReply{PID: cmd.Process.Pid}
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = files[0], files[1], files[2]
	if err := cmd.Start(); err != nil {
		return fakeVMReply{Code: 127, Err: fmt.Sprintf("fake: exec %s: %v", req.Argv[0], err)}
	}
	// The caller closing the connection (the fake smolvm was killed) ends
	// the command, as smolvm's agent does when its client goes away.
	go func() {
		io.Copy(io.Discard, c)
		cancel()
	}()
	stop := context.AfterFunc(ctx, func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	defer stop()
	err := cmd.Wait()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return fakeVMReply{}
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fakeVMReply{Code: 124}
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return fakeVMReply{Code: 128 + int(ws.Signal())}
		}
		return fakeVMReply{Code: ee.ExitCode()}
	}
	return fakeVMReply{Code: 127, Err: fmt.Sprintf("fake: exec %s: %v", req.Argv[0], err)}
}

// fakeVMFixture is a fake smolvm and a Smolfile for tests of the VM.
type fakeVMFixture struct {
	fake     *fakeSmolvmBin
	s        *smolvm
	smolfile string
}

// newFakeVMFixture renders a Smolfile with volumes (HOST:GUEST[:ro]) and a
// fresh workspace at /workspace, for a current smolvm (exec --user).
func newFakeVMFixture(t *testing.T, volumes ...string) *fakeVMFixture {
	t.Helper()
	dir := t.TempDir()
	ws, image := filepath.Join(dir, "workspace"), filepath.Join(dir, "image")
	for _, d := range []string{ws, image} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	sf, err := renderSmolfile(smolfileSpec{Image: image, Workdir: "/workspace", CPUs: 1, MemMiB: 512,
		Volumes: append([]string{ws + ":/workspace"}, volumes...)})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "Smolfile")
	if err := os.WriteFile(path, sf, 0o600); err != nil {
		t.Fatal(err)
	}
	fake := newFakeSmolvm(t)
	parent := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	return &fakeVMFixture{fake: fake, s: fake.driver(t, parent), smolfile: path}
}

// vmLog is the fake VM's log (the output of what runs detached).
func (f *fakeVMFixture) vmLog(name string) string {
	b, _ := os.ReadFile(filepath.Join(f.fake.dir, "vm-"+name+".log"))
	return string(b)
}

// guestRun runs argv in the machine as root and returns its stdout.
func (f *fakeVMFixture) guestRun(ctx context.Context, name string, argv ...string) (string, error) {
	var out, errb bytes.Buffer
	err := f.s.exec(ctx, name, execOpts{User: "root", Stdout: &out, Stderr: &errb}, argv...)
	if err != nil {
		return out.String(), fmt.Errorf("%q: %w (stderr %q)", argv, err, errb.String())
	}
	return out.String(), nil
}

// vmNamespaces returns the namespaces of a process, "net:[4026...]".
func vmNamespaces(t *testing.T, pid int) []string {
	t.Helper()
	var nss []string
	for _, kind := range []string{"net", "user", "mnt"} {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, kind))
		if err != nil {
			t.Fatalf("namespace %s of %d: %v", kind, pid, err)
		}
		nss = append(nss, l)
	}
	return nss
}

// TestFakeVMGuest checks that the fake VM is a guest of its own: its own
// root, loopback only, read-only volumes and host programs, the bridged
// socket, and that delete leaves nothing behind.
func TestFakeVMGuest(t *testing.T) {
	t.Parallel()
	needFakeVM(t)
	ctx := context.Background()
	ro := t.TempDir()
	if err := os.WriteFile(filepath.Join(ro, "tool"), []byte("read me\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := newFakeVMFixture(t, ro+":/opt/ro:ro")
	sockDir := t.TempDir()
	sock := filepath.Join(sockDir, "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("from the host socket\n"))
			c.Close()
		}
	}()
	const name = "sb-guest"
	if err := f.s.create(ctx, createSpec{Name: name, Smolfile: f.smolfile,
		Sockets: []socketMount{{Host: sock, Guest: "/run/x/s.sock"}}}); err != nil {
		t.Fatal(err)
	}
	if err := f.s.start(ctx, name, nil); err != nil {
		t.Fatalf("start: %v", err)
	}
	vm := f.fake.state(t).Machines[name].PID
	if !fakeIsVM(vm) {
		t.Fatalf("machine pid %d is not a running fake VM", vm)
	}
	nss := vmNamespaces(t, vm)
	for i, kind := range []string{"net", "user", "mnt"} {
		if own, _ := os.Readlink("/proc/self/ns/" + kind); own == nss[i] {
			t.Errorf("the VM shares the test's %s namespace", kind)
		}
	}

	for _, tc := range []struct {
		argv []string
		want string // stdout; "" only checks success
		fail bool
	}{
		{[]string{"cat", "/opt/ro/tool"}, "read me\n", false},
		{[]string{"sh", "-c", "echo x > /opt/ro/new"}, "", true},
		{[]string{"sh", "-c", "echo x > /usr/new"}, "", true},
		{[]string{"sh", "-c", "echo hi > /workspace/w && cat /workspace/w"}, "hi\n", false},
		{[]string{"ls", ro}, "", true}, // the host's tree is not there
		{[]string{"id", "-u"}, "0\n", false},
		{[]string{"pwd"}, "/workspace\n", false},
		{[]string{"sh", "-c", "test -S /run/x/s.sock && test -c /dev/net/tun && test -c /dev/null && echo ok"}, "ok\n", false},
	} {
		out, err := f.guestRun(ctx, name, tc.argv...)
		switch {
		case tc.fail && err == nil:
			t.Errorf("%q succeeded in the guest (stdout %q)", tc.argv, out)
		case !tc.fail && err != nil:
			t.Errorf("%v", err)
		case !tc.fail && tc.want != "" && out != tc.want:
			t.Errorf("%q printed %q, want %q", tc.argv, out, tc.want)
		}
	}
	// The guest root is a tmpfs in the VM's mount namespace: on the host
	// its mount point stays empty.
	if ents, err := os.ReadDir(filepath.Join(f.fake.dir, fakeSmolvmGuests, name)); err != nil || len(ents) != 0 {
		t.Errorf("the guest root shows on the host: %v, %v", ents, err)
	}
	var echo bytes.Buffer
	err = f.s.exec(ctx, name, execOpts{Interactive: true, Stdin: strings.NewReader("stdin reaches the guest\n"), Stdout: &echo}, "cat")
	if err != nil || echo.String() != "stdin reaches the guest\n" {
		t.Errorf("exec -i cat = %q, %v", echo.String(), err)
	}
	ifs, err := procInterfaces(vm)
	if err != nil || len(ifs) != 1 || ifs[0] != "lo" {
		t.Errorf("the VM's interfaces = %v, %v; want only lo", ifs, err)
	}
	sleeper, err := f.s.execDetached(ctx, name, execOpts{User: "root"}, "sleep", "600")
	if err != nil {
		t.Fatalf("exec --detach: %v", err)
	}
	if err := f.s.delete(ctx, name); err != nil {
		t.Fatalf("delete: %v", err)
	}
	checkGone(t, footprint{pids: []int{vm, sleeper}, nss: nss}, false)
	if _, err := os.Stat(fakeVMSocket(f.fake.dir, vm)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the VM's control socket is left: %v", err)
	}
}

// TestFakeVMStartFails checks that a VM that cannot boot fails start with
// the fake's message and leaves the machine created.
func TestFakeVMStartFails(t *testing.T) {
	t.Parallel()
	needFakeVM(t)
	ctx := context.Background()
	f := newFakeVMFixture(t)
	if err := f.s.create(ctx, createSpec{Name: "sb-notun", Smolfile: f.smolfile}); err != nil {
		t.Fatal(err)
	}
	f.fake.control(t, fakeControl{Tun: filepath.Join(t.TempDir(), "no-tun")})
	err := f.s.start(ctx, "sb-notun", nil)
	if err == nil || !strings.Contains(err.Error(), "fake: start machine sb-notun: the fake VM needs") {
		t.Fatalf("start without a tun device = %v", err)
	}
	if st, err := f.s.status(ctx, "sb-notun"); err != nil || st.State != "created" || st.PID != nil {
		t.Errorf("after a failed start: %+v, %v; want created without a pid", st, err)
	}
}

// buildStaticGuest puts what the guest runs in dir: a copy of gvforwarder
// and a static smolbottle (the guest has no libc of ours to rely on).
func buildStaticGuest(t *testing.T, ctx context.Context, dir, gvforwarder string) {
	t.Helper()
	b, err := os.ReadFile(gvforwarder)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "gvforwarder"), b, 0o700); err != nil {
		t.Fatal(err)
	}
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goTool); err != nil {
		if goTool, err = exec.LookPath("go"); err != nil {
			t.Fatalf("no go command to build the guest's smolbottle: %v", err)
		}
	}
	out := filepath.Join(dir, "smolbottle")
	cmd := exec.CommandContext(ctx, goTool, "build", "-o", out, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, msg)
	}
	if err := checkStaticELF(out); err != nil {
		t.Fatalf("the guest's smolbottle: %v", err)
	}
}

// TestFakeVMConfinedNetwork runs the guest side of a bottle's network for
// real: confined gvproxy on the host (startConfined), then up's machine
// steps (machineSteps) with the fake smolvm: create with gvproxy's socket
// bridged in by --mount-socket, start, gvforwarder by exec --detach; then
// smolbottle _guestnet and _probe from the read-only /opt/smolbottle
// volume. The guest reaches the relayed sidecar and nothing else; delete
// leaves no process behind.
//
// The plan's last two steps pass _guestnet "-subnet N" and _probe
// "-subnet N -ports P", which neither command accepts (guestnet.go takes
// -subnet 192.168.N.0/24, probe.go only -plan JSON); they run here with
// the flags the commands do take.
func TestFakeVMConfinedNetwork(t *testing.T) {
	gvproxy, gvforwarder := netTools(t)
	needFakeVM(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	guestBin := t.TempDir()
	buildStaticGuest(t, ctx, guestBin, gvforwarder)
	sidecarPort := startEcho(t)
	// A host loopback service that is not relayed: nothing may reach it.
	other, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	otherPort := other.Addr().(*net.TCPAddr).Port
	var reached counter
	go func() {
		for {
			c, err := other.Accept()
			if err != nil {
				return
			}
			reached.hit("tcp from %s", c.RemoteAddr())
			c.Close()
		}
	}()

	n := netFor(93)
	stage := t.TempDir()
	p := &plan{Machine: "sb-net", Stage: stage, Net: n, Sidecars: []sidecar{{Name: "sidecar", Port: sidecarPort}}}
	steps := machineSteps(p)
	if len(steps) != 5 || steps[0].sub != "create" || steps[1].sub != "start" || !steps[2].exec.Detach {
		t.Fatalf("up's machine steps changed: %+v", steps)
	}
	var gvlog lockedBuffer
	cn, err := startConfined(ctx, confineSpec{Gvproxy: gvproxy, Net: n, Stage: stage, Ports: []int{sidecarPort}, Log: &gvlog})
	if err != nil {
		t.Fatalf("startConfined: %v\n%s", err, gvlog.tail(2000))
	}
	defer cn.Close()
	// The guest gets the link front's socket, never gvproxy's API socket.
	if create := steps[0].create; len(create.Sockets) != 1 || create.Sockets[0].Host != cn.LinkPath || cn.LinkPath == cn.SocketPath {
		t.Fatalf("up bridges %+v, but the guest link front listens on %q (gvproxy on %q)", create.Sockets, cn.LinkPath, cn.SocketPath)
	}

	f := newFakeVMFixture(t, guestBin+":"+guestBinDir+":ro")
	name := p.Machine
	defer func() {
		if t.Failed() {
			t.Logf("VM log:\n%s\ngvproxy log:\n%s", f.vmLog(name), gvlog.tail(2000))
		}
	}()
	sf, err := os.ReadFile(f.smolfile)
	if err == nil {
		err = os.WriteFile(steps[0].create.Smolfile, sf, 0o600)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := f.s.create(ctx, steps[0].create); err != nil {
		t.Fatalf("create: %v", err)
	}
	if err := f.s.start(ctx, name, nil); err != nil {
		t.Fatalf("start: %v", err)
	}
	vm := f.fake.state(t).Machines[name].PID
	nss := vmNamespaces(t, vm)

	fwd, err := f.s.execDetached(ctx, name, steps[2].exec, steps[2].cmd...)
	if err != nil {
		t.Fatalf("exec --detach %q: %v", steps[2].cmd, err)
	}
	if _, err := f.guestRun(ctx, name, guestBinDir+"/smolbottle", guestNetCmd, "-iface", guestTap, "-subnet", n.Subnet.String(), "-root", "/"); err != nil {
		t.Fatalf("guest network: %v", err)
	}
	if got, err := f.guestRun(ctx, name, "cat", "/etc/resolv.conf"); err != nil || !strings.Contains(got, "nameserver "+n.Gateway.String()+"\n") {
		t.Errorf("guest resolv.conf = %q, %v", got, err)
	}

	vip := func(port int) string { return netip.AddrPortFrom(n.HostVIP, uint16(port)).String() }
	plan := probePlan{Gateway: n.Gateway.String(), Probes: []probe{
		{Name: proxyName + " resolves to the host virtual IP", Kind: probeResolve, Host: proxyName + ".", Want: n.HostVIP.String()},
		{Name: "the relayed sidecar echoes 1 MiB", Kind: probeEcho, Addr: vip(sidecarPort), Bytes: 1 << 20},
		{Name: "a host loopback port that is not relayed", Kind: probeNoTCP, Addr: vip(otherPort)},
		{Name: "the same port on the guest's own loopback", Kind: probeNoTCP, Addr: loopbackAddr(otherPort)},
		{Name: "a TEST-NET address", Kind: probeNoTCP, Addr: "198.51.100.7:80"},
		{Name: "DNS beyond proxy.internal", Kind: probeNoDNS, Host: "example.com.", Type: "A"},
	}}
	planJSON, err := json.Marshal(plan)
	if err != nil {
		t.Fatal(err)
	}
	// _probe runs as the image's user, as up's step does.
	var out, errb bytes.Buffer
	err = f.s.exec(ctx, name, execOpts{Stdout: &out, Stderr: &errb}, guestBinDir+"/smolbottle", probeCmd, "-plan", string(planJSON))
	if err != nil {
		t.Fatalf("probe: %v (stderr %q)", err, errb.String())
	}
	var results []probeResult
	if err := json.Unmarshal(out.Bytes(), &results); err != nil || len(results) != len(plan.Probes) {
		t.Fatalf("probe printed %q: %v", out.String(), err)
	}
	for _, r := range results {
		if !r.Pass {
			t.Errorf("FAIL %s: %s", r.Name, r.Detail)
			continue
		}
		t.Logf("PASS %s: %s", r.Name, r.Detail)
	}
	if hits := reached.list(); len(hits) > 0 {
		t.Errorf("the unrelayed host port was reached: %v", hits)
	}

	gone := footprint{pids: []int{vm, fwd}, nss: nss}
	if err := f.s.delete(ctx, name); err != nil {
		t.Fatalf("delete: %v", err)
	}
	checkGone(t, gone, false)
	gvNss := vmNamespaces(t, cn.GvproxyPID)
	cn.Close()
	checkGone(t, footprint{pids: []int{cn.InnerPID, cn.GvproxyPID}, nss: gvNss}, false)
}

// TestFakeVMExecCancel checks that a guest command ends with the smolvm
// exec that ran it, as smolvm's agent ends it when its client goes away.
func TestFakeVMExecCancel(t *testing.T) {
	t.Parallel()
	needFakeVM(t)
	f := newFakeVMFixture(t)
	const name = "sb-cancel"
	if err := f.s.create(context.Background(), createSpec{Name: name, Smolfile: f.smolfile}); err != nil {
		t.Fatal(err)
	}
	if err := f.s.start(context.Background(), name, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var out lockedBuffer
	err := f.s.exec(ctx, name, execOpts{Stdout: &out}, "sh", "-c", "echo $$; exec sleep 60")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("exec past its context = %v, want deadline exceeded", err)
	}
	var pid int
	if _, err := fmt.Sscanf(out.tail(100), "%d", &pid); err != nil || pid <= 0 {
		t.Fatalf("the guest printed %q, want its pid", out.tail(100))
	}
	checkGone(t, footprint{pids: []int{pid}}, false)
}

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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The fake VM is what `smolvm machine start` boots in the fake smolvm: the
// test binary run under the name "smolvm-vm", detached (its own session,
// no parent-death signal: the fake smolvm exits at once) in new network
// and mount namespaces. It needs root: its guest runs as the image's USER
// (a real uid, as virtiofs shows host uids to it) and its root makes device
// nodes, as root in smolvm's image containers does.
//
//	fake smolvm (start)  -> smolvm-vm DIR ROOT SPEC
//	                         lo up; ROOT: tmpfs with read-only binds of /usr,
//	                         /bin, /sbin, /lib*; a /dev tmpfs with null, zero,
//	                         full, random, urandom (and /dev/net/tun only with
//	                         the "tun" capability); tmpfs /etc, /tmp, /run;
//	                         the Smolfile volumes and the --mount-socket
//	                         sockets; chroot ROOT
//	fake smolvm (exec)   -> DIR/vmPID.sock: one JSON request, the caller's
//	                         stdin, stdout and stderr as SCM_RIGHTS; the
//	                         command runs in the VM as the request's user,
//	                         the exit code comes back
//
// smolvm 1.9.3's container /dev is a tmpfs without nodev holding null,
// zero, full, random, urandom, tty and kmsg
// (crates/smolvm-agent/src/oci.rs:938-1017,1034-1044 @ v1.9.3), and its
// root holds every capability, CAP_MKNOD included (oci.rs:505-515): so
// here too root can mknod /dev/net/tun and nobody else can.
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
	Tun     bool     `json:"tun"`     // bind the host's /dev/net/tun (smolvm PR #1146)
}

// fakeVMSocket is the control socket of the VM with the given pid.
func fakeVMSocket(dir string, pid int) string {
	return filepath.Join(dir, fmt.Sprintf("vm%d.sock", pid))
}

var fakeVMSupport = sync.OnceValue(func() error {
	if os.Geteuid() != 0 {
		return errors.New("the fake VM needs root: its guest runs as the image's uid and its root makes device nodes")
	}
	f, err := os.OpenFile(fakeVMTun, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	f.Close()
	cmd := exec.Command("/bin/true")
	cmd.Env, cmd.Dir = []string{}, "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET | syscall.CLONE_NEWNS}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("network and mount namespaces: %v", err)
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
func fakeVMStart(dir string, m *fakeMachine, tun bool) (int, error) {
	if err := fakeVMSupport(); err != nil {
		return 0, err
	}
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
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET | syscall.CLONE_NEWNS, Setsid: true}
	booting := time.Now()
	err = cmd.Start()
	sw.Close()
	if err != nil {
		return 0, fmt.Errorf("create the VM's network and mount namespaces: %v", err)
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
				// The VM outlives this process; init reaps it. The boot
				// time is for BenchmarkUp, which reports it apart.
				fmt.Fprintf(logf, "fake: booted in %d ns\n", time.Since(booting))
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
	// A smolvm guest has /proc (libkrun's init, or the agent, mounts it:
	// crates/smolvm-agent/src/main.rs:682-696 @ v1.9.3); Claude Code
	// refuses a working directory it cannot check without it. The fake VM
	// shares the host's pid namespace (and, in a user namespace, may not
	// mount a proc of its own), so this is the host's /proc, bound.
	if err := os.Mkdir(root+"/proc", 0o555); err != nil {
		return nil, err
	}
	if err := syscall.Mount("/proc", root+"/proc", "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
		return nil, fmt.Errorf("bind /proc: %w", err)
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

// fakeVMDevices gives the guest smolvm's container /dev: a tmpfs without
// nodev (oci.rs:1034-1044 @ v1.9.3) with the default nodes bound from the
// host (oci.rs:938-1017; tty and kmsg left out), and /dev/net/tun
// only when the smolvm binds it in (PR #1146).
func fakeVMDevices(root string, tun bool) error {
	if err := os.MkdirAll(root+"/dev", 0o755); err != nil {
		return err
	}
	if err := syscall.Mount("tmpfs", root+"/dev", "tmpfs", syscall.MS_NOSUID, "mode=755,size=65536k"); err != nil {
		return fmt.Errorf("mount the /dev tmpfs: %w", err)
	}
	nodes := []string{"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"}
	if tun {
		if err := os.Mkdir(root+"/dev/net", 0o755); err != nil {
			return err
		}
		nodes = append(nodes, fakeVMTun)
	}
	for _, d := range nodes {
		if err := os.WriteFile(root+d, nil, 0o600); err != nil {
			return err
		}
		if err := syscall.Mount(d, root+d, "", syscall.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %w", d, err)
		}
	}
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

// fakeVMUser maps an image USER (or an exec --user) to a credential: ""
// and root are root (nil: the VM's own), "UID" and "UID:GID" numeric,
// a name is looked up in the guest's /etc/passwd.
func fakeVMUser(user string) (*syscall.Credential, error) {
	if user == "" || user == "root" || user == "0" || user == "0:0" {
		return nil, nil
	}
	u, g, hasG := strings.Cut(user, ":")
	uid, err := strconv.ParseUint(u, 10, 32)
	if err != nil {
		b, _ := os.ReadFile("/etc/passwd")
		for line := range strings.Lines(string(b)) {
			f := strings.Split(strings.TrimSpace(line), ":")
			if len(f) >= 4 && f[0] == u {
				uid, _ = strconv.ParseUint(f[2], 10, 32)
				if !hasG {
					g, hasG = f[3], true
				}
				err = nil
			}
		}
		if err != nil {
			return nil, fmt.Errorf("no user %q in the guest's /etc/passwd", u)
		}
	}
	gid := uid
	if hasG {
		if gid, err = strconv.ParseUint(g, 10, 32); err != nil {
			return nil, fmt.Errorf("group %q is not numeric", g)
		}
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// fakeVMExec runs one command in the guest.
func fakeVMExec(c *net.UnixConn, req fakeVMRequest, files []*os.File) fakeVMReply {
	cred, err := fakeVMUser(req.User)
	if err != nil {
		return fakeVMReply{Code: 1, Err: fmt.Sprintf("fake: exec as %q: %v", req.User, err)}
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
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: !req.Detach, Setsid: req.Detach, Pdeathsig: syscall.SIGKILL, Credential: cred}
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
	err = cmd.Wait()
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

// fakeVMFixture is a fake smolvm, an image and a Smolfile for tests of
// the VM.
type fakeVMFixture struct {
	fake     *fakeSmolvmBin
	s        *smolvm
	image    string // a docker save archive whose User is fakeImageUser
	smolfile string
}

// fakeImageUser is the USER of the fixtures' images: not root, so that
// whatever must run as root has to ask for it.
const fakeImageUser = "1000"

// newFakeVMFixture renders a Smolfile with volumes (HOST:GUEST[:ro]) and a
// fresh workspace at /workspace, with an image whose USER is uid 1000, for
// a smolvm with exec --user.
func newFakeVMFixture(t *testing.T, volumes ...string) *fakeVMFixture {
	t.Helper()
	dir := t.TempDir()
	ws, image := filepath.Join(dir, "workspace"), filepath.Join(dir, "image.tar")
	// The image's user works in the workspace, as the host user's own
	// project directory would let an image user of the same uid.
	if err := os.Mkdir(ws, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(ws, 0o777); err != nil {
		t.Fatal(err)
	}
	writeTestImage(t, image, fakeImageUser)
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
	fake.control(t, fakeControl{Caps: []string{fakeCapExecUser}})
	parent := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	return &fakeVMFixture{fake: fake, s: fake.driver(t, parent), image: image, smolfile: path}
}

// spec is a createSpec for the fixture's image and Smolfile.
func (f *fakeVMFixture) spec(name string, sockets ...socketMount) createSpec {
	return createSpec{Name: name, Image: f.image, Smolfile: f.smolfile, Sockets: sockets}
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
	for _, kind := range []string{"net", "mnt"} {
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
	if err := f.s.create(ctx, f.spec(name, socketMount{Host: sock, Guest: "/run/x/s.sock"})); err != nil {
		t.Fatal(err)
	}
	if err := f.s.start(ctx, name); err != nil {
		t.Fatalf("start: %v", err)
	}
	vm := f.fake.state(t).Machines[name].PID
	if !fakeIsVM(vm) {
		t.Fatalf("machine pid %d is not a running fake VM", vm)
	}
	nss := vmNamespaces(t, vm)
	for i, kind := range []string{"net", "mnt"} {
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
		{[]string{"sh", "-c", "test -S /run/x/s.sock && test -c /dev/null && test ! -e /dev/net/tun && echo ok"}, "ok\n", false},
		// Root makes the tun node the container lacks, and it works.
		{[]string{"sh", "-c", "mkdir -p /dev/net && mknod /dev/net/tun c 10 200 && test -c /dev/net/tun && echo ok"}, "ok\n", false},
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
	// Without --user, exec runs as the image's USER, which cannot make
	// device nodes.
	var id bytes.Buffer
	err = f.s.exec(ctx, name, execOpts{Stdout: &id}, "sh", "-c", "id -u; mknod /tmp/t c 10 200 2>/dev/null && echo mknod; true")
	if err != nil || id.String() != fakeImageUser+"\n" {
		t.Errorf("exec as the image's user printed %q, %v; want %q", id.String(), err, fakeImageUser+"\n")
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

// TestFakeVMStartFails checks that an image that is not a docker save
// archive fails the first start with crane's reason and leaves the machine
// created.
func TestFakeVMStartFails(t *testing.T) {
	t.Parallel()
	needFakeVM(t)
	ctx := context.Background()
	f := newFakeVMFixture(t)
	writeOCIArchive(t, f.image)
	if err := f.s.create(ctx, f.spec("sb-oci")); err != nil {
		t.Fatal(err)
	}
	err := f.s.start(ctx, "sb-oci")
	if err == nil || !strings.Contains(err.Error(), "file manifest.json not found in tar") {
		t.Fatalf("start with an OCI archive = %v", err)
	}
	if st, err := f.s.status(ctx, "sb-oci"); err != nil || st.State != "created" || st.PID != nil {
		t.Errorf("after a failed start: %+v, %v; want created without a pid", st, err)
	}
}

// buildStaticGuest fills p's guest directory as up does (fillGuestDir):
// gvforwarder and a static smolbottle (the guest has no libc of ours to
// rely on). It returns the directory.
func buildStaticGuest(t *testing.T, ctx context.Context, p *plan, gvforwarder string) string {
	t.Helper()
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goTool); err != nil {
		if goTool, err = exec.LookPath("go"); err != nil {
			t.Fatalf("no go command to build the guest's smolbottle: %v", err)
		}
	}
	out := filepath.Join(t.TempDir(), "smolbottle")
	cmd := exec.CommandContext(ctx, goTool, "build", "-o", out, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, msg)
	}
	dir := filepath.Join(p.Stage, guestDir)
	if err := mkdirPrivate(dir); err != nil {
		t.Fatal(err)
	}
	p.Tools.Gvforwarder = gvforwarder
	if err := fillGuestDir(p, out); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestFakeVMConfinedNetwork runs the guest side of a bottle's network for
// real: confined gvproxy on the host (startConfined), then up's machine
// steps (upMachineSteps) with the fake smolvm, an image whose USER is uid
// 1000 and exec --user: create with the image on the argv and gvproxy's
// socket bridged in by --mount-socket, start, _guestnet -prepare as root
// (the container has no /dev/net/tun: it makes one), gvforwarder by exec
// --detach, _guestnet, and _probe as the image's user, all from the
// read-only /opt/smolbottle volume filled as up fills it. The guest
// reaches the relayed sidecar and nothing else; delete leaves no process
// behind.
func TestFakeVMConfinedNetwork(t *testing.T) {
	gvproxy, gvforwarder := netTools(t)
	needFakeVM(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

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
	p.Tools.SmolvmExecUser = true
	guestBin := buildStaticGuest(t, ctx, p, gvforwarder)
	var gvlog lockedBuffer
	cn, err := startConfined(ctx, confineSpec{Gvproxy: gvproxy, Net: n, Stage: stage, Ports: []int{sidecarPort}, Log: &gvlog})
	if err != nil {
		t.Fatalf("startConfined: %v\n%s", err, gvlog.tail(2000))
	}
	defer cn.Close()

	f := newFakeVMFixture(t, guestBin+":"+guestBinDir+":ro")
	p.Image = f.image
	steps := upMachineSteps(p)
	// The guest gets the link front's socket, never gvproxy's API socket.
	if create := steps.Create.create; len(create.Sockets) != 1 || create.Sockets[0].Host != cn.LinkPath || cn.LinkPath == cn.SocketPath {
		t.Fatalf("up bridges %+v, but the guest link front listens on %q (gvproxy on %q)", create.Sockets, cn.LinkPath, cn.SocketPath)
	}
	name := p.Machine
	defer func() {
		if t.Failed() {
			t.Logf("VM log:\n%s\ngvproxy log:\n%s", f.vmLog(name), gvlog.tail(2000))
		}
	}()
	sf, err := os.ReadFile(f.smolfile)
	if err == nil {
		err = os.WriteFile(steps.Create.create.Smolfile, sf, 0o600)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := f.s.create(ctx, steps.Create.create); err != nil {
		t.Fatalf("create: %v", err)
	}
	if err := f.s.start(ctx, name); err != nil {
		t.Fatalf("start: %v", err)
	}
	vm := f.fake.state(t).Machines[name].PID
	nss := vmNamespaces(t, vm)

	var prep bytes.Buffer
	o := steps.Prepare.exec
	o.Stdout = &prep
	if err := f.s.exec(ctx, name, o, steps.Prepare.cmd...); err != nil {
		t.Fatalf("prepare: %v", err)
	}
	if rep, err := parsePrepareReport(prep.String()); err != nil || rep != (prepareReport{UID: 0, Tun: tunCreated}) {
		t.Fatalf("prepare reported %+v, %v; want root having created the tun node", rep, err)
	}
	fwd, err := f.s.execDetached(ctx, name, steps.Forwarder.exec, steps.Forwarder.cmd...)
	if err != nil {
		t.Fatalf("exec --detach %q: %v", steps.Forwarder.cmd, err)
	}
	if err := f.s.exec(ctx, name, steps.GuestNet.exec, steps.GuestNet.cmd...); err != nil {
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
	// _probe runs as the image's user (uid 1000), as up's step does: the
	// guest binaries must be executable by it.
	var out, errb bytes.Buffer
	o = steps.Probe.exec
	o.Stdout, o.Stderr = &out, &errb
	err = f.s.exec(ctx, name, o, guestBinDir+"/smolbottle", probeCmd, "-plan", string(planJSON))
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
	if err := f.s.create(context.Background(), f.spec(name)); err != nil {
		t.Fatal(err)
	}
	if err := f.s.start(context.Background(), name); err != nil {
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

//go:build linux

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startEcho serves an echo on 127.0.0.1 for the test's lifetime.
func startEcho(t testing.TB) int { return portOf(loopbackTCP(t, echoServe)) }

// footprint is what a confined network leaves in the system while it runs.
type footprint struct {
	pids  []int    // the inner side and gvproxy
	nss   []string // gvproxy's net and user namespaces, "net:[4026...]"
	files []string // sockets and config in the stage
}

func footprintOf(t *testing.T, inner, gvproxy int, stage string, port int) footprint {
	t.Helper()
	f := footprint{pids: []int{inner, gvproxy}}
	for _, ns := range []string{"net", "user", "mnt", "pid"} {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", gvproxy, ns))
		if err != nil {
			t.Fatalf("gvproxy's %s namespace: %v", ns, err)
		}
		f.nss = append(f.nss, l)
	}
	sockDir, _, config := stagePaths(stage)
	f.files = []string{filepath.Join(sockDir, "gvproxy.sock"), config}
	for _, p := range f.files {
		if _, err := os.Lstat(p); err != nil {
			t.Fatalf("while running: %v", err)
		}
	}
	return f
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return !strings.HasPrefix(rest, "Z") && !strings.HasPrefix(rest, "X")
}

// namespaceInUse reports whether any process is in the namespace.
func namespaceInUse(ns string) bool {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		for _, kind := range []string{"net", "user", "mnt", "pid"} {
			if l, err := os.Readlink("/proc/" + e.Name() + "/ns/" + kind); err == nil && l == ns {
				return true
			}
		}
	}
	return false
}

// checkGone waits up to 5 s for every process and namespace to vanish and,
// when files is set, checks that the stage holds none of them.
func checkGone(t *testing.T, f footprint, files bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var left []string
		for _, pid := range f.pids {
			if alive(pid) {
				left = append(left, fmt.Sprintf("process %d", pid))
			}
		}
		for _, ns := range f.nss {
			if namespaceInUse(ns) {
				left = append(left, "namespace "+ns)
			}
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("left behind: %s", strings.Join(left, ", "))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if files {
		for _, p := range f.files {
			if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("left behind: %s (%v)", p, err)
			}
		}
	}
}

func TestConfinedCloseLeavesNothing(t *testing.T) {
	gvproxy, _ := netTools(t)
	port := startEcho(t)
	stage := t.TempDir()
	cn, err := startConfined(context.Background(), confineSpec{Gvproxy: gvproxy, Net: netFor(201), Stage: stage, Ports: []int{port}})
	if err != nil {
		t.Fatal(err)
	}
	f := footprintOf(t, cn.InnerPID, cn.GvproxyPID, stage, port)

	self, _ := os.Readlink("/proc/self/ns/pid")
	if f.nss[3] == self {
		t.Errorf("gvproxy shares the PID namespace of its owner")
	}

	// The jail, seen from outside: exactly the binary, the config and the
	// first component of the socket directory; read-only.
	root := fmt.Sprintf("/proc/%d/root", cn.GvproxyPID)
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sockDir, _, _ := stagePaths(stage)
	first := strings.Split(strings.TrimPrefix(sockDir, "/"), "/")[0]
	want := []string{"gvproxy", "gvproxy.yaml", first}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Errorf("jail holds %v, want %v", names, want)
	}
	for _, dir := range []string{root, filepath.Join(root, sockDir)} {
		if err := os.WriteFile(filepath.Join(dir, "x"), nil, 0o600); !errors.Is(err, syscall.EROFS) {
			t.Errorf("writing into %s: got %v, want EROFS", dir, err)
		}
	}
	// gvproxy holds only stdio and its own sockets: nothing inherited.
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", cn.GvproxyPID))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range fds {
		if fd, _ := strconv.Atoi(e.Name()); fd <= 2 {
			continue
		}
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", cn.GvproxyPID, e.Name()))
		if !strings.HasPrefix(l, "socket:") && !strings.HasPrefix(l, "anon_inode:") {
			t.Errorf("gvproxy holds fd %s -> %s", e.Name(), l)
		}
	}
	st, err := procStatusCaps(cn.GvproxyPID)
	if err != nil || !capsDropped(st) {
		t.Errorf("gvproxy capabilities: %v %v", st, err)
	}
	limits, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", cn.GvproxyPID))
	if want := fmt.Sprintf(`(?m)^Max data size +%d +%d +bytes`, gvproxyMaxData, gvproxyMaxData); err != nil || !regexp.MustCompile(want).Match(limits) {
		t.Errorf("gvproxy's limits (%v), want %q:\n%s", err, want, limits)
	}

	cn.Close()
	cn.Close() // idempotent
	checkGone(t, f, true)
}

func init() { fakes["confine-owner"] = confineOwner }

// confineOwner stands in for the supervisor: it starts a confined network,
// prints "ready INNER GVPROXY", and closes it on SIGINT or SIGTERM.
// argv: GVPROXY STAGE PORT.
func confineOwner(args []string) int {
	port, _ := strconv.Atoi(args[2])
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cn, err := startConfined(ctx, confineSpec{Gvproxy: args[0], Net: netFor(202), Stage: args[1], Ports: []int{port}, Log: os.Stderr})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("ready %d %d\n", cn.InnerPID, cn.GvproxyPID)
	<-ctx.Done()
	cn.Close()
	return 0
}

func TestConfinedOwnerSignals(t *testing.T) {
	gvproxy, _ := netTools(t)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			port := startEcho(t)
			stage := t.TempDir()
			owner := exec.Command(linkAs(t, t.TempDir(), "confine-owner"), gvproxy, stage, strconv.Itoa(port))
			owner.Env, owner.Dir, owner.Stderr = []string{}, "/", os.Stderr
			out, err := owner.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := owner.Start(); err != nil {
				t.Fatal(err)
			}
			defer owner.Process.Kill()
			line, err := bufio.NewReader(out).ReadString('\n')
			if err != nil {
				owner.Wait()
				t.Fatalf("owner did not start: %v", err)
			}
			var inner, gv int
			if _, err := fmt.Sscanf(line, "ready %d %d", &inner, &gv); err != nil {
				t.Fatalf("owner said %q", line)
			}
			f := footprintOf(t, inner, gv, stage, port)
			f.pids = append(f.pids, owner.Process.Pid)
			owner.Process.Signal(sig)
			werr := owner.Wait()
			if sig == syscall.SIGINT && werr != nil {
				t.Errorf("owner after SIGINT: %v", werr)
			}
			// After SIGKILL nothing could remove the files; the next
			// start removes the stale sockets (TestConfinedRestartAfterKill).
			checkGone(t, f, sig != syscall.SIGKILL)
		})
	}
}

func TestConfinedRestartAfterKill(t *testing.T) {
	gvproxy, _ := netTools(t)
	port := startEcho(t)
	stage := t.TempDir()
	sockDir, _, _ := stagePaths(stage)
	// What a SIGKILLed owner leaves: a dead socket file.
	for _, p := range []string{filepath.Join(sockDir, "gvproxy.sock")} {
		os.MkdirAll(filepath.Dir(p), 0o700)
		ln, err := net.Listen("unix", p)
		if err != nil {
			t.Fatal(err)
		}
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
		ln.Close()
	}
	cn, err := startConfined(context.Background(), confineSpec{Gvproxy: gvproxy, Net: netFor(203), Stage: stage, Ports: []int{port}})
	if err != nil {
		t.Fatalf("start over stale sockets: %v", err)
	}
	cn.Close()
}

// TestStartConfinedFailsClosed: each broken precondition stops the start
// with an error naming the step, and nothing keeps running.
func TestStartConfinedFailsClosed(t *testing.T) {
	gvproxy, gvforwarder := netTools(t)
	dynamic, err := exec.LookPath("ls")
	if err != nil {
		t.Fatal(err)
	}
	port := startEcho(t)
	long := "/" + strings.Repeat("x", 120)
	tests := []struct {
		name    string
		spec    func(stage string) confineSpec
		wantErr string
	}{
		{"relative gvproxy", func(s string) confineSpec {
			return confineSpec{Gvproxy: "bin/gvproxy", Stage: s, Ports: []int{port}}
		}, "not absolute"},
		{"dynamic gvproxy", func(s string) confineSpec {
			return confineSpec{Gvproxy: dynamic, Stage: s, Ports: []int{port}}
		}, "dynamically linked"},
		{"no ports", func(s string) confineSpec { return confineSpec{Gvproxy: gvproxy, Stage: s} }, "no sidecar ports"},
		{"bad port", func(s string) confineSpec { return confineSpec{Gvproxy: gvproxy, Stage: s, Ports: []int{70000}} }, "out of range"},
		{"long socket path", func(s string) confineSpec {
			return confineSpec{Gvproxy: gvproxy, Stage: long, Ports: []int{port}}
		}, "over the 103-byte limit"},
		{"jail is a file", func(s string) confineSpec {
			os.WriteFile(filepath.Join(s, "jail"), nil, 0o600)
			return confineSpec{Gvproxy: gvproxy, Stage: s, Ports: []int{port}}
		}, "prepare the stage"},
		{"gvproxy that never serves", func(s string) confineSpec {
			return confineSpec{Gvproxy: gvforwarder, Stage: s, Ports: []int{port}}
		}, "start gvproxy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stage := t.TempDir()
			spec := tt.spec(stage)
			spec.Net = netFor(204)
			cn, err := startConfined(context.Background(), spec)
			if err == nil {
				cn.Close()
				t.Fatalf("got no error, want %q", tt.wantErr)
			}
			t.Logf("error: %v", err)
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("got %q, want it to contain %q", err, tt.wantErr)
			}
			sockDir, _, _ := stagePaths(stage)
			if _, err := os.Lstat(filepath.Join(sockDir, "gvproxy.sock")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("gvproxy socket left after a failed start: %v", err)
			}
		})
	}
}

func TestParseStatus(t *testing.T) {
	if err := parseStatus("ok"); err != nil {
		t.Errorf("ok line: got %v", err)
	}
	err := parseStatus("fail build the read-only jail\tmount tmpfs on \"/s/jail\": operation not permitted")
	if err == nil || !strings.Contains(err.Error(), "confine gvproxy: build the read-only jail: mount tmpfs") {
		t.Fatalf("fail line: got %v", err)
	}
	var h hinted
	if !errors.As(err, &h) || len(h.hints) == 0 {
		t.Errorf("a permission error carries no hint: %v", err)
	}
	if err := parseStatus("garbage"); err == nil {
		t.Error("garbage status: got no error")
	}
}

func TestCapsDropped(t *testing.T) {
	zero := "0000000000000000"
	none := map[string]string{"CapInh": zero, "CapPrm": zero, "CapEff": zero, "CapBnd": zero, "CapAmb": zero, "NoNewPrivs": "1"}
	if !capsDropped(none) {
		t.Error("all zero and no_new_privs: got false")
	}
	for _, k := range []string{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs"} {
		st := cloneCaps(none)
		if k == "NoNewPrivs" {
			st[k] = "0"
		} else {
			st[k] = "0000000000000400"
		}
		if capsDropped(st) {
			t.Errorf("%s set: got true", k)
		}
		delete(st, k)
		if capsDropped(st) {
			t.Errorf("%s missing: got true", k)
		}
	}
}

func cloneCaps(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func init() { fakes["userns-denied"] = usernsDenied }

// usernsDenied runs in a user namespace of its own, forbids further user
// namespaces there (user.max_user_namespaces is per user namespace), and
// tries to start a confined network. It prints the error and the hints.
// argv: GVPROXY STAGE.
func usernsDenied(args []string) int {
	if err := os.WriteFile("/proc/sys/user/max_user_namespaces", []byte("0\n"), 0); err != nil {
		fmt.Println("setup:", err)
		return 2
	}
	cn, err := startConfined(context.Background(), confineSpec{Gvproxy: args[0], Net: netFor(205), Stage: args[1], Ports: []int{9}})
	if err == nil {
		cn.Close()
		fmt.Println("started without user namespaces")
		return 1
	}
	fmt.Println(err)
	var h hinted
	if errors.As(err, &h) {
		fmt.Println(strings.Join(h.hints, "\n"))
	}
	return 0
}

// TestConfineFailsClosedWithoutUserNamespaces: with user namespaces
// forbidden, nothing starts and the error names the step and the sysctl.
func TestConfineFailsClosedWithoutUserNamespaces(t *testing.T) {
	gvproxy, _ := netTools(t)
	stage := t.TempDir()
	cmd := exec.Command(linkAs(t, t.TempDir(), "userns-denied"), gvproxy, stage)
	cmd.Env, cmd.Dir = []string{}, "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
	}
	out, err := cmd.CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("got %v", err)
	}
	for _, want := range []string{"confine gvproxy: create the user, network, mount and PID namespaces", "user.max_user_namespaces"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output does not mention %q", want)
		}
	}
	sockDir, _, _ := stagePaths(stage)
	if entries, _ := os.ReadDir(sockDir); len(entries) != 0 {
		t.Errorf("sockets left: %v", entries)
	}
}

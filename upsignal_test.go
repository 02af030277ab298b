//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// startUpProcess runs `smolbottle up` as its own process (the static build),
// with leak, a descriptor without close-on-exec, as its fd 3, and waits
// until it is inside machine start, which the fake smolvm holds.
func startUpProcess(t *testing.T, b testBottle, f *fakeSmolvmBin, slug string, leak *os.File) *exec.Cmd {
	t.Helper()
	f.control(t, fakeControl{Hang: map[string]bool{"start": true}})
	var errb bytes.Buffer
	cmd := exec.Command(testOnlyGuestSelf, b.upArgs(slug)...)
	cmd.Args[0] = "smolbottle"
	cmd.Stderr = &errb
	// fd 7: above the fd 3 that up hands the supervisor, so that only
	// close-on-exec can keep it from every child.
	cmd.ExtraFiles = []*os.File{nil, nil, nil, nil, leak}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(60 * time.Second)
	for !madeMachine(t, f) || !startRan(t, f) {
		if time.Now().After(deadline) {
			t.Fatalf("up never reached machine start:\n%s", errb.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return cmd
}

// holders lists the processes, other than this one, with path open.
func holders(path string) []string {
	var out []string
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join("/proc", p.Name(), "fd"))
		for _, fd := range fds {
			if l, _ := os.Readlink(filepath.Join("/proc", p.Name(), "fd", fd.Name())); l == path {
				cmdline, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
				out = append(out, p.Name()+": "+string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))
			}
		}
	}
	return out
}

func leakCanary(t *testing.T) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "leak-canary"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestUpChildrenInheritNothingAndSIGHUP: a descriptor the caller of up left
// without close-on-exec reaches none of up's children (supervisor, pipelock,
// _confine, gvproxy, smolvm), and SIGHUP, a closing terminal, tears the
// bottle down as SIGINT does.
func TestUpChildrenInheritNothingAndSIGHUP(t *testing.T) {
	needFakeVM(t)
	b := newTestBottle(t, "")
	staticSmolbottle(t)
	f := useBottle(t, b)
	leak := leakCanary(t)
	up := startUpProcess(t, b, f, "hup", leak)
	got := holders(leak.Name())
	if len(got) != 1 || !bytes.HasPrefix([]byte(got[0]), []byte(strconv.Itoa(up.Process.Pid)+":")) {
		t.Errorf("the leaked descriptor is held by %q, want by up (pid %d) alone", got, up.Process.Pid)
	}
	up.Process.Signal(syscall.SIGHUP)
	exited := make(chan error, 1)
	go func() { exited <- up.Wait() }()
	select {
	case err := <-exited:
		if err == nil {
			t.Errorf("up succeeded after SIGHUP")
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("up did not return after SIGHUP")
	}
	assertTornDown(t, b, f, "hup")
}

// TestUpKilledMidway: after SIGKILL of up during machine start, ls does not
// call the bottle running, the supervisor tears itself down, and down
// removes the machine and the stage.
func TestUpKilledMidway(t *testing.T) {
	needFakeVM(t)
	b := newTestBottle(t, "")
	staticSmolbottle(t)
	f := useBottle(t, b)
	up := startUpProcess(t, b, f, "kill", leakCanary(t))
	up.Process.Kill()
	up.Wait()
	var out, errb bytes.Buffer
	if err := runCLI(context.Background(), []string{"ls", "-json"}, &out, &errb); err != nil {
		t.Fatalf("ls: %v %s", err, errb.String())
	}
	var got []bottleInfo
	json.Unmarshal(out.Bytes(), &got)
	if len(got) != 1 || got[0].State != "stale" {
		t.Errorf("ls after up was killed: %+v, want one stale bottle", got)
	}
	stage := filepath.Join(b.state, "kill")
	st, _, _ := readState(stage)
	for deadline := time.Now().Add(30 * time.Second); st.Supervisor.alive() && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if st.Supervisor.alive() {
		t.Errorf("the supervisor outlived the up that never finished")
	}
	if err := runCLI(context.Background(), []string{"down", "kill"}, &out, &errb); err != nil {
		t.Fatalf("down: %v %s", err, errb.String())
	}
	assertTornDown(t, b, f, "kill")
}

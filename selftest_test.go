//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// netTools returns bin/gvproxy and bin/gvforwarder. Without them the test
// is skipped, except in CI (env CI set), where a missing tool is a failure.
func netTools(t testing.TB) (gvproxy, gvforwarder string) {
	t.Helper()
	var paths []string
	for _, name := range []string{"gvproxy", "gvforwarder"} {
		p, err := filepath.Abs(filepath.Join("bin", name))
		if err == nil {
			_, err = os.Stat(p)
		}
		if err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("bin/%s is missing in CI: %v", name, err)
			}
			t.Skipf("bin/%s is missing: run make tools", name)
		}
		paths = append(paths, p)
	}
	return paths[0], paths[1]
}

// matrixRows maps each printed row name to PASS or FAIL.
func matrixRows(out string) map[string]string {
	rows := map[string]string{}
	for line := range strings.SplitSeq(out, "\n") {
		verdict, rest, ok := strings.Cut(line, "  ")
		if !ok || (verdict != "PASS" && verdict != "FAIL") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSpace(rest), "  ")
		rows[name] = verdict
	}
	return rows
}

func TestSelftestMatrix(t *testing.T) {
	gvproxy, gvforwarder := netTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	err := runCLI(ctx, []string{"selftest", "-gvproxy", gvproxy, "-gvforwarder", gvforwarder}, &out, &errb)
	t.Logf("matrix:\n%s", out.String())
	if err != nil {
		t.Fatalf("selftest: %v\nstderr:\n%s", err, errb.String())
	}
	if !strings.Contains(out.String(), "verdict: PASS") {
		t.Fatalf("no PASS verdict")
	}
	rows := matrixRows(out.String())
	if len(rows) < 30 {
		t.Errorf("got %d rows, want at least 30", len(rows))
	}
	for name, v := range rows {
		if v != "PASS" {
			t.Errorf("row %q: got %s", name, v)
		}
	}
}

// TestSelftestDetectsLeaks is the negative control: with stock, unconfined
// gvproxy the same probes must see the leaks the confinement prevents. A
// probe that cannot fail proves nothing.
func TestSelftestDetectsLeaks(t *testing.T) {
	if testing.Short() {
		t.Skip("about 20 s")
	}
	gvproxy, gvforwarder := netTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	err := runCLI(ctx, []string{"selftest", "-unconfined", "-gvproxy", gvproxy, "-gvforwarder", gvforwarder}, &out, &errb)
	t.Logf("matrix:\n%s", out.String())
	var es exitStatus
	if !errors.As(err, &es) || es != 1 {
		t.Fatalf("got %v, want exit status 1\nstderr:\n%s", err, errb.String())
	}
	rows := matrixRows(out.String())
	for _, name := range []string{
		"API: expose 0.0.0.0:7071 on the host",
		"API: replace a host file with a socket",
		"API: replace gvproxy's own API socket",
		"API: replace gvproxy's config in the stage",
		"other host loopback port (TCP, listening)",
		"other host loopback port (UDP, echoing)",
		"host's own address 10.98.0.1 (TCP)",
		"LAN 10.98.0.2 (TCP)",
		"LAN 10.98.0.2 (UDP)",
		"internet 203.0.113.10 (TCP)",
		"internet 203.0.113.10 (UDP)",
		"32 dials to black hole 198.51.100.77:81 do not stall the sidecar",
		"nothing reached the host's upstream resolver",
		"nothing reached a LAN, internet or host listener",
		"gvproxy holds no capability, no_new_privs set",
		"gvproxy's network namespace has only lo",
		"gvproxy is chrooted into the jail",
		"guest socket refuses GET /stats",
		"guest socket refuses GET /cam",
		"guest socket refuses GET /leases",
		"guest socket refuses GET /services/dns/all",
		"guest socket refuses POST /services/dns/add",
		"guest socket refuses GET /services/forwarder/all",
		"guest socket refuses POST /services/forwarder/expose",
		"guest socket refuses POST /tunnel",
		"guest socket refuses a second POST /connect while the link lives",
		"guest socket refuses not HTTP",
	} {
		if rows[name] != "FAIL" {
			t.Errorf("unconfined row %q: got %q, want FAIL", name, rows[name])
		}
	}
	// Stock gvproxy takes the served port to the host's listener on it.
	served := ""
	for name, v := range rows {
		if strings.HasPrefix(name, "served port ") {
			served = v
		}
	}
	if served != "FAIL" {
		t.Errorf("unconfined served-port row: got %q, want FAIL", served)
	}
}

func init() { fakes["unpriv-runner"] = unprivRunner }

// unprivRunner runs as root in a private mount namespace: it makes
// /dev/net/tun usable by everyone (as stock distributions ship it) in that
// namespace only, then runs the selftest as nobody.
// argv: DIR (holding smolbottle, gvproxy, gvforwarder).
func unprivRunner(args []string) int {
	dir := args[0]
	fail := func(err error) int {
		os.Stderr.WriteString("unpriv-runner: " + err.Error() + "\n")
		return 1
	}
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return fail(err)
	}
	tunfs := filepath.Join(dir, "tunfs")
	if err := os.Mkdir(tunfs, 0o755); err != nil {
		return fail(err)
	}
	if err := syscall.Mount("tmpfs", tunfs, "tmpfs", 0, "mode=0755"); err != nil {
		return fail(err)
	}
	tun := filepath.Join(tunfs, "tun")
	if err := syscall.Mknod(tun, syscall.S_IFCHR|0o666, 10<<8|200); err != nil {
		return fail(err)
	}
	if err := os.Chmod(tun, 0o666); err != nil {
		return fail(err)
	}
	if err := syscall.Mount(tun, "/dev/net/tun", "", syscall.MS_BIND, ""); err != nil {
		return fail(err)
	}
	cmd := exec.Command(filepath.Join(dir, "smolbottle"), "selftest",
		"-gvproxy", filepath.Join(dir, "gvproxy"), "-gvforwarder", filepath.Join(dir, "gvforwarder"))
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Dir, cmd.Stdout, cmd.Stderr = "/", os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		return fail(err)
	}
	return 0
}

// TestSelftestUnprivileged runs the whole matrix as uid 65534.
func TestSelftestUnprivileged(t *testing.T) {
	gvproxy, gvforwarder := netTools(t)
	if os.Getuid() != 0 {
		t.Skip("needs root to switch to uid 65534")
	}
	dir, err := os.MkdirTemp("", "smolbottle-unpriv-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for src, name := range map[string]string{self: "smolbottle", gvproxy: "gvproxy", gvforwarder: "gvforwarder"} {
		if err := copyFile(src, filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	runner := linkAs(t, dir, "unpriv-runner")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, runner, dir)
	var out bytes.Buffer
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = []string{}, "/", &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
	err = cmd.Run()
	t.Logf("as uid 65534:\n%s", out.String())
	if err != nil {
		t.Fatalf("unprivileged selftest: %v", err)
	}
	if !strings.Contains(out.String(), "verdict: PASS") {
		t.Fatal("no PASS verdict")
	}
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

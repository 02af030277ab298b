package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The preflight finds every program a bottle needs, once, by absolute path,
// checks that each is the one the design was measured with, and checks that
// the kernel lets us build gvproxy's confinement. It reports every missing
// piece at once, each with how to fix it. Nothing here runs at init time.

// gvisorTag is the gvisor-tap-vsock release the confinement was measured
// with; gvproxy and gvforwarder must match it.
const gvisorTag = "v0.8.9"

// probeTimeout bounds each version or help probe of a child program.
const probeTimeout = 10 * time.Second

// Install hints, one per program.
const (
	hintSmolvm   = "install smolvm from smol-machines (https://smolmachines.com/install.sh or its apt/yum/brew packages); a pip package by CelestoAI also installs a `smolvm` command: put smol-machines' first on PATH"
	hintPipelock = "install pipelock 2.3.0 (its release binary, or build it from a git archive of its v2.3.0 tag with make tools PIPELOCK_SRC=ARCHIVE: the Go module proxy refuses go install of it), or pass -egress-proxy 127.0.0.1:PORT of an HTTP proxy already running"
)

// check is one line of the preflight report.
type check struct {
	Name    string   `json:"name"`
	Path    string   `json:"path,omitempty"`
	Version string   `json:"version,omitempty"`
	OK      bool     `json:"ok"`
	Detail  []string `json:"detail,omitempty"` // what was found, or what is wrong
	Hint    string   `json:"hint,omitempty"`
	// Status, when set, replaces ok/MISSING for a capability smolbottle
	// copes without ("present", "missing", "unknown"); such a row never
	// fails the preflight.
	Status string `json:"status,omitempty"`
}

// tools holds the absolute paths the rest of smolbottle runs.
type tools struct {
	Smolvm, Gvproxy, Gvforwarder, Pipelock string
	SmolvmExecUser                         bool // smolvm machine exec --user exists
}

// paths lists the programs found, leaving out those not looked for.
func (t tools) paths() []string {
	return slices.DeleteFunc([]string{t.Smolvm, t.Gvproxy, t.Gvforwarder, t.Pipelock}, func(p string) bool { return p == "" })
}

// hostArgs returns what a command runs or reads on the host: its program
// and its absolute arguments (a script, a repository).
func hostArgs(argv []string) []string {
	var out []string
	for i, a := range argv {
		if i == 0 || filepath.IsAbs(a) {
			out = append(out, a)
		}
	}
	return out
}

// preflightEnv is what the preflight reads from the outside world; tests
// fill it in instead of changing the process environment.
type preflightEnv struct {
	Path     string // the PATH to search, after ExeDir
	ExeDir   string // directory of the smolbottle binary, searched first
	Self     string // the smolbottle binary, re-executed for the namespace check
	Guest    string // the smolbottle binary up copies into the guest; "" skips its check
	Pipelock bool   // pipelock will be launched (no -egress-proxy)
	CacheDir string // where a passing result is cached; "" for none
}

// testOnlyGuestSelf replaces the smolbottle binary copied into the guest;
// tests point it at a static build, since the test binary is not one.
var testOnlyGuestSelf string

// defaultPreflightEnv describes the running process.
func defaultPreflightEnv(pipelock bool) preflightEnv {
	self, _ := os.Executable()
	guest := self
	if testOnlyGuestSelf != "" {
		guest = testOnlyGuestSelf
	}
	return preflightEnv{Path: os.Getenv("PATH"), ExeDir: filepath.Dir(self), Self: self, Guest: guest, Pipelock: pipelock}
}

// preflight runs every check and returns the report and the tools found.
// err is non-nil when anything required is missing; it lists all of it.
//
// A passing result is cached in env.CacheDir, keyed by the identity of
// every program found (path, device, inode, size, modification time), the
// boot and the uid, so that a plan does not re-run eight child programs
// while none of them changed. Replacing a binary, rebooting or another user
// misses the cache. The key is made of facts anyone on the machine can
// learn, so it proves nothing about who wrote the file: a cached result is
// used only from a private file of ours (readPrivateFile) whose tools are
// the very paths findProgram finds now. The namespace result is advisory
// either way: up builds the jail and fails closed if the kernel refuses.
func preflight(ctx context.Context, env preflightEnv) ([]check, tools, error) {
	key := preflightKey(env)
	if c, ok := readPreflightCache(env, key); ok {
		return c.Checks, c.Tools, nil
	}
	checks, t, err := preflightFresh(ctx, env)
	if err == nil {
		writePreflightCache(env.CacheDir, key, preflightCache{Key: key, Checks: checks, Tools: t})
	}
	return checks, t, err
}

// preflightCache is the file a passing preflight leaves in the state root.
type preflightCache struct {
	Key    string  `json:"key"`
	Checks []check `json:"checks"`
	Tools  tools   `json:"tools"`
}

const preflightCacheFile = "preflight.json"

// preflightKey identifies everything a preflight result depends on.
func preflightKey(env preflightEnv) string {
	var b strings.Builder
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	fmt.Fprintf(&b, "boot=%s uid=%d pipelock=%v self=%s guest=%s %s\n", strings.TrimSpace(string(boot)), os.Getuid(), env.Pipelock, fileIdent(env.Self), env.Guest, fileIdent(env.Guest))
	for _, name := range []string{"smolvm", "gvproxy", "gvforwarder", "pipelock"} {
		p, err := findProgram(name, env)
		fmt.Fprintf(&b, "%s=%s %s\n", name, p, fileIdent(p))
		if err != nil {
			fmt.Fprintf(&b, "%s missing\n", name)
		}
	}
	sum := sha256.Sum256([]byte(b.String()))
	return hex.EncodeToString(sum[:])
}

// fileIdent names one version of a file.
func fileIdent(p string) string {
	fi, err := os.Stat(p)
	if err != nil {
		return "none"
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	if st == nil {
		return "none"
	}
	return fmt.Sprintf("%d:%d:%d:%d", st.Dev, st.Ino, fi.Size(), fi.ModTime().UnixNano())
}

// maxPreflightCache bounds the cache file read; a real one is a few KiB.
const maxPreflightCache = 64 << 10

// readPreflightCache returns the cached result for key, if env.CacheDir
// holds one that can be trusted; anything else is a miss, and the
// preflight runs again.
func readPreflightCache(env preflightEnv, key string) (preflightCache, bool) {
	var c preflightCache
	if env.CacheDir == "" {
		return c, false
	}
	b, err := readPrivateFile(filepath.Join(env.CacheDir, preflightCacheFile), "preflight cache", maxPreflightCache)
	if err != nil || json.Unmarshal(b, &c) != nil || c.Key != key {
		return preflightCache{}, false
	}
	// The tools a passing preflightFresh returns: the path findProgram
	// finds for each, and no pipelock when none is launched.
	cached := map[string]string{"smolvm": c.Tools.Smolvm, "gvproxy": c.Tools.Gvproxy, "gvforwarder": c.Tools.Gvforwarder, "pipelock": c.Tools.Pipelock}
	for name, path := range cached {
		found, err := findProgram(name, env)
		if name == "pipelock" && !env.Pipelock {
			found, err = "", nil
		}
		if err != nil || path != found {
			return preflightCache{}, false
		}
	}
	return c, true
}

// writePreflightCache records a passing result; failing to is not an error.
func writePreflightCache(dir, key string, c preflightCache) {
	if dir == "" || os.MkdirAll(dir, 0o700) != nil {
		return
	}
	if b, err := json.Marshal(c); err == nil {
		writeFileAtomic(filepath.Join(dir, preflightCacheFile), b, 0o600)
	}
}

// preflightFresh runs every check, each program's at the same time as the
// others': they are independent, and most of the time is spent waiting for
// child programs to start. The report keeps a fixed order.
func preflightFresh(ctx context.Context, env preflightEnv) ([]check, tools, error) {
	var t tools
	var smolvmChecks []check
	var gv, gf, pl, guest, ns check
	var wg sync.WaitGroup
	wg.Go(func() { smolvmChecks, t.Smolvm = checkSmolvm(ctx, env, &t) })
	wg.Go(func() { gv = checkGvisorTool(ctx, env, "gvproxy", gvisorHint("gvproxy", env)) })
	wg.Go(func() { gf = checkGvisorTool(ctx, env, "gvforwarder", gvisorHint("gvforwarder", env)) })
	if env.Pipelock {
		wg.Go(func() { pl = checkPipelock(ctx, env) })
	}
	if env.Guest != "" {
		wg.Go(func() { guest = checkGuestSelf(env.Guest) })
	}
	wg.Go(func() { ns = checkNamespaces(ctx, env.Self) })
	wg.Wait()
	t.Gvproxy, t.Gvforwarder, t.Pipelock = gv.Path, gf.Path, pl.Path
	checks := append(smolvmChecks, gv, gf)
	if env.Pipelock {
		checks = append(checks, pl)
	}
	if env.Guest != "" {
		checks = append(checks, guest)
	}
	checks = append(checks, ns)

	var bad []string
	for _, c := range checks {
		if !c.OK {
			bad = append(bad, c.Name)
		}
	}
	if len(bad) > 0 {
		var hints []string
		for _, c := range checks {
			if c.OK {
				continue
			}
			for _, d := range c.Detail {
				hints = append(hints, c.Name+": "+d)
			}
			if c.Hint != "" {
				hints = append(hints, c.Name+": "+c.Hint)
			}
		}
		return checks, t, withHint(fmt.Errorf("preflight failed: %s", strings.Join(bad, ", ")), hints...)
	}
	return checks, t, nil
}

// findProgram is the one place smolbottle finds the programs it runs,
// for every subcommand: smolbottle's own directory first, then PATH. It
// returns the absolute path of an executable regular file.
//
// Own directory first: that is where `make build tools` and `make install`
// put the pinned gvproxy and gvforwarder beside smolbottle, and whoever can
// write there can already replace smolbottle itself. PATH second: an entry
// earlier on PATH (a project's node_modules/.bin, ~/.local/bin, another
// package's gvproxy) cannot shadow the tools installed with smolbottle.
// The own directory is skipped when group or others may write to it (a
// sticky /tmp lets anyone add a file beside a binary they cannot replace)
// or when it belongs to neither the user nor root. Relative PATH entries
// are skipped, as exec.LookPath does since Go 1.19.
func findProgram(name string, env preflightEnv) (string, error) {
	for _, d := range programDirs(env) {
		p := filepath.Join(d, name)
		fi, err := os.Stat(p)
		if err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	if ownDirTrusted(env.ExeDir) {
		return "", fmt.Errorf("%s not found beside smolbottle (in %s) or on PATH", name, env.ExeDir)
	}
	return "", fmt.Errorf("%s not found on PATH", name)
}

// programDirs returns the directories findProgram searches, in order.
func programDirs(env preflightEnv) []string {
	var dirs []string
	if ownDirTrusted(env.ExeDir) {
		dirs = append(dirs, env.ExeDir)
	}
	for _, d := range filepath.SplitList(env.Path) {
		if filepath.IsAbs(d) {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// ownDirTrusted reports whether smolbottle's own directory may supply the
// programs it runs (see findProgram).
func ownDirTrusted(dir string) bool {
	if dir == "" || !filepath.IsAbs(dir) {
		return false
	}
	fi, err := os.Stat(dir)
	if err != nil || !fi.IsDir() || fi.Mode().Perm()&0o022 != 0 {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && (st.Uid == 0 || int(st.Uid) == os.Getuid())
}

// hintStaticSelf says how to get a smolbottle that can run in the guest.
const hintStaticSelf = "build it static: in the smolbottle checkout, make build (CGO_ENABLED=0), then run bin/smolbottle"

// checkGuestSelf checks that smolbottle itself can run in the guest, where
// up copies it for the guest network and the egress self-test.
func checkGuestSelf(path string) check {
	c := check{Name: "smolbottle", Path: path, Hint: hintStaticSelf}
	if err := checkStaticELF(path); err != nil {
		c.Detail = []string{"cannot run in the guest: " + err.Error()}
		return c
	}
	c.Detail = []string{"static linux/" + runtime.GOARCH + " executable (runs in the guest too)"}
	c.OK = true
	return c
}

// hintMakeTools is how a checkout gets the pinned tools where findProgram
// finds them: beside bin/smolbottle.
const hintMakeTools = "in a smolbottle checkout: make build tools, then run bin/smolbottle"

// gvisorHint says how to install gvproxy or gvforwarder, static and
// pinned, where findProgram will find it: smolbottle's own directory.
func gvisorHint(name string, env preflightEnv) string {
	dir := env.ExeDir
	if !ownDirTrusted(dir) {
		dir = "DIR" // a directory on PATH
	}
	pkg := map[string]string{"gvproxy": "gvproxy", "gvforwarder": "vm"}[name]
	cmd := "CGO_ENABLED=0 GOBIN=" + dir + " go install github.com/containers/gvisor-tap-vsock/cmd/" + pkg + "@" + gvisorTag
	if pkg != name {
		cmd += " && mv " + filepath.Join(dir, pkg) + " " + filepath.Join(dir, name)
	}
	hint := "install it beside smolbottle: " + cmd
	if dir == "DIR" {
		hint = "install it where PATH finds it (DIR on PATH): " + cmd
	}
	return hint + "; or " + hintMakeTools
}

// probeProgram runs a program with a minimal environment and a bounded time and
// returns its combined output. Probes never see our environment: a secret
// in it is not theirs to read.
func probeProgram(ctx context.Context, path string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = probeEnv()
	cmd.Dir = os.TempDir()
	cmd.WaitDelay = time.Second
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return out.String(), err
}

var (
	smolvmVersionRE = regexp.MustCompile(`(?m)^smolvm (\d+\.\d+\.\d+\S*)$`)
	gvisorVersionRE = regexp.MustCompile(`(?m)^(gvproxy|gvforwarder) version (v\S+)$`)
	pipelockVerRE   = regexp.MustCompile(`(?m)^pipelock version (\S+)`)
)

// checkSmolvm finds smolvm, checks that it is smol-machines' CLI with
// machine create --mount-socket (the gvproxy socket reaches the guest this
// way), and reports the capabilities up copes without (smolvmcaps.go):
// machine exec --user, and /dev/net/tun in image containers, which cannot
// be seen from the host.
func checkSmolvm(ctx context.Context, env preflightEnv, t *tools) ([]check, string) {
	c := check{Name: "smolvm", Hint: hintSmolvm}
	p, err := findProgram("smolvm", env)
	if err != nil {
		c.Detail = []string{err.Error()}
		return []check{c}, ""
	}
	c.Path = p
	// The four probes run at once; what they print is judged in order.
	probes := [][]string{{"machine", "--help"}, {"--version"}, {"machine", "create", "--help"}, {"machine", "exec", "--help"}}
	outs, errs := make([]string, len(probes)), make([]error, len(probes))
	var wg sync.WaitGroup
	for i, args := range probes {
		wg.Go(func() { outs[i], errs[i] = probeProgram(ctx, p, args...) })
	}
	wg.Wait()
	if errs[0] != nil || !strings.Contains(outs[0], "create") {
		c.Detail = []string{p + " has no `machine` subcommand: it is not smol-machines' smolvm"}
		return []check{c}, ""
	}
	out, err := outs[1], errs[1]
	m := smolvmVersionRE.FindStringSubmatch(out)
	if err != nil || m == nil {
		c.Detail = []string{"`smolvm --version` did not print `smolvm X.Y.Z`: " + firstLine(out, err)}
		return []check{c}, ""
	}
	c.Version = m[1]
	c.OK = true
	c.Detail = []string{"smol-machines CLI (machine subcommand present)"}
	ms := check{Name: "smolvm " + capMountSocket.Name, Path: p, OK: errs[2] == nil && helpHasFlag(outs[2], "--mount-socket"), Detail: capMountSocket.detail()}
	if !ms.OK {
		ms.Hint = "upgrade smolvm to a release whose `machine create --help` lists --mount-socket"
	}
	t.SmolvmExecUser = errs[3] == nil && helpHasFlag(outs[3], "--user")
	eu := check{Name: "smolvm " + capExecUser.Name, Path: p, OK: true, Status: "missing", Detail: capExecUser.detail()}
	if t.SmolvmExecUser {
		eu.Status = "present"
	}
	tun := check{Name: "smolvm " + capTun.Name, OK: true, Status: "unknown", Detail: capTun.detail()}
	checks := []check{c, ms, eu, tun}
	if !ms.OK {
		return checks, ""
	}
	return checks, p
}

// checkGvisorTool finds gvproxy or gvforwarder and checks its version.
// Both must be static Linux executables for this machine's architecture:
// gvproxy runs in a jail that holds no libraries, and gvforwarder inside
// whatever image the user brings.
func checkGvisorTool(ctx context.Context, env preflightEnv, name, hint string) check {
	c := check{Name: name, Hint: hint}
	p, err := findProgram(name, env)
	if err != nil {
		c.Detail = []string{err.Error()}
		return c
	}
	c.Path = p
	out, err := probeProgram(ctx, p, "-version")
	m := gvisorVersionRE.FindStringSubmatch(out)
	if err != nil || m == nil || m[1] != name {
		c.Detail = []string{"`" + name + " -version` did not print `" + name + " version vX.Y.Z`: " + firstLine(out, err)}
		return c
	}
	c.Version = m[2]
	if c.Version != gvisorTag {
		c.Detail = []string{"version " + c.Version + ", want " + gvisorTag + " (the release the confinement was measured with)"}
		c.Path = ""
		return c
	}
	if err := checkStaticELF(p); err != nil {
		c.Detail = []string{err.Error()}
		c.Path = ""
		return c
	}
	c.Detail = []string{"static linux/" + runtime.GOARCH + " executable"}
	c.OK = true
	return c
}

// checkStaticELF refuses a binary that needs a dynamic loader or is built
// for another architecture: gvproxy runs in a jail with no libraries,
// gvforwarder and smolbottle inside whatever image the user brings.
func checkStaticELF(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s is not an ELF executable: %v", path, err)
	}
	defer f.Close()
	want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[runtime.GOARCH]
	if f.Machine != want {
		return fmt.Errorf("%s is built for %v, this machine is %s", path, f.Machine, runtime.GOARCH)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; rebuild it static, with CGO_ENABLED=0", path)
		}
	}
	return nil
}

// checkPipelock finds pipelock and reads its version, which it prints on
// stderr (internal/cli/version.go:21-24 @ v2.3.0: cobra's cmd.Printf writes
// to OutOrStderr); probeProgram reads stdout and stderr together.
func checkPipelock(ctx context.Context, env preflightEnv) check {
	c := check{Name: "pipelock", Hint: hintPipelock}
	p, err := findProgram("pipelock", env)
	if err != nil {
		c.Detail = []string{err.Error()}
		return c
	}
	c.Path = p
	out, err := probeProgram(ctx, p, "version")
	m := pipelockVerRE.FindStringSubmatch(out)
	if err != nil || m == nil {
		c.Detail = []string{"`pipelock version` did not print `pipelock version X`: " + firstLine(out, err)}
		c.Path = ""
		return c
	}
	c.Version = m[1]
	c.OK = true
	return c
}

// checkNamespaces creates the namespaces of gvproxy's jail
// (confineCloneflags), by re-executing smolbottle into them.
func checkNamespaces(ctx context.Context, self string) check {
	c := check{Name: "namespaces", Detail: []string{"user + network + mount + PID namespaces"}}
	if runtime.GOOS != "linux" {
		c.Detail = []string{"no Linux namespaces on " + runtime.GOOS + "; off Linux there is no confinement"}
		c.Hint = "run smolbottle on Linux"
		return c
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, self, nsCheckCmd)
	cmd.Args[0] = "smolbottle"
	cmd.Env = []string{}
	cmd.Dir = "/"
	cmd.SysProcAttr = nsAttr()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		c.Detail = []string{"cannot create them: " + firstLine(out.String(), err)}
		c.Hint = strings.Join(namespaceHints(procSys), "; ")
		return c
	}
	c.OK = true
	return c
}

// procSys is where the kernel's namespace settings are read.
const procSys = "/proc/sys"

// namespaceHints reads the sysctls that forbid unprivileged user namespaces
// and says which one to change. dir is /proc/sys (a test passes a fake
// tree).
func namespaceHints(dir string) []string {
	is := func(name, v string) bool {
		b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(name)))
		return err == nil && strings.TrimSpace(string(b)) == v
	}
	var hints []string
	if is("kernel/unprivileged_userns_clone", "0") {
		hints = append(hints, "unprivileged user namespaces are off: sysctl -w kernel.unprivileged_userns_clone=1")
	}
	if is("user/max_user_namespaces", "0") {
		hints = append(hints, "user namespaces are limited to 0: sysctl -w user.max_user_namespaces=15000")
	}
	if is("kernel/apparmor_restrict_unprivileged_userns", "1") {
		hints = append(hints, "AppArmor restricts unprivileged user namespaces: add an AppArmor profile for smolbottle with \"userns,\" or sysctl -w kernel.apparmor_restrict_unprivileged_userns=0")
	}
	if len(hints) == 0 {
		hints = append(hints, "gvproxy runs only confined; it needs user, network, mount and PID namespaces (a container may forbid them: allow unshare/clone or run smolbottle on the host)")
	}
	return hints
}

// nsCheckCmd is the hidden subcommand the namespace check re-executes.
const nsCheckCmd = "_nscheck"

// runNSCheck runs inside the new namespaces: it succeeds when it is the
// init of a new PID namespace and the network namespace is empty, which is
// what confinement relies on.
func runNSCheck() error {
	if pid := os.Getpid(); pid != 1 {
		return fmt.Errorf("not in a new PID namespace: pid %d, want 1", pid)
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return err
	}
	for _, i := range ifs {
		if i.Name != "lo" {
			return fmt.Errorf("new network namespace has interface %q", i.Name)
		}
	}
	return nil
}

// writeChecks prints the preflight report, one program per block.
func writeChecks(w io.Writer, checks []check) {
	for _, c := range checks {
		status := "ok"
		switch {
		case c.Status != "":
			status = c.Status
		case !c.OK:
			status = "MISSING"
		}
		fmt.Fprintf(w, "%-8s %s\n", status, c.Name)
		if c.Path != "" {
			fmt.Fprintf(w, "         path     %s\n", c.Path)
		}
		if c.Version != "" {
			fmt.Fprintf(w, "         version  %s\n", c.Version)
		}
		for _, d := range c.Detail {
			fmt.Fprintf(w, "         %s\n", d)
		}
		if !c.OK && c.Hint != "" {
			fmt.Fprintf(w, "         fix: %s\n", c.Hint)
		}
	}
}

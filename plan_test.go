package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// realTool returns bin/NAME from `make tools`. Without it the test is
// skipped locally and fails in CI, where make test installs it first.
func realTool(t testing.TB, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("bin", name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		how := "make tools"
		if name == "pipelock" {
			how = "make tools PIPELOCK_SRC=pipelock-v2.3.0.tar.gz (a git archive of its v2.3.0 tag), or copy pipelock 2.3.0's release binary there"
		}
		if os.Getenv("CI") != "" {
			t.Fatalf("%s missing in CI: run %s before the tests", p, how)
		}
		t.Skipf("%s missing: run %s", p, how)
	}
	return p
}

// testBottle is a directory tree for one plan: a PATH holding the fake
// smolvm and the real gvproxy, gvforwarder and pipelock, an image archive, a workspace and a
// state root.
type testBottle struct {
	dir, path, image, workspace, state string
}

func newTestBottle(t testing.TB, smolvmMode string) testBottle {
	t.Helper()
	return makeTestBottle(t, smolvmMode, true)
}

// newBoundaryBottle is a test bottle without gvproxy and gvforwarder, for
// bad input refused before the preflight: it runs on a plain go test,
// without make tools.
func newBoundaryBottle(t testing.TB) testBottle {
	t.Helper()
	return makeTestBottle(t, "", false)
}

func makeTestBottle(t testing.TB, smolvmMode string, gvisor bool) testBottle {
	t.Helper()
	// Short paths: the stage's socket paths must fit in sun_path.
	dir, err := os.MkdirTemp("", "sbt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	b := testBottle{dir: dir, path: filepath.Join(dir, "bin"), image: filepath.Join(dir, "img.tar"),
		workspace: filepath.Join(dir, "ws"), state: filepath.Join(dir, "st")}
	for _, d := range []string{b.path, b.workspace} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	linkAs(t, b.path, "smolvm")
	if !gvisor {
		// Bad input is refused before the preflight: the fake pipelock
		// only fills the PATH.
		linkAs(t, b.path, "pipelock")
	}
	for _, name := range []string{"gvproxy", "gvforwarder", "pipelock"} {
		if !gvisor {
			break
		}
		if err := os.Symlink(realTool(t, name), filepath.Join(b.path, name)); err != nil {
			t.Fatal(err)
		}
	}
	if smolvmMode != "" {
		if err := os.WriteFile(filepath.Join(b.path, "fake-smolvm.mode"), []byte(smolvmMode), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The smolvm people can install (1.9.3) needs an image whose USER is
	// root; tests of a non-root image rewrite it (writeTestImage).
	writeTestImage(t, b.image, "")
	return b
}

// env returns the planEnv of the bottle, with extra environment values.
func (b testBottle) env(t testing.TB, extra ...string) planEnv {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{"SMOLBOTTLE_STATE": b.state, "HOME": b.dir}
	for i := 0; i+1 < len(extra); i += 2 {
		vars[extra[i]] = extra[i+1]
	}
	return planEnv{
		Getenv:    func(k string) string { return vars[k] },
		Preflight: preflightEnv{Path: b.path, Self: self},
	}
}

func (b testBottle) opts(slug string) planOptions {
	return planOptions{Slug: slug, Image: b.image, Workspace: b.workspace, CPUs: defaultCPUs,
		MemMiB: defaultMemMiB, Backend: defaultBackend}
}

func TestPlanWritesPrivateStage(t *testing.T) {
	b := newTestBottle(t, "")
	opts := b.opts("demo")
	opts.GitGate, opts.Supervise = true, true
	opts.GitGateCmd, opts.SuperviseCmd = "/bin/true {port}", "/bin/true {port}"
	opts.Allow = []string{"api.anthropic.com", "*.NPMJS.org", "api.anthropic.com"}
	p, err := resolvePlan(context.Background(), opts, b.env(t, "ANTHROPIC_API_KEY", "sk-ant-SECRET-VALUE"))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.writeStage(); err != nil {
		t.Fatal(err)
	}
	if got, want := p.Stage, filepath.Join(b.state, "demo"); got != want {
		t.Errorf("stage = %q, want %q", got, want)
	}
	if got, want := p.Allow, []string{"api.anthropic.com", "*.npmjs.org"}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("allow = %q, want %q", got, want)
	}
	if got := len(p.Sidecars); got != 4 {
		t.Fatalf("%d sidecars, want pipelock, credentials, git-gate, supervise", got)
	}
	seen := map[int]bool{p.MetricsPort: true}
	for _, s := range p.Sidecars {
		if seen[s.Port] || s.Port == 0 {
			t.Errorf("sidecar %s port %d reused or zero", s.Name, s.Port)
		}
		seen[s.Port] = true
	}
	wantFiles := map[string]os.FileMode{
		"": 0o700, sockDir: 0o700, linkDir: 0o700, guestDir: 0o700, logsDir: 0o700,
		smolfileName: 0o600, gvproxyFile: 0o600, pipelockFile: 0o600, planFile: 0o600,
	}
	err = filepath.WalkDir(p.Stage, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(p.Stage, path)
		if rel == "." {
			rel = ""
		}
		want, ok := wantFiles[rel]
		if !ok {
			t.Errorf("unexpected %q in the stage", rel)
			return nil
		}
		delete(wantFiles, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%q mode %v, want %v", rel, got, want)
		}
		if !d.IsDir() {
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if bytes.Contains(data, []byte("SECRET-VALUE")) {
				t.Errorf("%q holds the secret value", rel)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for rel := range wantFiles {
		t.Errorf("%q missing from the stage", rel)
	}
	smol, _ := os.ReadFile(filepath.Join(p.Stage, smolfileName))
	if len(p.Credentials) != 1 || !bytes.Contains(smol, []byte(`"ANTHROPIC_API_KEY=`+p.Credentials[0].Placeholder+`"`)) {
		t.Errorf("Smolfile lacks the placeholder:\n%s", smol)
	}
	if bytes.Contains(smol, []byte("[secrets]")) || bytes.Contains(smol, []byte("from_env")) {
		t.Errorf("Smolfile carries secrets:\n%s", smol)
	}
	if bytes.Contains(smol, []byte("CLAUDE_CODE_OAUTH_TOKEN")) {
		t.Errorf("Smolfile references CLAUDE_CODE_OAUTH_TOKEN, which the host does not set")
	}
	var back plan
	data, _ := os.ReadFile(filepath.Join(p.Stage, planFile))
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatalf("plan.json: %v", err)
	}
	if back.Slug != "demo" || back.Net != p.Net || len(back.Commands) != len(p.Commands) {
		t.Errorf("plan.json does not round-trip: %+v", back)
	}
	// Planning again over our own stage is allowed and gives the same subnet.
	p2, err := resolvePlan(context.Background(), opts, b.env(t))
	if err != nil {
		t.Fatalf("second plan over the same stage: %v", err)
	}
	if p2.Net != p.Net {
		t.Errorf("second plan subnet %v, want %v", p2.Net, p.Net)
	}
}

// TestPlanBadInput runs each bad input through the CLI and checks the
// error line, the exit status and that nothing was written.
func TestPlanBadInput(t *testing.T) {
	b := newBoundaryBottle(t)
	notOurs := filepath.Join(b.dir, "notours")
	os.MkdirAll(filepath.Join(notOurs, "x"), 0o700)
	live := filepath.Join(b.dir, "live")
	stale := filepath.Join(b.dir, "stale")
	writeState(t, live, bottleState{Slug: "other", Supervisor: selfIdent(t)})
	writeState(t, stale, bottleState{Slug: "gone", Supervisor: procIdent{PID: 1 << 22, Start: 1}})
	file := filepath.Join(b.dir, "file.txt")
	os.WriteFile(file, nil, 0o600)
	long := "/tmp/" + strings.Repeat("d", 90)
	rootLink := filepath.Join(b.dir, "rootfs")
	os.Symlink("/", rootLink)
	tarDir := filepath.Join(b.dir, "agent.tar")
	os.MkdirAll(filepath.Join(tarDir, "bin"), 0o700)
	fifo := filepath.Join(b.dir, "fifo.tar")
	syscall.Mkfifo(fifo, 0o600)

	tests := []struct {
		name   string
		mutate func(*planOptions)
		want   string
		code   int
	}{
		{"slug uppercase", func(o *planOptions) { o.Slug = "Demo" }, `slug "Demo" may hold only lowercase`, 2},
		{"slug double dash", func(o *planOptions) { o.Slug = "a--b" }, `smolvm refuses machine name "smolbottle-a--b"`, 2},
		{"slug trailing dash", func(o *planOptions) { o.Slug = "ab-" }, `no trailing '-'`, 2},
		{"slug too long", func(o *planOptions) { o.Slug = strings.Repeat("a", 33) }, "longer than 32", 2},
		{"slug newline", func(o *planOptions) { o.Slug = "a\nb" }, "control character", 2},
		{"slug soft hyphen", func(o *planOptions) { o.Slug = "a\u00adb" }, `slug "a\u00adb" contains an invisible formatting character U+00AD`, 2},
		{"empty slug", func(o *planOptions) { o.Slug = "" }, "empty slug", 2},
		{"registry image", func(o *planOptions) { o.Image = "node:22" }, `image "node:22" is a registry reference`, 1},
		{"registry image path", func(o *planOptions) { o.Image = "ghcr.io/acme/agent" }, "registry reference", 1},
		{"no image", func(o *planOptions) { o.Image = "" }, "no -image given", 1},
		{"missing image", func(o *planOptions) { o.Image = filepath.Join(b.dir, "none.tar") }, "does not exist", 1},
		{"image not an archive", func(o *planOptions) { o.Image = file }, "neither a .tar", 1},
		{"image named as an archive is a directory", func(o *planOptions) { o.Image = tarDir }, "named as an archive but is a directory", 1},
		{"image FIFO", func(o *planOptions) { o.Image = fifo }, "neither a .tar", 1},
		{"image NUL", func(o *planOptions) { o.Image = "a\x00b.tar" }, "control character", 1},
		{"image colon", func(o *planOptions) { o.Image = "/tmp/a:b.tar" }, "smolvm would misread", 1},
		{"missing workspace", func(o *planOptions) { o.Workspace = filepath.Join(b.dir, "nope") }, "does not exist", 1},
		{"workspace is a file", func(o *planOptions) { o.Workspace = file }, "not a directory", 1},
		{"workspace /etc", func(o *planOptions) { o.Workspace = "/etc" }, "smolvm refuses to mount", 1},
		{"workspace newline", func(o *planOptions) { o.Workspace = "/tmp/a\nb" }, "control character", 1},
		{"workspace NEL", func(o *planOptions) { o.Workspace = "/tmp/a\u0085b" }, "control character", 1},
		{"workspace bidi override", func(o *planOptions) { o.Workspace = "/tmp/a\u202Eb" }, `workspace "/tmp/a\u202eb" contains an invisible formatting character U+202E`, 1},
		{"image zero-width space", func(o *planOptions) { o.Image = "/tmp/a\u200Bb.tar" }, "invisible formatting character U+200B", 1},
		{"image CSI", func(o *planOptions) { o.Image = "/tmp/a\u009b2Jb.tar" }, "control character", 1},
		{"allow url", func(o *planOptions) { o.Allow = []string{"https://api.anthropic.com/"} }, "not a host name or *.domain", 2},
		{"allow ip", func(o *planOptions) { o.Allow = []string{"10.0.0.1"} }, "looks like an IP address", 2},
		{"allow port", func(o *planOptions) { o.Allow = []string{"example.com:443"} }, "not a host name", 2},
		{"allow bare wildcard", func(o *planOptions) { o.Allow = []string{"*"} }, "not a host name", 2},
		{"allow newline", func(o *planOptions) { o.Allow = []string{"a.com\nmode: audit"} }, "control character", 2},
		{"allow bidi isolate", func(o *planOptions) { o.Allow = []string{"moc.\u2066a.example"} }, "invisible formatting character U+2066", 2},
		{"allow single label", func(o *planOptions) { o.Allow = []string{"localhost"} }, "two labels", 2},
		// pipelock refuses strict mode with an empty api_allowlist
		// (internal/config/validate.go:250-252 @ v2.3.0).
		{"allow empty", func(o *planOptions) { o.Allow = []string{""} }, "the egress allow-list cannot be empty (pipelock's strict mode refuses it)", 2},
		{"allow empty among others", func(o *planOptions) { o.Allow = []string{"a.example", ""} }, "empty -allow", 2},
		{"unknown backend", func(o *planOptions) { o.Backend = "docker" }, `unknown backend "docker" (known: smolmachines)`, 2},
		{"cpus zero", func(o *planOptions) { o.CPUs = 0 }, "-cpus 0 is outside", 2},
		{"mem tiny", func(o *planOptions) { o.MemMiB = 16 }, "-mem 16 MiB is outside", 2},
		{"egress proxy off loopback", func(o *planOptions) { o.EgressProxy = "10.0.0.1:3128" }, "must be on 127.0.0.1", 2},
		{"egress proxy no port", func(o *planOptions) { o.EgressProxy = "127.0.0.1" }, "not HOST:PORT", 2},
		{"stage too long", func(o *planOptions) { o.Stage = long }, "too long for a unix socket", 1},
		{"stage is a file", func(o *planOptions) { o.Stage = file }, `stage "` + file + `" is not a directory`, 1},
		{"git-gate without its command", func(o *planOptions) { o.GitGate = true }, "-git-gate needs -git-gate-cmd", 2},
		{"empty image directory", func(o *planOptions) { o.Image = b.workspace }, "not a root filesystem", 1},
		// smolvm shares a directory image whole with the guest (validate.go).
		{"image /", func(o *planOptions) { o.Image = "/" }, `image "/" is /, which smolbottle refuses as a volume source`, 1},
		{"image /usr", func(o *planOptions) { o.Image = "/usr" }, `image "/usr" is /usr`, 1},
		{"image /tmp", func(o *planOptions) { o.Image = "/tmp" }, `image "/tmp" is a system directory`, 1},
		{"image symlink to /", func(o *planOptions) { o.Image = rootLink }, `image "/" is /`, 1},
		{"stage live", func(o *planOptions) { o.Stage = live }, "already holds a live bottle", 1},
		{"stage stale", func(o *planOptions) { o.Stage = stale }, "holds a stale bottle", 1},
		{"stage not ours", func(o *planOptions) { o.Stage = notOurs }, "was not made by smolbottle", 1},
		{"stage inside workspace", func(o *planOptions) { o.Stage = filepath.Join(b.workspace, "st") }, "overlap", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := b.opts("demo")
			tt.mutate(&opts)
			_, err := resolvePlan(context.Background(), opts, b.env(t))
			if err == nil {
				t.Fatalf("resolvePlan succeeded, want error %q", tt.want)
			}
			var stderr bytes.Buffer
			code := exitCode(&stderr, err)
			if !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("stderr = %q, want it to contain %q", stderr.String(), tt.want)
			}
			if !strings.HasPrefix(stderr.String(), "smolbottle: error: ") {
				t.Errorf("stderr = %q, want a smolbottle: error: line", stderr.String())
			}
			if code != tt.code {
				t.Errorf("exit status %d, want %d", code, tt.code)
			}
			if _, err := os.Stat(b.state); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("state root %q was created by a failed plan", b.state)
			}
		})
	}
}

// TestStateRoot: the state root holds the preflight cache and the stage
// pointers, so a relative or control-character value never becomes one: a
// bad SMOLBOTTLE_STATE is refused, a relative XDG_STATE_HOME ignored.
func TestStateRoot(t *testing.T) {
	tests := []struct {
		name, state, xdg, home string // HOME is /home/u when home is empty
		want                   string // the root, or the error it is refused with
		fails                  bool
	}{
		{"default", "", "", "", "/home/u/.local/state/smolbottle", false},
		{"SMOLBOTTLE_STATE", "/srv/sb", "/x", "", "/srv/sb", false},
		{"XDG_STATE_HOME", "", "/x", "", "/x/smolbottle", false},
		{"SMOLBOTTLE_STATE relative", "rel/sb", "", "", `SMOLBOTTLE_STATE "rel/sb" is not an absolute path`, true},
		{"SMOLBOTTLE_STATE dot", ".", "", "", "is not an absolute path", true},
		{"SMOLBOTTLE_STATE newline", "/srv/a\nb", "", "", "control character", true},
		{"XDG_STATE_HOME relative is ignored", "", "rel", "", "/home/u/.local/state/smolbottle", false},
		{"XDG_STATE_HOME newline", "", "/x\x1b", "", "control character", true},
		{"HOME relative", "", "", ".", `HOME "." is not an absolute path`, true},
		{"HOME relative, XDG_STATE_HOME relative", "", "rel", "u", `HOME "u" is not an absolute path`, true},
		{"HOME newline", "", "", "/home/u\nx", "control character", true},
		{"HOME BOM", "", "", "/home/u\ufeff", "invisible formatting character U+FEFF", true},
		{"HOME relative, SMOLBOTTLE_STATE set", "/srv/sb", "", ".", "/srv/sb", false},
		{"HOME relative, XDG_STATE_HOME set", "", "/x", ".", "/x/smolbottle", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			home := tt.home
			if home == "" {
				home = "/home/u"
			}
			env := map[string]string{"SMOLBOTTLE_STATE": tt.state, "XDG_STATE_HOME": tt.xdg, "HOME": home}
			root, err := stateRoot(func(k string) string { return env[k] })
			switch {
			case tt.fails && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("stateRoot = %q, %v; want refused with %q", root, err, tt.want)
			case !tt.fails && (err != nil || root != tt.want):
				t.Errorf("stateRoot = %q, %v; want %q", root, err, tt.want)
			}
		})
	}
	// A plan in an explicit stage under a relative SMOLBOTTLE_STATE caches
	// no preflight result relative to the working directory.
	b := newTestBottle(t, "")
	opts := b.opts("rel")
	opts.Stage = filepath.Join(b.dir, "stage")
	t.Chdir(b.dir)
	if _, err := resolvePlan(context.Background(), opts, b.env(t, "SMOLBOTTLE_STATE", "relstate")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(b.dir, "relstate")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a relative SMOLBOTTLE_STATE became a state root: %v", err)
	}
}

// TestPlanGuestReach checks that the guest can reach nothing the host
// trusts: neither the workspace, which it writes, nor a directory image,
// which it is given whole, may hold the state root, a stage, smolbottle,
// its directory or a program run on the host (a directory image not the
// home directory either), and a stage may not lie in another bottle's
// workspace.
func TestPlanGuestReach(t *testing.T) {
	rootfs := func(t *testing.T, dir string) string {
		if err := os.MkdirAll(filepath.Join(dir, "etc"), 0o700); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	// fakeBottle records a bottle of slug staged in stage, its workspace ws,
	// as plan does: its plan.json, and a pointer when the stage is not the
	// default one.
	fakeBottle := func(t *testing.T, root, slug, stage, ws string) {
		for _, d := range []string{root, stage} {
			if err := os.MkdirAll(d, 0o700); err != nil {
				t.Fatal(err)
			}
		}
		data, _ := json.Marshal(plan{Slug: slug, Stage: stage, Workspace: ws})
		if err := writeFileAtomic(filepath.Join(stage, planFile), data, 0o600); err != nil {
			t.Fatal(err)
		}
		if stage != filepath.Join(root, slug) {
			if err := writeFileAtomic(stageLinkPath(root, slug), []byte(stage+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name  string
		setup func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string)
		want  string
	}{
		{"workspace holds the state root", func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string) {
			vars["SMOLBOTTLE_STATE"] = filepath.Join(b.workspace, "state")
			o.Stage = filepath.Join(b.dir, "stage")
		}, `workspace "$TMP/ws" holds the state root "$TMP/ws/state", which the guest must not reach: the guest writes the workspace`},
		{"workspace inside the state root", func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string) {
			vars["SMOLBOTTLE_STATE"] = b.dir
			o.Stage = filepath.Join(b.dir, "stage")
		}, `workspace "$TMP/ws" is inside the state root "$TMP"`},
		{"workspace holds smolbottle's directory", func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string) {
			env.Preflight.ExeDir = filepath.Join(b.workspace, "bin")
			os.Mkdir(env.Preflight.ExeDir, 0o700)
		}, `workspace "$TMP/ws" holds smolbottle's directory "$TMP/ws/bin"`},
		{"workspace holds smolbottle", func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string) {
			env.Preflight.Self = linkAs(t, b.workspace, "smolbottle")
		}, `workspace "$TMP/ws" holds smolbottle "$TMP/ws/smolbottle"`},
		{"workspace holds a tool's file", func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string) {
			os.WriteFile(filepath.Join(b.workspace, "gvproxy"), []byte("#!/bin/sh\n"), 0o700)
			os.Remove(filepath.Join(b.path, "gvproxy"))
			os.Symlink(filepath.Join(b.workspace, "gvproxy"), filepath.Join(b.path, "gvproxy"))
		}, `workspace "$TMP/ws" holds gvproxy "$TMP/bin/gvproxy" (it resolves to "$TMP/ws/gvproxy")`},
		{"workspace holds a tool", func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string) {
			tools := filepath.Join(b.workspace, "tools")
			os.Mkdir(tools, 0o700)
			os.Symlink(realTool(t, "gvproxy"), filepath.Join(tools, "gvproxy"))
			env.Preflight.Path = tools + ":" + b.path
		}, `workspace "$TMP/ws" holds the PATH directory "$TMP/ws/tools"`},
		{"a tool's symlink in the workspace", func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string) {
			os.Symlink(realTool(t, "pipelock"), filepath.Join(b.workspace, "pl"))
			os.Remove(filepath.Join(b.path, "pipelock"))
			os.Symlink(filepath.Join(b.workspace, "pl"), filepath.Join(b.path, "pipelock"))
		}, `workspace "$TMP/ws" holds pipelock "$TMP/bin/pipelock" (its resolution looks up "$TMP/ws/pl")`},
		{"a link in the workspace before a '..'", func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string) {
			// $TMP/bin/pipelock -> $TMP/ws/deep/../../out/pipelock, deep -> $TMP/a/b:
			// the kernel follows deep before the '..', so the guest can
			// repoint it; a lexical walk would skip it.
			os.MkdirAll(filepath.Join(b.dir, "a", "b"), 0o700)
			os.MkdirAll(filepath.Join(b.dir, "out"), 0o700)
			os.Symlink(filepath.Join(b.dir, "a", "b"), filepath.Join(b.workspace, "deep"))
			os.Symlink(realTool(t, "pipelock"), filepath.Join(b.dir, "out", "pipelock"))
			os.Remove(filepath.Join(b.path, "pipelock"))
			os.Symlink(b.workspace+"/deep/../../out/pipelock", filepath.Join(b.path, "pipelock"))
		}, `workspace "$TMP/ws" holds pipelock "$TMP/bin/pipelock" (its resolution looks up "$TMP/ws/deep")`},
		{"a dangling link on PATH into the workspace", func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string) {
			// findProgram skips it today; once the guest creates its
			// target, it is the smolvm found first.
			lb := filepath.Join(b.dir, "lb")
			os.Mkdir(lb, 0o700)
			os.Symlink(filepath.Join(b.workspace, "out", "smolvm"), filepath.Join(lb, "smolvm"))
			env.Preflight.Path = lb + ":" + b.path
		}, `workspace "$TMP/ws" holds smolvm "$TMP/lb/smolvm" (its resolution looks up "$TMP/ws/out")`},
		{"workspace holds a PATH directory", func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string) {
			venv := filepath.Join(b.workspace, ".venv", "bin")
			os.MkdirAll(venv, 0o700)
			// What an earlier guest planted there, found first on PATH.
			os.WriteFile(filepath.Join(venv, "smolvm"), []byte("#!/bin/sh\ntouch "+filepath.Join(b.dir, "ran")+"\n"), 0o700)
			env.Preflight.Path = venv + ":" + b.path
		}, `workspace "$TMP/ws" holds the PATH directory "$TMP/ws/.venv/bin"`},
		{"workspace holds a sidecar's argument", func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string) {
			o.Supervise, o.SuperviseCmd = true, "/bin/true "+filepath.Join(b.workspace, "sup.py")+" {port}"
		}, `workspace "$TMP/ws" holds -supervise-cmd's argument "$TMP/ws/sup.py"`},
		{"workspace holds a default stage that is a symlink", func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string) {
			data := filepath.Join(b.dir, "data")
			fakeBottle(t, b.state, "a", filepath.Join(data, "a"), filepath.Join(b.dir, "otherws"))
			os.Remove(stageLinkPath(b.state, "a"))
			os.Symlink(filepath.Join(data, "a"), filepath.Join(b.state, "a"))
			o.Workspace = data
		}, `workspace "$TMP/data" holds bottle "a"'s stage "$TMP/data/a"`},
		{"workspace holds a sidecar's program", func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string) {
			o.GitGate, o.GitGateCmd = true, filepath.Join(b.workspace, "gate")+" {port}"
		}, `workspace "$TMP/ws" holds -git-gate-cmd's program "$TMP/ws/gate"`},
		{"workspace holds another bottle's stage", func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string) {
			fakeBottle(t, b.state, "other", filepath.Join(b.workspace, "other"), filepath.Join(b.dir, "otherws"))
		}, `workspace "$TMP/ws" holds bottle "other"'s stage "$TMP/ws/other", which the guest must not reach: the guest writes the workspace
smolbottle: hint: pass -workspace DIR: a project directory that holds none of smolbottle's files
smolbottle: hint: or remove that bottle first: smolbottle down -stage $TMP/ws/other other`},
		{"stage inside another bottle's workspace", func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string) {
			fakeBottle(t, b.state, "other", filepath.Join(b.state, "other"), filepath.Join(b.dir, "otherws"))
			o.Stage = filepath.Join(b.dir, "otherws", "stage")
		}, `bottle "other"'s workspace "$TMP/otherws" holds this bottle's stage "$TMP/otherws/stage"`},
		{"another bottle's workspace holds a PATH directory", func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string) {
			fakeBottle(t, b.state, "other", filepath.Join(b.state, "other"), filepath.Join(b.dir, "otherws"))
			venv := filepath.Join(b.dir, "otherws", ".venv", "bin")
			os.MkdirAll(venv, 0o700)
			env.Preflight.Path = venv + ":" + b.path
		}, `bottle "other"'s workspace "$TMP/otherws" holds the PATH directory "$TMP/otherws/.venv/bin"`},
		{"workspace inside another bottle's workspace", func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string) {
			outer := filepath.Join(b.dir, "outer")
			o.Workspace = filepath.Join(outer, "ws")
			os.MkdirAll(o.Workspace, 0o700)
			fakeBottle(t, b.state, "other", filepath.Join(b.state, "other"), outer)
		}, `workspace "$TMP/outer/ws" and bottle "other"'s workspace "$TMP/outer" lie one inside the other`},
		{"workspace around another bottle's workspace", func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string) {
			inner := filepath.Join(b.workspace, "sub")
			os.Mkdir(inner, 0o700)
			fakeBottle(t, b.state, "other", filepath.Join(b.state, "other"), inner)
		}, `workspace "$TMP/ws" and bottle "other"'s workspace "$TMP/ws/sub" lie one inside the other`},
		{"archive inside another bottle's workspace", func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string) {
			ws := filepath.Join(b.dir, "otherws")
			os.MkdirAll(ws, 0o700)
			fakeBottle(t, b.state, "other", filepath.Join(b.state, "other"), ws)
			data, _ := os.ReadFile(o.Image)
			o.Image = filepath.Join(ws, "agent.tar")
			os.WriteFile(o.Image, data, 0o600)
		}, `image "$TMP/otherws/agent.tar" is inside bottle "other"'s workspace "$TMP/otherws": that bottle's guest could rewrite it`},
		{"workspace holds another bottle's smolvm", func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string) {
			fakeBottle(t, b.state, "other", filepath.Join(b.state, "other"), filepath.Join(b.dir, "otherws"))
			q, _ := readPlan(filepath.Join(b.state, "other"))
			q.Tools.Smolvm = filepath.Join(b.workspace, "opt", "smolvm")
			data, _ := json.Marshal(q)
			writeFileAtomic(filepath.Join(b.state, "other", planFile), data, 0o600)
		}, `workspace "$TMP/ws" holds bottle "other"'s program "$TMP/ws/opt/smolvm"`},
		{"stage inside another bottle's directory image", func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string) {
			img := rootfs(t, filepath.Join(b.dir, "otherimg"))
			fakeBottle(t, b.state, "other", filepath.Join(b.state, "other"), filepath.Join(b.dir, "otherws"))
			q, _ := readPlan(filepath.Join(b.state, "other"))
			q.Image = img
			data, _ := json.Marshal(q)
			writeFileAtomic(filepath.Join(b.state, "other", planFile), data, 0o600)
			o.Stage = filepath.Join(img, "var", "stage")
		}, `bottle "other"'s image "$TMP/otherimg" holds this bottle's stage "$TMP/otherimg/var/stage"`},
		{"image holds the home directory", func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string) {
			o.Image = rootfs(t, filepath.Join(b.dir, "img"))
			vars["HOME"] = filepath.Join(o.Image, "home", "me")
		}, `image "$TMP/img" holds your home directory "$TMP/img/home/me", which the guest must not reach: the guest is given all of a directory image`},
		{"image is the home directory", func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string) {
			o.Image = rootfs(t, filepath.Join(b.dir, "img"))
			vars["HOME"] = o.Image
		}, `image "$TMP/img" holds your home directory "$TMP/img"`},
		{"image holds the state root", func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string) {
			o.Image = rootfs(t, filepath.Join(b.dir, "img"))
			vars["SMOLBOTTLE_STATE"] = filepath.Join(o.Image, "state")
			o.Stage = filepath.Join(b.dir, "stage")
		}, `image "$TMP/img" holds the state root "$TMP/img/state"`},
		{"image holds the tools", func(t *testing.T, b testBottle, o *planOptions, env *planEnv, vars map[string]string) {
			o.Image = rootfs(t, b.path)
		}, `image "$TMP/bin" holds the PATH directory "$TMP/bin"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newTestBottle(t, "")
			opts := b.opts("demo")
			env := b.env(t)
			vars := map[string]string{}
			tt.setup(t, b, &opts, &env, vars)
			getenv := env.Getenv
			env.Getenv = func(k string) string {
				if v, ok := vars[k]; ok {
					return v
				}
				return getenv(k)
			}
			_, err := resolvePlan(context.Background(), opts, env)
			if err == nil {
				t.Fatalf("resolvePlan succeeded, want %q", tt.want)
			}
			var stderr bytes.Buffer
			code := exitCode(&stderr, err)
			got := strings.ReplaceAll(stderr.String(), b.dir, "$TMP")
			if !strings.Contains(got, tt.want) || !strings.Contains(got, "smolbottle: hint: ") || code != 1 {
				t.Errorf("exit %d, stderr:\n%s\nwant exit 1, %q and a hint", code, got, tt.want)
			}
			// Refused before the preflight: nothing it would run has run,
			// and its cache is not written.
			if _, err := os.Stat(filepath.Join(b.dir, "ran")); err == nil {
				t.Error("a program the guest could have planted ran before the refusal")
			}
			if _, err := os.Stat(filepath.Join(b.state, preflightCacheFile)); err == nil {
				t.Error("the preflight ran before the refusal")
			}
		})
	}
}

// TestPlanPreflightFailures checks that a missing or wrong program fails
// the plan with exit 1, names every missing piece and writes nothing.
func TestPlanPreflightFailures(t *testing.T) {
	tests := []struct {
		mode, remove string
		want         []string
	}{
		{mode: "celesto", want: []string{"preflight failed: smolvm", "not smol-machines' smolvm"}},
		{mode: "nomount", want: []string{"smolvm machine create --mount-socket"}},
		{remove: "smolvm", want: []string{"preflight failed: smolvm", "hint: smolvm: install smolvm"}},
		{remove: "pipelock", want: []string{"preflight failed: pipelock", "-egress-proxy"}},
	}
	for _, tt := range tests {
		t.Run(tt.mode+tt.remove, func(t *testing.T) {
			b := newTestBottle(t, tt.mode)
			if tt.remove != "" {
				os.Remove(filepath.Join(b.path, tt.remove))
			}
			_, err := resolvePlan(context.Background(), b.opts("demo"), b.env(t))
			var stderr bytes.Buffer
			if code := exitCode(&stderr, err); code != 1 {
				t.Errorf("exit status %d, want 1 (%v)", code, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr = %q, want %q", stderr.String(), w)
				}
			}
			if _, err := os.Stat(b.state); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("state root created by a failed plan")
			}
		})
	}
}

func TestPlanEgressProxySkipsPipelock(t *testing.T) {
	b := newTestBottle(t, "")
	os.Remove(filepath.Join(b.path, "pipelock"))
	opts := b.opts("ext")
	opts.EgressProxy = "localhost:3128"
	p, err := resolvePlan(context.Background(), opts, b.env(t))
	if err != nil {
		t.Fatal(err)
	}
	if s := p.Sidecars[0]; s.Name != "egress-proxy" || s.Port != 3128 || !s.External {
		t.Errorf("first sidecar = %+v, want the external proxy on 3128", s)
	}
	if p.MetricsPort != 0 {
		t.Errorf("metrics port %d allocated without pipelock", p.MetricsPort)
	}
	for _, f := range p.Files {
		if filepath.Base(f.Path) == pipelockFile {
			t.Errorf("pipelock config planned without pipelock")
		}
	}
	if got := p.GuestEnv[0]; got.Value != "http://proxy.internal:3128" {
		t.Errorf("HTTPS_PROXY = %q", got.Value)
	}
}

// TestPlanCLI drives `smolbottle plan` through run, as a user would, in
// text and JSON.
func TestPlanCLI(t *testing.T) {
	b := newTestBottle(t, "")
	staticSmolbottle(t)
	t.Setenv("PATH", b.path)
	t.Setenv("SMOLBOTTLE_STATE", b.state)
	t.Setenv("ANTHROPIC_API_KEY", "sk-ant-SECRET-VALUE")
	var out, errb bytes.Buffer
	err := runCLI(context.Background(), []string{"plan", "-image", b.image, "-workspace", b.workspace, "cli", "-git-gate", "-git-gate-cmd", "/bin/true {port}"}, &out, &errb)
	if err != nil {
		t.Fatalf("plan: %v\n%s", err, errb.String())
	}
	for _, want := range []string{"machine    smolbottle-cli", "git-gate", "HTTPS_PROXY=http://proxy.internal:",
		"ANTHROPIC_API_KEY=<placeholder, random per bottle; in plan.json>", "credentials   no host port", "ANTHROPIC_BASE_URL=http://proxy.internal:", "up would run", "machine create --name smolbottle-cli", "down would", "machine delete --name smolbottle-cli -f"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("plan output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "sk-ant-smolbottle-") {
		t.Errorf("plan printed the placeholder, which spends the key while the bottle runs:\n%s", out.String())
	}
	if strings.Contains(out.String(), "SECRET-VALUE") {
		t.Errorf("plan output shows a secret value")
	}
	out.Reset()
	if err := runCLI(context.Background(), []string{"plan", "-json", "-image", b.image, "-workspace", b.workspace, "cli"}, &out, &errb); err != nil {
		t.Fatalf("plan -json: %v", err)
	}
	var p plan
	if err := json.Unmarshal(out.Bytes(), &p); err != nil {
		t.Fatalf("plan -json is not JSON: %v\n%s", err, out.String())
	}
	if p.Machine != "smolbottle-cli" || p.Net.N < 1 || p.Net.N > 254 {
		t.Errorf("plan -json = %+v", p)
	}
}

func TestUsageGolden(t *testing.T) {
	var out bytes.Buffer
	if err := runCLI(context.Background(), []string{"help"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	golden(t, "usage.golden", out.Bytes())
	var errb bytes.Buffer
	err := runCLI(context.Background(), nil, &out, &errb)
	if code := exitCode(&errb, err); code != 2 {
		t.Errorf("no arguments: exit %d, want 2", code)
	}
	errb.Reset()
	err = runCLI(context.Background(), []string{"frobnicate"}, &out, &errb)
	if code := exitCode(&errb, err); code != 2 || errb.String() != "smolbottle: error: unknown subcommand \"frobnicate\"\nsmolbottle: hint: smolbottle help lists the subcommands\n" {
		t.Errorf("unknown subcommand: exit %d, stderr %q", code, errb.String())
	}
}

// TestPlanTextGolden prints a fixed plan, so the format is reviewed as a diff.
func TestPlanTextGolden(t *testing.T) {
	p := &plan{Slug: "demo", Backend: defaultBackend, Machine: "smolbottle-demo", Stage: "/st/demo",
		Image: "/img/agent.tar", Workspace: "/src/app", CPUs: 4, MemMiB: 4096, Net: netFor(42),
		Allow:       []string{"api.anthropic.com", "*.npmjs.org"},
		Credentials: []credential{{Env: "ANTHROPIC_API_KEY", Header: "X-Api-Key", Placeholder: "sk-ant-smolbottle-0123"}},
		Tools:       tools{Smolvm: "/usr/bin/smolvm", Gvproxy: "/usr/bin/gvproxy", Pipelock: "/usr/bin/pipelock", SmolvmExecUser: true}}
	p.Sidecars = []sidecar{{Name: "pipelock", Port: 40001}, {Name: credSidecar, Port: 40003, EnvVar: "ANTHROPIC_BASE_URL"},
		{Name: "git-gate", Port: 40004, EnvVar: "SMOLBOTTLE_GIT_GATE_URL"}}
	for i := range p.Sidecars {
		p.Sidecars[i].GuestURL = "http://proxy.internal:" + strconv.Itoa(p.Sidecars[i].Port)
	}
	p.MetricsPort = 40002
	p.GuestEnv = guestEnv(p.Sidecars, p.Credentials)
	if err := p.render(); err != nil {
		t.Fatal(err)
	}
	be := smolmachines{}
	p.Commands = be.upCommands(p)
	p.Cleanup = be.cleanup(p)
	var out bytes.Buffer
	p.writeText(&out)
	golden(t, "plan.golden", out.Bytes())
}

// golden compares got with testdata/NAME, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (go test -update rewrites it):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

func writeState(t *testing.T, stage string, st bottleState) {
	t.Helper()
	if err := os.MkdirAll(stage, 0o700); err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(st)
	if err := os.WriteFile(filepath.Join(stage, stateFile), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func selfIdent(t *testing.T) procIdent {
	start, err := procStart(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	return procIdent{PID: os.Getpid(), Start: start}
}

// TestPlanStageGolden writes a whole stage with fixed ports and compares
// every file with testdata/stage/, the test's directory written as $TMP.
func TestPlanStageGolden(t *testing.T) {
	b := newTestBottle(t, "")
	env := b.env(t, "ANTHROPIC_API_KEY", "sk-ant-SECRET-VALUE", "CLAUDE_CODE_OAUTH_TOKEN", "oauth-SECRET")
	env.AllocPorts = func(n int) ([]int, error) {
		ports := make([]int, n)
		for i := range ports {
			ports[i] = 41001 + i
		}
		return ports, nil
	}
	env.Rand = strings.NewReader(strings.Repeat("fixed placeholder bytes ", 8))
	opts := b.opts("golden")
	opts.GitGate, opts.Supervise = true, true
	opts.GitGateCmd = "/usr/bin/git-gate --listen 127.0.0.1:{port} --state {stage}"
	opts.SuperviseCmd = "/usr/bin/supervise -port {port}"
	opts.Allow = []string{"api.anthropic.com", "*.githubusercontent.com"}
	p, err := resolvePlan(context.Background(), opts, env)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.writeStage(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{smolfileName, gvproxyFile, pipelockFile, planFile} {
		data, err := os.ReadFile(filepath.Join(p.Stage, name))
		if err != nil {
			t.Fatal(err)
		}
		data = bytes.ReplaceAll(data, []byte(b.dir), []byte("$TMP"))
		if bytes.Contains(data, []byte("SECRET")) {
			t.Errorf("%s holds a secret value", name)
		}
		golden(t, filepath.Join("stage", name), data)
	}
}

// TestPlanGuestReachAllows: common setups pass the guest-reach rule: a
// second bottle beside a first, both with their own workspace, and an
// image archive kept in the state root.
func TestPlanGuestReachAllows(t *testing.T) {
	b := newTestBottle(t, "")
	img := filepath.Join(b.state, "agent.tar")
	if err := os.MkdirAll(b.state, 0o700); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(b.image)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, data, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, slug := range []string{"first", "second"} {
		opts := b.opts(slug)
		opts.Image = img
		opts.Workspace = filepath.Join(b.dir, "src", slug)
		if err := os.MkdirAll(opts.Workspace, 0o700); err != nil {
			t.Fatal(err)
		}
		p, err := resolvePlan(context.Background(), opts, b.env(t))
		if err != nil {
			t.Fatalf("%s: %v", slug, err)
		}
		if err := p.writeStage(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestWriteStageFailureLeavesWhatWasThere: a write that fails half-way in
// a stage that already held logs (what down leaves) removes what it wrote
// and keeps the logs.
func TestWriteStageFailureLeavesWhatWasThere(t *testing.T) {
	b := newTestBottle(t, "")
	p, err := resolvePlan(context.Background(), b.opts("half"), b.env(t))
	if err != nil {
		t.Fatal(err)
	}
	// plan.json is written last; a directory in its place makes that fail.
	for _, d := range []string{filepath.Join(p.Stage, logsDir), filepath.Join(p.Stage, planFile, "x")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.writeStage(); err == nil {
		t.Fatal("writeStage succeeded over a directory named plan.json")
	}
	entries, _ := os.ReadDir(p.Stage)
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	if want := []string{logsDir, planFile}; !slices.Equal(left, want) {
		t.Errorf("stage holds %q after a failed write, want %q", left, want)
	}
}

// TestSidecarCommandPath: a sidecar program named with a '/' is that file,
// relative to the current directory as a shell would take it; a bare name
// is looked for as every program is.
func TestSidecarCommandPath(t *testing.T) {
	b := newTestBottle(t, "")
	dir := t.TempDir()
	for _, p := range []string{filepath.Join(dir, "gg"), filepath.Join(b.path, "gg")} {
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(dir)
	for cmd, want := range map[string]string{"./gg {port}": filepath.Join(dir, "gg"), "gg {port}": filepath.Join(b.path, "gg")} {
		opts := b.opts("rel")
		opts.GitGate, opts.GitGateCmd = true, cmd
		p, err := resolvePlan(context.Background(), opts, b.env(t))
		if err != nil {
			t.Fatalf("%q: %v", cmd, err)
		}
		i := slices.IndexFunc(p.Sidecars, func(s sidecar) bool { return s.Name == "git-gate" })
		if i < 0 || p.Sidecars[i].Command[0] != want {
			t.Errorf("%q: sidecars %+v, want git-gate to run %q", cmd, p.Sidecars, want)
		}
	}
}

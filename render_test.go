package main

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files and testdata/emit")

// A renderCase is one realistic input of one renderer. Its name is the file
// name under testdata/golden and testdata/emit; the prefix says which
// renderer (and so which schema the verify module checks it against).
type renderCase struct {
	name   string // "smolfile-…", "gvproxy-…" or "pipelock-…"
	render func() ([]byte, error)
	intent any // the intended document, as encoding/json writes it
	read   func([]byte) (any, error)
}

func (c renderCase) ext() string {
	if strings.HasPrefix(c.name, "smolfile-") {
		return ".toml"
	}
	return ".yaml"
}

func smolfileCase(name string, spec smolfileSpec) renderCase {
	return renderCase{name, func() ([]byte, error) { return renderSmolfile(spec) }, intendedSmolfile(spec),
		func(b []byte) (any, error) { return readTOMLSubset(b) }}
}

func gvproxyCase(name string, spec gvproxySpec) renderCase {
	return renderCase{name, func() ([]byte, error) { return renderGvproxy(spec) }, intendedGvproxy(spec), readYAMLSubset}
}

func pipelockCase(name string, spec pipelockSpec) renderCase {
	return renderCase{name, func() ([]byte, error) { return renderPipelock(spec) }, intendedPipelock(spec), readYAMLSubset}
}

// proxyEnv is the guest environment guestEnv gives for a pipelock
// on port.
func proxyEnv(port string) []envVar {
	u := "http://proxy.internal:" + port
	return []envVar{
		{"HTTPS_PROXY", u}, {"HTTP_PROXY", u}, {"https_proxy", u}, {"http_proxy", u},
		{"NO_PROXY", "localhost,127.0.0.1,proxy.internal"},
		{"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"},
	}
}

const stage = "/home/dev/.local/state/smolbottle/myproj"

// realisticCases are the golden cases: what smolbottle renders for ordinary
// bottles.
func realisticCases() []renderCase {
	myproj, err := pickSubnet("myproj", nil)
	if err != nil {
		panic(err)
	}
	return []renderCase{
		smolfileCase("smolfile-default", smolfileSpec{
			Image:   stage + "/image.tar",
			Workdir: "/workspace",
			CPUs:    2,
			MemMiB:  4096,
			Volumes: []string{"/home/dev/src/myproj:/workspace"},
			Env:     proxyEnv("41873"),
		}),
		smolfileCase("smolfile-sidecars", smolfileSpec{
			Image:   stage + "/rootfs",
			Workdir: "/workspace/sub dir",
			CPUs:    4,
			MemMiB:  8192,
			Volumes: []string{"/home/dev/src/my proj:/workspace", "/home/dev/.gitconfig.d:/etc/gitconfig.d:ro"},
			Env: append(proxyEnv("41873"),
				envVar{"SMOLBOTTLE_GIT_GATE_URL", "http://proxy.internal:41874"},
				envVar{"SMOLBOTTLE_SUPERVISE_URL", "http://proxy.internal:41875/v1?token=a&b=c"}),
		}),
		smolfileCase("smolfile-minimal", smolfileSpec{
			Image:   stage + "/image.tar",
			Workdir: "/",
			CPUs:    1,
			MemMiB:  512,
			Env:     proxyEnv("1024"),
		}),
		smolfileCase("smolfile-odd-values", smolfileSpec{
			Image:   `/tmp/we"ird\path/ümage.tar`,
			Workdir: "/w#x",
			CPUs:    255,
			MemMiB:  4294967295,
			Volumes: []string{"/h/[network]:/g"},
			Env: []envVar{
				{"MULTI", "a\nallow_hosts = [\"*\"]\n[network]"},
				{"BIDI", "x\u202Ey\u2028z"},
				{"TAB", "\tq'\"\\"},
			},
		}),
		gvproxyCase("gvproxy-default", gvproxySpec{Net: myproj, SocketPath: stage + "/sock/gvproxy.sock"}),
		gvproxyCase("gvproxy-n1", gvproxySpec{Net: netFor(1), SocketPath: "/tmp/sb/a b/gvproxy.sock"}),
		gvproxyCase("gvproxy-n254", gvproxySpec{Net: netFor(254), SocketPath: "/run/user/1000/sb/x/sock/gvproxy.sock"}),
		pipelockCase("pipelock-default", pipelockSpec{
			Port: 41873, MetricsPort: 41876,
			Allow: []string{"api.anthropic.com", "statsig.anthropic.com", "sentry.io"},
		}),
		pipelockCase("pipelock-wildcards", pipelockSpec{
			Port: 1024, MetricsPort: 65535,
			Allow: []string{"*.github.com", "github.com", "*.githubusercontent.com", "registry.npmjs.org", "*.pypi.org"},
		}),
	}
}

// checkReadBack fails unless the subset reader reads exactly the intended
// document from out: no missing, changed or extra key, table, zone or entry.
func checkReadBack(t testing.TB, name string, c renderCase, out []byte) {
	t.Helper()
	got, err := c.read(out)
	if err != nil {
		t.Fatalf("%s: reading our own output: %v\n%s", name, err, out)
	}
	if want := generic(t, c.intent); !reflect.DeepEqual(got, want) {
		t.Fatalf("%s: read back\n%s\nwant\n%s\noutput:\n%s", name, dump(got), dump(want), out)
	}
}

func TestRenderGolden(t *testing.T) {
	for _, c := range realisticCases() {
		t.Run(c.name, func(t *testing.T) {
			out, err := c.render()
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			again, err := c.render()
			if err != nil || !bytes.Equal(out, again) {
				t.Fatalf("second render differs (err %v):\n%s\nfirst:\n%s", err, again, out)
			}
			checkReadBack(t, c.name, c, out)
			golden := filepath.Join("testdata", "golden", c.name+c.ext())
			if *update {
				writeTestdata(t, golden, out)
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update)", err)
			}
			if !bytes.Equal(out, want) {
				t.Errorf("got\n%s\nwant (%s)\n%s", out, golden, want)
			}
		})
	}
}

// writeTestdata writes a checked-in test file. They are reviewed artefacts,
// not secrets, so ordinary permissions are right.
func writeTestdata(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRenderRefusesBadIntegers covers the integer fields, which the hostile
// string table cannot reach.
func TestRenderRefusesBadIntegers(t *testing.T) {
	base := smolfileSpec{Image: "/i", Workdir: "/w", CPUs: 1, MemMiB: 1}
	for _, tc := range []struct {
		cpus, mem int
		field     string // "" when the spec must render
	}{
		{1, 1, ""},
		{255, 4294967295, ""},
		{0, 1, "cpus"},
		{-1, 1, "cpus"},
		{256, 1, "cpus"},
		{1, 0, "memory"},
		{1, 4294967296, "memory"},
		{1, -5, "memory"},
	} {
		spec := base
		spec.CPUs, spec.MemMiB = tc.cpus, tc.mem
		_, err := renderSmolfile(spec)
		if got := errField(err); got != tc.field {
			t.Errorf("cpus %d memory %d: got error %v, want one naming %q", tc.cpus, tc.mem, err, tc.field)
		}
	}
}

// errField returns the field a renderer's error names, "" for no error.
func errField(err error) string {
	if err == nil {
		return ""
	}
	var fe fieldError
	if !errors.As(err, &fe) {
		return "not a fieldError: " + err.Error()
	}
	return fe.field
}

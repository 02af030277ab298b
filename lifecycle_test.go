package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

func TestLs(t *testing.T) {
	b := newTestBottle(t, "")
	for _, slug := range []string{"run", "old", "idle"} {
		p, err := resolvePlan(context.Background(), b.opts(slug), b.env(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := p.writeStage(); err != nil {
			t.Fatal(err)
		}
	}
	writeState(t, filepath.Join(b.state, "run"), bottleState{Slug: "run", Supervisor: selfIdent(t)})
	writeState(t, filepath.Join(b.state, "old"), bottleState{Slug: "old", Supervisor: procIdent{PID: os.Getpid(), Start: 1}})
	os.Mkdir(filepath.Join(b.state, "not-a-stage"), 0o700)
	t.Setenv("SMOLBOTTLE_STATE", b.state)

	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"ls", "-json"}, &out, &errb); err != nil {
		t.Fatalf("ls: %v %s", err, errb.String())
	}
	var got []bottleInfo
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("ls -json: %v\n%s", err, out.String())
	}
	want := map[string]string{"idle": "planned", "old": "stale", "run": "running"}
	if len(got) != len(want) {
		t.Fatalf("ls = %+v, want %d bottles", got, len(want))
	}
	for _, g := range got {
		if want[g.Slug] != g.State || g.Machine != machineName(g.Slug) {
			t.Errorf("bottle %+v, want state %q", g, want[g.Slug])
		}
	}
	out.Reset()
	if err := run(context.Background(), []string{"ls"}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out.Bytes(), []byte("SLUG")) || !bytes.Contains(out.Bytes(), []byte("stale")) {
		t.Errorf("ls table:\n%s", out.String())
	}
}

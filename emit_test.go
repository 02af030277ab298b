package main

// TestEmit keeps testdata/emit current: each case's rendered file and, next
// to it, <case>.json with the intended values. The verify/ module (which
// cannot import package main) reads both, parses the rendered file with the
// consumers' real parsers and compares field by field.

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// emitCases are the realistic cases plus, per user-controlled field, one
// case holding every hostile string that field accepts, and two whose lists
// hold each hostile string as its own entry.
func emitCases(t testing.TB) []renderCase {
	cases := realisticCases()
	for _, f := range fields() {
		var b strings.Builder
		for _, h := range hostile {
			// The first form the field accepts: the raw string, or the
			// string inside a path for fields that need an absolute one.
			for _, s := range variants(h) {
				if !f.refuse(s) {
					b.WriteString(s)
					break
				}
			}
		}
		if f.refuse(b.String()) {
			t.Fatalf("%s: the joined hostile strings are refused", f.name)
		}
		c := f.set(b.String())
		c.name += "-hostile"
		cases = append(cases, c)
	}
	sp, pl := baseSmolfile(), basePipelock()
	for _, h := range hostile {
		if !representable(h) {
			continue
		}
		sp.Volumes = append(sp.Volumes, h)
		sp.Env = append(sp.Env, envVar{"V", h})
		pl.Allow = append(pl.Allow, h)
	}
	return append(cases, smolfileCase("smolfile-hostile-lists", sp), pipelockCase("pipelock-hostile-allow", pl))
}

func TestEmit(t *testing.T) {
	dir := filepath.Join("testdata", "emit")
	var want []string
	for _, c := range emitCases(t) {
		out, err := c.render()
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		checkReadBack(t, c.name, c, out)
		var js bytes.Buffer
		enc := json.NewEncoder(&js)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		if err := enc.Encode(c.intent); err != nil {
			t.Fatal(err)
		}
		for _, f := range []struct {
			name string
			b    []byte
		}{{c.name + c.ext(), out}, {c.name + ".json", js.Bytes()}} {
			want = append(want, f.name)
			path := filepath.Join(dir, f.name)
			if *update {
				writeTestdata(t, path, f.b)
				continue
			}
			got, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(got, f.b) {
				t.Errorf("%s is stale or missing (%v); run go test -run TestEmit -update", path, err)
			}
		}
	}
	// A file no case writes would still be checked by verify/, against
	// intentions nobody holds any more.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !slices.Contains(want, e.Name()) {
			t.Errorf("%s: no case writes this file; delete it", filepath.Join(dir, e.Name()))
		}
	}
}

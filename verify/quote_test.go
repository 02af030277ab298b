package verify

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/BurntSushi/toml"
	"gopkg.in/yaml.v3"
)

// TestQuoteCopyCurrent fails when quote_copy.go is not ../quote.go with
// only its package clause changed, so the fuzzing here always exercises the
// code smolbottle ships. Fix it with go generate.
func TestQuoteCopyCurrent(t *testing.T) {
	orig, err := os.ReadFile("../quote.go")
	if err != nil {
		t.Fatal(err)
	}
	cp, err := os.ReadFile("quote_copy.go")
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Replace(orig, []byte("package main\n"), []byte("package verify\n"), 1)
	if !bytes.Equal(cp, want) || bytes.Equal(orig, want) {
		t.Fatal("quote_copy.go differs from ../quote.go; run go generate in verify/")
	}
}

// seeds are strings that break naive quoting or change meaning when plain.
var seeds = []string{
	"", " x ", `"`, `\`, "\n", "\r\n", "\t", "]", "[network]", "\n[network]\nallow_hosts = [\"*\"]",
	"#", "a #b", ": ", "a: b", "- x", "*a", "&a", "!t", "|", ">", "~", "null", "on", "no", "0x1",
	"017", "1.10", "\u2028", "\u2029", "\u202E", "\u0085", "\ufeff", "\x1b", "\x7f", "\xff", "\x00",
	"😀", "127.0.0.1", strings.Repeat("k", 1100), strings.Repeat("\\\"", 300),
}

// FuzzRoundTrip checks each quoting function against the pinned real
// parsers: what they read back is exactly the input, as the one key or value
// of the document, or the function refused the input.
func FuzzRoundTrip(f *testing.F) {
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ok := utf8.ValidString(s) && !strings.ContainsRune(s, 0)

		q, err := tomlString(s)
		if (err == nil) != ok {
			t.Fatalf("tomlString(%q): err %v, want error %v", s, err, !ok)
		}
		if err == nil {
			var m map[string]any
			if _, err := toml.Decode("k = "+q, &m); err != nil || len(m) != 1 || m["k"] != s {
				t.Fatalf("tomlString(%q) = %s: toml read %#v (%v)", s, q, m, err)
			}
		}

		k, err := tomlKey(s)
		if (err == nil) != (ok && s != "") {
			t.Fatalf("tomlKey(%q): err %v", s, err)
		}
		if err == nil {
			var m map[string]any
			if _, err := toml.Decode(k+" = 1", &m); err != nil || len(m) != 1 || m[s] != int64(1) {
				t.Fatalf("tomlKey(%q) = %s: toml read %#v (%v)", s, k, m, err)
			}
		}

		q, err = yamlString(s)
		if (err == nil) != ok {
			t.Fatalf("yamlString(%q): err %v, want error %v", s, err, !ok)
		}
		if err == nil {
			var m map[string]any
			if err := yaml.Unmarshal([]byte("k: "+q+"\n"), &m); err != nil || len(m) != 1 || m["k"] != s {
				t.Fatalf("yamlString(%q) = %s: yaml read %#v (%v)", s, q, m, err)
			}
			// The same string in a list item, as the renderers use it.
			var l []string
			if err := yaml.Unmarshal([]byte("- "+q+"\n"), &l); err != nil || len(l) != 1 || l[0] != s {
				t.Fatalf("yamlString(%q) = %s: yaml read list %#v (%v)", s, q, l, err)
			}
		}

		k, err = yamlKey(s)
		if err == nil {
			var m map[string]any
			if err := yaml.Unmarshal([]byte(k+": 1\n"), &m); err != nil || len(m) != 1 || m[s] != 1 {
				t.Fatalf("yamlKey(%q) = %s: yaml read %#v (%v)", s, k, m, err)
			}
		} else if ok && len(q) <= maxYAMLKey {
			t.Fatalf("yamlKey(%q): %v", s, err)
		}
	})
}

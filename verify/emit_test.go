package verify

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"gopkg.in/yaml.v3"
)

const emitDir = "../testdata/emit"

// TestEmitted parses every rendered file under ../testdata/emit with the
// consumer's parser into the consumer's schema, unknown keys rejected, and
// compares the result with <case>.json, the values the main module meant.
func TestEmitted(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(emitDir, "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	// The main module writes ten realistic cases and one hostile case per
	// field; far fewer means the glob or the directory is wrong.
	if len(files) < 10 {
		t.Fatalf("got %d cases in %s, want the main module's (run go test -run TestEmit -update at the root)", len(files), emitDir)
	}
	for _, jsonPath := range files {
		name := strings.TrimSuffix(filepath.Base(jsonPath), ".json")
		t.Run(name, func(t *testing.T) {
			intended, err := os.ReadFile(jsonPath)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case strings.HasPrefix(name, "smolfile-"):
				checkSmolfile(t, mustRead(t, name+".toml"), intended)
			case strings.HasPrefix(name, "gvproxy-"):
				var got, want gvproxyConfig
				checkYAML(t, mustRead(t, name+".yaml"), intended, &got, &want)
				checkGvproxyPolicy(t, &got)
			case strings.HasPrefix(name, "pipelock-"):
				var got, want pipelockConfig
				checkYAML(t, mustRead(t, name+".yaml"), intended, &got, &want)
			default:
				t.Fatalf("no schema for case %q", name)
			}
		})
	}
}

func mustRead(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(emitDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// decodeJSON reads the intended values strictly, so that a misspelt key in
// the .json cannot silently weaken the comparison.
func decodeJSON(t *testing.T, b []byte, v any) {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		t.Fatalf("intended values: %v", err)
	}
}

func checkSmolfile(t *testing.T, doc, intended []byte) {
	t.Helper()
	if err := checkTOML10Only(doc); err != nil {
		t.Fatal(err)
	}
	var got, want smolfile
	md, err := toml.Decode(string(doc), &got)
	if err != nil {
		t.Fatalf("toml: %v\n%s", err, doc)
	}
	// smolvm's structs are deny_unknown_fields.
	if u := md.Undecoded(); len(u) > 0 {
		t.Fatalf("keys smolvm does not know: %q", u)
	}
	for name, ref := range got.Secrets {
		if (ref.FromEnv == nil) == (ref.FromFile == nil) {
			t.Errorf("secret %q: want exactly one of from_env and from_file", name)
		}
	}
	decodeJSON(t, intended, &want)
	compare(t, got, want)
	checkGeneric(t, intended, func(v *any) error { _, err := toml.Decode(string(doc), v); return err })
}

var (
	// A TOML string, to blank out before looking at structure.
	tomlStringRE = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	// The escapes TOML 1.0 defines; \e and \xHH are TOML 1.1.
	toml10Escape = regexp.MustCompile(`^\\(?:[btnfr"\\]|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8})`)
)

// checkTOML10Only rejects TOML 1.1 constructs in our output whatever parser
// version reads it: escapes other than TOML 1.0's, and inline tables that
// span lines or end in a trailing comma. It also rejects dotted keys, which
// we never write and whose conflicts BurntSushi/toml v1.5.0 does not catch:
// it reads "a.b = 1\na = 3" as {a: {b: 1}} without an error.
func checkTOML10Only(doc []byte) error {
	s := string(doc)
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			continue
		}
		m := toml10Escape.FindString(s[i:])
		if m == "" {
			return fmt.Errorf("escape %q at byte %d is not TOML 1.0", s[i:min(i+4, len(s))], i)
		}
		i += len(m) - 1
	}
	for n, line := range strings.Split(s, "\n") {
		bare := tomlStringRE.ReplaceAllString(line, `""`)
		open, close := strings.Count(bare, "{"), strings.Count(bare, "}")
		if open != close || strings.Contains(bare, ", }") || strings.Contains(bare, ",}") {
			return fmt.Errorf("line %d: inline table not on one line or with a trailing comma: %q", n+1, line)
		}
		if !strings.HasPrefix(bare, "#") && strings.Contains(bare, ".") {
			return fmt.Errorf("line %d: dotted key: %q", n+1, line)
		}
	}
	return nil
}

// checkYAML decodes doc as its consumer does (yaml.v3) but with unknown
// keys rejected, insists on a single document, and compares with intended.
func checkYAML(t *testing.T, doc, intended []byte, got, want any) {
	t.Helper()
	d := yaml.NewDecoder(bytes.NewReader(doc))
	d.KnownFields(true)
	if err := d.Decode(got); err != nil {
		t.Fatalf("yaml: %v\n%s", err, doc)
	}
	var extra any
	if err := d.Decode(&extra); !errors.Is(err, io.EOF) {
		t.Fatalf("want one YAML document, found more (%v)", err)
	}
	decodeJSON(t, intended, want)
	compare(t, reflect.ValueOf(got).Elem().Interface(), reflect.ValueOf(want).Elem().Interface())
	checkGeneric(t, intended, func(v *any) error { return yaml.Unmarshal(doc, v) })
}

// checkGvproxyPolicy checks what smolbottle requires of every gvproxy
// config beyond equality with the intended values, so that a wrong .json
// cannot bless a wrong config: one catch-all zone holding only
// proxy.internal, NAT exactly host VIP -> 127.0.0.1, the VIP inside the
// subnet and the only gateway virtual IP, EC2 metadata off.
func checkGvproxyPolicy(t *testing.T, c *gvproxyConfig) {
	t.Helper()
	s := c.Stack
	_, subnet, err := net.ParseCIDR(s.Subnet)
	if err != nil {
		t.Fatalf("subnet: %v", err)
	}
	if len(s.DNS) != 1 || s.DNS[0].Name != "" || len(s.DNS[0].Records) != 1 || s.DNS[0].DefaultIP != nil {
		t.Fatalf("dns: got %+v, want one catch-all zone with one record", s.DNS)
	}
	r := s.DNS[0].Records[0]
	if r.Name != "proxy.internal" || r.Regexp != nil || !subnet.Contains(r.IP) {
		t.Errorf("dns record: got %+v, want proxy.internal inside %v", r, subnet)
	}
	if len(s.NAT) != 1 || s.NAT[r.IP.String()] != "127.0.0.1" {
		t.Errorf("nat: got %v, want exactly %v -> 127.0.0.1", s.NAT, r.IP)
	}
	if len(s.GatewayVirtualIPs) != 1 || s.GatewayVirtualIPs[0] != r.IP.String() {
		t.Errorf("gatewayVirtualIPs: got %v, want [%v]", s.GatewayVirtualIPs, r.IP)
	}
	if s.Ec2MetadataAccess || c.Ec2MetadataAccess || len(s.Forwards) > 0 || len(c.Forwards) > 0 || len(s.DHCPStaticLeases) > 0 {
		t.Errorf("got ec2 access, forwards or leases: %+v", c)
	}
	if len(c.Listen) != 1 || !strings.HasPrefix(c.Listen[0], "unix:///") {
		t.Errorf("listen: got %q, want one absolute unix socket", c.Listen)
	}
}

// checkGeneric compares the document read into plain maps and lists with
// the intended JSON read the same way: the struct comparison cannot see a
// key whose value equals the zero value, this one can.
func checkGeneric(t *testing.T, intended []byte, decode func(*any) error) {
	t.Helper()
	var got, want any
	if err := decode(&got); err != nil {
		t.Fatal(err)
	}
	d := json.NewDecoder(bytes.NewReader(intended))
	d.UseNumber() // float64 would turn 4294967295 into 4.294967295e+09
	if err := d.Decode(&want); err != nil {
		t.Fatal(err)
	}
	if g, w := normalize(got), normalize(want); !reflect.DeepEqual(g, w) {
		t.Errorf("generic read-back differs:\ngot  %#v\nwant %#v", g, w)
	}
}

// normalize maps the parsers' value types onto one set: map[string]any,
// []any, string, bool, nil, and numbers as their decimal text.
func normalize(v any) any {
	switch v := v.(type) {
	case map[string]any:
		m := map[string]any{}
		for k, e := range v {
			m[k] = normalize(e)
		}
		return m
	case []any:
		l := make([]any, len(v))
		for i, e := range v {
			l[i] = normalize(e)
		}
		return l
	case []map[string]any: // BurntSushi/toml's array of tables
		l := make([]any, len(v))
		for i, e := range v {
			l[i] = normalize(e)
		}
		return l
	case int, int64, uint64, json.Number:
		return fmt.Sprint(v)
	}
	return v
}

// compare reports every field where got and want differ, by path.
func compare(t *testing.T, got, want any) {
	t.Helper()
	var diffs []string
	diff("", reflect.ValueOf(got), reflect.ValueOf(want), &diffs)
	for _, d := range diffs {
		t.Error(d)
	}
}

func diff(path string, g, w reflect.Value, out *[]string) {
	if g.Type() == reflect.TypeOf(net.IP{}) {
		if !g.Interface().(net.IP).Equal(w.Interface().(net.IP)) {
			*out = append(*out, fmt.Sprintf("%s: got %v, want %v", path, g, w))
		}
		return
	}
	switch g.Kind() {
	case reflect.Struct:
		for i := range g.NumField() {
			diff(path+"."+g.Type().Field(i).Name, g.Field(i), w.Field(i), out)
		}
		return
	case reflect.Pointer:
		if g.IsNil() || w.IsNil() {
			if g.IsNil() != w.IsNil() {
				*out = append(*out, fmt.Sprintf("%s: got %v, want %v", path, deref(g), deref(w)))
			}
			return
		}
		if g.Type() == reflect.TypeOf(&regexp.Regexp{}) {
			if g.Interface().(*regexp.Regexp).String() != w.Interface().(*regexp.Regexp).String() {
				*out = append(*out, fmt.Sprintf("%s: got %v, want %v", path, g, w))
			}
			return
		}
		diff(path, g.Elem(), w.Elem(), out)
		return
	case reflect.Slice:
		if g.Len() != w.Len() {
			*out = append(*out, fmt.Sprintf("%s: got %d entries %#v, want %d %#v", path, g.Len(), g, w.Len(), w))
			return
		}
		for i := range g.Len() {
			diff(fmt.Sprintf("%s[%d]", path, i), g.Index(i), w.Index(i), out)
		}
		return
	case reflect.Map:
		if g.Len() != w.Len() {
			*out = append(*out, fmt.Sprintf("%s: got %v, want %v", path, g, w))
			return
		}
		for _, k := range g.MapKeys() {
			wv := w.MapIndex(k)
			if !wv.IsValid() {
				*out = append(*out, fmt.Sprintf("%s: got key %q, not wanted", path, k))
				continue
			}
			diff(fmt.Sprintf("%s[%q]", path, k), g.MapIndex(k), wv, out)
		}
		return
	}
	if !reflect.DeepEqual(g.Interface(), w.Interface()) {
		*out = append(*out, fmt.Sprintf("%s: got %#v, want %#v", path, g, w))
	}
}

func deref(v reflect.Value) any {
	if v.IsNil() {
		return nil
	}
	return v.Elem().Interface()
}

// TestParsersAreStrict pins what makes these parsers worth trusting: if a
// version bump made them accept TOML 1.1 or unknown keys, every check above
// would pass vacuously.
func TestParsersAreStrict(t *testing.T) {
	for _, doc := range []string{
		`a = "\e"`,
		`a = "\x41"`,
		"a = { b = \"c\",\n}",
		"a = \"\u0000\"",
		"a = 1\na = 2",
	} {
		var v map[string]any
		if _, err := toml.Decode(doc, &v); err == nil {
			t.Errorf("toml accepted %q as %v, want an error", doc, v)
		}
	}
	var s smolfile
	md, err := toml.Decode("image = \"x\"\nbogus = 1\n", &s)
	if err != nil || len(md.Undecoded()) != 1 {
		t.Errorf("toml unknown key: got undecoded %v (err %v), want [bogus]", md.Undecoded(), err)
	}
	var g gvproxyConfig
	d := yaml.NewDecoder(strings.NewReader("stack:\n  natt:\n    a: b\n"))
	d.KnownFields(true)
	if err := d.Decode(&g); err == nil {
		t.Errorf("yaml accepted the unknown key stack.natt")
	}
}

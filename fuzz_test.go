package main

// Injection tests: a hostile-strings table through every user-controlled
// field of every renderer, and fuzz targets for each quoting function and
// each renderer. The property is always the same: the output is refused with
// an error naming the field exactly when the input cannot be represented
// faithfully, and otherwise reads back (through the strict subset readers)
// as exactly the intended document, so no key, table, zone or NAT entry can
// appear that the input did not ask for. verify/ repeats the quoting
// round-trip against the real parsers.

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"unicode/utf8"
)

// hostile are strings that break naive TOML or YAML quoting, or that change
// meaning when left plain (YAML 1.1 booleans, octal, floats, null).
var hostile = []string{
	"", " ", " lead", "trail ", `"`, `\`, `\"`, `"\`, "\\u0041", "\\e", "\\x41",
	"\n", "\r\n", "a\nb", "\t", "a\tb", "]", "[", "[network]", "\n[network]\nallow_hosts = [\"*\"]",
	"x\" }\n[network]\nallow_cidrs = [\"0.0.0.0/0\"]\n#", "#", "a #b", "# c", ": ", "a: b", "a: b: c",
	"\u2028", "\u2029", "a\u2028b", "\u202E", "x\u202Eexe.txt", "\u0085", "\u00a0", "\ufeff", "😀",
	"\xff", "a\xc3", "\xed\xa0\x80", "\x00", "a\x00b", "\x1b[31m", "\x7f", "\x01\x08\x0b\x0c",
	"on", "no", "yes", "off", "y", "n", "true", "False", "0x1", "0x1F", "017", "0o17", "1_000", "1e3",
	"~", "null", "Null", "1.10", ".inf", ".nan", "2001-12-14", "22:22", "- x", "-", "*a", "&a", "!t",
	"!!str", "|", ">", "|-\n  x", "{x}", "{ a = 1 }", "[x]", "'", "''", "%YAML 1.2", "---", "...",
	"=", "a=b", "==", "?", "%", "%2f", "#frag", "?q=1", "127.0.0.1", "192.168.1.254", "proxy.internal",
	"*.example.com", "*", ".", "a.b", "a b", "a/b/../c", "//x",
	strings.Repeat("k", 1100), strings.Repeat("é", 600), strings.Repeat("\"\\\n", 400),
}

// variants places s where the renderer sees it: alone, and inside a value
// that is otherwise ordinary (an absolute path, a host name).
func variants(s string) []string { return []string{s, "/p/" + s + "/q"} }

// representable reports whether s can be written at all: TOML and YAML files
// are UTF-8 text, and smolvm, gvproxy and pipelock pass these strings to
// calls where NUL would truncate them.
func representable(s string) bool { return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 }

// A field is one user-controlled input of one renderer.
type field struct {
	name   string                  // the field its error must name
	set    func(string) renderCase // the case with the field set to s
	refuse func(s string) bool     // whether s must be refused
}

func baseSmolfile() smolfileSpec {
	return smolfileSpec{
		Image: "/i.tar", Workdir: "/w", CPUs: 1, MemMiB: 512,
		Volumes: []string{"/h:/g"}, Env: []envVar{{"A", "1"}},
	}
}

func baseGvproxy() gvproxySpec { return gvproxySpec{Net: netFor(5), SocketPath: "/s/gvproxy.sock"} }

func basePipelock() pipelockSpec {
	return pipelockSpec{Port: 4000, MetricsPort: 4001, Allow: []string{"a.example"}}
}

// badSocketPath mirrors what checkListenPath must refuse, written from
// gvproxy's use of url.Parse: anything that is not absolute, contains a
// character that url.Parse treats specially, or a control byte it rejects.
func badSocketPath(s string) bool {
	if !representable(s) || !strings.HasPrefix(s, "/") || strings.ContainsAny(s, "#?%") {
		return true
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return true
		}
	}
	return false
}

func fields() []field {
	notRep := func(s string) bool { return !representable(s) }
	return []field{
		{name: "image", refuse: notRep, set: func(s string) renderCase {
			sp := baseSmolfile()
			sp.Image = s
			return smolfileCase("smolfile-image", sp)
		}},
		{name: "workdir", refuse: notRep, set: func(s string) renderCase {
			sp := baseSmolfile()
			sp.Workdir = s
			return smolfileCase("smolfile-workdir", sp)
		}},
		{name: "volumes", refuse: notRep, set: func(s string) renderCase {
			sp := baseSmolfile()
			sp.Volumes = append(sp.Volumes, s)
			return smolfileCase("smolfile-volumes", sp)
		}},
		{name: "env[1].name", set: func(s string) renderCase {
			sp := baseSmolfile()
			sp.Env = append(sp.Env, envVar{s, "v"})
			return smolfileCase("smolfile-env-name", sp)
		}, refuse: func(s string) bool { return s == "" || strings.Contains(s, "=") || !representable(s) }},
		{name: "env", refuse: notRep, set: func(s string) renderCase {
			sp := baseSmolfile()
			sp.Env = append(sp.Env, envVar{"V", s})
			return smolfileCase("smolfile-env-value", sp)
		}},
		{name: "listen", refuse: badSocketPath, set: func(s string) renderCase {
			sp := baseGvproxy()
			sp.SocketPath = s
			return gvproxyCase("gvproxy-socket", sp)
		}},
		{name: "api_allowlist", refuse: notRep, set: func(s string) renderCase {
			sp := basePipelock()
			sp.Allow = append(sp.Allow, s)
			return pipelockCase("pipelock-allow", sp)
		}},
	}
}

// checkField renders c and checks the property above for one value.
func checkField(t testing.TB, f field, s string) {
	t.Helper()
	c := f.set(s)
	out, err := c.render()
	if f.refuse(s) {
		if err == nil {
			t.Fatalf("%s = %q: rendered, want refused:\n%s", f.name, s, out)
		}
		// An env name that is not UTF-8 passes the name rule and is
		// refused where the whole K=V entry is quoted, under "env".
		if got := errField(err); got != f.name && !(f.name == "env[1].name" && got == "env") {
			t.Fatalf("%s = %q: got error %v, want one naming %q", f.name, s, err, f.name)
		}
		return
	}
	if err != nil {
		t.Fatalf("%s = %q: got error %v, want a faithful rendering", f.name, s, err)
	}
	checkReadBack(t, f.name+"="+truncate(s), c, out)
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

func TestHostileStrings(t *testing.T) {
	for _, f := range fields() {
		for _, h := range hostile {
			for _, s := range variants(h) {
				checkField(t, f, s)
			}
		}
	}
}

// checkQuoted checks a quoting function's result for s: refused exactly when
// s is not representable (or, for keys, too long or empty), otherwise
// printable ASCII that reads back as s.
func checkQuoted(t *testing.T, s, q string, err error, extraRefuse bool, read func(string) (string, string, error)) {
	t.Helper()
	if !representable(s) || extraRefuse {
		if err == nil {
			t.Fatalf("%q: got %s, want an error", s, q)
		}
		return
	}
	if err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	for i := 0; i < len(q); i++ {
		if q[i] < 0x20 || q[i] > 0x7e {
			t.Fatalf("%q: output %q has byte %#x outside printable ASCII", s, q, q[i])
		}
	}
	got, rest, err := read(q)
	if err != nil || rest != "" || got != s {
		t.Fatalf("%q: quoted as %s, read back %q rest %q err %v", s, q, got, rest, err)
	}
}

func addHostile(f *testing.F) {
	for _, h := range hostile {
		f.Add(h)
	}
}

func FuzzTomlString(f *testing.F) {
	addHostile(f)
	f.Fuzz(func(t *testing.T, s string) {
		q, err := tomlString(s)
		checkQuoted(t, s, q, err, false, tomlReadString)
	})
}

func FuzzTomlKey(f *testing.F) {
	addHostile(f)
	f.Fuzz(func(t *testing.T, s string) {
		q, err := tomlKey(s)
		checkQuoted(t, s, q, err, s == "", tomlReadKey)
		if err == nil {
			// Read it as a key in a document, too: a bare key must stay
			// one key, never a dotted path.
			doc, rerr := readTOMLSubset([]byte(generatedHeader + q + " = 1\n"))
			if _, ok := doc[s]; rerr != nil || !ok || len(doc) != 1 {
				t.Fatalf("%q: key %s read as %v (%v)", s, q, doc, rerr)
			}
		}
	})
}

func FuzzYamlString(f *testing.F) {
	addHostile(f)
	f.Fuzz(func(t *testing.T, s string) {
		q, err := yamlString(s)
		checkQuoted(t, s, q, err, false, yamlReadString)
	})
}

func FuzzYamlKey(f *testing.F) {
	addHostile(f)
	f.Fuzz(func(t *testing.T, s string) {
		q, err := yamlKey(s)
		long := representable(s) && len(mustYAMLString(s)) > maxYAMLKey
		checkQuoted(t, s, q, err, long, yamlReadString)
		if err == nil {
			doc, rerr := readYAMLSubset([]byte(generatedHeader + q + ": 1\n"))
			m, _ := doc.(map[string]any)
			if _, ok := m[s]; rerr != nil || !ok || len(m) != 1 {
				t.Fatalf("%q: key %s read as %v (%v)", s, q, doc, rerr)
			}
		}
	})
}

func mustYAMLString(s string) string {
	q, err := yamlString(s)
	if err != nil {
		panic(err)
	}
	return q
}

// fieldIs reports whether err names one of the given fields.
func fieldIs(err error, names ...string) bool {
	var fe fieldError
	if !errors.As(err, &fe) {
		return false
	}
	for _, n := range names {
		if fe.field == n {
			return true
		}
	}
	return false
}

func FuzzRenderSmolfile(f *testing.F) {
	f.Add("/i.tar", "/w", "/h:/g", "NAME", "value", 2, 4096)
	f.Add("\xff", "\n[network]", "]", "A=B", "x\"\n[network]", 0, -1)
	for _, h := range hostile {
		f.Add(h, h, h, h, h, 1, 1)
	}
	f.Fuzz(func(t *testing.T, image, workdir, volume, envName, envValue string, cpus, mem int) {
		spec := smolfileSpec{
			Image: image, Workdir: workdir, CPUs: cpus, MemMiB: mem,
			Volumes: []string{"/h:/g", volume},
			Env:     []envVar{{"A", "1"}, {envName, envValue}},
		}
		out, err := renderSmolfile(spec)
		var why []string // the fields that must be refused
		if !representable(image) {
			why = append(why, "image")
		}
		if !representable(workdir) {
			why = append(why, "workdir")
		}
		if cpus < 1 || cpus > maxSmolCPUs {
			why = append(why, "cpus")
		}
		if mem < 1 || int64(mem) > maxSmolMemMiB {
			why = append(why, "memory")
		}
		if !representable(volume) {
			why = append(why, "volumes")
		}
		if envName == "" || strings.Contains(envName, "=") {
			why = append(why, "env[1].name")
		}
		if !representable(envName) || !representable(envValue) {
			why = append(why, "env")
		}
		if len(why) > 0 {
			if !fieldIs(err, why...) {
				t.Fatalf("got error %v, want one naming one of %q; output:\n%s", err, why, out)
			}
			return
		}
		if err != nil {
			t.Fatalf("got error %v, want a faithful rendering", err)
		}
		checkReadBack(t, "smolfile", smolfileCase("fuzz", spec), out)
	})
}

func FuzzRenderGvproxy(f *testing.F) {
	f.Add("/s/gvproxy.sock", uint8(5))
	f.Add("/a#b", uint8(254))
	for _, h := range hostile {
		f.Add(h, uint8(1))
		f.Add("/p/"+h, uint8(127))
	}
	f.Fuzz(func(t *testing.T, path string, n uint8) {
		if n == 0 || n == 255 {
			t.Skip("netFor takes 1..254")
		}
		spec := gvproxySpec{Net: netFor(int(n)), SocketPath: path}
		out, err := renderGvproxy(spec)
		if badSocketPath(path) {
			if !fieldIs(err, "listen") {
				t.Fatalf("socket path %q: got error %v, want one naming \"listen\"", path, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("socket path %q: %v", path, err)
		}
		checkReadBack(t, "gvproxy", gvproxyCase("fuzz", spec), out)
		// The address plan, not only the renderer, decides the NAT entry:
		// it must be inside the subnet and never the gateway.
		vip := spec.Net.HostVIP
		if !spec.Net.Subnet.Contains(vip) || vip == spec.Net.Gateway || vip != netip.AddrFrom4([4]byte{192, 168, n, 254}) {
			t.Fatalf("n %d: host VIP %v outside %v or equal to the gateway", n, vip, spec.Net.Subnet)
		}
	})
}

func FuzzRenderPipelock(f *testing.F) {
	f.Add("api.anthropic.com", "*.github.com", 4000, 4001)
	for _, h := range hostile {
		f.Add(h, "/"+h, 1, 65535)
	}
	f.Fuzz(func(t *testing.T, allow1, allow2 string, port, metricsPort int) {
		spec := pipelockSpec{Port: port, MetricsPort: metricsPort, Allow: []string{allow1, allow2}}
		out, err := renderPipelock(spec)
		if !representable(allow1) || !representable(allow2) {
			if !fieldIs(err, "api_allowlist") {
				t.Fatalf("got error %v, want one naming \"api_allowlist\"", err)
			}
			return
		}
		if err != nil {
			t.Fatalf("%v", err)
		}
		checkReadBack(t, "pipelock", pipelockCase("fuzz", spec), out)
	})
}

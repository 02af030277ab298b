package main

// Small, strict readers for exactly the TOML and YAML subset our writers
// produce. They are written from the specs (TOML 1.0 "String" and "Keys",
// YAML 1.2.2 §5.7 and §7.3.1), not from quote.go, so that a quoting bug is not
// mirrored by its own inverse. Anything outside the subset is an error: a
// stray comment, an unknown construct or a non-ASCII byte fails the test
// instead of being skipped. Real parsers check the same files in verify/.

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// splitLines checks that b is the fixed header followed by printable-ASCII
// lines, each ending in "\n", and returns the lines after the header.
func splitLines(b []byte) ([]string, error) {
	s := string(b)
	if !strings.HasPrefix(s, generatedHeader) {
		return nil, errors.New("missing generated header")
	}
	s = s[len(generatedHeader):]
	if s == "" || s[len(s)-1] != '\n' {
		return nil, errors.New("does not end in a newline")
	}
	lines := strings.Split(s[:len(s)-1], "\n")
	for i, l := range lines {
		for j := 0; j < len(l); j++ {
			if l[j] < 0x20 || l[j] > 0x7e {
				return nil, fmt.Errorf("line %d: byte %#x is not printable ASCII", i+2, l[j])
			}
		}
	}
	return lines, nil
}

// readTOMLSubset reads: blank lines, `[table]`, `key = "string"`,
// `key = 123`, `key = []`, a multi-line array of strings, and
// `key = { k = "string" }`. Keys are bare or basic strings; a repeated key is
// an error, as in TOML. Integers become json.Number so the result compares
// directly with the intended value decoded from JSON.
func readTOMLSubset(b []byte) (map[string]any, error) {
	lines, err := splitLines(b)
	if err != nil {
		return nil, err
	}
	root := map[string]any{}
	cur := root
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		fail := func(msg string) error { return fmt.Errorf("line %d: %s: %q", i+2, msg, l) }
		if l == "" {
			continue
		}
		if l[0] == '[' {
			k, rest, err := tomlReadKey(l[1:])
			if err != nil || rest != "]" {
				return nil, fail("bad table header")
			}
			if _, dup := root[k]; dup {
				return nil, fail("table defined twice")
			}
			cur = map[string]any{}
			root[k] = cur
			continue
		}
		k, rest, err := tomlReadKey(l)
		if err != nil {
			return nil, fail(err.Error())
		}
		if _, dup := cur[k]; dup {
			return nil, fail("duplicate key")
		}
		rest, ok := strings.CutPrefix(rest, " = ")
		if !ok {
			return nil, fail("want ' = ' after the key")
		}
		switch {
		case rest == "[]":
			cur[k] = []any{}
		case rest == "[":
			arr := []any{}
			for i++; i < len(lines) && lines[i] != "]"; i++ {
				e, ok := strings.CutPrefix(lines[i], "  ")
				if !ok || !strings.HasSuffix(e, ",") {
					return nil, fmt.Errorf("line %d: bad array element: %q", i+2, lines[i])
				}
				v, tail, err := tomlReadString(e)
				if err != nil || tail != "," {
					return nil, fmt.Errorf("line %d: bad array element: %q", i+2, lines[i])
				}
				arr = append(arr, v)
			}
			if i == len(lines) {
				return nil, fail("unterminated array")
			}
			cur[k] = arr
		case strings.HasPrefix(rest, "{ "):
			tbl := map[string]any{}
			rest = rest[2:]
			for {
				ik, r, err := tomlReadKey(rest)
				if err != nil {
					return nil, fail(err.Error())
				}
				r, ok := strings.CutPrefix(r, " = ")
				if !ok {
					return nil, fail("bad inline table")
				}
				v, r, err := tomlReadString(r)
				if err != nil {
					return nil, fail(err.Error())
				}
				if _, dup := tbl[ik]; dup {
					return nil, fail("duplicate inline key")
				}
				tbl[ik] = v
				if r == " }" {
					break
				}
				if rest, ok = strings.CutPrefix(r, ", "); !ok {
					return nil, fail("bad inline table")
				}
			}
			cur[k] = tbl
		case rest[0] == '"':
			v, tail, err := tomlReadString(rest)
			if err != nil || tail != "" {
				return nil, fail("bad string")
			}
			cur[k] = v
		default:
			n, err := readInt(rest)
			if err != nil {
				return nil, fail(err.Error())
			}
			cur[k] = n
		}
	}
	return root, nil
}

// readInt reads a decimal integer without sign noise or leading zeros, the
// only form strconv.Itoa writes and the one both formats read alike.
func readInt(s string) (json.Number, error) {
	digits := strings.TrimPrefix(s, "-")
	if digits == "" || (len(digits) > 1 && digits[0] == '0') || strings.Trim(digits, "0123456789") != "" {
		return "", fmt.Errorf("not an integer: %q", s)
	}
	return json.Number(s), nil
}

// tomlReadKey reads a bare or basic-string key at the start of s.
func tomlReadKey(s string) (key, rest string, err error) {
	if strings.HasPrefix(s, `"`) {
		k, rest, err := tomlReadString(s)
		if err != nil {
			return "", "", err
		}
		if k == "" {
			return "", "", errors.New("empty quoted key")
		}
		return k, rest, nil
	}
	n := 0
	for n < len(s) && (s[n] >= 'A' && s[n] <= 'Z' || s[n] >= 'a' && s[n] <= 'z' || s[n] >= '0' && s[n] <= '9' || s[n] == '_' || s[n] == '-') {
		n++
	}
	if n == 0 {
		return "", "", errors.New("no key")
	}
	return s[:n], s[n:], nil
}

// tomlReadString reads one TOML 1.0 basic string at the start of s and
// returns its value and what follows it.
func tomlReadString(s string) (val, rest string, err error) {
	if !strings.HasPrefix(s, `"`) {
		return "", "", errors.New("want '\"'")
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			return b.String(), s[i+1:], nil
		case c == '\\':
			if i+1 >= len(s) {
				return "", "", errors.New("escape at end")
			}
			i++
			switch s[i] {
			case 'b':
				b.WriteByte('\b')
			case 't':
				b.WriteByte('\t')
			case 'n':
				b.WriteByte('\n')
			case 'f':
				b.WriteByte('\f')
			case 'r':
				b.WriteByte('\r')
			case '"':
				b.WriteByte('"')
			case '\\':
				b.WriteByte('\\')
			case 'u', 'U':
				n := 4
				if s[i] == 'U' {
					n = 8
				}
				r, err := readHexRune(s[i+1:], n)
				if err != nil {
					return "", "", err
				}
				b.WriteRune(r)
				i += n
			default:
				// \e, \x and the rest are TOML 1.1 or reserved.
				return "", "", fmt.Errorf("escape \\%c is not TOML 1.0", s[i])
			}
		case c < 0x20 && c != '\t' || c == 0x7f:
			return "", "", errors.New("raw control character")
		default:
			b.WriteByte(c)
		}
	}
	return "", "", errors.New("unterminated string")
}

// readHexRune reads exactly n hex digits naming a Unicode scalar value.
func readHexRune(s string, n int) (rune, error) {
	if len(s) < n {
		return 0, errors.New("short \\u escape")
	}
	v, err := strconv.ParseUint(s[:n], 16, 32)
	if err != nil || strings.ContainsAny(s[:n], "+-_") {
		return 0, fmt.Errorf("bad hex escape %q", s[:n])
	}
	r := rune(v)
	if !utf8.ValidRune(r) {
		return 0, fmt.Errorf("escape %q is not a Unicode scalar value", s[:n])
	}
	return r, nil
}

// readYAMLSubset reads block mappings and sequences indented by spaces,
// whose keys are double-quoted and whose scalars are double-quoted strings,
// decimal integers, true or false; a key with nothing nested under it is
// null. A repeated key is an error, as in yaml.v3.
func readYAMLSubset(b []byte) (any, error) {
	lines, err := splitLines(b)
	if err != nil {
		return nil, err
	}
	p := yamlParser{lines: lines}
	v, err := p.block(0)
	if err != nil {
		return nil, err
	}
	if p.i != len(lines) {
		return nil, fmt.Errorf("line %d: unexpected indentation: %q", p.i+2, lines[p.i])
	}
	return v, nil
}

type yamlParser struct {
	lines []string
	i     int
}

func (p *yamlParser) errf(format string, args ...any) error {
	return fmt.Errorf("line %d: %s: %q", p.i+2, fmt.Sprintf(format, args...), p.lines[p.i])
}

// indentOf returns the number of leading spaces of line i.
func (p *yamlParser) indentOf(i int) int {
	return len(p.lines[i]) - len(strings.TrimLeft(p.lines[i], " "))
}

// block reads the mapping or sequence whose lines are indented by n.
func (p *yamlParser) block(n int) (any, error) {
	if p.i < len(p.lines) && strings.HasPrefix(p.lines[p.i][n:], "- ") {
		seq := []any{}
		for p.i < len(p.lines) && p.indentOf(p.i) == n && strings.HasPrefix(p.lines[p.i][n:], "- ") {
			rest := p.lines[p.i][n+2:]
			if strings.HasPrefix(rest, `"`) {
				if _, tail, err := yamlReadString(rest); err == nil && strings.HasPrefix(tail, ":") {
					// "- key: ..." opens a mapping whose further keys sit at n+2.
					m := map[string]any{}
					if err := p.entry(m, n+2, rest); err != nil {
						return nil, err
					}
					if err := p.mapping(m, n+2); err != nil {
						return nil, err
					}
					seq = append(seq, m)
					continue
				}
			}
			v, err := yamlReadScalar(rest)
			if err != nil {
				return nil, p.errf("%v", err)
			}
			seq = append(seq, v)
			p.i++
		}
		return seq, nil
	}
	m := map[string]any{}
	if err := p.mapping(m, n); err != nil {
		return nil, err
	}
	return m, nil
}

// mapping reads further `"key": …` lines indented by n into m.
func (p *yamlParser) mapping(m map[string]any, n int) error {
	for p.i < len(p.lines) && p.indentOf(p.i) == n {
		if err := p.entry(m, n, p.lines[p.i][n:]); err != nil {
			return err
		}
	}
	return nil
}

// entry reads one `"key": scalar` or `"key":` + nested block, where s is the
// line's text from the key on.
func (p *yamlParser) entry(m map[string]any, n int, s string) error {
	if !strings.HasPrefix(s, `"`) {
		return p.errf("want a double-quoted key")
	}
	k, rest, err := yamlReadString(s)
	if err != nil {
		return p.errf("%v", err)
	}
	if _, dup := m[k]; dup {
		return p.errf("duplicate key")
	}
	switch {
	case rest == ":":
		p.i++
		if p.i < len(p.lines) && p.indentOf(p.i) > n {
			v, err := p.block(p.indentOf(p.i))
			if err != nil {
				return err
			}
			m[k] = v
		} else {
			m[k] = nil
		}
	case strings.HasPrefix(rest, ": "):
		v, err := yamlReadScalar(rest[2:])
		if err != nil {
			return p.errf("%v", err)
		}
		m[k] = v
		p.i++
	default:
		return p.errf("want ':' after the key")
	}
	return nil
}

// yamlReadScalar reads a whole scalar: a double-quoted string, a decimal
// integer, true or false. Plain strings are outside our subset on purpose.
func yamlReadScalar(s string) (any, error) {
	switch {
	case s == "true":
		return true, nil
	case s == "false":
		return false, nil
	case strings.HasPrefix(s, `"`):
		v, tail, err := yamlReadString(s)
		if err != nil {
			return nil, err
		}
		if tail != "" {
			return nil, fmt.Errorf("text after the string: %q", tail)
		}
		return v, nil
	}
	return readInt(s)
}

// yamlEscapes are YAML 1.2.2's single-character escapes (§5.7), including
// the ones our writer never produces: the reader follows the spec.
var yamlEscapes = map[byte]string{
	'0': "\x00", 'a': "\a", 'b': "\b", 't': "\t", '\t': "\t", 'n': "\n",
	'v': "\v", 'f': "\f", 'r': "\r", 'e': "\x1b", ' ': " ", '"': `"`,
	'/': "/", '\\': `\`, 'N': "\u0085", '_': "\u00a0", 'L': "\u2028", 'P': "\u2029",
}

// yamlReadString reads one single-line YAML 1.2 double-quoted scalar at the
// start of s (escapes per spec 1.2.2 §5.7) and returns what follows it.
func yamlReadString(s string) (val, rest string, err error) {
	if !strings.HasPrefix(s, `"`) {
		return "", "", errors.New("want '\"'")
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		c := s[i]
		if c == '"' {
			return b.String(), s[i+1:], nil
		}
		if c != '\\' {
			b.WriteByte(c)
			continue
		}
		if i+1 >= len(s) {
			return "", "", errors.New("escape at end")
		}
		i++
		if r, ok := yamlEscapes[s[i]]; ok {
			b.WriteString(r)
			continue
		}
		n := map[byte]int{'x': 2, 'u': 4, 'U': 8}[s[i]]
		if n == 0 {
			return "", "", fmt.Errorf("unknown escape \\%c", s[i])
		}
		r, err := readHexRune(s[i+1:], n)
		if err != nil {
			return "", "", err
		}
		b.WriteRune(r)
		i += n
	}
	return "", "", errors.New("unterminated string")
}

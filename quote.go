package main

// This file holds the only functions that turn a Go string into TOML or YAML
// text. It imports nothing from the rest of the package on purpose: the
// test-only verify/ module carries a byte-identical copy (apart from the
// package clause) and fuzzes it against the real parsers our consumers use.

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// maxYAMLKey is the longest implicit mapping key YAML 1.2 allows: "at most
// 1024 characters altogether" (spec 1.2.2, production ns-s-implicit-yaml-key).
const maxYAMLKey = 1024

// quotable refuses what neither quoting can carry unchanged: invalid UTF-8,
// and NUL, since smolvm passes these strings to exec and mount calls, where
// a NUL would silently truncate the value.
func quotable(s string) error {
	if !utf8.ValidString(s) {
		return errors.New("not valid UTF-8")
	}
	if strings.IndexByte(s, 0) >= 0 {
		return errors.New("contains a NUL byte")
	}
	return nil
}

// tomlString returns s as a TOML 1.0 basic string. The output is printable
// ASCII only: \n, \t and \r get their short escapes, everything else
// \uXXXX or \UXXXXXXXX, the only numeric escapes TOML 1.0 defines (toml.md
// v1.0.0, "String"). strconv.Quote is not used because it emits \a, \v and
// \xNN, which TOML 1.0 rejects.
func tomlString(s string) (string, error) {
	if err := quotable(s); err != nil {
		return "", err
	}
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\r':
			b.WriteString(`\r`)
		case r >= 0x20 && r < 0x7f:
			b.WriteRune(r)
		case r <= 0xffff:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			fmt.Fprintf(&b, `\U%08X`, r)
		}
	}
	b.WriteByte('"')
	return b.String(), nil
}

// tomlKey returns k as a TOML key: bare when it is one of the characters
// TOML allows in bare keys (A-Za-z0-9_-), quoted otherwise, so that a dot can
// never turn one key into a nested table.
func tomlKey(k string) (string, error) {
	if k == "" {
		return "", errors.New("empty key")
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return tomlString(k)
		}
	}
	return k, nil
}

// yamlString returns s as a YAML 1.2 double-quoted scalar. Every escape
// strconv.QuoteToASCII produces (\a \b \f \n \r \t \v \\ \" \xXX \uXXXX
// \UXXXXXXXX) is a YAML escape with the same meaning (spec 1.2.2 §5.7), and
// the output is printable ASCII. Invalid UTF-8 is refused (quotable): Go
// would write a stray byte as \xff, which YAML reads as U+00FF.
func yamlString(s string) (string, error) {
	if err := quotable(s); err != nil {
		return "", err
	}
	return strconv.QuoteToASCII(s), nil
}

// yamlKey returns k as a double-quoted YAML mapping key, refusing keys
// longer than an implicit key may be.
func yamlKey(k string) (string, error) {
	q, err := yamlString(k)
	if err != nil {
		return "", err
	}
	if len(q) > maxYAMLKey {
		return "", fmt.Errorf("key longer than %d characters", maxYAMLKey)
	}
	return q, nil
}

// shellQuote renders argv for reading (and pasting into a POSIX shell).
// It is display only: smolbottle never runs a shell.
func shellQuote(argv []string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.Trim(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:=,@+") == "" {
			out[i] = a
		} else {
			out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(out, " ")
}

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Output policy. Standard output carries only what a command was asked for
// (a plan, a listing, a guest command's output, -h). Everything else goes to
// standard error, prefixed "smolbottle:", lowercase, with no final period:
//
//   - "smolbottle: error: …" once per failed command, printed by exitCode
//     and nowhere else; user values appear %q-quoted.
//   - "smolbottle: hint: …" lines after it say what to change, each a
//     command that works when typed as shown.
//   - A child's log tail follows the error line, never repeating a line
//     the error already says (withTail). Every line after an error's or
//     hint's first is printed marked "  | ", so that no line a child or
//     the guest wrote passes for one of smolbottle's own.
//   - A child's or the guest's text may hold any byte: error and hint
//     lines are printed with control characters, hidden ones and invalid
//     UTF-8 escaped (printable), so none reaches the terminal.
//   - Usage errors (a bad flag, a missing or malformed argument, a value
//     outside its field's limits) are one error line, at most one hint
//     pointing at `smolbottle SUBCOMMAND -h`, and exit status 2; -h prints
//     that subcommand's usage on standard output and exits 0.
//   - Any other failure exits 1; exec and run pass the guest command's
//     status through (exitStatus) and print nothing more.
//
// Nothing below main exits: errors are returned up to runCLI, and main calls
// exitCode once.

// errUsage marks an error that is the caller's fault: exit status 2.
var errUsage = errors.New("usage")

// usageError wraps a message as a usage error.
func usageError(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errUsage}, args...)...)
}

// inputError is a usage error about one user value that failed its
// validation at the boundary, such as a bad -allow entry.
func inputError(err error) error {
	if err == nil || errors.Is(err, errUsage) {
		return err
	}
	return usageErrorFrom(err)
}

// usageErrorFrom marks err as a usage error, keeping its hints.
func usageErrorFrom(err error) error {
	var h hinted
	if errors.As(err, &h) {
		return hinted{usageErrorFrom(h.err), h.hints}
	}
	return fmt.Errorf("%w: %w", errUsage, err)
}

// exitCode prints err the way every smolbottle error is printed and returns
// the exit status: 0 success, 1 failure, 2 usage.
func exitCode(stderr io.Writer, err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	}
	var ec exitStatus
	if errors.As(err, &ec) {
		return int(ec)
	}
	msg := err.Error()
	if errors.Is(err, errUsage) {
		msg = strings.TrimPrefix(msg, errUsage.Error()+": ")
	}
	fmt.Fprintf(stderr, "smolbottle: error: %s\n", printable(strings.ReplaceAll(msg, "\n", "\n  | ")))
	var h hinted
	if errors.As(err, &h) {
		for _, line := range h.hints {
			fmt.Fprintf(stderr, "smolbottle: hint: %s\n", printable(strings.ReplaceAll(line, "\n", "\n  | ")))
		}
	}
	if errors.Is(err, errUsage) {
		return 2
	}
	return 1
}

// exitStatus is returned when a guest command's exit status must pass
// through unchanged and nothing more is to be printed.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// hinted carries hint lines printed after the error line.
type hinted struct {
	err   error
	hints []string
}

func (h hinted) Error() string { return h.err.Error() }
func (h hinted) Unwrap() error { return h.err }

// withHint attaches hint lines to err.
func withHint(err error, hints ...string) error { return hinted{err, hints} }

// flagError turns a flag package error into one usage error line: Go's own
// wording ("flag provided but not defined: -x") is replaced, and the hint
// points at the subcommand's -h. -h itself stays flag.ErrHelp (exit 0).
func flagError(cmd string, err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: "); ok {
		msg = fmt.Sprintf("unknown flag %q", name)
	} else if name, ok := strings.CutPrefix(msg, "flag needs an argument: "); ok {
		msg = fmt.Sprintf("flag %s needs a value", name)
	} else if strings.HasPrefix(msg, "invalid ") {
		// "invalid value "x" for flag -cpus: parse error": drop Go's cause.
		msg, _, _ = strings.Cut(msg, ": ")
		msg = strings.Replace(msg, "for flag ", "for ", 1)
	}
	return withHint(usageError("%s", msg), "smolbottle "+cmd+" -h lists its flags")
}

// hidden reports whether r changes how text around it reads without being
// seen: the bidi controls (Unicode Bidi_Control), soft hyphen, Mongolian
// vowel separator, zero-width space, BOM, word joiner and the invisible
// operators, the deprecated format characters, the interlinear
// annotation marks.
func hidden(r rune) bool {
	switch {
	case unicode.Is(unicode.Bidi_Control, r), r == '\u00ad', r == '\u180e', r == '\u200b', r == '\ufeff',
		r >= '\u2060' && r <= '\u2064', r >= '\u206a' && r <= '\u206f', r >= '\ufff9' && r <= '\ufffb':
		return true
	}
	return false
}

// printable returns s with every control character but newline and tab,
// every hidden character and every byte of invalid UTF-8 written as a Go
// escape.
func printable(s string) string {
	var b strings.Builder
	for i, r := range s {
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"):
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r != '\n' && r != '\t' && (unicode.IsControl(r) || hidden(r)):
			b.WriteString(strings.Trim(strconv.QuoteToASCII(string(r)), `"`))
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// withTail appends a child's log tail to err's message, keeping err
// wrapped. Lines the message already holds are left out: a supervisor
// logs the same error it reports, and a sidecar's tail may be in both.
func withTail(err error, tail string) error {
	msg := err.Error()
	var keep []string
	for _, line := range strings.Split(strings.TrimSpace(tail), "\n") {
		// A tail of smolbottle's own log holds its marked lines: exitCode
		// marks them again.
		line = strings.TrimPrefix(line, "  | ")
		l := strings.TrimSpace(strings.TrimPrefix(line, "smolbottle: error: "))
		if l == "" || strings.Contains(msg, l) {
			continue
		}
		keep = append(keep, line)
	}
	if len(keep) == 0 {
		return err
	}
	return fmt.Errorf("%w\n%s", err, strings.Join(keep, "\n"))
}

// firstLine shortens a child's unexpected output for an error: its first
// line, at most 200 bytes, or err when there is no output.
func firstLine(out string, err error) string {
	out = strings.TrimSpace(out)
	if i := strings.IndexByte(out, '\n'); i >= 0 {
		out = out[:i]
	}
	if len(out) > 200 {
		out = out[:200]
	}
	if out == "" && err != nil {
		return err.Error()
	}
	if out == "" {
		return "no output"
	}
	return out
}

// fileTail returns up to n bytes from the end of a file, none before
// offset from.
func fileTail(path string, from, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(fi.Size()-n, from, 0)
	if off >= fi.Size() {
		return ""
	}
	b := make([]byte, fi.Size()-off)
	f.ReadAt(b, off)
	return string(b)
}

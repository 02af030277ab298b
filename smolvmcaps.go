package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
)

// What smolbottle needs from smolvm beyond v1.9.3, the newest release whose
// source was read, and how it copes without it. doctor prints this table;
// up's errors quote it. Capabilities are detected by name (a flag in
// `--help`), never guessed from a version number.

// smolvmCap is one row of the capability table.
type smolvmCap struct {
	Name string // as doctor prints it
	For  string // what smolbottle needs it for
	Adds string // the smolvm change that adds it
	// Without says how smolbottle copes when it is missing or unknown.
	Without string
}

var (
	capMountSocket = smolvmCap{
		Name:    "machine create --mount-socket",
		For:     "bridges the guest link socket (to gvproxy) into the guest, the machine's only network",
		Adds:    "present in smolvm v1.9.3 (src/cli/machine.rs:3037-3038)",
		Without: "required: no bottle can run",
	}
	capExecUser = smolvmCap{
		Name:    "machine exec --user",
		For:     "gvforwarder creates tap0 and the guest network is configured as root, whatever the image's USER",
		Adds:    "smol-machines/smolvm PR #1148; not in v1.9.3",
		Without: "up runs those steps as the image's USER, which must then be root",
	}
	capTun = smolvmCap{
		Name:    "/dev/net/tun in image containers",
		For:     "gvforwarder opens it to create tap0",
		Adds:    "smol-machines/smolvm PR #1146; not in v1.9.3",
		Without: "not detectable without booting a machine: up creates it as root (mknod /dev/net/tun c 10 200) when missing",
	}
)

// capDetail is the capability's line pair in doctor's report.
func (c smolvmCap) detail() []string {
	return []string{"for: " + c.For, "added by: " + c.Adds, "without it: " + c.Without}
}

// prepareReport is what `_guestnet -prepare` prints: the uid it ran as and
// what it found of /dev/net/tun.
type prepareReport struct {
	UID int    `json:"uid"`
	Tun string `json:"tun"`
}

const (
	tunPresent = "present" // the container had it (smolvm PR #1146)
	tunCreated = "created" // made by root with mknod
	tunSkipped = "skipped" // not root: nothing was done
)

// parsePrepareReport reads the report from the guest's stdout.
func parsePrepareReport(out string) (prepareReport, error) {
	var r prepareReport
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil || dec.More() {
		return r, fmt.Errorf("guest preparation printed %q, not its report", firstLine(out, nil))
	}
	switch r.Tun {
	case tunPresent, tunCreated, tunSkipped:
	default:
		return r, fmt.Errorf("guest preparation reported tun %q", r.Tun)
	}
	if r.UID < 0 || (r.UID == 0) == (r.Tun == tunSkipped) {
		return r, fmt.Errorf("guest preparation reported uid %d with tun %q", r.UID, r.Tun)
	}
	return r, nil
}

// hasFlag reports whether `smolvm machine SUB --help` lists flag. The
// help text is read once per subcommand.
func (s *smolvm) hasFlag(ctx context.Context, sub, flag string) (bool, error) {
	s.mu.Lock()
	help, ok := s.helps[sub]
	s.mu.Unlock()
	if !ok {
		out, err := s.call(ctx, smolvmCall{args: []string{"machine", sub, "--help"}})
		if err != nil {
			return false, err
		}
		help = string(out)
		s.mu.Lock()
		s.helps[sub] = help
		s.mu.Unlock()
	}
	return helpHasFlag(help, flag), nil
}

// helpHasFlag reports whether clap help text lists flag as an option, as
// in "  -n, --name <NAME>" or "      --user <USER>".
func helpHasFlag(help, flag string) bool {
	for line := range strings.Lines(help) {
		fields := strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == '\t' || r == ',' || r == '\n' || r == '\r' })
		if len(fields) == 0 || !strings.HasPrefix(fields[0], "-") {
			continue // flags open their help line; descriptions do not count
		}
		for _, f := range fields {
			if !strings.HasPrefix(f, "-") {
				break
			}
			f, _, _ = strings.Cut(f, "=")
			f, _, _ = strings.Cut(f, "[")
			if f == flag {
				return true
			}
		}
	}
	return false
}

package main

import (
	"errors"
	"math"
	"strconv"
	"strings"
)

// Smolfile facts (crates/smolvm-smolfile/src/lib.rs:225-252 @ v1.9.3): smolvm reads it with a strict
// TOML 1.0 parser into structs with deny_unknown_fields, so only the keys
// below appear. There is no net key: a machine without network intent gets
// no network device at all, and its only network is the gvproxy socket
// mounted with --mount-socket (a flag, not a Smolfile key). It holds no
// [secrets]: credentials stay on the host, in the credential sidecar.

// envVar is one guest environment variable, in a fixed order.
type envVar struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// smolfileSpec is everything the Smolfile depends on.
type smolfileSpec struct {
	Image   string   // the local image; create's --image overrides it, and only --image resolves a local path
	Workdir string   // guest working directory
	CPUs    int      // virtual CPUs
	MemMiB  int      // memory in MiB
	Volumes []string // "HOST:GUEST[:ro]", already validated
	Env     []envVar // guest environment, in order
}

// Limits of the Smolfile's integer fields: smolvm declares cpus as u8 and
// memory as u32 (crates/smolvm-smolfile/src/lib.rs:250-252 @ v1.9.3), and a machine needs at least one
// of each.
const (
	maxSmolCPUs   = math.MaxUint8
	maxSmolMemMiB = math.MaxUint32
)

// renderSmolfile returns the Smolfile TOML for spec.
func renderSmolfile(spec smolfileSpec) ([]byte, error) {
	var t tomlWriter
	t.buf.WriteString(generatedHeader)
	t.keyString("image", spec.Image)
	t.keyString("workdir", spec.Workdir)
	// Out-of-range integers would only fail later inside smolvm, far from
	// the cause; refusing here names the field.
	if spec.CPUs < 1 || spec.CPUs > maxSmolCPUs {
		t.fail("cpus", errors.New("out of range 1.."+strconv.Itoa(maxSmolCPUs)))
	}
	if spec.MemMiB < 1 || int64(spec.MemMiB) > maxSmolMemMiB {
		t.fail("memory", errors.New("out of range 1.."+strconv.FormatInt(maxSmolMemMiB, 10)))
	}
	t.keyInt("cpus", spec.CPUs)
	t.keyInt("memory", spec.MemMiB)
	t.keyStrings("volumes", spec.Volumes)
	env := make([]string, len(spec.Env))
	for i, e := range spec.Env {
		// smolvm splits "K=V" at the first '=', so a name holding '=' (or
		// an empty one) would silently set a different variable.
		if e.Name == "" || strings.IndexByte(e.Name, '=') >= 0 {
			t.fail("env["+strconv.Itoa(i)+"].name", errors.New("must be non-empty and must not contain '='"))
		}
		env[i] = e.Name + "=" + e.Value
	}
	t.keyStrings("env", env)
	return t.result()
}

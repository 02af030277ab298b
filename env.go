package main

import (
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// Child environments. No child program inherits smolbottle's environment:
// each gets an allow-list of it, built here, and never a proxy variable or a
// credential. Credentials reach only the credential sidecar, in memory,
// through a pipe (supervisor.go); the guest holds placeholders.
//
//   - smolvm: where it keeps its data, its logging, the locale. smolvm start
//     falls back to the host's proxy variables for the in-guest image pull,
//     so those are never passed.
//   - sidecars (pipelock, git-gate, supervise): PATH, TMPDIR, the user's
//     identity, home, locale, time zone and XDG_* directories. The supervisor (_supervise), which starts them,
//     gets the same plus SSL_CERT_FILE and SSL_CERT_DIR, the roots its
//     credential sidecar verifies the API with, and SMOLBOTTLE_UP, the up
//     that started it (supervisor.go).
//   - version and help probes (preflight): a fixed PATH, HOME and LANG=C.
//   - gvproxy, _confine and _dropexec on the host: nothing at all (an empty
//     environment, set where they are started).
//   - in the guest, gvforwarder, _guestnet and _probe run through smolvm
//     machine exec with the guest's own environment; smolbottle adds none.
//
// No child inherits a descriptor either: every smolbottle process starts
// with closeOnExecInherited (best effort in main; _supervise and _dropexec
// refuse to go on without it), and a child gets stdio and what is handed
// to it explicitly (ExtraFiles), nothing else.

// smolvmEnv returns the environment smolvm runs with.
func smolvmEnv(parent []string) []string {
	return filterEnv(parent, func(name string) bool {
		switch name {
		case "PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "RUST_LOG", "LANG":
			return true
		}
		return strings.HasPrefix(name, "XDG_") || strings.HasPrefix(name, "SMOLVM_") || strings.HasPrefix(name, "LC_")
	})
}

// sidecarEnv returns the environment sidecars run with.
func sidecarEnv(parent []string) []string {
	return filterEnv(parent, func(name string) bool {
		switch name {
		case "PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "LANG", "TZ":
			return true
		}
		return strings.HasPrefix(name, "LC_") || strings.HasPrefix(name, "XDG_")
	})
}

// supervisorEnv returns the environment the supervisor runs with: a
// sidecar's, and SSL_CERT_FILE and SSL_CERT_DIR, which choose the roots the
// credential sidecar verifies the Messages API with.
func supervisorEnv(parent []string) []string {
	return append(sidecarEnv(parent), filterEnv(parent, func(name string) bool {
		return name == "SSL_CERT_FILE" || name == "SSL_CERT_DIR"
	})...)
}

// probeEnv is the whole environment of a version or help probe.
func probeEnv() []string {
	return []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + os.Getenv("HOME"), "LANG=C"}
}

// filterEnv returns the entries of env whose names keep accepts and that
// are not proxy variables, one per name (the last wins, as in os/exec),
// sorted.
func filterEnv(env []string, keep func(string) bool) []string {
	m := make(map[string]string, len(env))
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && k != "" {
			m[k] = v
		}
	}
	var out []string
	for k, v := range m {
		if keep(k) && !isProxyVar(k) {
			out = append(out, k+"="+v)
		}
	}
	slices.Sort(out)
	return out
}

// isProxyVar reports whether name is a proxy variable in any case.
func isProxyVar(name string) bool {
	switch strings.ToUpper(name) {
	case "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "FTP_PROXY":
		return true
	}
	return false
}

// closeOnExecInherited marks every descriptor above stderr close-on-exec:
// what the caller left open without it (a shell's, a CI runner's) must
// reach no child. What a child is handed on purpose (ExtraFiles: the
// supervisor's fd 3 ready pipe and fd 4 credentials pipe, _confine's fd 3
// status socket) is set in place by exec after this, and the internal
// command uses it itself: it passes it on to no one. main runs it in every
// process; _dropexec runs it again and fails if it cannot.
func closeOnExecInherited() error {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		if entries, err = os.ReadDir("/dev/fd"); err != nil {
			return err
		}
	}
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
	return nil
}

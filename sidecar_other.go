//go:build !linux

package main

import "syscall"

// sidecarSysProcAttr puts a sidecar in its own process group. There is no
// Pdeathsig off Linux, and the state file records no sidecars, so a
// sidecar would outlive a supervisor that crashed; but off Linux the
// preflight fails (checkNamespaces), so up never starts a supervisor.
func sidecarSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// portOwnedByGroup cannot tell who holds a port without /proc; the
// sidecar's early exit on "address already in use" is the only signal.
func portOwnedByGroup(pgid, port int) (owned, known bool) { return false, false }

// diesWithParent: no Pdeathsig off Linux.
func diesWithParent() *syscall.SysProcAttr { return nil }

// setSubreaper does nothing: no subreaper off Linux, where no supervisor
// runs.
func setSubreaper() error { return nil }

//go:build !linux

package main

import "syscall"

// sidecarSysProcAttr puts a sidecar in its own process group. Without
// Pdeathsig (Linux only) the supervisor's state file is what lets down
// find and stop sidecars after a crash.
func sidecarSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// portOwnedByGroup cannot tell who holds a port without /proc; the
// sidecar's early exit on "address already in use" is the only signal.
func portOwnedByGroup(pgid, port int) (owned, known bool) { return false, false }

package main

import "syscall"

// sidecarSysProcAttr puts a sidecar in its own process group and has the
// kernel kill it when the supervisor dies. Pdeathsig follows the thread
// that started the child; Go retires a thread only when a goroutine locked
// to it exits, which the supervisor never does around a start.
func sidecarSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

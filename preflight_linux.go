package main

import (
	"os"
	"syscall"
)

// confineCloneflags are the namespaces gvproxy's jail is made of (jail.go)
// and the ones doctor's namespace check creates, so that the check passes
// exactly when the jail can be built: a user namespace (even as root, so
// the capabilities held inside are worth nothing outside, and the same code
// runs unprivileged), a network namespace holding only lo, a private mount
// namespace for the read-only chroot, and a PID namespace whose init is
// _confine (when _confine dies for any reason, the kernel kills gvproxy
// with it, whatever happens to the Pdeathsig of individual threads).
const confineCloneflags = syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET | syscall.CLONE_NEWNS | syscall.CLONE_NEWPID

// nsAttr asks for the jail's namespaces, in which the caller's uid and gid
// map to root, and SIGKILL when the parent dies. startConfined starts
// _confine with it and doctor its check, so they cannot drift apart.
func nsAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Cloneflags:  confineCloneflags,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
		Pdeathsig:   syscall.SIGKILL,
	}
}

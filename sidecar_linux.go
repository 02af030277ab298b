package main

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// sidecarSysProcAttr puts a sidecar in its own process group and has the
// kernel kill it when the supervisor dies. Pdeathsig follows the thread
// that started the child; Go retires a thread only when a goroutine locked
// to it exits, which the supervisor never does around a start.
func sidecarSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// setSubreaper marks this process a child subreaper (prctl(2),
// PR_SET_CHILD_SUBREAPER, 36): a process whose parent dies is reparented
// to its nearest living ancestor so marked instead of to init, whatever
// its session or group. Children do not inherit the mark.
func setSubreaper() error {
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, 36, 1, 0); e != 0 {
		return e
	}
	return nil
}

// diesWithParent has the kernel kill a child when this process dies
// (Pdeathsig; the thread caveat of sidecarSysProcAttr holds).
func diesWithParent() *syscall.SysProcAttr { return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} }

// portOwnedByGroup reports whether every socket listening on TCP port
// belongs to a process in process group pgid. The relays send the guest's
// traffic to 127.0.0.1:port, so a program that bound the port first and
// answered the health check would otherwise receive it in the sidecar's
// place. It reads /proc/net/tcp{,6} and /proc/PID/fd; known is false
// when /proc cannot tell.
func portOwnedByGroup(pgid, port int) (owned, known bool) {
	listening := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		if err := listenInodes(f, port, listening); err != nil {
			return false, false
		}
	}
	if len(listening) == 0 {
		return false, true
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return false, false
	}
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || procGroup(pid) != pgid {
			continue
		}
		fds, _ := os.ReadDir("/proc/" + p.Name() + "/fd")
		for _, fd := range fds {
			link, err := os.Readlink("/proc/" + p.Name() + "/fd/" + fd.Name())
			if inode, ok := strings.CutPrefix(link, "socket:["); err == nil && ok {
				delete(listening, strings.TrimSuffix(inode, "]"))
			}
		}
	}
	return len(listening) == 0, true
}

// listenInodes adds the inodes of the sockets in LISTEN state on port
// from one /proc/net/tcp-format file.
func listenInodes(path string, port int, into map[string]bool) error {
	f, err := os.Open(path)
	if os.IsNotExist(err) && strings.HasSuffix(path, "6") {
		return nil // no IPv6
	}
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || fields[3] != "0A" {
			continue
		}
		_, hexPort, ok := strings.Cut(fields[1], ":")
		if p, err := strconv.ParseUint(hexPort, 16, 16); ok && err == nil && int(p) == port {
			into[fields[9]] = true
		}
	}
	return sc.Err()
}

// procGroup returns the process group of pid (/proc/PID/stat field 5),
// or -1.
func procGroup(pid int) int {
	f, err := procStat(pid, 5)
	if err != nil {
		return -1
	}
	g, err := strconv.Atoi(f)
	if err != nil {
		return -1
	}
	return g
}

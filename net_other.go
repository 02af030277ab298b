//go:build !linux

package main

import (
	"context"
	"errors"
	"io"
	"net"
)

// The confinement, the guest setup and the selftest use Linux namespaces.
// Elsewhere these commands fail closed: there is no confinement off Linux.
const (
	confineCmd       = "_confine"
	dropExecCmd      = "_dropexec"
	guestNetCmd      = "_guestnet"
	selftestHostCmd  = "_selftest-host"
	selftestPeerCmd  = "_selftest-peer"
	selftestGuestCmd = "_selftest-guest"
)

var errNeedsLinux = errors.New("this needs Linux namespaces; nothing was started")

// selftestOptions mirrors selftest.go's.
type selftestOptions struct {
	gvproxy, gvforwarder string
	verbose, unconfined  bool
}

func runSelftest(ctx context.Context, o selftestOptions, stdout, stderr io.Writer) error {
	return withHint(errNeedsLinux, "run the selftest on Linux; there is no confinement off Linux")
}

func runNetInternal(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if args[0] == probeCmd {
		return runProbeCmd(ctx, args[1:], stdout, stderr)
	}
	return errNeedsLinux
}

// confineSpec mirrors jail.go's so that the supervisor builds everywhere;
// off Linux startConfined fails closed.
type confineSpec struct {
	Gvproxy string
	Net     bottleNet
	Stage   string
	Ports   []int
	Log     io.Writer
	Serve   map[int]func(net.Listener)
}

type confinedNet struct{ InnerPID, GvproxyPID int }

func (c *confinedNet) Close() error          { return nil }
func (c *confinedNet) Done() <-chan struct{} { return nil }

func startConfined(ctx context.Context, spec confineSpec) (*confinedNet, error) {
	return nil, withHint(errNeedsLinux, "run smolbottle on Linux; there is no confinement off Linux yet")
}

//go:build linux

package main

import (
	"context"
	"os/exec"

	"syscall"
)

// The selftest's negative control: stock gvproxy, unconfined, in the
// selftest's own sandbox namespaces, so that the matrix can show which rows
// a confinement is needed for (`smolbottle selftest -unconfined`). It is
// harness, not core: startConfined has no switch that reaches it, and
// TestCoreNeverStartsStockGvproxy proves from the source that nothing up,
// run, _supervise or the internal commands they start can call it.

// startStockGvproxy starts gvproxy directly in the caller's namespaces with
// the bottle's rendered config; the guest connects to gvproxy's own socket
// (there is no link front) and can reach whatever the caller can.
func startStockGvproxy(ctx context.Context, spec confineSpec) (*confinedNet, error) {
	sock, _, _ := stagePaths(spec.Stage)
	c, configPath, logw, _, err := prepareGvproxy(spec, sock)
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	c.cancel = cancel
	fail := func(err error) (*confinedNet, error) {
		c.Close()
		return nil, err
	}
	cmd := exec.CommandContext(runCtx, spec.Gvproxy, "-config", configPath)
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = []string{}, "/", logw, logw
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	setStop(cmd)
	if err := cmd.Start(); err != nil {
		return fail(setupStepError("start gvproxy", err))
	}
	c.cmd, c.GvproxyPID = cmd, cmd.Process.Pid
	go c.wait()
	if err := waitGvproxyReady(runCtx, c.SocketPath, c.done, confineReadyTimeout); err != nil {
		return fail(err)
	}
	c.LinkPath = c.SocketPath
	context.AfterFunc(runCtx, func() { c.Close() })
	return c, nil
}

// startSelftestNet starts the network the matrix probes: confined, or
// stock gvproxy for the negative control.
func startSelftestNet(ctx context.Context, spec confineSpec, unconfined bool) (*confinedNet, error) {
	if unconfined {
		return startStockGvproxy(ctx, spec)
	}
	return startConfined(ctx, spec)
}

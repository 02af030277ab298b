// Smolbottle runs an AI coding agent inside a smolvm microVM whose only
// network is a confined gvproxy user-mode network.
//
// (The full manual is written as the subcommands land.)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// errUsage marks an error that is the caller's fault: exit status 2.
var errUsage = errors.New("usage")

// usageError wraps a message as a usage error.
func usageError(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errUsage}, args...)...)
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(os.Stderr, err))
}

// exitCode prints err the way every smolbottle error is printed and returns
// the exit status: 0 success, 1 failure, 2 usage.
func exitCode(stderr io.Writer, err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	}
	var ec exitStatus
	if errors.As(err, &ec) {
		return int(ec)
	}
	msg := err.Error()
	if errors.Is(err, errUsage) {
		msg = trimUsagePrefix(msg)
	}
	fmt.Fprintf(stderr, "smolbottle: error: %s\n", msg)
	var h hinted
	if errors.As(err, &h) {
		for _, line := range h.hints {
			fmt.Fprintf(stderr, "smolbottle: hint: %s\n", line)
		}
	}
	if errors.Is(err, errUsage) {
		return 2
	}
	return 1
}

// exitStatus is returned when a guest command's exit status must pass
// through unchanged and nothing more is to be printed.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// hinted carries hint lines printed after the error line.
type hinted struct {
	err   error
	hints []string
}

func (h hinted) Error() string { return h.err.Error() }
func (h hinted) Unwrap() error { return h.err }

// withHint attaches hint lines to err.
func withHint(err error, hints ...string) error { return hinted{err, hints} }

func trimUsagePrefix(msg string) string {
	const p = "usage: "
	if len(msg) >= len(p) && msg[:len(p)] == p {
		return msg[len(p):]
	}
	return msg
}

// run is the whole program; it returns instead of exiting so that every
// deferred cleanup runs.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError("no subcommand")
	}
	switch args[0] {
	// Subcommand cases are added here, one per line.
	case "selftest":
		return runSelftest(ctx, args[1:], stdout, stderr)
	case confineCmd, dropExecCmd, guestNetCmd, probeCmd, selftestHostCmd, selftestPeerCmd, selftestGuestCmd:
		return runNetInternal(ctx, args, stdout, stderr) // internal: argv built by the network code only
	default:
		return usageError("unknown subcommand %q", args[0])
	}
}

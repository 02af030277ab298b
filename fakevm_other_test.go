//go:build !linux

package main

import (
	"errors"
	"os"
	"testing"
)

// The fake VM needs Linux namespaces (fakevm_test.go). Elsewhere the fake
// smolvm's start fails, as smolvm's would on a host it cannot run on.

var errFakeVM = errors.New("fake: the fake VM needs Linux namespaces")

func fakeVMStart(dir string, m *fakeMachine, tun bool) (int, error) { return 0, errFakeVM }

func fakeVMStop(dir string, pid int) {}

func fakeVMCall(dir string, pid int, req fakeVMRequest, files ...*os.File) (fakeVMReply, error) {
	return fakeVMReply{}, errFakeVM
}

// needFakeVM skips: there is no fake VM off Linux.
func needFakeVM(t testing.TB) {
	t.Helper()
	t.Skip(errFakeVM.Error())
}

func fakeIsVM(pid int) bool { return false }

//go:build !linux

package main

import "syscall"

// nsAttr is never used off Linux: checkNamespaces reports there is no
// namespace confinement before it would start anything.
func nsAttr() *syscall.SysProcAttr { return nil }

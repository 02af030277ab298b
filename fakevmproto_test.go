package main

import "time"

// The request and reply of the fake VM's control socket, shared by the
// fake smolvm (the client) and the fake VM (fakevm_test.go, Linux only).

// fakeVMPath is the guest's PATH: the VM's own (exec looks commands up
// with it) and the default of every exec.
const fakeVMPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// fakeVMRequest is one request on the control socket.
type fakeVMRequest struct {
	Op      string        `json:"op"` // exec, write or read
	Argv    []string      `json:"argv,omitempty"`
	Env     []string      `json:"env,omitempty"`
	Dir     string        `json:"dir,omitempty"`
	User    string        `json:"user,omitempty"`
	Detach  bool          `json:"detach,omitempty"`
	Timeout time.Duration `json:"timeout,omitempty"`
	Path    string        `json:"path,omitempty"` // write, read
	Data    []byte        `json:"data,omitempty"` // write
}

// fakeVMReply answers a request. Err is the VM's own failure to run it.
type fakeVMReply struct {
	Code int    `json:"code"`
	PID  int    `json:"pid,omitempty"`
	Data []byte `json:"data,omitempty"`
	Err  string `json:"err,omitempty"`
}

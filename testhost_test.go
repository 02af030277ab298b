//go:build linux

package main

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A test host is a TLS server for one DNS name, in a network namespace the
// test creates, that the real pipelock resolves and reaches: the stand-in
// for an allowed host on the internet (api.anthropic.com and the like),
// with no traffic leaving the machine.
//
// Reaching it through the config plan renders, unchanged: the server's
// address is in 198.18.0.0/15 (RFC 2544, benchmarking; never routed on the
// internet), which pipelock does not count as internal: it is absent from
// its core SSRF ranges (internal/scanner/core.go:149-162 @ v2.3.0) and from
// the default internal list (internal/config/normalize.go:222-237 @
// v2.3.0). So no SSRF relaxation (trusted_domains, ssrf.ip_allowlist) is
// needed, in the test or anywhere.
//
// Resolving it by name: pipelock is built with CGO_ENABLED=0 and resolves
// with net.DefaultResolver, both in the scan (internal/scanner/scanner.go:821
// @ v2.3.0) and when it dials the tunnel (internal/proxy/proxy.go:1774 @
// v2.3.0, which checks the address again): Go's own resolver, which reads
// /etc/hosts first. pipelockResolving links a "pipelock" that enters a
// private mount namespace, binds a hosts file naming the test hosts over
// /etc/hosts and execs the real pipelock (same pid, so the supervisor's
// Pdeathsig and signals reach it).
//
// A Go client other than pipelock trusts the test CA through
// SSL_CERT_FILE=CAFile (crypto/x509 reads it on Linux); curl through
// --cacert.

func init() { pipelockWrapped = runPipelockWrapped }

// testHost is one running test host.
type testHost struct {
	Name   string     // the DNS name its certificate carries
	Addr   netip.Addr // its address (198.18.x.y) in its namespace
	Port   int        // 443
	CAPEM  []byte     // the test CA that signed its certificate, PEM
	CAFile string     // a 0600 file holding CAPEM
	Netns  string     // the `ip netns` name of its namespace
}

// Target is NAME:PORT, as a CONNECT asks for it.
func (h *testHost) Target() string { return fmt.Sprintf("%s:%d", h.Name, h.Port) }

// URL is https://NAME/.
func (h *testHost) URL() string { return "https://" + h.Name + "/" }

// needTestHosts skips (fails in CI) where test hosts cannot be made: they
// need root and ip(8) for the namespace and the veth pair.
func needTestHosts(t testing.TB) {
	t.Helper()
	_, err := exec.LookPath("ip")
	switch {
	case err != nil:
	case os.Geteuid() != 0:
		err = fmt.Errorf("not root")
	default:
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("test hosts need root and ip(8): %v", err)
	}
	t.Skipf("test hosts need root and ip(8): %v", err)
}

// newTestHost starts a TLS server for name, serving h, in a network
// namespace of its own joined to the host's by a veth pair; the host side
// routes its /30 there. Everything is removed when the test ends.
func newTestHost(t testing.TB, name string, h http.Handler) *testHost {
	t.Helper()
	needTestHosts(t)
	var rnd [3]byte
	rand.Read(rnd[:])
	id := hex.EncodeToString(rnd[:])
	// One /30 of 198.18.0.0/15 (32768 of them), picked at random.
	n := (int(rnd[0])<<8 | int(rnd[1])) & 0x7fff
	base := 198<<24 | 18<<16 | n<<2
	ip4 := func(v int) netip.Addr {
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	hostSide, hostAddr := ip4(base+1), ip4(base+2)
	th := &testHost{Name: name, Addr: hostAddr, Port: 443, Netns: "sbth-" + id}
	vh, vn := "sbth"+id+"h", "sbth"+id+"n"
	ipCmd := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	ipCmd("netns", "add", th.Netns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", th.Netns).Run() })
	ipCmd("link", "add", vh, "type", "veth", "peer", "name", vn)
	t.Cleanup(func() { exec.Command("ip", "link", "del", vh).Run() })
	ipCmd("link", "set", vn, "netns", th.Netns)
	ipCmd("addr", "add", hostSide.String()+"/30", "dev", vh)
	ipCmd("link", "set", vh, "up")
	ipCmd("-n", th.Netns, "addr", "add", hostAddr.String()+"/30", "dev", vn)
	ipCmd("-n", th.Netns, "link", "set", vn, "up")
	ipCmd("-n", th.Netns, "link", "set", "lo", "up")

	ca := newTestCA(t, name)
	th.CAPEM = ca.pem
	th.CAFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(th.CAFile, ca.pem, 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := listenInNetns(th.Netns, "tcp", netip.AddrPortFrom(hostAddr, 443).String())
	if err != nil {
		t.Fatalf("listen in %s: %v", th.Netns, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{ca.leaf}, MinVersion: tls.VersionTLS12}}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return th
}

// listenInNetns opens a listener inside the named network namespace. A
// socket belongs to the namespace it was created in, so only the creation
// needs the thread to be there; the thread is moved back before it is
// released to other goroutines.
func listenInNetns(netns, network, addr string) (net.Listener, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, err
	}
	defer self.Close()
	target, err := os.Open(filepath.Join("/run/netns", netns))
	if err != nil {
		return nil, err
	}
	defer target.Close()
	if err := setns(int(target.Fd()), syscall.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("setns %s: %w", netns, err)
	}
	ln, lerr := net.Listen(network, addr)
	if err := setns(int(self.Fd()), syscall.CLONE_NEWNET); err != nil {
		// The thread is stuck in the wrong namespace: keep it locked so
		// that no other goroutine runs on it; it ends with this goroutine.
		runtime.LockOSThread()
		if ln != nil {
			ln.Close()
		}
		return nil, fmt.Errorf("setns back: %w", err)
	}
	return ln, lerr
}

// sysSetns is setns(2)'s number (the syscall package does not name it):
// arch/x86/entry/syscalls/syscall_64.tbl and the generic table arm64 uses.
var sysSetns = map[string]uintptr{"amd64": 308, "arm64": 268}[runtime.GOARCH]

func setns(fd, nstype int) error {
	if sysSetns == 0 {
		return fmt.Errorf("setns: unknown on %s", runtime.GOARCH)
	}
	if _, _, e := syscall.RawSyscall(sysSetns, uintptr(fd), uintptr(nstype), 0); e != 0 {
		return e
	}
	return nil
}

type pipelockWrap struct {
	Real  string `json:"real"`  // absolute path of the real pipelock
	Hosts string `json:"hosts"` // the hosts file bound over /etc/hosts
}

// pipelockResolving links dir/pipelock: the real pipelock (bin/pipelock),
// run in a mount namespace whose /etc/hosts maps each test host's name to
// its address, besides localhost. It returns the path.
func pipelockResolving(t testing.TB, dir string, hosts ...*testHost) string {
	t.Helper()
	real := realTool(t, "pipelock")
	var b strings.Builder
	b.WriteString("127.0.0.1 localhost\n::1 localhost\n")
	for _, h := range hosts {
		fmt.Fprintf(&b, "%s %s\n", h.Addr, h.Name)
	}
	hostsFile := filepath.Join(dir, "pipelock.hosts")
	w, _ := json.Marshal(pipelockWrap{Real: real, Hosts: hostsFile})
	for name, data := range map[string][]byte{hostsFile: []byte(b.String()), pipelockHostsWrap: w} {
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(name)), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return linkAs(t, dir, "pipelock")
}

// runPipelockWrapped is the wrapper's side, run by the test binary under
// the name pipelock when pipelockHostsWrap lies beside it.
func runPipelockWrapped(args []string, wrapFile string) int {
	b, err := os.ReadFile(wrapFile)
	if err != nil {
		fakeFatal(err)
	}
	var w pipelockWrap
	if err := json.Unmarshal(b, &w); err != nil {
		fakeFatal(err)
	}
	// unshare and exec from one thread: the new mount namespace is this
	// thread's, and execve keeps the calling thread's.
	runtime.LockOSThread()
	if err := syscall.Unshare(syscall.CLONE_NEWNS); err != nil {
		fakeFatal(fmt.Errorf("unshare mount namespace: %w", err))
	}
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		fakeFatal(fmt.Errorf("make / private: %w", err))
	}
	if err := syscall.Mount(w.Hosts, "/etc/hosts", "", syscall.MS_BIND, ""); err != nil {
		fakeFatal(fmt.Errorf("bind %s over /etc/hosts: %w", w.Hosts, err))
	}
	err = syscall.Exec(w.Real, append([]string{w.Real}, args...), os.Environ())
	fakeFatal(fmt.Errorf("exec %s: %w", w.Real, err))
	return 1
}

//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"
)

// smolbottle selftest proves the confinement end to end with the real
// components, without touching the machine's network:
//
//	selftest (the caller, any user)
//	 └─ _selftest-host   new user+net+mount ns: plays "the host"
//	     │  lo: sidecar echo 127.0.0.1:P, another listener 127.0.0.1:Q,
//	     │      fake upstream resolver 127.0.0.1:53 (resolv.conf bind-mounted)
//	     │  veth 10.98.0.1 <-> "LAN" 10.98.0.2, veth 203.0.113.1 <-> "internet" 203.0.113.10
//	     ├─ _selftest-peer lan, _selftest-peer internet  (TCP and UDP listeners)
//	     ├─ _confine -> gvproxy   (startConfined, exactly as a bottle runs it)
//	     └─ _selftest-guest  new net ns: the VM stand-in
//	         └─ gvforwarder -url unix://<stage>/net/link/guest.sock -preexisting (the front, guestlink.go)
//
// The guest runs the probes (probe.go); the host then checks what the guest
// cannot see: that nothing reached the resolver or any listener, that the
// file the guest attacked is intact, and gvproxy's capabilities.
const (
	selftestHostCmd  = "_selftest-host"
	selftestPeerCmd  = "_selftest-peer"
	selftestGuestCmd = "_selftest-guest"

	selftestEchoBytes = 1 << 20
	selftestSlug      = "selftest"
	// selftestTimeout bounds a whole run; the matrix takes a few seconds.
	selftestTimeout = 2 * time.Minute
)

// selftest topology: TEST-NET and private addresses, all inside namespaces
// the selftest creates.
var (
	lanHost      = netip.MustParsePrefix("10.98.0.1/24")
	lanPeer      = netip.MustParsePrefix("10.98.0.2/24")
	inetHost     = netip.MustParsePrefix("203.0.113.1/24")
	inetPeer     = netip.MustParsePrefix("203.0.113.10/24")
	blackHole    = "198.51.100.77:81"
	hostSvcPort  = 7070 // TCP and UDP listeners on the host's own addresses
	exposePort   = 7071 // what the guest asks gvproxy's API to open
	peerTCPPort  = 80
	peerUDPPort  = 7
	metadataAddr = "169.254.169.254:80"
	// The guest's IPv6 (ULA) in the selftest, and the router it is told of.
	guestIPv6        = "fd00:5b::2/64"
	guestIPv6Gateway = "fd00:5b::1"
)

// runNetInternal dispatches the internal subcommands of the network code.
func runNetInternal(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	switch args[0] {
	case confineCmd:
		return runConfine(ctx, args[1:], stderr)
	case dropExecCmd:
		return runDropExec(args[1:], stderr)
	case guestNetCmd:
		return runGuestNet(ctx, args[1:], stdout, stderr)
	case probeCmd:
		return runProbeCmd(ctx, args[1:], stdout, stderr)
	case selftestHostCmd:
		return runSelftestHost(ctx, args[1:], stdout, stderr)
	case selftestPeerCmd:
		return runSelftestPeer(ctx, args[1:], stdout, stderr)
	case selftestGuestCmd:
		return runSelftestGuest(ctx, args[1:], stdout, stderr)
	}
	return usageError("unknown subcommand %q", args[0])
}

// selftestOptions are the flags of selftest (parsed in main.go).
type selftestOptions struct {
	gvproxy, gvforwarder string
	verbose, unconfined  bool
}

// findTool returns the absolute path of a tool: the flag, else what
// findProgram finds, the same lookup as every other subcommand's.
func findTool(flagValue, name string) (string, error) {
	p := flagValue
	if p == "" {
		lp, err := findProgram(name, defaultPreflightEnv(false))
		if err != nil {
			return "", withHint(err, hintMakeTools)
		}
		p = lp
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", withHint(fmt.Errorf("%s: %v", name, err), hintMakeTools)
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("%s %q is not an executable file", name, abs)
	}
	return abs, nil
}

// runSelftest is `smolbottle selftest`.
func runSelftest(ctx context.Context, o selftestOptions, stdout, stderr io.Writer) error {
	if o.unconfined {
		fmt.Fprintln(stderr, "smolbottle: warning: -unconfined: gvproxy runs without its jail; the guest can reach the sandbox's whole network")
	}
	return runSandbox(ctx, "matrix", o, stdout, stderr)
}

// checkTun fails early when gvforwarder will not be able to create tap0:
// it opens /dev/net/tun as the caller's own uid, and a user namespace grants
// no access to a device node the caller cannot open.
func checkTun() error {
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		return withHint(fmt.Errorf("selftest: the guest stand-in needs /dev/net/tun: %v", err),
			"most distributions ship it mode 0666; here: chmod 0666 /dev/net/tun, or run the selftest as root")
	}
	return f.Close()
}

// runSandbox runs _selftest-host in fresh user, network and mount namespaces
// in a fresh stage directory, and removes the stage afterwards.
func runSandbox(ctx context.Context, mode string, o selftestOptions, stdout, stderr io.Writer) error {
	gvproxy, err := findTool(o.gvproxy, "gvproxy")
	if err != nil {
		return err
	}
	gvforwarder, err := findTool(o.gvforwarder, "gvforwarder")
	if err != nil {
		return err
	}
	if err := checkStatic(gvproxy); err != nil {
		return err
	}
	if err := checkTun(); err != nil {
		return err
	}
	// The sandbox creates its veth pairs with iproute2; found here, on the
	// caller's PATH, because children get an empty environment.
	ip, err := exec.LookPath("ip")
	if err != nil {
		return withHint(errors.New("selftest: the ip command is needed to create veth pairs"), "install iproute2")
	}
	stage, err := os.MkdirTemp("", "smolbottle-selftest-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, selftestTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, self, selftestHostCmd, "-mode", mode, "-stage", stage,
		"-gvproxy", gvproxy, "-gvforwarder", gvforwarder, "-ip", ip, "-v="+strconv.FormatBool(o.verbose),
		"-unconfined="+strconv.FormatBool(o.unconfined))
	cmd.Args[0] = "smolbottle"
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = []string{}, "/", stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET | syscall.CLONE_NEWNS,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
		Pdeathsig:   syscall.SIGKILL,
	}
	setStop(cmd)
	if err := cmd.Start(); err != nil {
		return withHint(fmt.Errorf("selftest: create the user, network and mount namespaces: %w", err), namespaceHints(procSys)...)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() > 0 {
		// The sandbox has printed its own error or failing matrix.
		return exitStatus(ee.ExitCode())
	}
	if err != nil {
		return fmt.Errorf("selftest: %w", err)
	}
	return nil
}

// counter counts what reaches a listener that nothing should reach.
type counter struct {
	mu   sync.Mutex
	hits []string
}

func (c *counter) hit(format string, args ...any) {
	c.mu.Lock()
	c.hits = append(c.hits, fmt.Sprintf(format, args...))
	c.mu.Unlock()
}

func (c *counter) list() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.hits...)
}

// sandbox holds what _selftest-host set up.
type sandbox struct {
	stage, gvproxy, gvforwarder, ip string
	unconfined                      bool
	log                             io.Writer
	closers                         []func()
	upstream, listeners             counter
	flood                           floodStats
}

func (s *sandbox) close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
}

// Modes besides "matrix" that only a test binary has: the data-path
// benchmark (selftest_bench_test.go) adds its host side and its guest side.
var (
	sandboxModes = map[string]func(ctx context.Context, s *sandbox, stdout io.Writer) error{}
	guestModes   = map[string]func(ctx context.Context, plan probePlan) (any, error){}
)

// runSelftestHost runs inside the sandbox namespaces.
func runSelftestHost(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(selftestHostCmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	mode := fs.String("mode", "matrix", "")
	s := &sandbox{}
	fs.StringVar(&s.stage, "stage", "", "")
	fs.StringVar(&s.gvproxy, "gvproxy", "", "")
	fs.StringVar(&s.gvforwarder, "gvforwarder", "", "")
	fs.StringVar(&s.ip, "ip", "", "")
	verbose := fs.Bool("v", false, "")
	fs.BoolVar(&s.unconfined, "unconfined", false, "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var logBuf lockedBuffer
	s.log = &logBuf
	if *verbose {
		s.log = stderr
	}
	defer s.close()
	if err := s.setup(ctx); err != nil {
		return withLogTail(err, &logBuf)
	}
	switch *mode {
	case "matrix":
		err := s.matrix(ctx, stdout)
		if err != nil && !errors.Is(err, errMatrixFailed) {
			return withLogTail(err, &logBuf)
		}
		return err
	}
	if f, ok := sandboxModes[*mode]; ok {
		return withLogTail(f(ctx, s, stdout), &logBuf)
	}
	return fmt.Errorf("unknown mode %q", *mode)
}

// setup builds the stand-in host: loopback, resolver, listeners, peers.
func (s *sandbox) setup(ctx context.Context) error {
	if err := setLinkUp("lo"); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	// gvproxy resolves through the host's resolv.conf. Here it names the
	// recording resolver, so a leak is seen rather than sent anywhere.
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("sandbox: make mounts private: %w", err)
	}
	resolv := filepath.Join(s.stage, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 127.0.0.1\n"), 0o644); err != nil {
		return err
	}
	if err := syscall.Mount(resolv, "/etc/resolv.conf", "", syscall.MS_BIND, ""); err != nil {
		return fmt.Errorf("sandbox: bind-mount resolv.conf: %w", err)
	}
	if err := s.listenUDP("127.0.0.1:53", &s.upstream, false); err != nil {
		return err
	}
	if err := s.listenTCP("127.0.0.1:53", &s.upstream, nil); err != nil {
		return err
	}
	for i, peer := range []struct {
		name, hostIf string
		host, addr   netip.Prefix
	}{{"lan", "vlan", lanHost, lanPeer}, {"internet", "vinet", inetHost, inetPeer}} {
		if err := s.startPeer(ctx, peer.name, peer.hostIf, peer.host, peer.addr); err != nil {
			return err
		}
		hostSvc := netip.AddrPortFrom(peer.host.Addr(), uint16(hostSvcPort)).String()
		if err := s.listenTCP(hostSvc, &s.listeners, nil); err != nil {
			return err
		}
		if err := s.listenUDP(hostSvc, &s.listeners, true); err != nil {
			return err
		}
		if i == 1 {
			// Everything else goes to "the internet", which does not
			// forward: the black-hole address swallows SYNs there.
			if err := addDefaultRoute(peer.hostIf, peer.addr.Addr()); err != nil {
				return err
			}
		}
	}
	return nil
}

// listenTCP records every connection; serve, when set, then handles it.
func (s *sandbox) listenTCP(addr string, c *counter, serve func(net.Conn)) error {
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	s.closers = append(s.closers, func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			if serve != nil {
				go serve(conn)
				continue
			}
			c.hit("tcp %s from %s", addr, conn.RemoteAddr())
			conn.Write([]byte("LEAK " + addr + "\n"))
			conn.Close()
		}
	}()
	return nil
}

// listenUDP records every datagram and, when echo is set, answers it.
func (s *sandbox) listenUDP(addr string, c *counter, echo bool) error {
	pc, err := net.ListenPacket("udp4", addr)
	if err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	s.closers = append(s.closers, func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			c.hit("udp %s from %s (%d bytes)", addr, from, n)
			if echo {
				pc.WriteTo(buf[:n], from)
			}
		}
	}()
	return nil
}

// echoServe is the stand-in sidecar: it returns every byte it gets.
func echoServe(c net.Conn) {
	defer c.Close()
	io.Copy(c, c)
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}

// startPeer starts a namespace on the far side of a veth with listeners.
func (s *sandbox) startPeer(ctx context.Context, name, hostIf string, host, addr netip.Prefix) error {
	ip := s.ip
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, self, selftestPeerCmd, "-name", name, "-addr", addr.String())
	cmd.Args[0] = "smolbottle"
	cmd.Env, cmd.Dir, cmd.Stderr = []string{}, "/", s.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	setStop(cmd)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("sandbox: start the %s namespace: %w", name, err)
	}
	s.closers = append(s.closers, func() { cmd.Process.Kill(); cmd.Wait() })
	link := exec.CommandContext(ctx, ip, "link", "add", hostIf, "type", "veth", "peer", "name", "eth0", "netns", strconv.Itoa(cmd.Process.Pid))
	link.Env, link.Dir = []string{}, "/"
	if msg, err := link.CombinedOutput(); err != nil {
		return fmt.Errorf("sandbox: %s: %v: %s", strings.Join(link.Args, " "), err, bytes.TrimSpace(msg))
	}
	if err := setLinkAddr(hostIf, host); err != nil {
		return err
	}
	if err := setLinkUp(hostIf); err != nil {
		return err
	}
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		first := true
		for sc.Scan() {
			line := sc.Text()
			if first {
				first = false
				if line == "ready" {
					ready <- nil
					continue
				}
				ready <- fmt.Errorf("sandbox: %s namespace: %s", name, line)
			}
			s.listeners.hit("%s: %s", name, line)
		}
		if first {
			ready <- fmt.Errorf("sandbox: %s namespace exited before it was ready", name)
		}
	}()
	select {
	case err := <-ready:
		return err
	case <-time.After(10 * time.Second):
		return fmt.Errorf("sandbox: %s namespace not ready within 10s", name)
	}
}

// runSelftestPeer is a LAN or internet host: it configures eth0, listens on
// TCP and UDP, and prints one line per connection or datagram it receives.
func runSelftestPeer(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(selftestPeerCmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "", "")
	addrFlag := fs.String("addr", "", "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	addr, err := netip.ParsePrefix(*addrFlag)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		fmt.Fprintf(stdout, format+"\n", args...)
		mu.Unlock()
	}
	if err := setLinkUp("lo"); err != nil {
		return err
	}
	if err := waitLink(ctx, "eth0", 10*time.Second); err != nil {
		return err
	}
	if err := setLinkAddr("eth0", addr); err != nil {
		return err
	}
	if err := setLinkUp("eth0"); err != nil {
		return err
	}
	tcpAddr := netip.AddrPortFrom(addr.Addr(), uint16(peerTCPPort)).String()
	udpAddr := netip.AddrPortFrom(addr.Addr(), uint16(peerUDPPort)).String()
	ln, err := net.Listen("tcp4", tcpAddr)
	if err != nil {
		return err
	}
	pc, err := net.ListenPacket("udp4", udpAddr)
	if err != nil {
		return err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			say("tcp %s from %s", tcpAddr, c.RemoteAddr())
			fmt.Fprintf(c, "LEAK %s %s\n", *name, tcpAddr)
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			say("udp %s from %s", udpAddr, from)
			pc.WriteTo(buf[:n], from)
		}
	}()
	say("ready")
	<-ctx.Done()
	return nil
}

// errMatrixFailed is returned after a printed matrix with a failing row.
var errMatrixFailed = errors.New("selftest: the reachability matrix has failing rows")

// matrix runs the reachability matrix against the confined gvproxy.
func (s *sandbox) matrix(ctx context.Context, stdout io.Writer) error {
	n, err := pickSubnet(selftestSlug, nil)
	if err != nil {
		return err
	}
	sidecarPort, err := s.echoSidecar()
	if err != nil {
		return err
	}
	// Another loopback service: a bottle must not reach it.
	other, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	other.Close()
	otherPort := other.Addr().(*net.TCPAddr).Port
	otherAddr := loopbackAddr(otherPort)
	if err := s.listenTCP(otherAddr, &s.listeners, nil); err != nil {
		return err
	}
	if err := s.listenUDP(otherAddr, &s.listeners, true); err != nil {
		return err
	}
	victim := filepath.Join(s.stage, "victim.txt")
	victimData := []byte("a host file the guest must not replace\n")
	if err := os.WriteFile(victim, victimData, 0o600); err != nil {
		return err
	}

	netStage := filepath.Join(s.stage, "net")
	if err := mkdirPrivate(netStage); err != nil {
		return err
	}
	spoofPort, err := s.spoofSidecar()
	if err != nil {
		return err
	}
	// A port served in the owner's process, as the credential sidecar's
	// is (confineSpec.Serve), over a host listener on the same number
	// that the guest must not reach.
	decoy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	decoy.Close()
	servedPort := decoy.Addr().(*net.TCPAddr).Port
	if err := s.listenTCP(loopbackAddr(servedPort), &s.listeners, nil); err != nil {
		return err
	}
	serve := map[int]func(net.Listener){servedPort: func(ln net.Listener) {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go echoServe(c)
		}
	}}
	cn, err := startSelftestNet(ctx, confineSpec{Gvproxy: s.gvproxy, Net: n, Stage: netStage, Ports: []int{sidecarPort, spoofPort, servedPort}, Log: s.log, Serve: serve}, s.unconfined)
	if err != nil {
		return err
	}
	s.closers = append(s.closers, func() { cn.Close() })
	_, _, configPath := stagePaths(netStage)
	configData, err := os.ReadFile(configPath)
	if err != nil {
		return err
	}

	vip := func(port int) string { return netip.AddrPortFrom(n.HostVIP, uint16(port)).String() }
	at := func(p netip.Prefix, port int) string { return netip.AddrPortFrom(p.Addr(), uint16(port)).String() }
	guestTCP := "tcp://" + netip.AddrPortFrom(n.Guest, 22).String()
	exposeJSON := func(v map[string]string) string { b, _ := json.Marshal(v); return string(b) }
	plan := probePlan{Gateway: n.Gateway.String(), Probes: []probe{
		{Name: "API: expose 0.0.0.0:7071 on the host", Kind: probeAPI, Body: exposeJSON(map[string]string{"local": "0.0.0.0:" + strconv.Itoa(exposePort), "remote": netip.AddrPortFrom(n.Guest, 22).String()})},
		{Name: "API: replace a host file with a socket", Kind: probeAPI, Body: exposeJSON(map[string]string{"protocol": "unix", "local": victim, "remote": guestTCP})},
		{Name: "API: replace gvproxy's own API socket", Kind: probeAPI, Body: exposeJSON(map[string]string{"protocol": "unix", "local": cn.SocketPath, "remote": guestTCP})},
		{Name: "API: replace gvproxy's config in the stage", Kind: probeAPI, Body: exposeJSON(map[string]string{"protocol": "unix", "local": configPath, "remote": guestTCP})},
		{Name: proxyName + " resolves to " + n.HostVIP.String(), Kind: probeResolve, Host: proxyName + ".", Want: n.HostVIP.String()},
		{Name: fmt.Sprintf("sidecar %s echoes 1 MiB both ways", vip(sidecarPort)), Kind: probeEcho, Addr: vip(sidecarPort), Bytes: selftestEchoBytes},
		{Name: fmt.Sprintf("served port %s echoes 1 MiB (in-process, not the host's listener on it)", vip(servedPort)), Kind: probeEcho, Addr: vip(servedPort), Bytes: selftestEchoBytes},
		{Name: "other host loopback port (TCP, listening)", Kind: probeNoTCP, Addr: vip(otherPort)},
		{Name: "other host loopback port (UDP, echoing)", Kind: probeNoUDP, Addr: vip(otherPort)},
		{Name: "host resolver port via the virtual IP (UDP)", Kind: probeNoUDP, Addr: vip(53)},
		{Name: "host's own address " + lanHost.Addr().String() + " (TCP)", Kind: probeNoTCP, Addr: at(lanHost, hostSvcPort)},
		{Name: "host's own address " + lanHost.Addr().String() + " (UDP)", Kind: probeNoUDP, Addr: at(lanHost, hostSvcPort)},
		{Name: "host's own address " + inetHost.Addr().String() + " (TCP)", Kind: probeNoTCP, Addr: at(inetHost, hostSvcPort)},
		{Name: "LAN " + lanPeer.Addr().String() + " (TCP)", Kind: probeNoTCP, Addr: at(lanPeer, peerTCPPort)},
		{Name: "LAN " + lanPeer.Addr().String() + " (UDP)", Kind: probeNoUDP, Addr: at(lanPeer, peerUDPPort)},
		{Name: "internet " + inetPeer.Addr().String() + " (TCP)", Kind: probeNoTCP, Addr: at(inetPeer, peerTCPPort)},
		{Name: "internet " + inetPeer.Addr().String() + " (UDP)", Kind: probeNoUDP, Addr: at(inetPeer, peerUDPPort)},
		{Name: "DNS example.com A", Kind: probeNoDNS, Host: "example.com.", Type: "A"},
		{Name: "DNS example.com AAAA", Kind: probeNoDNS, Host: "example.com.", Type: "AAAA"},
		{Name: "DNS example.com TXT", Kind: probeNoDNS, Host: "example.com.", Type: "TXT"},
		{Name: "DNS example.com MX", Kind: probeNoDNS, Host: "example.com.", Type: "MX"},
		{Name: "DNS proxy.internal TXT", Kind: probeNoDNS, Host: "proxy.internal.", Type: "TXT"},
		{Name: "DNS PROXY.INTERNAL TXT", Kind: probeNoDNS, Host: "PROXY.INTERNAL.", Type: "TXT"},
		{Name: "DNS Proxy.Internal MX", Kind: probeNoDNS, Host: "Proxy.Internal.", Type: "MX"},
		{Name: "DNS PROXY.INTERNAL AAAA", Kind: probeNoDNS, Host: "PROXY.INTERNAL.", Type: "AAAA"},
		{Name: "IPv6 [2001:db8::10]:80 (guest has " + guestIPv6 + ")", Kind: probeNoTCP6, Addr: "[2001:db8::10]:80"},
		{Name: "IPv6 on-link [" + guestIPv6Gateway + "]:80", Kind: probeNoTCP6, Addr: "[" + guestIPv6Gateway + "]:80"},
		{Name: "cloud metadata " + metadataAddr, Kind: probeNoTCP, Addr: metadataAddr},
		{Name: "32 dials to black hole " + blackHole + " do not stall the sidecar", Kind: probeBurst, Addr: vip(sidecarPort), Want: blackHole, Count: 32},
	}}
	apiRows := plan.Probes[:4]
	// The guest's socket carries one VM link and nothing else: each of
	// gvproxy's endpoints (pkg/virtualnetwork/mux.go:18-104,
	// services.go @ v0.8.9) and a second /connect while gvforwarder's link
	// lives must be refused there.
	linkReq := func(method, target, body string) string {
		return fmt.Sprintf("%s %s HTTP/1.1\r\nHost: gvproxy\r\nContent-Length: %d\r\n\r\n%s", method, target, len(body), body)
	}
	dnsAdd := `{"name":"internal.","records":[{"name":"api.anthropic.com","ip":"203.0.113.10"}]}`
	expose := exposeJSON(map[string]string{"local": "127.0.0.1:" + strconv.Itoa(exposePort), "remote": guestTCP})
	var linkRows []probe
	for _, r := range []struct{ name, req string }{
		{"GET /stats", linkReq("GET", "/stats", "")},
		{"GET /cam", linkReq("GET", "/cam", "")},
		{"GET /leases", linkReq("GET", "/leases", "")},
		{"GET /services/dns/all", linkReq("GET", "/services/dns/all", "")},
		{"POST /services/dns/add", linkReq("POST", "/services/dns/add", dnsAdd)},
		{"GET /services/forwarder/all", linkReq("GET", "/services/forwarder/all", "")},
		{"POST /services/forwarder/expose", linkReq("POST", "/services/forwarder/expose", expose)},
		{"POST /services/forwarder/unexpose", linkReq("POST", "/services/forwarder/unexpose", expose)},
		{"POST /tunnel", linkReq("POST", "/tunnel?ip="+n.Guest.String()+"&port=22", "")},
		{"GET /connect", linkReq("GET", "/connect", "")},
		{"POST /connect with a body", linkReq("POST", "/connect", "x")},
		{"a second POST /connect while the link lives", linkRequest},
		{"not HTTP", "\x00\x01garbage\r\n\r\n"},
	} {
		linkRows = append(linkRows, probe{Name: "guest socket refuses " + r.name, Kind: probeNoLink, Addr: cn.LinkPath, Body: r.req})
	}
	// The link rows first, while the unconfined control's socket is still
	// gvproxy's (a later API row replaces it there). The flood last: the
	// streams the relays refuse are closed by gvproxy, whose stack then
	// holds them in TIME_WAIT for 60 s, and a later guest dial that reuses
	// one of those ports gets no answer until then (floodCheck).
	plan.Probes = append(linkRows, plan.Probes...)
	plan.Probes = append(plan.Probes,
		probe{Name: "sidecar still echoes 1 MiB after the API attempts", Kind: probeEcho, Addr: vip(sidecarPort), Bytes: selftestEchoBytes},
		probe{Name: floodRow, Kind: probeFlood, Addr: vip(sidecarPort), Count: selftestFlood},
		// Last: spoofed handshakes hold gvproxy's 10 in-flight slots.
		probe{Name: spoofRow, Kind: probeSpoof, Addr: vip(spoofPort), Want: spoofSource(n).String(), Count: selftestSpoofs})
	stopSampling := s.sampleOwner()
	out, err := s.runGuest(ctx, []string{cn.LinkPath}, []bottleNet{n}, "matrix", plan)
	if err != nil {
		return err
	}
	var results []probeResult
	if err := json.Unmarshal(out, &results); err != nil {
		return fmt.Errorf("selftest: guest output: %v", err)
	}
	for i := range results {
		r := &results[i]
		switch r.Name {
		case apiRows[0].Name:
			r.Pass, r.Detail = mustNotListen([]string{loopbackAddr(exposePort), at(lanHost, exposePort), at(inetHost, exposePort)}), r.Detail+"; host: nothing listens on :"+strconv.Itoa(exposePort)
			if !r.Pass {
				r.Detail = "a host address accepts on :" + strconv.Itoa(exposePort)
			}
		case apiRows[1].Name:
			got, err := os.ReadFile(victim)
			r.Pass = err == nil && bytes.Equal(got, victimData)
			r.Detail += "; host: file intact"
			if !r.Pass {
				r.Detail = fmt.Sprintf("host file changed: %v", err)
			}
		case apiRows[2].Name:
			err := waitGvproxyReady(ctx, cn.SocketPath, nil, time.Second)
			r.Pass = err == nil
			r.Detail += "; host: the socket is still gvproxy's API"
			if !r.Pass {
				r.Detail = fmt.Sprintf("the socket no longer answers as gvproxy: %v", err)
			}
		case apiRows[3].Name:
			got, err := os.ReadFile(configPath)
			r.Pass = err == nil && bytes.Equal(got, configData)
			r.Detail += "; host: config intact"
			if !r.Pass {
				r.Detail = fmt.Sprintf("config changed: %v", err)
			}
		}
	}
	stopSampling()
	results = append(results, s.hostRows(cn)...)
	results = append(results, s.floodRows(cn)...)
	results = append(results, s.spoofRow(cn))
	mode := "confined"
	if s.unconfined {
		mode = "UNCONFINED"
	}
	return printMatrix(stdout, mode, n, sidecarPort, results)
}

// mustNotListen reports whether every address refuses a connection.
func mustNotListen(addrs []string) bool {
	for _, a := range addrs {
		if c, err := net.DialTimeout("tcp4", a, time.Second); err == nil {
			c.Close()
			return false
		}
	}
	return true
}

// hostRows are the checks only the host can make.
func (s *sandbox) hostRows(cn *confinedNet) []probeResult {
	var rows []probeResult
	row := func(name string, pass bool, detail string) {
		rows = append(rows, probeResult{Name: name, Kind: "host", Pass: pass, Detail: detail})
	}
	up := s.upstream.list()
	row("nothing reached the host's upstream resolver", len(up) == 0, describeHits(up))
	hits := s.listeners.list()
	row("nothing reached a LAN, internet or host listener", len(hits) == 0, describeHits(hits))
	st, err := procStatusCaps(cn.GvproxyPID)
	if err != nil {
		row("gvproxy holds no capability, no_new_privs set", false, err.Error())
	} else {
		row("gvproxy holds no capability, no_new_privs set", capsDropped(st),
			fmt.Sprintf("CapEff %s CapBnd %s NoNewPrivs %s", st["CapEff"], st["CapBnd"], st["NoNewPrivs"]))
	}
	ifs, err := procInterfaces(cn.GvproxyPID)
	row("gvproxy's network namespace has only lo", err == nil && len(ifs) == 1 && ifs[0] == "lo", fmt.Sprintf("%v %v", ifs, errString(err)))
	root, err := os.Readlink(fmt.Sprintf("/proc/%d/root", cn.GvproxyPID))
	row("gvproxy is chrooted into the jail", err == nil && root != "/", fmt.Sprintf("root %q %s", root, errString(err)))
	return rows
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func describeHits(h []string) string {
	if len(h) == 0 {
		return "0 queries or connections recorded"
	}
	return fmt.Sprintf("%d recorded: %s", len(h), strings.Join(h, "; "))
}

// procInterfaces lists the interfaces of a process's network namespace.
func procInterfaces(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/dev", pid))
	if err != nil {
		return nil, err
	}
	var ifs []string
	for i, line := range strings.Split(string(b), "\n") {
		name, _, ok := strings.Cut(line, ":")
		if i < 2 || !ok {
			continue
		}
		ifs = append(ifs, strings.TrimSpace(name))
	}
	return ifs, nil
}

// printMatrix prints one row per probe and the verdict.
func printMatrix(w io.Writer, mode string, n bottleNet, sidecarPort int, rows []probeResult) error {
	fmt.Fprintf(w, "smolbottle selftest: %s gvproxy, guest %s via gvforwarder, sidecar 127.0.0.1:%d\n\n", mode, n.Guest, sidecarPort)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	failed := 0
	for _, r := range rows {
		verdict := "PASS"
		if !r.Pass {
			verdict = "FAIL"
			failed++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", verdict, r.Name, oneLine(r.Detail))
	}
	tw.Flush()
	if failed > 0 {
		fmt.Fprintf(w, "\nverdict: FAIL (%d of %d rows do not hold)\n", failed, len(rows))
		return errMatrixFailed
	}
	fmt.Fprintf(w, "\nverdict: PASS (all %d rows hold)\n", len(rows))
	return nil
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 110 {
		s = s[:107] + "..."
	}
	return s
}

// runGuest starts the guest namespace with one gvforwarder per gvproxy
// socket, runs the job there and returns what it printed.
func (s *sandbox) runGuest(ctx context.Context, socks []string, nets []bottleNet, mode string, plan probePlan) ([]byte, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	planJSON, err := json.Marshal(plan)
	if err != nil {
		return nil, err
	}
	subnets := make([]string, len(nets))
	for i, n := range nets {
		subnets[i] = n.Subnet.String()
	}
	cmd := exec.CommandContext(ctx, self, selftestGuestCmd, "-socket", strings.Join(socks, ","), "-gvforwarder", s.gvforwarder,
		"-subnet", strings.Join(subnets, ","), "-mode", mode, "-plan", string(planJSON), "-ip", s.ip)
	cmd.Args[0] = "smolbottle"
	var out bytes.Buffer
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = []string{}, "/", &out, s.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	setStop(cmd)
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("selftest: guest: %w", err)
	}
	return out.Bytes(), nil
}

// runSelftestGuest is the VM stand-in: gvforwarder on gvproxy's socket, the
// guest network configured by guestnet.go, then the probes or the benchmark.
// The benchmark attaches to two gvproxies at once (tap0, tap1) so that the
// confined and the unconfined path are measured in alternation, under the
// same load.
func runSelftestGuest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(selftestGuestCmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	socks := fs.String("socket", "", "")
	gvforwarder := fs.String("gvforwarder", "", "")
	subnets := fs.String("subnet", "", "")
	mode := fs.String("mode", "matrix", "")
	planJSON := fs.String("plan", "", "")
	ipCmd := fs.String("ip", "", "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	sockList, subnetList := strings.Split(*socks, ","), strings.Split(*subnets, ",")
	if len(sockList) != len(subnetList) || len(sockList) > 3 {
		return errors.New("guest: want one to three -socket and -subnet values")
	}
	var plan probePlan
	if err := json.Unmarshal([]byte(*planJSON), &plan); err != nil {
		return err
	}
	if err := setLinkUp("lo"); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	macs := []string{guestMAC, "5a:94:ef:e4:0c:ef", "5a:94:ef:e4:0c:f0"}
	for i, sock := range sockList {
		n, err := netForSubnet(subnetList[i])
		if err != nil {
			return err
		}
		iface := "tap" + strconv.Itoa(i)
		fwd := exec.CommandContext(ctx, *gvforwarder, "-url", "unix://"+sock, "-iface", iface, "-preexisting",
			"-mtu", strconv.Itoa(gvproxyMTU), "-mac", macs[i], "-stop-if-exist", "")
		fwd.Env, fwd.Dir, fwd.Stdout, fwd.Stderr = []string{}, "/", stderr, stderr
		fwd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		setStop(fwd)
		if err := fwd.Start(); err != nil {
			return fmt.Errorf("guest: start gvforwarder: %w", err)
		}
		defer fwd.Wait()
		if err := waitLink(ctx, iface, 10*time.Second); err != nil {
			return fmt.Errorf("guest: %w", err)
		}
		if i == 0 {
			// Exactly what the VM runs: smolbottle _guestnet.
			err = runGuestNet(ctx, []string{"-iface", iface, "-subnet", subnetList[i]}, io.Discard, stderr)
		} else {
			// The host virtual IP is on-link: no route needed.
			err = setLinkMTU(iface, gvproxyMTU)
			if err == nil {
				err = setLinkAddr(iface, netip.PrefixFrom(n.Guest, n.Subnet.Bits()))
			}
			if err == nil {
				err = setLinkUp(iface)
			}
		}
		if err != nil {
			return fmt.Errorf("guest: %w", err)
		}
		if err := waitGateway(ctx, n, 10*time.Second); err != nil {
			return fmt.Errorf("guest: %w", err)
		}
	}
	if *mode == "matrix" {
		// Give the guest IPv6 on tap0, so that the IPv6 probes put frames on
		// the wire to gvproxy instead of failing in the guest's own kernel.
		for _, args := range [][]string{
			{"-6", "addr", "add", guestIPv6, "dev", "tap0", "nodad"},
			{"-6", "route", "add", "default", "via", guestIPv6Gateway, "dev", "tap0"},
		} {
			ip := exec.CommandContext(ctx, *ipCmd, args...)
			ip.Env, ip.Dir = []string{}, "/"
			if out, err := ip.CombinedOutput(); err != nil {
				return fmt.Errorf("guest: ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
			}
		}
	}
	defer cancel()
	var result any
	if *mode == "matrix" {
		result = runProbes(ctx, plan)
	} else if f, ok := guestModes[*mode]; ok {
		var err error
		if result, err = f(ctx, plan); err != nil {
			return fmt.Errorf("guest: %w", err)
		}
	} else {
		return fmt.Errorf("guest: unknown mode %q", *mode)
	}
	return json.NewEncoder(stdout).Encode(result)
}

// waitGateway waits until gvproxy's netstack answers on gateway:80, which
// means gvforwarder is attached and the route works.
func waitGateway(ctx context.Context, n bottleNet, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	addr := netip.AddrPortFrom(n.Gateway, 80).String()
	for {
		c, err := net.DialTimeout("tcp4", addr, 500*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gateway %s did not answer within %v: %v", addr, limit, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// lockedBuffer collects child logs; several goroutines write to it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) tail(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.buf.String()
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return strings.TrimSpace(s)
}

// withLogTail adds the end of the children's logs to an error.
func withLogTail(err error, b *lockedBuffer) error {
	if err == nil {
		return nil
	}
	if t := b.tail(1500); t != "" {
		return fmt.Errorf("%w\nlog tail:\n%s", err, t)
	}
	return err
}

// echoSidecar starts the stand-in sidecar, an echo server on a loopback
// port of the sandbox's host, closed with the sandbox.
func (s *sandbox) echoSidecar() (int, error) {
	return s.loopbackSidecar(func(c net.Conn) {
		s.sidecarOpen(+1)
		go func() {
			echoServe(c)
			s.sidecarOpen(-1)
		}()
	})
}

// loopbackSidecar listens on a loopback port of the sandbox's host, hands
// every connection to serve, and is closed with the sandbox.
func (s *sandbox) loopbackSidecar(serve func(net.Conn)) (int, error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	s.closers = append(s.closers, func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			serve(c)
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// procStatusCaps returns the capability and no_new_privs lines of a process,
// for tests and the selftest matrix.
func procStatusCaps(pid int) (map[string]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && (strings.HasPrefix(k, "Cap") || k == "NoNewPrivs") {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out, nil
}

// capsDropped reports whether a /proc status says no capability and
// no_new_privs.
func capsDropped(st map[string]string) bool {
	for _, k := range []string{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"} {
		if v, ok := st[k]; !ok || strings.Trim(v, "0") != "" {
			return false
		}
	}
	return st["NoNewPrivs"] == "1"
}

//go:build linux

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"time"
	"unsafe"
)

// The guest side of the network. The VM image has no ip, udhcpc or dhclient,
// so gvforwarder runs with -preexisting (it creates tap0 and leaves it down)
// and smolbottle configures the interface itself with the classic ioctls:
// address .2/24, MTU, link up, default route via the gateway .1. The same
// code configures the namespaces of the selftest.

// guestNetCmd is the internal subcommand run inside the guest:
//
//	smolbottle _guestnet -prepare [-tun /dev/net/tun]
//	smolbottle _guestnet -iface tap0 -subnet 192.168.N.0/24 [-mtu 1500] [-root /]
//
// -prepare runs before gvforwarder, which opens /dev/net/tun to create tap0
// once it has dialed gvproxy, and retries every second while that fails
// (cmd/vm/main_linux.go:66-71,94-102 @ gvisor-tap-vsock v0.8.9).
// smolvm 1.9.3's image containers have no such node: their /dev is a tmpfs
// with null, zero, full, random, urandom, tty and kmsg
// (crates/smolvm-agent/src/oci.rs:938-1017,1034-1044 @ v1.9.3); their root
// holds CAP_MKNOD (oci.rs:505-515, the full set by default) and crun sets
// no device cgroup (crates/smolvm-agent/src/crun.rs:155-165), so root
// makes the node. smolvm PR #1146 binds it in; which release first has it
// is unverified, so the node is made only when missing. -prepare prints a
// prepareReport; as a uid other than root it changes nothing.
const guestNetCmd = "_guestnet"

// The tun device: misc character device 10:200.
const (
	tunPath  = "/dev/net/tun"
	tunMajor = 10
	tunMinor = 200
)

const (
	guestIface = "tap0"
	// guestMAC is gvforwarder's default; gvproxy accepts any MAC.
	guestMAC = "5a:94:ef:e4:0c:ee"
)

// runGuestNet configures iface from the subnet's address plan and writes
// resolv.conf and hosts under root.
func runGuestNet(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(guestNetCmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	prepare := fs.Bool("prepare", false, "make /dev/net/tun when missing (as root) and report the uid")
	tun := fs.String("tun", tunPath, "the tun device node (-prepare)")
	iface := fs.String("iface", guestIface, "interface gvforwarder created")
	subnet := fs.String("subnet", "", "the bottle's 192.168.N.0/24")
	mtu := fs.Int("mtu", gvproxyMTU, "interface MTU")
	root := fs.String("root", "", "write etc/resolv.conf and etc/hosts under this directory (empty: do not write)")
	if err := fs.Parse(args); err != nil {
		return usageError("%v", err)
	}
	if *prepare {
		rep, err := prepareTun(*tun)
		if err != nil {
			return err
		}
		b, _ := json.Marshal(rep)
		_, err = fmt.Fprintf(stdout, "%s\n", b)
		return err
	}
	n, err := netForSubnet(*subnet)
	if err != nil {
		return usageError("%v", err)
	}
	if err := waitLink(ctx, *iface, 10*time.Second); err != nil {
		return err
	}
	if err := configureGuest(*iface, n, *mtu); err != nil {
		return err
	}
	if *root != "" {
		return writeGuestFiles(*root, n)
	}
	return nil
}

// prepareTun makes the tun node at path when it is missing and this
// process is root, and checks that it opens.
func prepareTun(path string) (prepareReport, error) {
	rep := prepareReport{UID: os.Getuid()}
	if rep.UID != 0 {
		rep.Tun = tunSkipped
		return rep, nil
	}
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return rep, fmt.Errorf("make %s: %v", path, err)
		}
		// Only root (gvforwarder) opens it.
		if err := syscall.Mknod(path, syscall.S_IFCHR|0o600, tunMajor<<8|tunMinor); err != nil {
			return rep, fmt.Errorf("mknod %s c %d %d: %v", path, tunMajor, tunMinor, err)
		}
		rep.Tun = tunCreated
	case err != nil:
		return rep, err
	case fi.Mode()&os.ModeCharDevice == 0:
		return rep, fmt.Errorf("%s exists and is not a character device", path)
	default:
		rep.Tun = tunPresent
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return rep, fmt.Errorf("%s does not open: %v", path, err)
	}
	f.Close()
	return rep, nil
}

// netForSubnet maps "192.168.N.0/24" back to its address plan.
func netForSubnet(s string) (bottleNet, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return bottleNet{}, fmt.Errorf("subnet %q: %v", s, err)
	}
	if !p.Addr().Is4() {
		return bottleNet{}, fmt.Errorf("subnet %q: want IPv4", s)
	}
	a := p.Addr().As4()
	if p.Bits() != 24 || a[0] != 192 || a[1] != 168 || a[3] != 0 || a[2] == 0 || a[2] == 255 {
		return bottleNet{}, fmt.Errorf("subnet %q: want 192.168.N.0/24 with N in 1..254", s)
	}
	return netFor(int(a[2])), nil
}

// configureGuest gives iface the guest address of n, the MTU, brings it up
// and routes everything through the gateway.
func configureGuest(iface string, n bottleNet, mtu int) error {
	if err := setLinkMTU(iface, mtu); err != nil {
		return err
	}
	if err := setLinkAddr(iface, netip.PrefixFrom(n.Guest, n.Subnet.Bits())); err != nil {
		return err
	}
	if err := setLinkUp(iface); err != nil {
		return err
	}
	return addDefaultRoute(iface, n.Gateway)
}

// guestResolvConf points the guest's resolver at the gateway, gvproxy's DNS.
func guestResolvConf(n bottleNet) []byte {
	return []byte(generatedHeader + "nameserver " + n.Gateway.String() + "\noptions ndots:1 timeout:2 attempts:2\n")
}

// guestHosts pins proxy.internal so that the sidecars resolve even if DNS
// is slow.
func guestHosts(n bottleNet) []byte {
	return []byte(generatedHeader + "127.0.0.1\tlocalhost\n::1\tlocalhost\n" + n.HostVIP.String() + "\t" + proxyName + "\n")
}

// writeGuestFiles writes root/etc/resolv.conf and root/etc/hosts whole
// (temp file and rename), so a reader never sees half a file.
func writeGuestFiles(root string, n bottleNet) error {
	dir := filepath.Join(root, "etc")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("guest files: %v", err)
	}
	for name, data := range map[string][]byte{"resolv.conf": guestResolvConf(n), "hosts": guestHosts(n)} {
		// These are world-readable on purpose: every guest program resolves.
		if err := writeFileAtomic(filepath.Join(dir, name), data, 0o644); err != nil {
			return fmt.Errorf("guest files: %v", err)
		}
	}
	return nil
}

// waitLink waits until the interface exists (gvforwarder creates it
// asynchronously).
func waitLink(ctx context.Context, name string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if _, err := net.InterfaceByName(name); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("interface %q did not appear within %v", name, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ifreq is struct ifreq: a name and a 24-byte union.
type ifreq struct {
	Name [syscall.IFNAMSIZ]byte
	Data [24]byte
}

func newIfreq(name string) (*ifreq, error) {
	if len(name) == 0 || len(name) >= syscall.IFNAMSIZ {
		return nil, fmt.Errorf("interface name %q: want 1..%d bytes", name, syscall.IFNAMSIZ-1)
	}
	var r ifreq
	copy(r.Name[:], name)
	return &r, nil
}

// ioctlInet runs one interface ioctl on a throwaway AF_INET socket.
func ioctlInet(req uintptr, arg unsafe.Pointer) error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), req, uintptr(arg)); e != 0 {
		return e
	}
	return nil
}

// setLinkUp sets IFF_UP on the interface.
func setLinkUp(name string) error {
	r, err := newIfreq(name)
	if err != nil {
		return err
	}
	if err := ioctlInet(syscall.SIOCGIFFLAGS, unsafe.Pointer(r)); err != nil {
		return fmt.Errorf("read flags of %q: %w", name, err)
	}
	flags := *(*uint16)(unsafe.Pointer(&r.Data[0])) | syscall.IFF_UP
	*(*uint16)(unsafe.Pointer(&r.Data[0])) = flags
	if err := ioctlInet(syscall.SIOCSIFFLAGS, unsafe.Pointer(r)); err != nil {
		return fmt.Errorf("bring %q up: %w", name, err)
	}
	return nil
}

// setLinkMTU sets the interface MTU.
func setLinkMTU(name string, mtu int) error {
	r, err := newIfreq(name)
	if err != nil {
		return err
	}
	*(*int32)(unsafe.Pointer(&r.Data[0])) = int32(mtu)
	if err := ioctlInet(syscall.SIOCSIFMTU, unsafe.Pointer(r)); err != nil {
		return fmt.Errorf("set mtu %d on %q: %w", mtu, name, err)
	}
	return nil
}

func putSockaddr4(dst []byte, a netip.Addr) {
	sa := (*syscall.RawSockaddrInet4)(unsafe.Pointer(&dst[0]))
	sa.Family = syscall.AF_INET
	sa.Addr = a.As4()
}

// setLinkAddr assigns an IPv4 address and netmask.
func setLinkAddr(name string, p netip.Prefix) error {
	if !p.Addr().Is4() {
		return fmt.Errorf("address %q: want IPv4", p)
	}
	r, err := newIfreq(name)
	if err != nil {
		return err
	}
	putSockaddr4(r.Data[:], p.Addr())
	if err := ioctlInet(syscall.SIOCSIFADDR, unsafe.Pointer(r)); err != nil {
		return fmt.Errorf("set address %s on %q: %w", p, name, err)
	}
	mask := net.CIDRMask(p.Bits(), 32)
	m, _ := netip.AddrFromSlice(mask)
	putSockaddr4(r.Data[:], m)
	if err := ioctlInet(syscall.SIOCSIFNETMASK, unsafe.Pointer(r)); err != nil {
		return fmt.Errorf("set netmask %s on %q: %w", p, name, err)
	}
	return nil
}

// rtentry is struct rtentry from <net/route.h>; unsigned long is uintptr.
type rtentry struct {
	pad1    uintptr
	dst     syscall.RawSockaddrInet4
	gateway syscall.RawSockaddrInet4
	genmask syscall.RawSockaddrInet4
	flags   uint16
	pad2    int16
	pad3    uintptr
	pad4    uintptr
	metric  int16
	dev     *byte
	mtu     uintptr
	window  uintptr
	irtt    uint16
}

const (
	rtfUp      = 0x1
	rtfGateway = 0x2
)

// addDefaultRoute adds 0.0.0.0/0 via gw on dev.
func addDefaultRoute(dev string, gw netip.Addr) error {
	devp, err := syscall.BytePtrFromString(dev)
	if err != nil {
		return err
	}
	rt := rtentry{flags: rtfUp | rtfGateway, dev: devp}
	rt.dst.Family = syscall.AF_INET
	rt.genmask.Family = syscall.AF_INET
	rt.gateway.Family = syscall.AF_INET
	rt.gateway.Addr = gw.As4()
	err = ioctlInet(syscall.SIOCADDRT, unsafe.Pointer(&rt))
	runtime.KeepAlive(devp)
	if err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("default route via %s on %q: %w", gw, dev, err)
	}
	return nil
}

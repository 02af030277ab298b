package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"time"
)

// gvproxy v0.8.9 facts this renderer relies on:
//   - it reads the file with yaml.v3's plain Unmarshal, which silently
//     ignores unknown keys (cmd/gvproxy/config.go:106 @ v0.8.9), so a
//     misspelt key is a security bug; the verify/ module decodes our output
//     with unknown keys rejected;
//   - an empty or missing nat means {hostIP: 127.0.0.1}, every host
//     loopback port (cmd/gvproxy/config.go:211-215 @ v0.8.9), so nat is
//     always written out;
//   - a zone named "" is a catch-all: its suffix "." ends every name, so
//     every other A query gets NXDOMAIN without an upstream lookup, and
//     record names in it are full names (pkg/services/dns/dns.go:59-94 @
//     v0.8.9); other query types (MX, NS, SRV, TXT) skip the zones and go
//     to gvproxy's own resolver (dns.go:62-64,119-236): only its jail,
//     with no resolv.conf and no interface but lo (jail.go), makes those
//     fail instead of reaching the host's DNS;
//   - it has no stack.deviceIP or stack.hostIP (pkg/types/configuration.go:
//     8-56 @ v0.8.9; those keys are newer).
const (
	proxyName         = "proxy.internal"
	gvproxyMTU        = 1500
	gatewayMACAddress = "5a:94:ef:e4:0c:dd"
	gvproxyLogLevel   = "info"
)

// gvproxySpec is everything the gvproxy config depends on.
type gvproxySpec struct {
	Net        bottleNet
	SocketPath string // absolute path of gvproxy's API socket; only the guest link front (guestlink.go) dials it for the guest
}

// renderGvproxy returns the gvproxy -config file for spec. Every string and
// every map key is double-quoted; integers and booleans are bare.
func renderGvproxy(spec gvproxySpec) ([]byte, error) {
	var y yamlWriter
	vip := spec.Net.HostVIP.String()
	listen := "unix://" + spec.SocketPath
	y.fail("listen", checkListenPath(listen, spec.SocketPath))
	y.buf.WriteString(generatedHeader)
	y.keyValue(0, "log-level", gvproxyLogLevel)
	y.key(0, "listen")
	y.item(2, listen)
	y.key(0, "stack")
	y.keyInt(2, "mtu", gvproxyMTU)
	y.keyValue(2, "subnet", spec.Net.Subnet.String())
	y.keyValue(2, "gatewayIP", spec.Net.Gateway.String())
	y.keyValue(2, "gatewayMacAddress", gatewayMACAddress)
	y.key(2, "dns")
	y.itemKeyValue(4, "name", "")
	y.key(6, "records")
	y.itemKeyValue(8, "name", proxyName)
	y.keyValue(10, "ip", vip)
	y.key(2, "nat")
	y.keyValue(4, vip, "127.0.0.1")
	y.key(2, "gatewayVirtualIPs")
	y.item(4, vip)
	y.keyBool(2, "ec2MetadataAccess", false)
	return y.result()
}

// checkListenPath refuses a socket path that gvproxy would not bind as
// written: it reads each listen entry with url.Parse (v0.8.9
// pkg/transport/listen.go) and binds the URL's Path, so "#" or "?" cut the
// path short, "%2f" is decoded, and a relative path becomes the URL's host.
func checkListenPath(listen, path string) error {
	u, err := url.Parse(listen)
	if err != nil || u.Scheme != "unix" || u.Host != "" || u.Path != path ||
		u.RawQuery != "" || u.Fragment != "" || u.ForceQuery || len(path) == 0 || path[0] != '/' {
		return errors.New("socket path must be absolute and must not contain '#', '?' or '%'")
	}
	return nil
}

// unixHTTPClient talks HTTP to gvproxy's API on its unix socket.
func unixHTTPClient(sock string) *http.Client {
	return &http.Client{
		Timeout: time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}
}

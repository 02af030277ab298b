package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Reachability probes, run from inside the guest (or the selftest's guest
// namespace). Each probe is one row of the matrix. "Must fail" probes pass
// when the connection is refused, unreachable, times out, or a name does
// not resolve; they fail the moment anything answers. Every DNS query goes
// to the gateway explicitly, never to whatever resolv.conf says, so a probe
// cannot be fooled by the guest's own configuration. The guest runs them
// as probeCmd (named in bottle.go, with the plan's other hidden subcommand):
//
//	smolbottle _probe -plan '<json probePlan>'   prints []probeResult as JSON

const (
	probeDialTimeout = 2 * time.Second
	// probeQuietLimit is how long a sidecar that does not speak HTTP may
	// hold a request unanswered and still count as answering.
	probeQuietLimit = 2 * time.Second
	probeDNSTimeout = 3 * time.Second
)

// The probe kinds the start-up self-test uses; the selftest's own kinds
// are in selftestprobe.go.
const (
	probeResolve = "resolve" // Host (A) must resolve to exactly Want
	probeAnswer  = "answer"  // Addr must take a request and not drop it: the sidecar itself answered
	probeNoTCP   = "no-tcp"  // a TCP connection to Addr must fail
	probeNoTCP6  = "no-tcp6" // the same over IPv6
	probeNoDNS   = "no-dns"  // Host of Type must give no record
)

// harnessProbes holds the selftest's own probe kinds, which
// selftestprobe.go adds; the start-up self-test uses none of them.
var harnessProbes = map[string]func(ctx context.Context, plan probePlan, p probe) (bool, string){}

// probe is one row of the matrix.
type probe struct {
	Name  string `json:"name"`
	Kind  string `json:"kind"`
	Addr  string `json:"addr,omitempty"`
	Host  string `json:"host,omitempty"`
	Type  string `json:"type,omitempty"`
	Want  string `json:"want,omitempty"`
	Bytes int    `json:"bytes,omitempty"`
	Count int    `json:"count,omitempty"`
	Body  string `json:"body,omitempty"`
}

// probePlan is the whole set of probes and where gvproxy's DNS and API are.
type probePlan struct {
	Gateway string  `json:"gateway"` // gvproxy's address: DNS on :53, API on :80
	Probes  []probe `json:"probes"`
}

// probeResult is one evaluated row.
type probeResult struct {
	Name   string `json:"name"`
	Kind   string `json:"kind"`
	Pass   bool   `json:"pass"`
	Detail string `json:"detail"`
}

// The addresses the start-up self-test must not reach are documentation
// ranges (RFC 5737, RFC 3849): only the guest dials them, and a confined
// gvproxy cannot carry them further. A broken confinement is caught by the
// canary row instead: a live listener on host loopback that no relay
// reaches, which an unconfined gvproxy's NAT would hand to the guest.
const (
	startupDirectIP = "203.0.113.10:443"
	startupIPv6     = "[2001:db8::1]:443"
)

// startupProbePlan is the egress self-test run in the guest at every start:
// proxy.internal resolves and each sidecar port answers;
// other names do not resolve; the host loopback canary (when canary > 0),
// a direct IP, the cloud-metadata address and IPv6 fail. A failing row
// stops the bottle.
func startupProbePlan(n bottleNet, ports []int, canary int) probePlan {
	plan := probePlan{Gateway: n.Gateway.String()}
	add := func(p probe) { plan.Probes = append(plan.Probes, p) }
	vip := n.HostVIP.String()
	add(probe{Name: proxyName + " resolves to " + vip, Kind: probeResolve, Host: proxyName + ".", Want: vip})
	for _, port := range ports {
		addr := net.JoinHostPort(vip, strconv.Itoa(port))
		add(probe{Name: "sidecar " + addr + " answers", Kind: probeAnswer, Addr: addr})
	}
	if canary > 0 {
		addr := net.JoinHostPort(vip, strconv.Itoa(canary))
		add(probe{Name: "host loopback canary " + addr, Kind: probeNoTCP, Addr: addr})
	}
	for _, typ := range []string{"A", "AAAA", "TXT", "MX"} {
		add(probe{Name: "DNS example.com " + typ, Kind: probeNoDNS, Host: "example.com.", Type: typ})
	}
	add(probe{Name: "DNS PROXY.INTERNAL TXT", Kind: probeNoDNS, Host: "PROXY.INTERNAL.", Type: "TXT"})
	add(probe{Name: "direct IP " + startupDirectIP, Kind: probeNoTCP, Addr: startupDirectIP})
	add(probe{Name: "cloud metadata 169.254.169.254:80", Kind: probeNoTCP, Addr: "169.254.169.254:80"})
	add(probe{Name: "IPv6 " + startupIPv6, Kind: probeNoTCP6, Addr: startupIPv6})
	return plan
}

// runProbeCmd runs a plan given as JSON and prints the results as JSON.
func runProbeCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(probeCmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	planJSON := fs.String("plan", "", "probe plan (JSON)")
	if err := fs.Parse(args); err != nil {
		return usageError("%v", err)
	}
	var plan probePlan
	if err := json.Unmarshal([]byte(*planJSON), &plan); err != nil {
		return usageError("probe plan: %v", err)
	}
	return json.NewEncoder(stdout).Encode(runProbes(ctx, plan))
}

// runProbes evaluates every probe in order.
func runProbes(ctx context.Context, plan probePlan) []probeResult {
	res := make([]probeResult, 0, len(plan.Probes))
	resolver := gatewayResolver(net.JoinHostPort(plan.Gateway, "53"))
	for _, p := range plan.Probes {
		pass, detail := runProbe(ctx, plan, resolver, p)
		res = append(res, probeResult{Name: p.Name, Kind: p.Kind, Pass: pass, Detail: detail})
	}
	return res
}

// gatewayResolver sends every query to addr, over UDP or TCP as the Go
// resolver chooses.
func gatewayResolver(addr string) *net.Resolver {
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
}

func runProbe(ctx context.Context, plan probePlan, r *net.Resolver, p probe) (bool, string) {
	switch p.Kind {
	case probeResolve:
		ctx, cancel := context.WithTimeout(ctx, probeDNSTimeout)
		defer cancel()
		ips, err := r.LookupIP(ctx, "ip4", p.Host)
		if err != nil {
			return false, err.Error()
		}
		got := make([]string, len(ips))
		for i, ip := range ips {
			got[i] = ip.String()
		}
		return slices.Equal(got, []string{p.Want}), "got " + strings.Join(got, ",")
	case probeAnswer:
		return mustAnswer(ctx, p.Addr)
	case probeNoTCP, probeNoTCP6:
		network := "tcp4"
		if p.Kind == probeNoTCP6 {
			network = "tcp6"
		}
		return mustNotConnect(ctx, network, p.Addr)
	case probeNoDNS:
		return mustNotResolve(ctx, r, p.Host, p.Type)
	}
	if f, ok := harnessProbes[p.Kind]; ok {
		return f(ctx, plan, p)
	}
	return false, fmt.Sprintf("unknown probe kind %q", p.Kind)
}

// mustAnswer passes when a request sent to addr reaches the sidecar
// behind it. A connection alone proves only that the relay accepted: it
// dials the sidecar on the guest's first bytes (relay.go) and closes the
// guest's side when that dial fails. So a HEAD request is sent; an HTTP
// reply passes at once (every sidecar smolbottle starts speaks HTTP), and a
// connection still open after probeQuietLimit passes too (a user's sidecar
// may speak another protocol and wait). A close or reset fails.
func mustAnswer(ctx context.Context, addr string) (bool, string) {
	d := net.Dialer{Timeout: probeDialTimeout}
	c, err := d.DialContext(ctx, "tcp4", addr)
	if err != nil {
		return false, shortErr(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(probeQuietLimit))
	if _, err := io.WriteString(c, "HEAD / HTTP/1.1\r\nHost: "+addr+"\r\nConnection: close\r\n\r\n"); err != nil {
		return false, shortErr(err)
	}
	buf := make([]byte, 64)
	n, err := io.ReadAtLeast(c, buf, len("HTTP/1.1 200"))
	line, _, _ := strings.Cut(string(buf[:n]), "\r\n")
	switch {
	case err == nil && strings.HasPrefix(line, "HTTP/1."):
		return true, line
	case err == nil:
		return true, fmt.Sprintf("answered %q", line)
	case errors.Is(err, os.ErrDeadlineExceeded) && n == 0:
		return true, "held the request open without an answer"
	}
	return false, "dropped the request: " + shortErr(err)
}

// mustNotConnect passes when no TCP connection can be opened.
func mustNotConnect(ctx context.Context, network, addr string) (bool, string) {
	d := net.Dialer{Timeout: probeDialTimeout}
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return true, shortErr(err)
	}
	c.Close()
	return false, "connected to " + addr
}

// mustNotResolve passes when the query gives no record.
func mustNotResolve(ctx context.Context, r *net.Resolver, host, typ string) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, probeDNSTimeout)
	defer cancel()
	var got []string
	var err error
	switch typ {
	case "A", "AAAA":
		network := map[string]string{"A": "ip4", "AAAA": "ip6"}[typ]
		var ips []net.IP
		ips, err = r.LookupIP(ctx, network, host)
		for _, ip := range ips {
			got = append(got, ip.String())
		}
	case "TXT":
		got, err = r.LookupTXT(ctx, host)
	case "MX":
		var mxs []*net.MX
		mxs, err = r.LookupMX(ctx, host)
		for _, mx := range mxs {
			got = append(got, mx.Host)
		}
	default:
		return false, fmt.Sprintf("unknown DNS type %q", typ)
	}
	if len(got) > 0 {
		return false, "answered " + strings.Join(got, ",")
	}
	if err != nil {
		return true, shortErr(err)
	}
	return true, "no records"
}

// shortErr trims the "dial tcp4 1.2.3.4:5->" prefix a reader does not need.
func shortErr(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err.Error()
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return dns.Err
	}
	return err.Error()
}

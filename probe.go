package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Reachability probes, run from inside the guest (or the selftest's guest
// namespace). Each probe is one row of the matrix. "Must fail" probes pass
// when the connection is refused, unreachable, times out, or a name does
// not resolve; they fail the moment anything answers. Every DNS query goes
// to the gateway explicitly, never to whatever resolv.conf says, so a probe
// cannot be fooled by the guest's own configuration.
//
//	smolbottle _probe -plan '<json probePlan>'   prints []probeResult as JSON
const probeCmd = "_probe"

const (
	probeDialTimeout = 2 * time.Second
	probeUDPWait     = time.Second
	probeDNSTimeout  = 3 * time.Second
	probeEchoTimeout = 30 * time.Second
	// burstStallLimit is how long the sidecar may take to answer while
	// dials to a black hole are pending. Stock gvproxy stalls ~136 s here
	// (measured): its TCP forwarder keeps at most 10 dials in flight
	// (pkg/services/forwarder/tcp.go:21 @ v0.8.9).
	burstStallLimit = 3 * time.Second
)

// Probe kinds.
const (
	probeResolve = "resolve" // Host (A) must resolve to exactly Want
	probeEcho    = "echo"    // Addr must echo Bytes bytes back intact
	probeTCP     = "tcp"     // a TCP connection to Addr must open
	probeNoTCP   = "no-tcp"  // a TCP connection to Addr must fail
	probeNoTCP6  = "no-tcp6" // the same over IPv6
	probeNoUDP   = "no-udp"  // a datagram to Addr must get no reply
	probeNoDNS   = "no-dns"  // Host of Type must give no record
	probeAPI     = "api"     // POST Body to the gateway's expose API; judged by the host
	probeBurst   = "burst"   // Count dials to Want (black hole) must not stall the echo at Addr
)

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
		add(probe{Name: "sidecar " + addr + " answers", Kind: probeTCP, Addr: addr})
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
	case probeEcho:
		n, err := echoCheck(ctx, p.Addr, p.Bytes, probeEchoTimeout)
		if err != nil {
			return false, err.Error()
		}
		return true, fmt.Sprintf("%d bytes each way", n)
	case probeTCP:
		d := net.Dialer{Timeout: probeDialTimeout}
		c, err := d.DialContext(ctx, "tcp4", p.Addr)
		if err != nil {
			return false, shortErr(err)
		}
		c.Close()
		return true, "connected"
	case probeNoTCP, probeNoTCP6:
		network := "tcp4"
		if p.Kind == probeNoTCP6 {
			network = "tcp6"
		}
		return mustNotConnect(ctx, network, p.Addr)
	case probeNoUDP:
		return mustNotAnswerUDP(ctx, p.Addr)
	case probeNoDNS:
		return mustNotResolve(ctx, r, p.Host, p.Type)
	case probeAPI:
		return true, postAPI(ctx, plan.Gateway, p.Body)
	case probeBurst:
		return burstCheck(ctx, p)
	}
	return false, fmt.Sprintf("unknown probe kind %q", p.Kind)
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

// mustNotAnswerUDP passes when a datagram gets no reply. "Sent" proves
// nothing on its own: the listeners on the far side also record what
// reaches them, and the selftest checks those counts.
func mustNotAnswerUDP(ctx context.Context, addr string) (bool, string) {
	d := net.Dialer{Timeout: probeDialTimeout}
	c, err := d.DialContext(ctx, "udp4", addr)
	if err != nil {
		return true, shortErr(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("smolbottle probe")); err != nil {
		return true, shortErr(err)
	}
	c.SetReadDeadline(time.Now().Add(probeUDPWait))
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		return true, "no reply (" + shortErr(err) + ")"
	}
	return false, fmt.Sprintf("reply %q", buf[:n])
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

// postAPI sends a request to gvproxy's guest-facing API and describes the
// answer; whether the request did harm is checked on the host.
func postAPI(ctx context.Context, gateway, body string) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	url := "http://" + net.JoinHostPort(gateway, "80") + "/services/forwarder/expose"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return err.Error()
	}
	req.Header.Set("Content-Type", "application/json")
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		return "API: " + shortErr(err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
	return fmt.Sprintf("API answered %d %s", resp.StatusCode, strings.TrimSpace(string(msg)))
}

// echoCheck writes size pseudo-random bytes to an echo service and reads
// them back at the same time, comparing digests.
func echoCheck(ctx context.Context, addr string, size int, limit time.Duration) (int, error) {
	d := net.Dialer{Timeout: probeDialTimeout}
	c, err := d.DialContext(ctx, "tcp4", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(limit))
	src := rand.NewChaCha8([32]byte{'s', 'm', 'o', 'l'})
	data := make([]byte, size)
	src.Read(data)
	var werr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, werr = c.Write(data)
		if tc, ok := c.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}()
	h := sha256.New()
	n, rerr := io.Copy(h, c)
	wg.Wait()
	if werr != nil {
		return 0, fmt.Errorf("write: %v", werr)
	}
	if rerr != nil {
		return 0, fmt.Errorf("read after %d bytes: %v", n, rerr)
	}
	want := sha256.Sum256(data)
	if n != int64(size) || !bytes.Equal(h.Sum(nil), want[:]) {
		return 0, fmt.Errorf("echoed %d of %d bytes, digest mismatch", n, size)
	}
	return size, nil
}

// burstCheck opens Count dials to the black-holed Want, then checks that the
// echo at Addr still answers within burstStallLimit.
func burstCheck(ctx context.Context, p probe) (bool, string) {
	bctx, cancel := context.WithTimeout(ctx, 2*burstStallLimit)
	defer cancel()
	var wg sync.WaitGroup
	for range p.Count {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var d net.Dialer
			if c, err := d.DialContext(bctx, "tcp4", p.Want); err == nil {
				c.Close()
			}
		}()
	}
	time.Sleep(200 * time.Millisecond) // let the SYNs reach gvproxy first
	start := time.Now()
	_, err := echoCheck(ctx, p.Addr, 1024, burstStallLimit)
	took := time.Since(start)
	cancel()
	wg.Wait()
	if err != nil {
		return false, fmt.Sprintf("sidecar stalled: %v after %v", err, took.Round(time.Millisecond))
	}
	return true, fmt.Sprintf("sidecar answered in %v with %d dials pending", took.Round(time.Millisecond), p.Count)
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

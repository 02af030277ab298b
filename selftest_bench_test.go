//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"
)

// The data-path benchmark is a selftest mode that only this test binary
// has: its host side starts a confined and an unconfined gvproxy, its guest
// side measures both.
func init() {
	sandboxModes["bench"] = sandboxBench
	guestModes["bench"] = func(ctx context.Context, plan probePlan) (any, error) {
		addrs := make([]string, len(plan.Probes))
		for i, p := range plan.Probes {
			addrs[i] = p.Addr
		}
		return measurePaths(ctx, addrs)
	}
}

// BenchmarkNetPath measures guest namespace -> sidecar through a confined
// gvproxy (the sidecar relayed, as pipelock is), an unconfined one, and a
// confined one whose port is served in-process (as the credential sidecar
// is), in one sandbox, and reports each and the ratios to unconfined.
// One iteration is a whole measurement (the medians of five 32 MiB echoes and
// of 25 alternating batches of 20 connects); run it with -benchtime=1x.
func BenchmarkNetPath(b *testing.B) {
	gvproxy, gvforwarder := netTools(b)
	for range b.N {
		var out, errb bytes.Buffer
		err := runSandbox(context.Background(), "bench", selftestOptions{gvproxy: gvproxy, gvforwarder: gvforwarder}, &out, &errb)
		if err != nil {
			b.Fatalf("bench: %v\n%s", err, errb.String())
		}
		var r netBench
		if err := json.Unmarshal(out.Bytes(), &r); err != nil {
			b.Fatalf("bench output %q: %v", out.String(), err)
		}
		b.ReportMetric(r.Confined.MiBps, "confined-MiB/s")
		b.ReportMetric(r.Unconfined.MiBps, "unconfined-MiB/s")
		b.ReportMetric(r.Confined.MiBps/r.Unconfined.MiBps, "throughput-ratio")
		b.ReportMetric(r.Confined.ConnectMicros, "confined-connect-us")
		b.ReportMetric(r.Unconfined.ConnectMicros, "unconfined-connect-us")
		b.ReportMetric(r.Unconfined.ConnectMicros/r.Confined.ConnectMicros, "connect-speed-ratio")
		b.ReportMetric(r.Served.ConnectMicros, "served-connect-us")
		b.ReportMetric(r.Unconfined.ConnectMicros/r.Served.ConnectMicros, "served-connect-speed-ratio")
		b.ReportMetric(r.Served.MiBps/r.Unconfined.MiBps, "served-throughput-ratio")
	}
}

// benchResult is what the guest measured on one path.
type benchResult struct {
	MiBps         float64 `json:"mib_per_s"`
	ConnectMicros float64 `json:"connect_us"`
}

const (
	benchBytes         = 32 << 20
	benchRounds        = 5  // throughput: echoes per path
	benchConnectRounds = 25 // connect: batches per path, alternating paths
	benchConns         = 20 // connects per batch
)

// measurePaths measures each address in turn and returns the median per
// address: throughput (echo, both directions at once, benchRounds times)
// and the time to connect and get one byte back (benchConnectRounds
// batches of benchConns). The paths alternate batch by batch so that drift
// in the machine's load falls on both alike.
func measurePaths(ctx context.Context, addrs []string) ([]benchResult, error) {
	mibps := make([][]float64, len(addrs))
	us := make([][]float64, len(addrs))
	for range benchRounds {
		for i, addr := range addrs {
			start := time.Now()
			if _, err := echoCheck(ctx, addr, benchBytes, time.Minute); err != nil {
				return nil, err
			}
			mibps[i] = append(mibps[i], float64(benchBytes)/(1<<20)/time.Since(start).Seconds())
		}
	}
	buf := make([]byte, 1)
	for range benchConnectRounds {
		for i, addr := range addrs {
			start := time.Now()
			for range benchConns {
				c, err := net.DialTimeout("tcp4", addr, probeDialTimeout)
				if err != nil {
					return nil, err
				}
				_, err = c.Write(buf)
				if err == nil {
					_, err = io.ReadFull(c, buf)
				}
				c.Close()
				if err != nil {
					return nil, err
				}
			}
			us[i] = append(us[i], float64(time.Since(start).Microseconds())/benchConns)
		}
	}
	res := make([]benchResult, len(addrs))
	for i := range addrs {
		res[i] = benchResult{MiBps: median(mibps[i]), ConnectMicros: median(us[i])}
	}
	return res, nil
}

func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}

// netBench is the outcome of the benchmark mode.
type netBench struct {
	Confined   benchResult `json:"confined"`
	Unconfined benchResult `json:"unconfined"`
	Served     benchResult `json:"served"`
}

// sandboxBench measures the guest -> sidecar path through a confined and an
// unconfined gvproxy, one after the other, in the same sandbox.
func sandboxBench(ctx context.Context, s *sandbox, stdout io.Writer) error {
	port, err := s.echoSidecar()
	if err != nil {
		return err
	}
	// Index 0 confined (relayed), 1 unconfined, 2 confined with the port
	// served in this process (confineSpec.Serve, as the credential
	// sidecar is): all run at once and are measured in alternation.
	served := func(ln net.Listener) {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}
	var socks []string
	var nets []bottleNet
	var plan probePlan
	for i, path := range []string{"relayed", "unconfined", "served"} {
		n := netFor(201 + i)
		stage := filepath.Join(s.stage, "bench"+strconv.Itoa(n.N))
		if err := mkdirPrivate(stage); err != nil {
			return err
		}
		spec := confineSpec{Gvproxy: s.gvproxy, Net: n, Stage: stage, Ports: []int{port}, Log: s.log}
		if path == "served" {
			spec.Serve = map[int]func(net.Listener){port: served}
		}
		cn, err := startSelftestNet(ctx, spec, path == "unconfined")
		if err != nil {
			return err
		}
		s.closers = append(s.closers, func() { cn.Close() })
		socks, nets = append(socks, cn.LinkPath), append(nets, n)
		plan.Probes = append(plan.Probes, probe{Addr: netip.AddrPortFrom(n.HostVIP, uint16(port)).String()})
	}
	plan.Gateway = nets[0].Gateway.String()
	out, err := s.runGuest(ctx, socks, nets, "bench", plan)
	if err != nil {
		return err
	}
	var rs []benchResult
	if err := json.Unmarshal(out, &rs); err != nil || len(rs) != 3 {
		return fmt.Errorf("bench: guest output %q: %v", out, err)
	}
	res := netBench{Confined: rs[0], Unconfined: rs[1], Served: rs[2]}
	return json.NewEncoder(stdout).Encode(res)
}

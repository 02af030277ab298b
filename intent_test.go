package main

// The intended values of each rendered file, written down independently of
// the writers: what a parser must read back from the output. The subset
// readers, the golden tests and the verify/ module (through the .json files
// emit_test.go writes) all compare against these.

import (
	"bytes"
	"encoding/json"
	"strconv"
	"testing"
)

type smolfileDoc struct {
	Image   string   `json:"image"`
	Workdir string   `json:"workdir"`
	CPUs    int      `json:"cpus"`
	Memory  int      `json:"memory"`
	Volumes []string `json:"volumes"`
	Env     []string `json:"env"`
}

func intendedSmolfile(spec smolfileSpec) smolfileDoc {
	d := smolfileDoc{
		Image:   spec.Image,
		Workdir: spec.Workdir,
		CPUs:    spec.CPUs,
		Memory:  spec.MemMiB,
		Volumes: append([]string{}, spec.Volumes...),
		Env:     []string{},
	}
	for _, e := range spec.Env {
		d.Env = append(d.Env, e.Name+"="+e.Value)
	}
	return d
}

type gvproxyDoc struct {
	LogLevel string       `json:"log-level"`
	Listen   []string     `json:"listen"`
	Stack    gvproxyStack `json:"stack"`
}

type gvproxyStack struct {
	MTU               int               `json:"mtu"`
	Subnet            string            `json:"subnet"`
	GatewayIP         string            `json:"gatewayIP"`
	GatewayMacAddress string            `json:"gatewayMacAddress"`
	DNS               []gvproxyZone     `json:"dns"`
	NAT               map[string]string `json:"nat"`
	GatewayVirtualIPs []string          `json:"gatewayVirtualIPs"`
	Ec2MetadataAccess bool              `json:"ec2MetadataAccess"`
}

type gvproxyZone struct {
	Name    string          `json:"name"`
	Records []gvproxyRecord `json:"records"`
}

type gvproxyRecord struct {
	Name string `json:"name"`
	IP   string `json:"ip"`
}

// intendedGvproxy is smolbottle's gvproxy policy: one catch-all zone holding only
// proxy.internal, NAT exactly host VIP -> 127.0.0.1, and nothing else.
func intendedGvproxy(spec gvproxySpec) gvproxyDoc {
	vip := spec.Net.HostVIP.String()
	return gvproxyDoc{
		LogLevel: "info",
		Listen:   []string{"unix://" + spec.SocketPath},
		Stack: gvproxyStack{
			MTU:               1500,
			Subnet:            spec.Net.Subnet.String(),
			GatewayIP:         spec.Net.Gateway.String(),
			GatewayMacAddress: "5a:94:ef:e4:0c:dd",
			DNS:               []gvproxyZone{{Name: "", Records: []gvproxyRecord{{Name: "proxy.internal", IP: vip}}}},
			NAT:               map[string]string{vip: "127.0.0.1"},
			GatewayVirtualIPs: []string{vip},
		},
	}
}

type pipelockDoc struct {
	Version             int                  `json:"version"`
	Mode                string               `json:"mode"`
	Enforce             bool                 `json:"enforce"`
	APIAllowlist        []string             `json:"api_allowlist"`
	FetchProxy          pipelockFetch        `json:"fetch_proxy"`
	ForwardProxy        pipelockForward      `json:"forward_proxy"`
	RequestBodyScanning pipelockBodyScanning `json:"request_body_scanning"`
	MetricsListen       string               `json:"metrics_listen"`
	Sentry              pipelockSentry       `json:"sentry"`
	Logging             pipelockLogging      `json:"logging"`
}

type pipelockFetch struct {
	Listen     string             `json:"listen"`
	Monitoring pipelockMonitoring `json:"monitoring"`
}

type pipelockMonitoring struct {
	MaxRequestsPerMinute int `json:"max_requests_per_minute"`
}

type pipelockSentry struct {
	Enabled bool `json:"enabled"`
}

type pipelockForward struct {
	Enabled            bool `json:"enabled"`
	MaxTunnelSeconds   int  `json:"max_tunnel_seconds"`
	IdleTimeoutSeconds int  `json:"idle_timeout_seconds"`
	SNIVerification    bool `json:"sni_verification"`
}

type pipelockBodyScanning struct {
	Enabled     bool   `json:"enabled"`
	Action      string `json:"action"`
	ScanHeaders bool   `json:"scan_headers"`
}

type pipelockLogging struct {
	Format         string `json:"format"`
	Output         string `json:"output"`
	IncludeAllowed bool   `json:"include_allowed"`
	IncludeBlocked bool   `json:"include_blocked"`
}

// intendedPipelock: strict mode (the allowlist is enforced only there), the
// forward proxy on, sentry off, logs to the given file. An empty allowlist
// stays null: pipelock then allows nothing.
func intendedPipelock(spec pipelockSpec) pipelockDoc {
	d := pipelockDoc{Version: 1, Mode: "strict", Enforce: true, MetricsListen: "127.0.0.1:" + strconv.Itoa(spec.MetricsPort)}
	if len(spec.Allow) > 0 {
		d.APIAllowlist = append([]string{}, spec.Allow...)
	}
	d.FetchProxy.Listen = "127.0.0.1:" + strconv.Itoa(spec.Port)
	d.FetchProxy.Monitoring.MaxRequestsPerMinute = 6000
	d.ForwardProxy = pipelockForward{Enabled: true, MaxTunnelSeconds: 3600, IdleTimeoutSeconds: 600, SNIVerification: true}
	d.RequestBodyScanning = pipelockBodyScanning{Enabled: true, Action: "block", ScanHeaders: true}
	d.Logging = pipelockLogging{Format: "json", Output: "stdout", IncludeAllowed: true, IncludeBlocked: true}
	return d
}

// generic turns an intended document into the shape the subset readers
// return (maps, slices, strings, json.Number, bool, nil).
func generic(t testing.TB, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var g any
	if err := d.Decode(&g); err != nil {
		t.Fatal(err)
	}
	return g
}

// dump renders a generic value with sorted keys, for failure messages.
func dump(v any) string {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err.Error()
	}
	return string(b)
}

package main

import "strconv"

// pipelock config facts (reference/pipelock.md §1.2, schema
// internal/config/schema.go): unknown keys are fatal; the allow-list is
// enforced only in mode strict; forward_proxy.enabled defaults to false and
// must be true for HTTPS_PROXY clients; an empty metrics_listen serves
// /metrics and /stats on the agent-facing port; sentry defaults to enabled
// and the shipped presets carry the maintainer's DSN, so it is switched off
// explicitly.
const (
	pipelockMaxTunnelSeconds = 3600 // long SSE streams to api.anthropic.com outlive the 300 s default
	pipelockIdleSeconds      = 600
)

// pipelockSpec is everything the pipelock config depends on.
type pipelockSpec struct {
	Port        int      // agent-facing listener, relayed to the guest
	MetricsPort int      // /metrics and /stats, never relayed to the guest
	Allow       []string // validated host names or *.domain patterns
	LogFile     string   // absolute path under the stage's logs directory
}

// renderPipelock returns pipelock's YAML config for spec.
func renderPipelock(spec pipelockSpec) ([]byte, error) {
	var y yamlWriter
	y.buf.WriteString(generatedHeader)
	y.keyInt(0, "version", 1)
	y.keyValue(0, "mode", "strict")
	y.keyBool(0, "enforce", true)
	y.key(0, "api_allowlist")
	for _, h := range spec.Allow {
		y.item(2, h)
	}
	y.key(0, "fetch_proxy")
	y.keyValue(2, "listen", loopbackAddr(spec.Port))
	y.key(0, "forward_proxy")
	y.keyBool(2, "enabled", true)
	y.keyInt(2, "max_tunnel_seconds", pipelockMaxTunnelSeconds)
	y.keyInt(2, "idle_timeout_seconds", pipelockIdleSeconds)
	y.keyBool(2, "sni_verification", true)
	y.key(0, "request_body_scanning")
	y.keyBool(2, "enabled", true)
	y.keyValue(2, "action", "block")
	y.keyBool(2, "scan_headers", true)
	y.keyValue(0, "metrics_listen", loopbackAddr(spec.MetricsPort))
	y.key(0, "sentry")
	y.keyBool(2, "enabled", false)
	y.key(0, "logging")
	y.keyValue(2, "format", "json")
	y.keyValue(2, "output", "file")
	y.keyValue(2, "file", spec.LogFile)
	y.keyBool(2, "include_allowed", true)
	y.keyBool(2, "include_blocked", true)
	if y.err != nil {
		return nil, y.err
	}
	return y.buf.Bytes(), nil
}

// loopbackAddr returns 127.0.0.1:port.
func loopbackAddr(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

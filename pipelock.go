package main

import "errors"

// pipelock config facts (schema internal/config/schema.go @ v2.3.0):
// unknown keys are fatal, nested ones too (internal/config/load.go:33-46);
// the allow-list is enforced only in mode strict, and strict mode with an
// empty api_allowlist is fatal (internal/config/validate.go:250-252);
// forward_proxy.enabled defaults to false and must be true for HTTPS_PROXY
// clients; an empty metrics_listen serves /metrics and /stats on the
// agent-facing port; sentry defaults to enabled and the shipped presets
// carry the maintainer's DSN, so it is switched off explicitly. The request
// log goes to standard output (internal/audit/logger.go:431-436), which
// the sidecar caps (sidecar.go); a file pipelock opened itself would grow
// without bound.
//
// Every CONNECT is scanned once (internal/proxy/forward.go:126), and the
// scan counts it against a per-base-domain limit per minute
// (internal/scanner/scanner.go:688, :1070-1084) that defaults to 60 when
// fetch_proxy.monitoring.max_requests_per_minute is unset or <= 0
// (internal/config/normalize.go:143-144): there is no "off". 60 throttles
// an agent that opens a connection per request (npm, pip, parallel
// subagents); the allow-list, not this counter, is what confines egress.
const (
	pipelockMaxTunnelSeconds = 3600 // long SSE streams to api.anthropic.com outlive the 300 s default
	pipelockIdleSeconds      = 600
	// pipelockMaxPerMinute is 100 a second per allowed domain: above the
	// bursts of an agent whose package manager opens a connection per
	// download, still a bound on a runaway loop.
	pipelockMaxPerMinute = 6000
)

// pipelockSpec is everything the pipelock config depends on.
type pipelockSpec struct {
	Port        int      // agent-facing listener, relayed to the guest
	MetricsPort int      // /metrics and /stats, never relayed to the guest
	Allow       []string // validated host names or *.domain patterns
}

// renderPipelock returns pipelock's YAML config for spec.
// An empty Allow is an error: pipelock would refuse the config.
func renderPipelock(spec pipelockSpec) ([]byte, error) {
	if len(spec.Allow) == 0 {
		return nil, errors.New("api_allowlist: empty; pipelock's strict mode needs at least one host")
	}
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
	y.key(2, "monitoring")
	y.keyInt(4, "max_requests_per_minute", pipelockMaxPerMinute)
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
	y.keyValue(2, "output", "stdout") // the sidecar's capped request log
	y.keyBool(2, "include_allowed", true)
	y.keyBool(2, "include_blocked", true)
	return y.result()
}

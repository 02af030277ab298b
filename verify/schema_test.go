package verify

import (
	"github.com/containers/gvisor-tap-vsock/pkg/types"
)

// smolfile mirrors smolvm's Smolfile (crates/smolvm-smolfile/src/
// lib.rs:227-421 @ v1.9.3) key for key, with its integer
// widths, so that a key smolvm would reject shows up in Undecoded() and an
// out-of-range integer fails to decode. Optional scalars are pointers, so a
// key we did not mean to write cannot hide behind a zero value.
type smolfile struct {
	Image        string               `toml:"image" json:"image"`
	Entrypoint   []string             `toml:"entrypoint" json:"entrypoint"`
	Cmd          []string             `toml:"cmd" json:"cmd"`
	Env          []string             `toml:"env" json:"env"`
	Secrets      map[string]secretRef `toml:"secrets" json:"secrets"`
	Workdir      string               `toml:"workdir" json:"workdir"`
	CPUs         *uint8               `toml:"cpus" json:"cpus"`
	Memory       *uint32              `toml:"memory" json:"memory"`
	Net          *bool                `toml:"net" json:"net"`
	GPU          *bool                `toml:"gpu" json:"gpu"`
	GPUVram      *uint32              `toml:"gpu_vram" json:"gpu_vram"`
	Rosetta      *bool                `toml:"rosetta" json:"rosetta"`
	Cuda         *bool                `toml:"cuda" json:"cuda"`
	AutoGraph    *bool                `toml:"auto_graph" json:"auto_graph"`
	DockerSocket *bool                `toml:"docker_socket" json:"docker_socket"`
	Storage      *uint64              `toml:"storage" json:"storage"`
	Overlay      *uint64              `toml:"overlay" json:"overlay"`
	Ports        []string             `toml:"ports" json:"ports"`
	Volumes      []string             `toml:"volumes" json:"volumes"`
	Init         []string             `toml:"init" json:"init"`
	Artifact     *smolArtifact        `toml:"artifact" json:"artifact"`
	Pack         *smolArtifact        `toml:"pack" json:"pack"`
	Dev          *smolDev             `toml:"dev" json:"dev"`
	Network      *smolNetwork         `toml:"network" json:"network"`
	Fork         *smolFork            `toml:"fork" json:"fork"`
	Health       *smolHealth          `toml:"health" json:"health"`
	Restart      *smolRestart         `toml:"restart" json:"restart"`
	Auth         *smolAuth            `toml:"auth" json:"auth"`
	Service      *smolService         `toml:"service" json:"service"`
}

// secretRef is smolvm-protocol's SecretRef: exactly one of the two.
type secretRef struct {
	FromEnv  *string `toml:"from_env" json:"from_env"`
	FromFile *string `toml:"from_file" json:"from_file"`
}

type smolNetwork struct {
	AllowHosts []string `toml:"allow_hosts" json:"allow_hosts"`
	AllowCIDRs []string `toml:"allow_cidrs" json:"allow_cidrs"`
}

type smolDev struct {
	Volumes []string `toml:"volumes" json:"volumes"`
	Env     []string `toml:"env" json:"env"`
	Init    []string `toml:"init" json:"init"`
	Workdir *string  `toml:"workdir" json:"workdir"`
	Ports   []string `toml:"ports" json:"ports"`
}

type smolArtifact struct {
	CPUs        *uint8   `toml:"cpus" json:"cpus"`
	Memory      *uint32  `toml:"memory" json:"memory"`
	Entrypoint  []string `toml:"entrypoint" json:"entrypoint"`
	Cmd         []string `toml:"cmd" json:"cmd"`
	OCIPlatform *string  `toml:"oci_platform" json:"oci_platform"`
}

type smolFork struct {
	Enabled          *bool   `toml:"enabled" json:"enabled"`
	PoolSize         *uint32 `toml:"pool_size" json:"pool_size"`
	CudaVramLimitMiB *uint64 `toml:"cuda_vram_limit_mib" json:"cuda_vram_limit_mib"`
}

type smolHealth struct {
	Exec         []string `toml:"exec" json:"exec"`
	Interval     *string  `toml:"interval" json:"interval"`
	Timeout      *string  `toml:"timeout" json:"timeout"`
	Retries      *uint32  `toml:"retries" json:"retries"`
	StartupGrace *string  `toml:"startup_grace" json:"startup_grace"`
}

type smolRestart struct {
	Policy     *string `toml:"policy" json:"policy"`
	MaxRetries *uint32 `toml:"max_retries" json:"max_retries"`
	MaxBackoff *string `toml:"max_backoff" json:"max_backoff"`
}

type smolAuth struct {
	SSHAgent *bool `toml:"ssh_agent" json:"ssh_agent"`
}

type smolService struct {
	Port     *uint16 `toml:"port" json:"port"`
	Protocol *string `toml:"protocol" json:"protocol"`
	Listen   *uint16 `toml:"listen" json:"listen"`
}

// gvproxyConfig mirrors GvproxyConfig from gvisor-tap-vsock v0.8.9
// cmd/gvproxy/config.go:53-70 field for field (it lives in package main
// upstream, so it cannot be imported), around the real types.Configuration.
// The json tags let the intended values decode into the same type.
type gvproxyConfig struct {
	Listen     []string            `yaml:"listen,omitempty" json:"listen"`
	LogLevel   string              `yaml:"log-level,omitempty" json:"log-level"`
	Stack      types.Configuration `yaml:"stack,omitempty" json:"stack"`
	Interfaces struct {
		VPNKit string `yaml:"vpnkit,omitempty"`
		Qemu   string `yaml:"qemu,omitempty"`
		Bess   string `yaml:"bess,omitempty"`
		Stdio  string `yaml:"stdio,omitempty"`
		Vfkit  string `yaml:"vfkit,omitempty"`
	} `yaml:"interfaces,omitempty" json:"interfaces"`
	Forwards           []gvproxyConfigForward `yaml:"forwards,omitempty" json:"forwards"`
	PIDFile            string                 `yaml:"pid-file,omitempty" json:"pid-file"`
	LogFile            string                 `yaml:"log-file,omitempty" json:"log-file"`
	Services           string                 `yaml:"services,omitempty" json:"services"`
	Ec2MetadataAccess  bool                   `yaml:"ec2-metadata-access,omitempty" json:"ec2-metadata-access"`
	NotificationSocket string                 `yaml:"notification,omitempty" json:"notification"`
}

type gvproxyConfigForward struct {
	Socket   string `yaml:"socket,omitempty"`
	Dest     string `yaml:"dest,omitempty"`
	User     string `yaml:"user,omitempty"`
	Identity string `yaml:"identity,omitempty"`
}

// pipelockConfig mirrors the part of pipelock's Config
// (internal/config/schema.go) that we write, with the same Go types (the
// *bool fields are nil-means-default upstream). KnownFields(true) on this
// subset rejects anything else we might write; pipelock itself rejects
// unknown keys too.
type pipelockConfig struct {
	Version             int                  `yaml:"version" json:"version"`
	Mode                string               `yaml:"mode" json:"mode"`
	Enforce             *bool                `yaml:"enforce" json:"enforce"`
	APIAllowlist        []string             `yaml:"api_allowlist" json:"api_allowlist"`
	FetchProxy          pipelockFetchProxy   `yaml:"fetch_proxy" json:"fetch_proxy"`
	ForwardProxy        pipelockForwardProxy `yaml:"forward_proxy" json:"forward_proxy"`
	RequestBodyScanning pipelockBodyScanning `yaml:"request_body_scanning" json:"request_body_scanning"`
	MetricsListen       string               `yaml:"metrics_listen" json:"metrics_listen"`
	Sentry              pipelockSentry       `yaml:"sentry" json:"sentry"`
	Logging             pipelockLogging      `yaml:"logging" json:"logging"`
}

type pipelockFetchProxy struct {
	Listen     string             `yaml:"listen" json:"listen"`
	Monitoring pipelockMonitoring `yaml:"monitoring" json:"monitoring"`
}

// pipelockMonitoring: internal/config/schema.go:437-445 @ v2.3.0
// (MaxReqPerMinute int, yaml max_requests_per_minute).
type pipelockMonitoring struct {
	MaxReqPerMinute int `yaml:"max_requests_per_minute" json:"max_requests_per_minute"`
}

type pipelockForwardProxy struct {
	Enabled            bool  `yaml:"enabled" json:"enabled"`
	MaxTunnelSeconds   int   `yaml:"max_tunnel_seconds" json:"max_tunnel_seconds"`
	IdleTimeoutSeconds int   `yaml:"idle_timeout_seconds" json:"idle_timeout_seconds"`
	SNIVerification    *bool `yaml:"sni_verification" json:"sni_verification"`
}

type pipelockBodyScanning struct {
	Enabled     bool   `yaml:"enabled" json:"enabled"`
	Action      string `yaml:"action" json:"action"`
	ScanHeaders bool   `yaml:"scan_headers" json:"scan_headers"`
}

type pipelockSentry struct {
	Enabled *bool `yaml:"enabled" json:"enabled"`
}

type pipelockLogging struct {
	Format         string `yaml:"format" json:"format"`
	Output         string `yaml:"output" json:"output"`
	File           string `yaml:"file" json:"file"`
	IncludeAllowed bool   `yaml:"include_allowed" json:"include_allowed"`
	IncludeBlocked bool   `yaml:"include_blocked" json:"include_blocked"`
}

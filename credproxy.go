package main

import (
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"time"
)

// The credential sidecar keeps the agent's API credentials on the host.
// The guest holds a placeholder, random per bottle; this sidecar, served
// inside the supervisor, swaps in the real value. It keeps these
// invariants:
//
//  1. A real value lives only in the supervisor's memory. up reads it from
//     its own environment and writes it to an inherited pipe, which the
//     supervisor reads once and closes; it is never in a file, a log, an
//     argv, an environment or anything sent to the guest.
//  2. A real value is sent only to credUpstream, over TLS verified against
//     the system roots, through the bottle's egress proxy (CONNECT), so the
//     egress allow-list and its log still apply.
//  3. A request is forwarded only when all hold: method POST; Host is the
//     sidecar's own name as the guest dials it; path /v1/messages or
//     /v1/messages/count_tokens (what Claude Code calls; batches would let
//     the guest read every batch made with the key) with no query but
//     "beta=true"; and every credential header present carries exactly
//     this bottle's placeholder, in the header that credential belongs
//     in, with at least one present. Anything else is refused with a
//     status naming why, and logged without any header value.
//  4. Only the credential header is rewritten, and only in the request
//     sent upstream. Responses, server-sent events included, are copied
//     through as they arrive (a flush after every write).
const (
	credSidecar        = "credentials"
	credUpstream       = "api.anthropic.com"
	credMaxBody        = 32 << 20 // the Messages API's own request limit
	credMaxHeader      = 64 << 10
	credMaxValue       = 8 << 10 // one credential's value, as read from up
	credReadHeader     = 10 * time.Second
	credIdle           = 120 * time.Second
	credResponseHeader = 10 * time.Minute // a long non-streamed reply sends its headers last
	credPlaceholderLen = 32               // random bytes, hex-encoded
)

// credKinds are the host variables the sidecar stands in for and the
// header each travels in; Claude Code 2.1.332 sends ANTHROPIC_API_KEY as
// x-api-key and CLAUDE_CODE_OAUTH_TOKEN as "Authorization: Bearer"
// (measured).
var credKinds = []struct{ Env, Header, Prefix string }{
	{"ANTHROPIC_API_KEY", "X-Api-Key", ""},
	{"CLAUDE_CODE_OAUTH_TOKEN", "Authorization", "Bearer "},
}

var credPaths = []string{"/v1/messages", "/v1/messages/count_tokens"}

// credential is one credential of a bottle as the plan records it: the
// placeholder the guest holds, never the value.
type credential struct {
	Env         string `json:"env"`
	Header      string `json:"header"`
	Prefix      string `json:"prefix,omitempty"`
	Placeholder string `json:"placeholder"`
}

// newCredentials gives each credential the host has (getenv non-empty) a
// fresh placeholder read from rnd.
func newCredentials(getenv func(string) string, rnd io.Reader) ([]credential, error) {
	var out []credential
	for _, k := range credKinds {
		if getenv(k.Env) == "" {
			continue
		}
		b := make([]byte, credPlaceholderLen)
		if _, err := io.ReadFull(rnd, b); err != nil {
			return nil, fmt.Errorf("placeholder for %s: %w", k.Env, err)
		}
		out = append(out, credential{Env: k.Env, Header: k.Header, Prefix: k.Prefix,
			Placeholder: "sk-ant-smolbottle-" + hex.EncodeToString(b)})
	}
	return out, nil
}

// credValues reads the real values for creds from getenv, as JSON for the
// supervisor's pipe.
func credValues(creds []credential, getenv func(string) string) ([]byte, error) {
	m := map[string]string{}
	for _, c := range creds {
		v := getenv(c.Env)
		if v == "" || len(v) > credMaxValue || strings.ContainsAny(v, "\r\n\x00") {
			return nil, fmt.Errorf("%s must be set, one line, at most %d bytes", c.Env, credMaxValue)
		}
		m[c.Env] = v
	}
	return json.Marshal(m)
}

// readCredValues reads what credValues wrote, once, and checks that every
// credential of the plan has its value.
func readCredValues(r io.Reader, creds []credential) (map[string]string, error) {
	b, err := io.ReadAll(io.LimitReader(r, int64(len(credKinds))*(credMaxValue+256)))
	if err != nil {
		return nil, fmt.Errorf("read the credentials: %w", err)
	}
	m := map[string]string{}
	if len(b) > 0 {
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, errors.New("the credentials up handed over are malformed")
		}
	}
	for _, c := range creds {
		if m[c.Env] == "" {
			return nil, fmt.Errorf("up handed over no value for %s", c.Env)
		}
	}
	return m, nil
}

// credProxy is the sidecar's handler.
type credProxy struct {
	host   string // the Host the guest sends: proxy.internal:PORT
	creds  []credential
	values map[string]string // by credential Env
	proxy  *httputil.ReverseProxy
	log    *log.Logger
}

// newCredProxy returns the sidecar for one bottle. host is the Host header
// requests must carry, egress the egress proxy's 127.0.0.1 address,
// upstream the TLS host:port credentials go to (credUpstream:443 but in
// tests), roots nil for the system roots.
func newCredProxy(host string, creds []credential, values map[string]string, egress, upstream string, roots *tls.Config, logw io.Writer) *credProxy {
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	if roots != nil {
		tlsConf = roots.Clone()
	}
	tr := &http.Transport{
		Proxy:                  http.ProxyURL(&url.URL{Scheme: "http", Host: egress}),
		TLSClientConfig:        tlsConf,
		ForceAttemptHTTP2:      true,
		TLSHandshakeTimeout:    10 * time.Second,
		ResponseHeaderTimeout:  credResponseHeader,
		IdleConnTimeout:        credIdle,
		MaxResponseHeaderBytes: credMaxHeader,
	}
	cp := &credProxy{host: host, creds: creds, values: values, log: log.New(logw, "credentials: ", log.LstdFlags)}
	cp.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host, pr.Out.Host = "https", upstream, ""
			for _, c := range cp.creds {
				if pr.In.Header.Get(c.Header) != "" {
					pr.Out.Header.Set(c.Header, c.Prefix+cp.values[c.Env])
				}
			}
		},
		Transport:     tr,
		FlushInterval: -1,
		ErrorLog:      cp.log,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			cp.log.Printf("%s %s: upstream: %v", r.Method, r.URL.Path, err)
			http.Error(w, "smolbottle credentials: the Messages API could not be reached through the egress proxy", http.StatusBadGateway)
		},
	}
	return cp
}

// server returns the http.Server the supervisor runs the sidecar with.
func (cp *credProxy) server() *http.Server {
	return &http.Server{Handler: cp, ReadHeaderTimeout: credReadHeader, IdleTimeout: credIdle,
		MaxHeaderBytes: credMaxHeader, ErrorLog: cp.log}
}

func (cp *credProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if status, why := cp.check(r); status != 0 {
		cp.log.Printf("refused %s %q: %s", r.Method, r.URL.Path, why)
		http.Error(w, "smolbottle credentials: "+why, status)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, credMaxBody)
	cp.proxy.ServeHTTP(w, r)
}

// check returns 0 for a request that may be forwarded, else the status
// and reason to refuse it with. The reason never holds a header value.
func (cp *credProxy) check(r *http.Request) (int, string) {
	if r.Host != cp.host || (r.URL.Host != "" && r.URL.Host != cp.host) {
		return http.StatusMisdirectedRequest, "this sidecar serves only " + cp.host
	}
	if r.Method != http.MethodPost {
		return http.StatusMethodNotAllowed, "only POST is forwarded"
	}
	if r.URL.RawPath != "" || !slices.Contains(credPaths, r.URL.Path) {
		return http.StatusForbidden, "only " + strings.Join(credPaths, " and ") + " are forwarded"
	}
	if q := r.URL.RawQuery; q != "" && q != "beta=true" {
		return http.StatusForbidden, "only the query beta=true is forwarded"
	}
	if len(cp.creds) == 0 {
		return http.StatusUnauthorized, "the host had no ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN at up"
	}
	matched := false
	for _, k := range credKinds {
		vs := r.Header.Values(k.Header)
		if len(vs) == 0 {
			continue
		}
		c, ok := cp.cred(k.Env)
		if !ok || len(vs) != 1 || subtle.ConstantTimeCompare([]byte(vs[0]), []byte(c.Prefix+c.Placeholder)) != 1 {
			return http.StatusUnauthorized, k.Header + " does not carry this bottle's placeholder"
		}
		matched = true
	}
	if !matched {
		return http.StatusUnauthorized, "no credential header carries this bottle's placeholder"
	}
	return 0, ""
}

func (cp *credProxy) cred(env string) (credential, bool) {
	for _, c := range cp.creds {
		if c.Env == env {
			return c, true
		}
	}
	return credential{}, false
}

// serveCredProxy listens on 127.0.0.1:port and serves cp until the
// listener is closed by the returned function.
func serveCredProxy(cp *credProxy, port int) (func(), error) {
	ln, err := net.Listen("tcp", loopbackAddr(port))
	if err != nil {
		return nil, fmt.Errorf("credential sidecar on %s: %w", loopbackAddr(port), err)
	}
	srv := cp.server()
	go srv.Serve(ln)
	return func() { srv.Close() }, nil
}

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
	"strconv"
	"strings"
	"time"
)

// The credential sidecar keeps the agent's API credentials on the host:
// the guest holds a placeholder, random per bottle, and this sidecar (in
// the supervisor) swaps in the real value. Its invariants:
//
//  1. A real value lives only in the supervisor's memory: up reads it from
//     its own environment into a pipe the supervisor reads once and
//     closes. It is never in a file, log, argv or environment, nor sent to
//     the guest.
//  2. A real value goes only to credUpstream, over TLS verified against
//     the system roots, through the egress proxy (CONNECT), whose
//     allow-list and log still apply.
//  3. Forwarded is only: POST, with Host the sidecar's own address as the
//     guest dials it, to /v1/messages or /v1/messages/count_tokens (what
//     Claude Code calls; batches would let the guest read every batch made
//     with the key), no query but beta=true, no protocol upgrade and no
//     header asking for another method or path, and at least one credential
//     header, each exactly this bottle's placeholder in its own header.
//     The rest is refused with a status saying why, logged without values.
//  4. Only the credential header, Host and the URL (to the real API) are
//     rewritten; ReverseProxy drops the hop-by-hop headers and Forwarded,
//     X-Forwarded-For, -Host and -Proto (net/http/httputil/reverseproxy.go:
//     365-375,504-507 @ go1.26.8); the guest's other headers pass. Responses,
//     server-sent events included, stream through with a flush after every
//     write.
const (
	credSidecar        = "credentials"
	credUpstream       = "api.anthropic.com"
	credMaxBody        = 32 << 20 // the Messages API's own request limit, as its docs state it (unverified here)
	credMaxHeader      = 64 << 10
	credMaxValue       = 8 << 10 // one credential's value, as read from up
	credReadHeader     = 10 * time.Second
	credDial           = 10 * time.Second // to the egress proxy, and its TLS handshake
	credIdle           = 120 * time.Second
	credResponseHeader = 10 * time.Minute // a long non-streamed reply sends its headers last
	credPlaceholderLen = 32               // random bytes, hex-encoded
)

// credOverrideHeaders are request headers some servers and frameworks
// read as the method or the path instead of the request line's.
var credOverrideHeaders = []string{"X-Http-Method-Override", "X-Http-Method", "X-Method-Override",
	"X-Original-Url", "X-Rewrite-Url", "X-Original-Method"}

// credKinds are the host variables the sidecar stands in for and the
// header each travels in; Claude Code 2.1.332 sends ANTHROPIC_API_KEY as
// x-api-key and CLAUDE_CODE_OAUTH_TOKEN as "Authorization: Bearer"
// (measured).
var credKinds = []struct{ Env, Header, Prefix string }{
	{"ANTHROPIC_API_KEY", "X-Api-Key", ""},
	{"CLAUDE_CODE_OAUTH_TOKEN", "Authorization", "Bearer "},
}

var (
	credPaths    = []string{"/v1/messages", "/v1/messages/count_tokens"}
	credTooLarge = "the request body is over " + strconv.Itoa(credMaxBody>>20) + " MiB"
)

// credential is one of a bottle's credentials as the plan records it.
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
		if !credValueOK(v) { // the error never shows v: it is a secret
			return nil, fmt.Errorf("%s must be set: one token of visible ASCII characters (no spaces), at most %d bytes", c.Env, credMaxValue)
		}
		m[c.Env] = v
	}
	return json.Marshal(m)
}

// readCredValues reads what credValues wrote, once, and checks that every
// credential of the plan has a value that passes credValueOK. JSON writes
// a byte as at most six ("\u003c"), and each name and its quotes fit in
// 256.
func readCredValues(r io.Reader, creds []credential) (map[string]string, error) {
	b, err := io.ReadAll(io.LimitReader(r, int64(len(credKinds))*(6*credMaxValue+256)))
	if err != nil {
		return nil, fmt.Errorf("read the credentials: %w", err)
	}
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, errors.New("the credentials up handed over are malformed")
	}
	for _, c := range creds {
		if !credValueOK(m[c.Env]) {
			return nil, fmt.Errorf("up handed over no valid value for %s", c.Env)
		}
	}
	return m, nil
}

// credValueOK reports whether v can be sent as a credential header's
// value: non-empty, at most credMaxValue bytes, each visible ASCII
// (0x21-0x7e): JSON hands it over unchanged, and it is a valid header
// value with nothing to trim or split.
func credValueOK(v string) bool {
	if v == "" || len(v) > credMaxValue {
		return false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x21 || v[i] > 0x7e {
			return false
		}
	}
	return true
}

type credProxy struct {
	host   string // the Host the guest sends: proxy.internal:PORT
	creds  []credential
	values map[string]string // by credential Env
	proxy  *httputil.ReverseProxy
	log    *log.Logger
	// The lines a guest can cause at will, each capped (limits.go).
	refused, forwarded, failed refusalLog
}

// newCredProxy returns the sidecar for one bottle. host is the Host header
// requests must carry, egress the egress proxy's 127.0.0.1 address,
// upstream the TLS host:port credentials go to (credUpstream:443 but in
// tests), tlsConf nil for the system roots.
func newCredProxy(host string, creds []credential, values map[string]string, egress, upstream string, tlsConf *tls.Config, logw io.Writer) *credProxy {
	if tlsConf == nil {
		tlsConf = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	tr := &http.Transport{
		Proxy:                  http.ProxyURL(&url.URL{Scheme: "http", Host: egress}),
		DialContext:            (&net.Dialer{Timeout: credDial}).DialContext,
		TLSClientConfig:        tlsConf,
		ForceAttemptHTTP2:      true,
		TLSHandshakeTimeout:    credDial,
		ResponseHeaderTimeout:  credResponseHeader,
		IdleConnTimeout:        credIdle,
		MaxResponseHeaderBytes: credMaxHeader,
		// What HTTP/2 buffers of a reply the guest does not read: 1 MiB a
		// stream, 16 MiB a connection, not Go's 4 MiB and 1 GiB
		// (net/http/h2_bundle.go:7334,7339 @ go1.26.8).
		HTTP2: &http.HTTP2Config{MaxReceiveBufferPerStream: 1 << 20, MaxReceiveBufferPerConnection: 16 << 20},
	}
	cp := &credProxy{host: host, creds: creds, values: values, log: log.New(logw, "credentials: ", log.LstdFlags)}
	cp.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			// Host names the API as a browser would: without :443, which
			// Go would otherwise keep from the URL.
			pr.Out.URL.Scheme, pr.Out.URL.Host, pr.Out.Host = "https", upstream, strings.TrimSuffix(upstream, ":443")
			for _, c := range cp.creds {
				if pr.In.Header.Get(c.Header) != "" {
					pr.Out.Header.Set(c.Header, c.Prefix+cp.values[c.Env])
				}
			}
		},
		Transport:     tr,
		FlushInterval: -1,
		ErrorLog:      cp.log,
		ModifyResponse: func(resp *http.Response) error {
			cp.forwarded.log(cp.log.Printf, "forwarded", "%s %q: %s", resp.Request.Method, resp.Request.URL.Path, resp.Status)
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.As(err, new(*http.MaxBytesError)) {
				cp.refuse(w, r, http.StatusRequestEntityTooLarge, credTooLarge)
				return
			}
			cp.failed.log(cp.log.Printf, "upstream", "%s %q: %v", r.Method, r.URL.Path, err)
			http.Error(w, "smolbottle credentials: the Messages API could not be reached through the egress proxy", http.StatusBadGateway)
		},
	}
	return cp
}

func (cp *credProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if status, why := cp.check(r); status != 0 {
		cp.refuse(w, r, status, why)
		return
	}
	// A chunked body has no ContentLength for check to refuse: cut it here.
	r.Body = http.MaxBytesReader(w, r.Body, credMaxBody)
	cp.proxy.ServeHTTP(w, r)
}

// refuse answers status with why, and logs it. Method and path are
// quoted: they are the guest's.
func (cp *credProxy) refuse(w http.ResponseWriter, r *http.Request, status int, why string) {
	cp.refused.log(cp.log.Printf, "refused", "%q %q: %d %s", r.Method, r.URL.Path, status, why)
	http.Error(w, "smolbottle credentials: "+why, status)
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
	// No protocol switch: ReverseProxy would turn a 101 into a raw tunnel
	// that carries the real key's session past every check here. No
	// hop-by-hop header may name another either.
	if len(r.Header.Values("Upgrade")) > 0 {
		return http.StatusBadRequest, "no protocol upgrade is forwarded"
	}
	for _, v := range r.Header.Values("Connection") {
		for tok := range strings.SplitSeq(v, ",") {
			if t := strings.ToLower(strings.TrimSpace(tok)); t != "" && t != "keep-alive" && t != "close" {
				return http.StatusBadRequest, "Connection may say only keep-alive or close"
			}
		}
	}
	for _, v := range r.Header.Values("Te") {
		if strings.ToLower(strings.TrimSpace(v)) != "trailers" {
			return http.StatusBadRequest, "TE may say only trailers"
		}
	}
	// Nor a header some servers read as another method or path: what is
	// forwarded must not rest on how the API's front ends treat them. CGI
	// style front ends read '_' as '-', so no name with '_' passes.
	for k := range r.Header {
		if strings.ContainsRune(k, '_') {
			return http.StatusBadRequest, "no header name with '_' is forwarded"
		}
	}
	for _, h := range credOverrideHeaders {
		if len(r.Header.Values(h)) > 0 {
			return http.StatusBadRequest, h + " is not forwarded"
		}
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
		i := slices.IndexFunc(cp.creds, func(c credential) bool { return c.Env == k.Env })
		if i < 0 || len(vs) != 1 || subtle.ConstantTimeCompare([]byte(vs[0]), []byte(k.Prefix+cp.creds[i].Placeholder)) != 1 {
			return http.StatusUnauthorized, k.Header + " does not carry this bottle's placeholder"
		}
		matched = true
	}
	if !matched {
		return http.StatusUnauthorized, "no credential header carries this bottle's placeholder"
	}
	if r.ContentLength > credMaxBody {
		return http.StatusRequestEntityTooLarge, credTooLarge
	}
	return 0, ""
}

// credServer is the HTTP server for cp. The supervisor serves it on the
// credential port's listener inside the confined namespace (confineSpec.
// Serve): it has no host listener, so nothing on the host can reach it.
// ReadHeaderTimeout bounds a connection that never speaks, as the relay's
// first-byte timeout does for the relayed sidecars.
func credServer(cp *credProxy) *http.Server {
	return &http.Server{Handler: cp, ReadHeaderTimeout: credReadHeader, IdleTimeout: credIdle,
		MaxHeaderBytes: credMaxHeader, ErrorLog: cp.log, DisableGeneralOptionsHandler: true}
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	testOAuthSecret = "oauth-test-0123456789-very-secret"
	otherBottle     = "sk-ant-smolbottle-0000000000000000000000000000000000000000000000000000000000000000"
)

// testCA is a certificate authority made for one test, and a server
// certificate it signed for names.
type testCA struct {
	pem  []byte // the CA certificate, for SSL_CERT_FILE
	pool *x509.CertPool
	leaf tls.Certificate
}

func newTestCA(t testing.TB, names ...string) testCA {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey, leafKey := key(), key()
	now := time.Now()
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "smolbottle test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return testCA{pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), pool: pool,
		leaf: tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: leafKey}}
}

// messagesStandIn is a stand-in for the Messages API: served over TLS on
// host loopback by newMessagesStandIn, or as a test host's handler
// (newTestHost; its zero value serves, addr then empty). It answers POST
// /v1/messages with a streamed reply in the event format of the Messages
// API; between the first event and the rest it waits on hold (when set),
// so a test can see the first event arrive before the reply is over.
type messagesStandIn struct {
	addr string
	hold chan struct{}

	mu   sync.Mutex
	seen []http.Header // the headers of every request
	host []string
}

var standInEvents = []string{
	`event: message_start
data: {"type":"message_start","message":{"id":"msg_standin","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":1}}}`,
	`event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`,
	`event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"pong"}}`,
	`event: content_block_stop
data: {"type":"content_block_stop","index":0}`,
	`event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":2}}`,
	`event: message_stop
data: {"type":"message_stop"}`,
}

func newMessagesStandIn(t testing.TB, ca testCA) *messagesStandIn {
	s := &messagesStandIn{}
	srv := &http.Server{Handler: s, TLSConfig: &tls.Config{Certificates: []tls.Certificate{ca.leaf}}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = ln.Addr().String()
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return s
}

func (s *messagesStandIn) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.seen = append(s.seen, r.Header.Clone())
	s.host = append(s.host, r.Host)
	hold := s.hold
	s.mu.Unlock()
	io.Copy(io.Discard, r.Body)
	if r.Method != http.MethodPost || r.URL.Path != "/v1/messages" {
		http.Error(w, `{"type":"error","error":{"type":"not_found_error","message":"stand-in"}}`, http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	for i, e := range standInEvents {
		fmt.Fprintf(w, "%s\n\n", e)
		w.(http.Flusher).Flush()
		if i == 0 && hold != nil {
			<-hold
		}
	}
}

func (s *messagesStandIn) requests() []http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]http.Header(nil), s.seen...)
}

// startTestPipelock runs the real pipelock with the config smolbottle
// renders for allow, plus, in this test's config only, 127.0.0.1 exempted
// from its SSRF block so that it may reach the stand-in on loopback
// (ssrf.ip_allowlist: internal/config/schema.go:508-515 @ v2.3.0). It
// returns pipelock's listening address and its log file.
func startTestPipelock(t testing.TB, allow ...string) (string, string) {
	t.Helper()
	bin := realTool(t, "pipelock")
	dir := t.TempDir()
	ports, err := allocPorts(2)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := renderPipelock(pipelockSpec{Port: ports[0], MetricsPort: ports[1], Allow: allow})
	if err != nil {
		t.Fatal(err)
	}
	cfg = append(cfg, "ssrf:\n  ip_allowlist:\n    - 127.0.0.1/32\n"...)
	path := filepath.Join(dir, "pipelock.yaml")
	if err := os.WriteFile(path, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := startSidecar(context.Background(), pipelockSidecar(bin, path, ports[0], dir, dir, sidecarEnv(os.Environ())), sidecarHealthDeadline)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.stop(sidecarStopGrace) })
	return loopbackAddr(ports[0]), filepath.Join(dir, "pipelock.jsonl")
}

// credFixture is a credential sidecar in front of the stand-in, through
// the real pipelock, with both credentials of the host.
type credFixture struct {
	standIn *messagesStandIn
	addr    string // the sidecar's 127.0.0.1:PORT
	creds   []credential
	log     *bytes.Buffer
	egress  string // pipelock's log file
	roots   *x509.CertPool
}

func newCredFixture(t testing.TB) credFixture {
	t.Helper()
	ca := newTestCA(t, "localhost")
	si := newMessagesStandIn(t, ca)
	egress, egressLog := startTestPipelock(t, "localhost")
	env := map[string]string{"ANTHROPIC_API_KEY": testSecret, "CLAUDE_CODE_OAUTH_TOKEN": testOAuthSecret}
	creds, err := newCredentials(func(k string) string { return env[k] }, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ports, err := allocPorts(1)
	if err != nil {
		t.Fatal(err)
	}
	addr := loopbackAddr(ports[0])
	var logb bytes.Buffer
	cp := newCredProxy(addr, creds, env, egress, "localhost:"+fmt.Sprint(portOf(si.addr)),
		&tls.Config{RootCAs: ca.pool}, &syncWriter{w: &logb})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := credServer(cp)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return credFixture{standIn: si, addr: addr, creds: creds, log: &logb, egress: egressLog, roots: ca.pool}
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}

// TestCredProxy sends the requests Claude Code sends, and the ones a guest
// could forge, and checks what reaches the stand-in.
func TestCredProxy(t *testing.T) {
	f := newCredFixture(t)
	key, oauth := f.creds[0].Placeholder, f.creds[1].Placeholder
	cases := []struct {
		name    string
		host    string
		method  string
		path    string
		headers map[string]string
		status  int
		upKey   string // the header the stand-in must see, with its value
		upValue string
	}{
		{"api key", "", "POST", "/v1/messages?beta=true", map[string]string{"X-Api-Key": key}, 200, "X-Api-Key", testSecret},
		{"oauth", "", "POST", "/v1/messages?beta=true", map[string]string{"Authorization": "Bearer " + oauth}, 200, "Authorization", "Bearer " + testOAuthSecret},
		{"another bottle's placeholder", "", "POST", "/v1/messages", map[string]string{"X-Api-Key": otherBottle}, 401, "", ""},
		{"no placeholder", "", "POST", "/v1/messages", nil, 401, "", ""},
		{"the real key itself", "", "POST", "/v1/messages", map[string]string{"X-Api-Key": testSecret}, 401, "", ""},
		{"api key placeholder as bearer", "", "POST", "/v1/messages", map[string]string{"Authorization": "Bearer " + key}, 401, "", ""},
		{"right key, wrong bearer beside it", "", "POST", "/v1/messages", map[string]string{"X-Api-Key": key, "Authorization": "Bearer x"}, 401, "", ""},
		{"another path prefix", "", "POST", "/v1/models", map[string]string{"X-Api-Key": key}, 403, "", ""},
		{"batches", "", "POST", "/v1/messages/batches", map[string]string{"X-Api-Key": key}, 403, "", ""},
		{"dot segments", "", "POST", "/v1/messages/../models", map[string]string{"X-Api-Key": key}, 403, "", ""},
		{"encoded path", "", "POST", "/v1/messages%2F..%2Fmodels", map[string]string{"X-Api-Key": key}, 403, "", ""},
		{"another query", "", "POST", "/v1/messages?url=http://evil.example", map[string]string{"X-Api-Key": key}, 403, "", ""},
		{"GET", "", "GET", "/v1/messages", map[string]string{"X-Api-Key": key}, 405, "", ""},
		{"Host naming another host", "evil.example", "POST", "/v1/messages", map[string]string{"X-Api-Key": key}, 421, "", ""},
		{"Host naming the upstream", "api.anthropic.com", "POST", "/v1/messages", map[string]string{"X-Api-Key": key}, 421, "", ""},
		// A 101 from upstream would make ReverseProxy a raw tunnel with the
		// real key's session: no upgrade is forwarded.
		{"websocket upgrade", "", "POST", "/v1/messages", map[string]string{"X-Api-Key": key, "Connection": "Upgrade", "Upgrade": "websocket"}, 400, "", ""},
		{"h2c upgrade", "", "POST", "/v1/messages", map[string]string{"X-Api-Key": key, "Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c", "Http2-Settings": "AAMAAABkAAQAoAAAAAIAAAAA"}, 400, "", ""},
		{"Connection naming a header", "", "POST", "/v1/messages", map[string]string{"X-Api-Key": key, "Connection": "X-Api-Key"}, 400, "", ""},
		{"TE other than trailers", "", "POST", "/v1/messages", map[string]string{"X-Api-Key": key, "Te": "gzip"}, 400, "", ""},
		{"method override", "", "POST", "/v1/messages", map[string]string{"X-Api-Key": key, "X-HTTP-Method-Override": "DELETE"}, 400, "", ""},
		{"path override", "", "POST", "/v1/messages", map[string]string{"X-Api-Key": key, "x-original-url": "/v1/files"}, 400, "", ""},
		{"method override with underscores", "", "POST", "/v1/messages", map[string]string{"X-Api-Key": key, "X_HTTP_Method_Override": "DELETE"}, 400, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := len(f.standIn.requests())
			req, err := http.NewRequest(c.method, "http://"+f.addr+c.path, strings.NewReader(`{"stream":true}`))
			if err != nil {
				t.Fatal(err)
			}
			if c.host != "" {
				req.Host = c.host
			}
			for k, v := range c.headers {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultTransport.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.status {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, c.status)
			}
			got := f.standIn.requests()[before:]
			if c.status != 200 {
				if len(got) != 0 {
					t.Errorf("a refused request reached the stand-in: %v", got)
				}
				if !strings.HasPrefix(string(body), "smolbottle credentials: ") {
					t.Errorf("refusal %q does not say who refused", body)
				}
				return
			}
			if len(got) != 1 || got[0].Get(c.upKey) != c.upValue {
				t.Fatalf("stand-in saw %d requests, %s %q; want the real value", len(got), c.upKey, got)
			}
			for k, vs := range got[0] {
				if k != c.upKey && strings.Contains(strings.Join(vs, " "), "very-secret") {
					t.Errorf("a credential travelled in %s too", k)
				}
			}
			if !strings.Contains(string(body), `"text":"pong"`) {
				t.Errorf("reply %q lacks the streamed text", body)
			}
		})
	}
	// The sidecar used as a forward proxy: an absolute-form request and a
	// CONNECT both name another host.
	asProxy := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: f.addr})}
	for _, target := range []string{"http://evil.example/v1/messages", "https://evil.example/v1/messages"} {
		req, _ := http.NewRequest("POST", target, strings.NewReader("{}"))
		req.Header.Set("X-Api-Key", key)
		resp, err := asProxy.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		if err == nil && resp.StatusCode != http.StatusMisdirectedRequest || err != nil && !strings.Contains(err.Error(), "Misdirected") {
			t.Errorf("%s through the sidecar as a proxy: %v %v", target, resp, err)
		}
	}
	// "OPTIONS *" goes through the checks too: Go's server would answer it
	// itself (net/http/server.go:3307 @ go1.26.8).
	if c, err := net.Dial("tcp", f.addr); err != nil {
		t.Error(err)
	} else {
		fmt.Fprintf(c, "OPTIONS * HTTP/1.1\r\nHost: %s\r\n\r\n", f.addr)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("OPTIONS *: %v %v, want the sidecar's 405", resp, err)
		}
		c.Close()
	}
	if n := len(f.standIn.requests()); n != 2 {
		t.Errorf("the stand-in saw %d requests, want the 2 accepted", n)
	}
	for _, s := range []string{testSecret, testOAuthSecret, key, oauth} {
		if strings.Contains(f.log.String(), s) {
			t.Errorf("the sidecar's log holds a credential or placeholder:\n%s", f.log.String())
		}
	}
	if b, _ := os.ReadFile(f.egress); !strings.Contains(string(b), `"target":"localhost:`+fmt.Sprint(portOf(f.standIn.addr))+`"`) {
		t.Errorf("pipelock's log does not show the tunnel to the stand-in:\n%s", b)
	}
	if !strings.Contains(f.log.String(), "refused: \"POST\" \"/v1/models\": 403") {
		t.Errorf("the sidecar's log does not name the refusals:\n%s", f.log.String())
	}
}

// TestCredProxyLogCapped: a guest that sends refused requests as fast as
// it can gets refusalLogLines lines in the log, then one at 1,000 and each doubling.
func TestCredProxyLogCapped(t *testing.T) {
	f := newCredFixture(t)
	client := &http.Client{}
	for range 2100 {
		resp, err := client.Get("http://" + f.addr + "/v1/messages")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Fatalf("status %d, want 405", resp.StatusCode)
		}
	}
	lines := strings.Split(strings.TrimSpace(f.log.String()), "\n")
	if len(lines) != refusalLogLines+2 {
		t.Fatalf("%d log lines for 2,100 refusals, want %d:\n%s", len(lines), refusalLogLines+2, f.log.String())
	}
	if last := lines[len(lines)-1]; !strings.HasSuffix(last, "refused: 2000 lines so far, the rest not logged") {
		t.Errorf("last line %q, want the count", last)
	}
}

// TestCredProxyStreams: the first event reaches the client while the
// stand-in still holds the rest of its reply.
func TestCredProxyStreams(t *testing.T) {
	f := newCredFixture(t)
	f.standIn.hold = make(chan struct{})
	defer close(f.standIn.hold)
	req, _ := http.NewRequest("POST", "http://"+f.addr+"/v1/messages", strings.NewReader(`{"stream":true}`))
	req.Header.Set("X-Api-Key", f.creds[0].Placeholder)
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "event: message_start\n" {
		t.Fatalf("first line %q (%v), want message_start before the stand-in finishes", line, err)
	}
}

// TestCredProxyRealClaude runs the real Claude Code on the host against
// the sidecar, holding only the placeholder.
func TestCredProxyRealClaude(t *testing.T) {
	claude := realTool(t, "claude")
	f := newCredFixture(t)
	for _, c := range f.creds {
		t.Run(c.Env, func(t *testing.T) {
			before := len(f.standIn.requests())
			home := t.TempDir()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, claude, "-p", "say pong")
			cmd.Dir = home
			cmd.Env = []string{"HOME=" + home, "PATH=/usr/bin:/bin", "ANTHROPIC_BASE_URL=http://" + f.addr,
				c.Env + "=" + c.Placeholder, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1", "NO_PROXY=127.0.0.1"}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil || strings.TrimSpace(string(out)) != "pong" {
				t.Fatalf("claude -p printed %q (%v), want pong\n%s\nsidecar: %s", out, err, stderr.String(), f.log.String())
			}
			got := f.standIn.requests()[before:]
			if len(got) == 0 {
				t.Fatalf("the stand-in saw no request")
			}
			want := map[string]string{"ANTHROPIC_API_KEY": testSecret, "CLAUDE_CODE_OAUTH_TOKEN": "Bearer " + testOAuthSecret}[c.Env]
			for _, h := range got {
				if h.Get(c.Header) != want {
					t.Errorf("the stand-in saw %s %q, want the real value", c.Header, h.Get(c.Header))
				}
			}
		})
	}
}

// TestCredProxyEgressAllowList: the sidecar's upstream traffic is subject
// to the egress proxy; with the upstream off pipelock's allow-list, the
// request fails and nothing reaches the stand-in.
func TestCredProxyEgressAllowList(t *testing.T) {
	ca := newTestCA(t, "localhost")
	si := newMessagesStandIn(t, ca)
	egress, _ := startTestPipelock(t, "api.anthropic.com")
	env := map[string]string{"ANTHROPIC_API_KEY": testSecret}
	creds, _ := newCredentials(func(k string) string { return env[k] }, rand.Reader)
	var logb bytes.Buffer
	cp := newCredProxy("proxy.internal:1", creds, env, egress, "localhost:"+fmt.Sprint(portOf(si.addr)),
		&tls.Config{RootCAs: ca.pool}, &logb)
	req, _ := http.NewRequest("POST", "http://proxy.internal:1/v1/messages", strings.NewReader(`{}`))
	req.Header.Set("X-Api-Key", creds[0].Placeholder)
	w := httptest.NewRecorder()
	cp.ServeHTTP(w, req)
	if w.Code != http.StatusBadGateway || len(si.requests()) != 0 {
		t.Errorf("status %d, stand-in saw %d requests; want 502 and none", w.Code, len(si.requests()))
	}
	if strings.Contains(logb.String(), testSecret) {
		t.Errorf("the log holds the key: %s", logb.String())
	}
}

// BenchmarkCredProxy measures one streamed request straight to the
// stand-in and through the sidecar (and the real pipelock's tunnel, kept
// alive as a client keeps it): ns/op is the whole reply, ttfb-ns the time
// to its first byte. The difference between the two is what the sidecar
// adds.
//
//	go test -run '^$' -bench CredProxy -benchtime 2000x .
func BenchmarkCredProxy(b *testing.B) {
	f := newCredFixture(b)
	direct := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: f.roots}}
	viaSidecar := &http.Transport{}
	b.Cleanup(func() { direct.CloseIdleConnections(); viaSidecar.CloseIdleConnections() })
	for _, c := range []struct {
		name string
		url  string
		rt   http.RoundTripper
	}{
		{"direct", "https://localhost:" + fmt.Sprint(portOf(f.standIn.addr)) + "/v1/messages", direct},
		{"sidecar", "http://" + f.addr + "/v1/messages", viaSidecar},
	} {
		b.Run(c.name, func(b *testing.B) {
			var ttfb time.Duration
			one := func() {
				req, _ := http.NewRequest("POST", c.url, strings.NewReader(`{"stream":true}`))
				req.Header.Set("X-Api-Key", f.creds[0].Placeholder)
				start := time.Now()
				resp, err := c.rt.RoundTrip(req)
				if err != nil {
					b.Fatal(err)
				}
				var first [1]byte
				if _, err := io.ReadFull(resp.Body, first[:]); err != nil {
					b.Fatal(err)
				}
				ttfb += time.Since(start)
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
			one() // connections up, outside the timing
			ttfb = 0
			b.ResetTimer()
			for range b.N {
				one()
			}
			b.ReportMetric(float64(ttfb.Nanoseconds())/float64(b.N), "ttfb-ns")
		})
	}
}

// TestCredProxyLimits: an oversized body or header is refused, and with
// no credential on the host every request is refused with what to set.
func TestCredProxyLimits(t *testing.T) {
	f := newCredFixture(t)
	send := func(addr string, body io.Reader, hdr map[string]string) (int, string) {
		req, _ := http.NewRequest("POST", "http://"+addr+"/v1/messages", body)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	key := map[string]string{"X-Api-Key": f.creds[0].Placeholder}
	big := strings.Repeat("x", credMaxBody+1)
	if code, body := send(f.addr, strings.NewReader(big), key); code != http.StatusRequestEntityTooLarge {
		t.Errorf("body over the limit, with its length: %d %s", code, body)
	}
	// Without a length (chunked), the limit bites while forwarding.
	if code, body := send(f.addr, io.MultiReader(strings.NewReader(big)), key); code != http.StatusRequestEntityTooLarge {
		t.Errorf("body over the limit, chunked: %d %s", code, body)
	}
	if code, body := send(f.addr, strings.NewReader("{}"), map[string]string{"X-Api-Key": f.creds[0].Placeholder,
		"X-Filler": strings.Repeat("y", credMaxHeader+4096)}); code != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("header over the limit: %d %s", code, body)
	}

	none := newCredProxy("proxy.internal:1", nil, nil, "127.0.0.1:1", "localhost:1", nil, io.Discard)
	req, _ := http.NewRequest("POST", "http://proxy.internal:1/v1/messages", strings.NewReader("{}"))
	req.Header.Set("X-Api-Key", "anything")
	w := httptest.NewRecorder()
	none.ServeHTTP(w, req)
	if w.Code != http.StatusUnauthorized || !strings.Contains(w.Body.String(), "no ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN") {
		t.Errorf("no credential on the host: %d %s", w.Code, w.Body.String())
	}
}

// TestCredValuesHandOver: what up writes to the supervisor's pipe is read
// back whole, and a missing or malformed value is refused on each side.
func TestCredValuesHandOver(t *testing.T) {
	env := map[string]string{"ANTHROPIC_API_KEY": testSecret, "CLAUDE_CODE_OAUTH_TOKEN": testOAuthSecret}
	getenv := func(k string) string { return env[k] }
	creds, err := newCredentials(getenv, rand.Reader)
	if err != nil || len(creds) != 2 || creds[0].Placeholder == creds[1].Placeholder {
		t.Fatalf("newCredentials = %+v, %v", creds, err)
	}
	data, err := credValues(creds, getenv)
	if err != nil {
		t.Fatal(err)
	}
	got, err := readCredValues(bytes.NewReader(data), creds)
	if err != nil || got["ANTHROPIC_API_KEY"] != testSecret || got["CLAUDE_CODE_OAUTH_TOKEN"] != testOAuthSecret {
		t.Errorf("read back %v, %v", got, err)
	}
	// The longest values credValues accepts, each byte one JSON escapes to
	// six ("\u003c"), are read back whole.
	env["ANTHROPIC_API_KEY"], env["CLAUDE_CODE_OAUTH_TOKEN"] = strings.Repeat("<", credMaxValue), strings.Repeat("&", credMaxValue)
	if data, err = credValues(creds, getenv); err != nil {
		t.Fatal(err)
	}
	if got, err = readCredValues(bytes.NewReader(data), creds); err != nil || got["CLAUDE_CODE_OAUTH_TOKEN"] != env["CLAUDE_CODE_OAUTH_TOKEN"] {
		t.Errorf("the longest escaped values: %v", err)
	}
	if _, err := readCredValues(strings.NewReader(`{"ANTHROPIC_API_KEY":"x"}`), creds); err == nil {
		t.Errorf("a missing value was accepted")
	}
	if _, err := readCredValues(strings.NewReader(`{"ANTHROPIC_API_KEY":`), creds); err == nil || strings.Contains(err.Error(), "ANTHROPIC_API_KEY\":") {
		t.Errorf("malformed input: %v", err)
	}
	if _, err := readCredValues(strings.NewReader(`{"ANTHROPIC_API_KEY":"sk key","CLAUDE_CODE_OAUTH_TOKEN":"x"}`), creds); err == nil || strings.Contains(err.Error(), "sk key") {
		t.Errorf("a value with a space handed over: %v", err)
	}
	for _, bad := range []string{"", "two\nlines", strings.Repeat("k", credMaxValue+1),
		"sk-ant-\u00e9", "sk-ant-\xff", "sk-ant key", "sk-ant\tkey", "sk-ant\x7fkey"} {
		env["ANTHROPIC_API_KEY"] = bad
		if _, err := credValues(creds, getenv); err == nil {
			t.Errorf("value %.20q accepted", bad)
		} else if bad != "" && strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "ANTHROPIC_API_KEY must be set") {
			t.Errorf("the error shows the value or not the variable: %v", err)
		}
	}
	if c, _ := newCredentials(func(string) string { return "" }, rand.Reader); len(c) != 0 {
		t.Errorf("credentials without any on the host: %+v", c)
	}
}

// TestPlanWithoutCredentials: a host without credentials still gets the
// sidecar and ANTHROPIC_BASE_URL (so a guest cannot bring a key of its
// own past it), no placeholder, and a plan that says so.
func TestPlanWithoutCredentials(t *testing.T) {
	b := newTestBottle(t, "")
	p, err := resolvePlan(context.Background(), b.opts("nocred"), b.env(t))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range p.GuestEnv {
		names = append(names, e.Name)
	}
	if len(p.Credentials) != 0 || !slices.Contains(names, "ANTHROPIC_BASE_URL") || slices.Contains(names, "ANTHROPIC_API_KEY") {
		t.Errorf("credentials %+v, guest env %q", p.Credentials, names)
	}
	var out bytes.Buffer
	p.writeText(&out)
	if !strings.Contains(out.String(), "none: neither ANTHROPIC_API_KEY nor CLAUDE_CODE_OAUTH_TOKEN is set") {
		t.Errorf("plan does not say there is no credential:\n%s", out.String())
	}
}

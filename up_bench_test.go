//go:build linux

package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// stepClock timestamps the progress lines up prints as they are written:
// each marks the end of the step before it.
type stepClock struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	marks map[string]time.Time // first words of the step -> when printed
	seen  func(line string)
}

func (c *stepClock) Write(b []byte) (int, error) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf.Write(b)
	for {
		line, err := c.buf.ReadString('\n')
		if err != nil {
			c.buf.WriteString(line)
			break
		}
		_, msg, _ := strings.Cut(line, "] ")
		for _, key := range upSteps {
			if strings.HasPrefix(msg, key) {
				c.marks[key] = now
				if c.seen != nil {
					c.seen(key)
				}
			}
		}
	}
	return len(b), nil
}

// upSteps are the progress lines of bottleUp (lifecycle.go), in order.
var upSteps = []string{"starting the supervisor", "creating machine", "starting machine",
	"starting gvforwarder", "configuring the guest network", "egress self-test", "ready"}

var bootedRE = regexp.MustCompile(`fake: booted in (\d+) ns`)

// BenchmarkUp measures `smolbottle up`, plan to ready, run as the static
// binary a user installs (so the supervisor is smolbottle, not the test
// binary), with the real pipelock, the real confined gvproxy and
// gvforwarder, the fake smolvm and the fake VM, split by step:
//
//	go test -run '^$' -bench BenchmarkUp -benchtime 10x .
//
// pipelock-healthy is from the supervisor's start until pipelock answers
// GET /health (polled every millisecond); gvproxy-ready is the rest of the
// supervisor's start (confined gvproxy, relays); fakevm-boot is the fake
// VM's own boot, inside start. smolbottle-ms is the total less pipelock's
// start and the fake VM's boot: smolbottle's own overhead (the fake
// smolvm's process starts included).
func BenchmarkUp(b *testing.B) {
	needFakeVM(b)
	tb := newTestBottle(b, "")
	out := filepath.Join(b.TempDir(), "smolbottle")
	cmd := exec.Command("go", "build", "-o", out, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if o, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("static build: %v\n%s", err, o)
	}
	env := []string{"PATH=" + tb.path, "SMOLBOTTLE_STATE=" + tb.state, "HOME=" + tb.dir,
		"ANTHROPIC_API_KEY=" + testSecret}
	smolbottle := func(stderr io.Writer, args ...string) error {
		cmd := exec.Command(out, args...)
		cmd.Env, cmd.Stderr = env, stderr
		return cmd.Run()
	}
	stage := filepath.Join(tb.state, "bench")
	sums := map[string]time.Duration{}
	b.ResetTimer()
	for range b.N {
		var healthy time.Time
		done := make(chan struct{})
		var wg sync.WaitGroup
		clock := &stepClock{marks: map[string]time.Time{}}
		clock.seen = func(key string) {
			if key != "starting the supervisor" {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				healthy = pollPipelockHealth(stage, done)
			}()
		}
		start := time.Now()
		err := smolbottle(clock, "up", "-image", tb.image, "-workspace", tb.workspace, "bench")
		end := time.Now()
		close(done)
		wg.Wait()
		if err != nil {
			b.Fatalf("up: %v", err)
		}
		b.StopTimer()
		logs, _ := os.ReadFile(filepath.Join(tb.path, "vm-"+machineName("bench")+".log"))
		m := bootedRE.FindAllSubmatch(logs, -1)
		if err := smolbottle(io.Discard, "down", "bench"); err != nil {
			b.Fatalf("down: %v", err)
		}
		b.StartTimer()
		if len(m) == 0 || healthy.IsZero() {
			b.Fatalf("no boot time in the fake VM's log or no healthy pipelock seen")
		}
		boot, _ := strconv.Atoi(string(m[len(m)-1][1]))
		mk := clock.marks
		for _, k := range upSteps {
			if mk[k].IsZero() {
				b.Fatalf("up never printed %q", k)
			}
		}
		add := func(name string, d time.Duration) { sums[name] += d }
		add("plan", mk["starting the supervisor"].Sub(start))
		add("pipelock-healthy", healthy.Sub(mk["starting the supervisor"]))
		add("gvproxy-ready", mk["creating machine"].Sub(healthy))
		add("machine-create", mk["starting machine"].Sub(mk["creating machine"]))
		add("start", mk["starting gvforwarder"].Sub(mk["starting machine"]))
		add("fakevm-boot", time.Duration(boot))
		add("gvforwarder", mk["configuring the guest network"].Sub(mk["starting gvforwarder"]))
		add("guest-net", mk["egress self-test"].Sub(mk["configuring the guest network"]))
		add("self-test", mk["ready"].Sub(mk["egress self-test"]))
		add("total", end.Sub(start))
		add("smolbottle", end.Sub(start)-healthy.Sub(mk["starting the supervisor"])-time.Duration(boot))
	}
	for name, d := range sums {
		b.ReportMetric(float64(d.Microseconds())/1000/float64(b.N), name+"-ms")
	}
}

// pollPipelockHealth reads pipelock's port from the stage's plan and polls
// GET /health every millisecond until it answers 200 or done closes.
func pollPipelockHealth(stage string, done <-chan struct{}) time.Time {
	port := 0
	for port == 0 {
		if p, err := readPlan(stage); err == nil && len(p.Sidecars) > 0 {
			port = p.Sidecars[0].Port
		}
		select {
		case <-done:
			return time.Time{}
		case <-time.After(time.Millisecond):
		}
	}
	req := fmt.Sprintf("GET /health HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n", port)
	for {
		if c, err := net.DialTimeout("tcp", loopbackAddr(port), 100*time.Millisecond); err == nil {
			c.SetDeadline(time.Now().Add(time.Second))
			io.WriteString(c, req)
			buf := make([]byte, 12)
			n, _ := io.ReadFull(c, buf)
			c.Close()
			if string(buf[:n]) == "HTTP/1.1 200" {
				return time.Now()
			}
		}
		select {
		case <-done:
			return time.Time{}
		case <-time.After(time.Millisecond):
		}
	}
}

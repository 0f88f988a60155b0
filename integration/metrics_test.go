package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"relayd/ipc"
)

// metricsLogAddr finds the address relayd logs when it starts serving metrics.
var metricsLogAddr = regexp.MustCompile(`serving metrics: addr=(\S+)`)

// scraper fetches relayd's /metrics over a unix: socket or TCP.
type scraper struct {
	client *http.Client
	url    string
}

func unixScraper(path string) scraper {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	return scraper{client: &http.Client{Transport: tr, Timeout: 5 * time.Second}, url: "http://relayd/metrics"}
}

func tcpScraper(addr string) scraper {
	return scraper{client: &http.Client{Transport: &http.Transport{}, Timeout: 5 * time.Second}, url: "http://" + addr + "/metrics"}
}

func (s scraper) close() { s.client.CloseIdleConnections() }

// scrape fetches the metrics and parses them as Prometheus does.
func (s scraper) scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := s.client.Get(s.url)
	if err != nil {
		t.Fatalf("scraping %s: %v", s.url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scraping %s: %s\n%s", s.url, resp.Status, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type = %q, want the text exposition format", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parsing the exposition: %v\n%s", err, body)
	}
	return fams
}

// sample returns the value of the series of family name with exactly the given labels: a
// counter's or gauge's value, a histogram's sample count. ok is false when there is none.
func sample(fams map[string]*dto.MetricFamily, name string, labels map[string]string) (v float64, ok bool) {
	f := fams[name]
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		match := true
		for _, lp := range m.GetLabel() {
			if labels[lp.GetName()] != lp.GetValue() {
				match = false
			}
		}
		if !match {
			continue
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		case m.GetUntyped() != nil:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

// series names one series in the exposition's notation: name{a="x",b="y"}.
func series(name string, labels map[string]string) string {
	if len(labels) == 0 {
		return name
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		parts = append(parts, fmt.Sprintf("%s=%q", k, labels[k]))
	}
	return name + "{" + strings.Join(parts, ",") + "}"
}

// sum adds up every series of family name.
func sum(fams map[string]*dto.MetricFamily, name string) float64 {
	var total float64
	for _, m := range fams[name].GetMetric() {
		total += m.GetCounter().GetValue()
	}
	return total
}

// relayLabel selects the relay service's series.
var relayLabel = map[string]string{"service": "relay"}

// request sends one request on c and waits for its answer.
func request(t *testing.T, c *ipc.Client, topic string, data any) ipc.Answer {
	t.Helper()
	call, err := c.Send("relay", topic, data)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	a, err := c.Wait(ctx, call)
	if err != nil {
		t.Fatalf("%s %v: %v", topic, data, err)
	}
	return a
}

// TestMetricsEndpoint runs relayd with --metrics-addr on a unix: socket and on loopback TCP,
// sends replies, a crash that is retried, a stats request and an unknown topic, then scrapes
// the real endpoint and checks every counter against what was sent.
func TestMetricsEndpoint(t *testing.T) {
	tests := []struct {
		name string
		// setup returns the --metrics-addr value; dir is the test's short directory.
		setup func(t *testing.T, dir string) string
		// scraper finds the endpoint once relayd runs.
		scraper func(t *testing.T, dir string, r *relayd) scraper
		// gone checks the endpoint is gone after relayd exited.
		gone func(t *testing.T, dir string, s scraper)
	}{
		{
			name: "unix socket over a stale one",
			setup: func(t *testing.T, dir string) string {
				// A socket file nobody listens on, as a killed relayd leaves: it is replaced.
				ln, err := net.Listen("unix", filepath.Join(dir, "m"))
				if err != nil {
					t.Fatal(err)
				}
				ln.(*net.UnixListener).SetUnlinkOnClose(false)
				ln.Close()
				return "unix:" + filepath.Join(dir, "m")
			},
			scraper: func(t *testing.T, dir string, r *relayd) scraper {
				fi, err := os.Stat(filepath.Join(dir, "m"))
				if err != nil {
					t.Fatal(err)
				}
				if got := fi.Mode().Perm(); got != 0o660 {
					t.Errorf("metrics socket mode = %#o, want 0660", got)
				}
				return unixScraper(filepath.Join(dir, "m"))
			},
			gone: func(t *testing.T, dir string, _ scraper) {
				if _, err := os.Stat(filepath.Join(dir, "m")); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("metrics socket after relayd exited: %v, want it removed", err)
				}
			},
		},
		{
			name:  "loopback TCP, port chosen by relayd",
			setup: func(*testing.T, string) string { return "127.0.0.1:0" },
			scraper: func(t *testing.T, _ string, r *relayd) scraper {
				var addr string
				if !eventually(20*time.Second, func() bool {
					m := metricsLogAddr.FindStringSubmatch(r.log.String())
					if m != nil {
						addr = m[1]
					}
					return m != nil
				}) {
					t.Fatalf("relayd did not log its metrics address; its log:\n%s", r.log)
				}
				if host, _, _ := net.SplitHostPort(addr); host != "127.0.0.1" {
					t.Errorf("metrics address %s, want it on 127.0.0.1", addr)
				}
				return tcpScraper(addr)
			},
			gone: func(t *testing.T, _ string, s scraper) {
				if resp, err := s.client.Get(s.url); err == nil {
					resp.Body.Close()
					t.Errorf("metrics still served after relayd exited: %s", resp.Status)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := shortTempDir(t)
			sock := filepath.Join(dir, "s")
			r := startRelayd(t, sock, "--metrics-addr="+tt.setup(t, dir), "--allow-fault-injection",
				"--worker-arg=--delay=0s", "--max-restarts=2", "--stats-interval=0")
			s := tt.scraper(t, dir, r)
			defer s.close()

			c, err := ipc.Dial(t.Context(), sock)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// One at a time, so that the retry budget's arithmetic is exact: five successes at a
			// full budget earn nothing, then three failed attempts spend three tokens.
			const replies = 5
			for i := range replies {
				if a := request(t, c, "echo", fmt.Sprintf("hello %d", i)); a.Error != nil {
					t.Fatalf("echo: %v", a.Error)
				}
			}
			// The worker refuses a topic it does not know, and exits normally.
			if a := request(t, c, "no-such-topic", nil); a.Error == nil || a.Error.Code != ipc.CodeUnknownTopic {
				t.Fatalf("no-such-topic answered %s, want unknown_topic", a.Raw)
			}
			// A reply reaches the sender before its worker's EXIT reaches the relay loop, where
			// the budget is kept: wait for the six exits before the crash.
			if !eventually(10*time.Second, func() bool {
				v, _ := sample(s.scrape(t), "relayd_worker_exits_total", map[string]string{"service": "relay", "reason": "normal"})
				return v == replies+1
			}) {
				t.Fatalf("the %d normal exits never showed", replies+1)
			}
			if a := request(t, c, "echo", "!crash"); a.Error == nil || a.Error.Code != ipc.CodeWorkerFailed {
				t.Fatalf("!crash answered %s, want worker_failed", a.Raw)
			}
			if a := request(t, c, "stats", nil); a.Error != nil {
				t.Fatalf("stats: %v", a.Error)
			}

			// Wait for the nine exits (six normal, three crashes) and an idle relay.
			const exits = replies + 4
			var fams map[string]*dto.MetricFamily
			if !eventually(20*time.Second, func() bool {
				fams = s.scrape(t)
				inFlight, _ := sample(fams, "relayd_messages_in_flight", relayLabel)
				return sum(fams, "relayd_worker_exits_total") == exits && inFlight == 0
			}) {
				t.Fatalf("exits never reached %d with nothing in flight; last scrape: exits %v", exits, sum(fams, "relayd_worker_exits_total"))
			}

			checks := []struct {
				name    string
				labels  map[string]string
				want    float64
				atLeast bool
			}{
				{"relayd_messages_total", map[string]string{"service": "relay", "topic": "echo", "outcome": "reply"}, replies, false},
				{"relayd_messages_total", map[string]string{"service": "relay", "topic": "echo", "outcome": "worker_failed"}, 1, false},
				{"relayd_messages_total", map[string]string{"service": "relay", "topic": "stats", "outcome": "reply"}, 1, false},
				{"relayd_messages_total", map[string]string{"service": "relay", "topic": "other", "outcome": "unknown_topic"}, 1, false},
				{"relayd_messages_total", map[string]string{"service": "relay", "topic": "status", "outcome": "reply"}, 0, false},
				{"relayd_answer_duration_seconds", map[string]string{"service": "relay", "topic": "echo"}, replies + 1, false},
				{"relayd_answer_duration_seconds", map[string]string{"service": "relay", "topic": "stats"}, 1, false},
				{"relayd_worker_exits_total", map[string]string{"service": "relay", "reason": "normal"}, replies + 1, false},
				{"relayd_worker_exits_total", map[string]string{"service": "relay", "reason": "exit(1)"}, 3, false},
				{"relayd_restarts_total", relayLabel, 2, false},
				{"relayd_retry_budget_tokens", relayLabel, 97, false},
				{"relayd_worker_lifetime_seconds", relayLabel, exits, false},
				{"relayd_worker_spawn_duration_seconds", relayLabel, exits, true},
				{"relayd_workers_spawned_total", relayLabel, exits, true},
				{"relayd_messages_queued", relayLabel, 0, false},
				{"relayd_spare_workers_ready", relayLabel, 0, false},
				{"relayd_client_connections", nil, 1, false}, // c, still open
				{"go_goroutines", nil, 1, true},
				{"process_start_time_seconds", nil, 1, true},
			}
			for _, ch := range checks {
				got, ok := sample(fams, ch.name, ch.labels)
				switch {
				case !ok:
					t.Errorf("%s missing from the scrape", series(ch.name, ch.labels))
				case ch.atLeast && got < ch.want:
					t.Errorf("%s = %v, want at least %v", series(ch.name, ch.labels), got, ch.want)
				case !ch.atLeast && got != ch.want:
					t.Errorf("%s = %v, want %v", series(ch.name, ch.labels), got, ch.want)
				}
			}
			for name, typ := range map[string]dto.MetricType{
				"relayd_messages_total":                dto.MetricType_COUNTER,
				"relayd_answer_duration_seconds":       dto.MetricType_HISTOGRAM,
				"relayd_worker_spawn_duration_seconds": dto.MetricType_HISTOGRAM,
				"relayd_worker_lifetime_seconds":       dto.MetricType_HISTOGRAM,
				"relayd_worker_exits_total":            dto.MetricType_COUNTER,
				"relayd_restarts_total":                dto.MetricType_COUNTER,
				"relayd_workers_spawned_total":         dto.MetricType_COUNTER,
				"relayd_retry_budget_tokens":           dto.MetricType_GAUGE,
				"relayd_messages_in_flight":            dto.MetricType_GAUGE,
				"relayd_client_connections":            dto.MetricType_GAUGE,
			} {
				if got := fams[name].GetType(); got != typ {
					t.Errorf("%s is a %v, want a %v", name, got, typ)
				}
			}

			c.Close()
			s.close()
			r.stop(t)
			tt.gone(t, dir, s)
		})
	}
}

// TestMetricsAddrRefused checks that relayd refuses a --metrics-addr it must not or cannot
// serve on, with a clear message, before it binds its own socket: exit status 2 for an address
// that is wrong as written (a usage error), 1 for one that cannot be served.
func TestMetricsAddrRefused(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	tests := []struct {
		name       string
		addr       func(dir string) string
		wantStderr string
		wantCode   int // 2 for an address refused as a usage error, 1 for one that cannot be served
	}{
		{"private address", func(string) string { return "10.1.2.3:9464" }, "10.1.2.3 is not a loopback address", 2},
		{"every IPv4 interface", func(string) string { return "0.0.0.0:9464" }, "0.0.0.0 is not a loopback address", 2},
		{"every IPv6 interface", func(string) string { return "[::]:9464" }, ":: is not a loopback address", 2},
		{"no host", func(string) string { return ":9464" }, "no host means every interface", 2},
		{"host name", func(string) string { return "example.com:9464" }, "example.com is not a loopback address", 2},
		{"no port", func(string) string { return "127.0.0.1" }, "missing port", 2},
		{"bad port", func(string) string { return "127.0.0.1:http" }, `port "http" is not a number`, 2},
		{"unix without a path", func(string) string { return "unix:" }, "unix: needs a socket path", 2},
		{"port in use", func(string) string { return busy.Addr().String() }, "address already in use", 1},
		{"relayd's own socket", func(dir string) string { return "unix:" + filepath.Join(dir, "s") }, "is relayd's own socket", 1},
		{"not a socket", func(dir string) string {
			os.WriteFile(filepath.Join(dir, "f"), []byte("keep me"), 0o600)
			return "unix:" + filepath.Join(dir, "f")
		}, "exists and is not a socket", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := shortTempDir(t)
			sock := filepath.Join(dir, "s")
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, filepath.Join(binDir, "relayd"), "--socket", sock,
				"--metrics-addr="+tt.addr(dir), "--stats-interval=0")
			var stderr syncBuffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != tt.wantCode {
				t.Fatalf("relayd: %v, want exit status %d; stderr:\n%s", err, tt.wantCode, stderr.String())
			}
			got := stderr.String()
			if !strings.Contains(got, tt.wantStderr) || !strings.Contains(got, "relayd: ") || !strings.Contains(got, "--metrics-addr") {
				t.Errorf("stderr = %q, want a relayd: line naming --metrics-addr and saying %q", got, tt.wantStderr)
			}
			if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("relayd's socket: %v, want none: the address is checked before anything starts", err)
			}
			if b, err := os.ReadFile(filepath.Join(dir, "f")); err == nil && string(b) != "keep me" {
				t.Errorf("the file at the metrics path was changed to %q", b)
			}
		})
	}
}

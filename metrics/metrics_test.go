package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/goleak"

	"relayd/relay"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestTopicLabel(t *testing.T) {
	tests := []struct {
		topic, want string
	}{
		{"echo", "echo"},
		{"stats", "stats"},
		{"status", "status"},
		{"", TopicUnreadable},
		{"Echo", TopicOther},
		{"made-up-by-a-client", TopicOther},
		{"other", TopicOther},
	}
	for _, tt := range tests {
		if got := TopicLabel(tt.topic); got != tt.want {
			t.Errorf("TopicLabel(%q) = %q, want %q", tt.topic, got, tt.want)
		}
	}
}

// TestAnswered checks which series one answer lands in.
func TestAnswered(t *testing.T) {
	tests := []struct {
		name         string
		topic, code  string
		wantTopic    string
		wantOutcome  string
		wantDuration time.Duration
	}{
		{"echo reply", "echo", "", "echo", "reply", 100 * time.Millisecond},
		{"echo failure", "echo", "worker_failed", "echo", "worker_failed", 30 * time.Millisecond},
		{"stats", "stats", "", "stats", "reply", 50 * time.Microsecond},
		{"status timeout", "status", "timeout", "status", "timeout", time.Second},
		{"unknown topic", "nope", "unknown_topic", "other", "unknown_topic", 0},
		{"unreadable line", "", "bad_request", "unreadable", "bad_request", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := New()
			m.Answered("relay", tt.topic, tt.code, tt.wantDuration)
			if got := testutil.ToFloat64(m.messages.WithLabelValues("relay", tt.wantTopic, tt.wantOutcome)); got != 1 {
				t.Errorf("messages_total{topic=%q,outcome=%q} = %v, want 1", tt.wantTopic, tt.wantOutcome, got)
			}
			h := histogram(t, m, "relayd_answer_duration_seconds", map[string]string{"service": "relay", "topic": tt.wantTopic})
			if got := h.GetSampleCount(); got != 1 {
				t.Errorf("answer_duration_seconds{topic=%q} count = %d, want 1", tt.wantTopic, got)
			}
			if got, want := h.GetSampleSum(), tt.wantDuration.Seconds(); got != want {
				t.Errorf("answer_duration_seconds{topic=%q} sum = %v, want %v", tt.wantTopic, got, want)
			}
		})
	}
}

func TestWorkerEvents(t *testing.T) {
	m := New()
	m.WorkerReady("relay", time.Millisecond)
	m.WorkerReady("relay", 2*time.Millisecond)
	m.WorkerExited("relay", "normal", 100*time.Millisecond)
	m.WorkerExited("relay", "exit(1)", 5*time.Millisecond)
	m.WorkerExited("relay", "exit(1)", 6*time.Millisecond)
	m.WorkerExited("thumbs", "exit(1)", 6*time.Millisecond)
	m.Retried("relay")

	counters := []struct {
		name string
		got  float64
		want float64
	}{
		{`worker_exits_total{service="relay",reason="normal"}`, testutil.ToFloat64(m.exits.WithLabelValues("relay", "normal")), 1},
		{`worker_exits_total{service="relay",reason="exit(1)"}`, testutil.ToFloat64(m.exits.WithLabelValues("relay", "exit(1)")), 2},
		{`worker_exits_total{service="thumbs",reason="exit(1)"}`, testutil.ToFloat64(m.exits.WithLabelValues("thumbs", "exit(1)")), 1},
		{`restarts_total{service="relay"}`, testutil.ToFloat64(m.restarts.WithLabelValues("relay")), 1},
	}
	for _, c := range counters {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	hists := []struct {
		name      string
		wantCount uint64
		wantSum   float64
	}{
		{"relayd_worker_spawn_duration_seconds", 2, 0.003},
		{"relayd_worker_lifetime_seconds", 3, 0.111},
	}
	for _, h := range hists {
		got := histogram(t, m, h.name, map[string]string{"service": "relay"})
		if got.GetSampleCount() != h.wantCount {
			t.Errorf("%s count = %d, want %d", h.name, got.GetSampleCount(), h.wantCount)
		}
		if d := got.GetSampleSum() - h.wantSum; d > 1e-9 || d < -1e-9 {
			t.Errorf("%s sum = %v, want %v", h.name, got.GetSampleSum(), h.wantSum)
		}
	}
}

// TestWatch checks the gauges read from a Source, and that each function is called once per
// scrape.
func TestWatch(t *testing.T) {
	m := New()
	calls := 0
	err := m.Watch(Source{
		Services: func() []ServiceStats {
			calls++
			return []ServiceStats{{Name: "relay", Stats: relay.Stats{InFlight: 3, Queued: 2, SparesReady: 1, WorkersSpawned: 42}, RetryTokens: 97.5}}
		},
		Conns: func() int { return 5 },
	})
	if err != nil {
		t.Fatal(err)
	}
	fams := gather(t, m)
	tests := []struct {
		name string
		typ  dto.MetricType
		want float64
	}{
		{"relayd_messages_in_flight", dto.MetricType_GAUGE, 3},
		{"relayd_messages_queued", dto.MetricType_GAUGE, 2},
		{"relayd_spare_workers_ready", dto.MetricType_GAUGE, 1},
		{"relayd_workers_spawned_total", dto.MetricType_COUNTER, 42},
		{"relayd_client_connections", dto.MetricType_GAUGE, 5},
		{"relayd_retry_budget_tokens", dto.MetricType_GAUGE, 97.5},
	}
	for _, tt := range tests {
		f := fams[tt.name]
		if f == nil {
			t.Errorf("%s missing from the scrape", tt.name)
			continue
		}
		if f.GetType() != tt.typ {
			t.Errorf("%s type = %v, want %v", tt.name, f.GetType(), tt.typ)
		}
		if got := value(f.GetMetric()[0]); got != tt.want {
			t.Errorf("%s = %v, want %v", tt.name, got, tt.want)
		}
	}
	if calls != 1 {
		t.Errorf("Services called %d times in one scrape, want 1", calls)
	}
	if err := m.Watch(Source{Conns: func() int { return 0 }}); err == nil {
		t.Error("second Watch with the same metrics succeeded, want an error")
	}
}

// TestWatchPartialSource checks that a Source without some functions leaves their metrics out.
func TestWatchPartialSource(t *testing.T) {
	m := New()
	if err := m.Watch(Source{Conns: func() int { return 1 }}); err != nil {
		t.Fatal(err)
	}
	fams := gather(t, m)
	if fams["relayd_client_connections"] == nil {
		t.Error("relayd_client_connections missing")
	}
	for _, name := range []string{"relayd_messages_in_flight", "relayd_retry_budget_tokens"} {
		if fams[name] != nil {
			t.Errorf("%s present without its source", name)
		}
	}
}

// TestNamingConventions runs promlint, the Prometheus naming checks, over every metric.
func TestNamingConventions(t *testing.T) {
	m := New()
	m.Answered("relay", "echo", "", time.Millisecond)
	m.WorkerExited("relay", "normal", time.Millisecond)
	m.WorkerReady("relay", time.Millisecond)
	m.Retried("relay")
	if err := m.Watch(Source{Services: func() []ServiceStats { return []ServiceStats{{Name: "relay"}} }, Conns: func() int { return 0 }}); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	for name := range gather(t, m) {
		if !strings.HasPrefix(name, "relayd_") && !strings.HasPrefix(name, "go_") &&
			!strings.HasPrefix(name, "process_") && !strings.HasPrefix(name, "promhttp_") {
			t.Errorf("metric %s has no known namespace", name)
		}
	}
}

func TestBucketsIncrease(t *testing.T) {
	for name, b := range map[string][]float64{"answer": AnswerBuckets, "spawn": SpawnBuckets, "lifetime": LifetimeBuckets} {
		if !slices.IsSorted(b) || len(slices.Compact(slices.Clone(b))) != len(b) {
			t.Errorf("%s buckets %v are not strictly increasing", name, b)
		}
	}
}

// TestHandler scrapes the handler and parses what it serves, as Prometheus would.
func TestHandler(t *testing.T) {
	m := New()
	m.AddService("relay")
	m.Answered("relay", "echo", "", 100*time.Millisecond)
	m.Answered("relay", "echo", "", 120*time.Millisecond)
	m.Answered("relay", "echo", "timeout", 2*time.Second)
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()

	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %s, want 200 OK", resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parsing the exposition: %v\n%s", err, body)
	}
	tests := []struct {
		topic, outcome string
		want           float64
	}{
		{"echo", "reply", 2},
		{"echo", "timeout", 1},
		{"stats", "reply", 0}, // Present from the start.
		{"status", "reply", 0},
	}
	for _, tt := range tests {
		got, ok := find(fams["relayd_messages_total"], map[string]string{"service": "relay", "topic": tt.topic, "outcome": tt.outcome})
		if !ok {
			t.Errorf("relayd_messages_total{topic=%q,outcome=%q} missing", tt.topic, tt.outcome)
			continue
		}
		if v := value(got); v != tt.want {
			t.Errorf("relayd_messages_total{topic=%q,outcome=%q} = %v, want %v", tt.topic, tt.outcome, v, tt.want)
		}
	}
	for _, name := range []string{"go_goroutines", "process_start_time_seconds"} {
		if fams[name] == nil {
			t.Errorf("%s missing: the Go and process collectors are not registered", name)
		}
	}
}

func gather(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]*dto.MetricFamily, len(fams))
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

func histogram(t *testing.T, m *Metrics, name string, labels map[string]string) *dto.Histogram {
	t.Helper()
	got, ok := find(gather(t, m)[name], labels)
	if !ok || got.GetHistogram() == nil {
		t.Fatalf("histogram %s%v missing", name, labels)
	}
	return got.GetHistogram()
}

// find returns the metric of f whose labels include labels.
func find(f *dto.MetricFamily, labels map[string]string) (*dto.Metric, bool) {
	for _, m := range f.GetMetric() {
		match := 0
		for _, lp := range m.GetLabel() {
			if v, ok := labels[lp.GetName()]; ok && v == lp.GetValue() {
				match++
			}
		}
		if match == len(labels) {
			return m, true
		}
	}
	return nil, false
}

func value(m *dto.Metric) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetUntyped() != nil:
		return m.GetUntyped().GetValue()
	}
	return 0
}

func TestSetSandbox(t *testing.T) {
	m := New()
	m.SetSandbox([]string{"seccomp", "landlock-fs"}, []string{"pid-namespace"})
	got := map[string]float64{}
	for _, mt := range gather(t, m)["relayd_worker_sandbox_enforced"].GetMetric() {
		got[mt.GetLabel()[0].GetValue()] = mt.GetGauge().GetValue()
	}
	want := map[string]float64{"seccomp": 1, "landlock-fs": 1, "pid-namespace": 0}
	if len(got) != len(want) {
		t.Fatalf("relayd_worker_sandbox_enforced = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("relayd_worker_sandbox_enforced{mechanism=%q} = %v, want %v", k, got[k], v)
		}
	}
}

// Package metrics exposes relayd's counters, gauges and latencies to Prometheus.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"relayd/relay"
)

// Namespace prefixes every relayd metric.
const Namespace = "relayd"

// Label values for a request's topic. Only the relay's own topics are kept; anything a client
// makes up is counted as TopicOther, so a client cannot grow the number of series.
const (
	TopicOther      = "other"
	TopicUnreadable = "unreadable" // no request could be read: a bad line, a refused connection
)

// OutcomeReply is the outcome label of an answer that is a reply; failures carry their error
// code (worker_failed, timeout, …), a fixed set defined by the wire contract.
const OutcomeReply = "reply"

// Buckets of the histograms, in seconds.
var (
	// AnswerBuckets resolve the default echo answer (the worker's 100 ms delay plus a fork of
	// about a millisecond) finely around 100 ms, the stats and status topics (microseconds) in the
	// first bucket, and retries and timeouts (--message-timeout, 10 s by default) at the top.
	AnswerBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .125, .15, .2, .3, .5, 1, 2.5, 5, 10, 30}
	// SpawnBuckets resolve a fork-to-ready time of about a millisecond, and the tens of
	// milliseconds it takes on a loaded machine.
	SpawnBuckets = []float64{.00025, .0005, .001, .002, .004, .008, .016, .032, .064, .128, .256, .512, 1}
	// LifetimeBuckets go from a worker that could not start (no time) over one that served one
	// message (about 100 ms) to a spare or --max-requests worker that lives for an hour.
	LifetimeBuckets = []float64{.001, .005, .01, .025, .05, .1, .15, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600}
)

// Metrics holds relayd's metrics in a registry of its own. It implements relay.Observer for
// what happens (answers, exits, retries) and reads what is (load, connections, the retry
// budget) from the Source given to Watch, once per scrape. Its methods are safe for concurrent
// use.
type Metrics struct {
	reg       *prometheus.Registry
	messages  *prometheus.CounterVec
	answers   *prometheus.HistogramVec
	spawns    *prometheus.HistogramVec
	lifetimes *prometheus.HistogramVec
	exits     *prometheus.CounterVec
	restarts  *prometheus.CounterVec
	sandbox   *prometheus.GaugeVec
}

var _ relay.Observer = (*Metrics)(nil)

// knownTopics are the topics that keep their own label value.
var knownTopics = []string{relay.TopicEcho, relay.TopicStats, relay.TopicStatus}

// New returns relayd's metrics with the Go runtime and process collectors registered.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "messages_total",
			Help: `Requests answered, by service (the registered name; "" when the request named none that is registered or could not be read), topic (echo, stats, status, other; unreadable when no request could be read: a malformed or oversized line, a refused connection) and outcome ("reply" or the error code).`,
		}, []string{"service", "topic", "outcome"}),
		answers: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "answer_duration_seconds",
			Help:    "Time from reading a request to handing over its answer, by service and topic.",
			Buckets: AnswerBuckets,
		}, []string{"service", "topic"}),
		spawns: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "worker_spawn_duration_seconds",
			Help:    "Time from forking a worker to reading its ready line, by service.",
			Buckets: SpawnBuckets,
		}, []string{"service"}),
		lifetimes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "worker_lifetime_seconds",
			Help:    "Time from forking a worker to reaping it, by service.",
			Buckets: LifetimeBuckets,
		}, []string{"service"}),
		exits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "worker_exits_total",
			Help: "Worker EXIT events by service and reason: normal, exit(N), signal(SIGNAME), timeout, killed, spawn_failed(ERRNO), protocol.",
		}, []string{"service", "reason"}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "restarts_total",
			Help: "Messages scheduled for another attempt after their worker failed, by service.",
		}, []string{"service"}),
		sandbox: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "worker_sandbox_enforced",
			Help: "1 for each worker sandbox mechanism the kernel enforces (pid-namespace, landlock-fs, landlock-net, landlock-scope, seccomp), 0 for each it lacks.",
		}, []string{"mechanism"}),
	}
	m.reg.MustRegister(m.messages, m.answers, m.spawns, m.lifetimes, m.exits, m.restarts, m.sandbox,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry returns the registry the metrics are in, for tests and for adding more.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in the Prometheus exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		Registry: m.reg, // Counts its own scrapes and errors.
		// A scraper that asks several times at once gets 503 rather than piling up work.
		MaxRequestsInFlight: 4,
	})
}

// AddService makes the series that rate() and alerts look for exist for a service from the
// start, at zero.
func (m *Metrics) AddService(service string) {
	for _, t := range knownTopics {
		m.messages.WithLabelValues(service, t, OutcomeReply)
		m.answers.WithLabelValues(service, t)
	}
	m.restarts.WithLabelValues(service)
}

// Answered counts an answer; it implements relay.Observer.
func (m *Metrics) Answered(service, topic, code string, d time.Duration) {
	t := TopicLabel(topic)
	outcome := code
	if outcome == "" {
		outcome = OutcomeReply
	}
	m.messages.WithLabelValues(service, t, outcome).Inc()
	m.answers.WithLabelValues(service, t).Observe(d.Seconds())
}

// WorkerExited counts a worker's EXIT; it implements relay.Observer.
func (m *Metrics) WorkerExited(service, reason string, lifetime time.Duration) {
	m.exits.WithLabelValues(service, reason).Inc()
	m.lifetimes.WithLabelValues(service).Observe(lifetime.Seconds())
}

// Retried counts a retry; it implements relay.Observer.
func (m *Metrics) Retried(service string) { m.restarts.WithLabelValues(service).Inc() }

// WorkerReady records how long a worker of service took from fork to its ready line.
func (m *Metrics) WorkerReady(service string, d time.Duration) {
	m.spawns.WithLabelValues(service).Observe(d.Seconds())
}

// SetSandbox records which worker sandbox mechanisms are enforced and which are missing.
func (m *Metrics) SetSandbox(enforced, missing []string) {
	for _, name := range enforced {
		m.sandbox.WithLabelValues(name).Set(1)
	}
	for _, name := range missing {
		m.sandbox.WithLabelValues(name).Set(0)
	}
}

// TopicLabel maps a request's topic to its label value: the relay's own topics as they are,
// "" (a line that could not be read as a request) as TopicUnreadable, anything else as
// TopicOther.
func TopicLabel(topic string) string {
	if topic == "" {
		return TopicUnreadable
	}
	for _, t := range knownTopics {
		if topic == t {
			return t
		}
	}
	return TopicOther
}

// Source is where the gauges are read from at each scrape. A nil field leaves its metrics out.
type Source struct {
	// Services returns each service's counters and retry budget.
	Services func() []ServiceStats
	// Conns returns the number of open client connections: (*relay.Server).Conns.
	Conns func() int
	// Server returns the server's counters: (*relay.Server).Stats.
	Server func() relay.ServerStats
}

// ServiceStats is what a scrape reads of one service.
type ServiceStats struct {
	Name  string
	Stats relay.Stats
	// RetryTokens is what is left of its retry budget: (*relay.Relay).RetryTokens.
	RetryTokens float64
}

// Watch registers the metrics read from src. Call it once, when the relay and its server
// exist; scrapes before that have the event metrics only.
func (m *Metrics) Watch(src Source) error {
	return m.reg.Register(&snapshot{src: src})
}

// snapshot collects the gauges of a Source from one call of each function per scrape, so that
// the values of one scrape belong together.
type snapshot struct{ src Source }

var (
	serviceLabel = []string{"service"}
	descInFlight = prometheus.NewDesc(Namespace+"_messages_in_flight",
		"Messages whose worker is running now, by service.", serviceLabel, nil)
	descQueued = prometheus.NewDesc(Namespace+"_messages_queued",
		"Messages waiting for a worker now (bounded by the service's queue), by service.", serviceLabel, nil)
	descSpares = prometheus.NewDesc(Namespace+"_spare_workers_ready",
		"Workers started and ready for a message now (up to the service's spares), by service.", serviceLabel, nil)
	descSpawned = prometheus.NewDesc(Namespace+"_workers_spawned_total",
		"Worker processes forked, by service.", serviceLabel, nil)
	descConns = prometheus.NewDesc(Namespace+"_client_connections",
		"Client connections open now.", nil, nil)
	descPending = prometheus.NewDesc(Namespace+"_pending_bytes",
		"Bytes held for clients now: requests read and not yet answered, answers not yet written (bounded by --max-pending-bytes).", nil, nil)
	descRefused = prometheus.NewDesc(Namespace+"_connections_refused_total",
		"Connections refused: over --max-conns or --max-conns-per-uid, or not allowed by their credentials.", nil, nil)
	descDropped = prometheus.NewDesc(Namespace+"_answers_dropped_total",
		"Answers never written: their client went away, or the stop deadline came before the client read them.", nil, nil)
	descTokens = prometheus.NewDesc(Namespace+"_retry_budget_tokens",
		"Tokens left in the service's retry budget: a failed attempt spends one, a success earns part of one back, and retries pause while half or fewer of the full budget remain.", serviceLabel, nil)
)

func (s *snapshot) Describe(ch chan<- *prometheus.Desc) {
	if s.src.Services != nil {
		ch <- descInFlight
		ch <- descQueued
		ch <- descSpares
		ch <- descSpawned
		ch <- descTokens
	}
	if s.src.Conns != nil {
		ch <- descConns
	}
	if s.src.Server != nil {
		ch <- descPending
		ch <- descRefused
		ch <- descDropped
	}
}

func (s *snapshot) Collect(ch chan<- prometheus.Metric) {
	if s.src.Services != nil {
		for _, sv := range s.src.Services() {
			st := sv.Stats
			ch <- prometheus.MustNewConstMetric(descInFlight, prometheus.GaugeValue, float64(st.InFlight), sv.Name)
			ch <- prometheus.MustNewConstMetric(descQueued, prometheus.GaugeValue, float64(st.Queued), sv.Name)
			ch <- prometheus.MustNewConstMetric(descSpares, prometheus.GaugeValue, float64(st.SparesReady), sv.Name)
			ch <- prometheus.MustNewConstMetric(descSpawned, prometheus.CounterValue, float64(st.WorkersSpawned), sv.Name)
			ch <- prometheus.MustNewConstMetric(descTokens, prometheus.GaugeValue, sv.RetryTokens, sv.Name)
		}
	}
	if s.src.Conns != nil {
		ch <- prometheus.MustNewConstMetric(descConns, prometheus.GaugeValue, float64(s.src.Conns()))
	}
	if s.src.Server != nil {
		st := s.src.Server()
		ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(st.PendingBytes))
		ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(st.Refused))
		ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(st.AnswersDropped))
	}
}

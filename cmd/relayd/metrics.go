package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"relayd/metrics"
	"relayd/relay"
	"relayd/sandbox"
)

// metricsAddr is the value of --metrics-addr: empty (no endpoint), unix:PATH, or a loopback
// HOST:PORT. Set checks it, so a bad address stops relayd before it starts anything.
type metricsAddr struct {
	network string // "unix" or "tcp"; "" when off
	address string
}

func (a *metricsAddr) String() string {
	if a.network == "unix" {
		return "unix:" + a.address
	}
	return a.address
}

func (a *metricsAddr) Type() string { return "addr" }

func (a *metricsAddr) Set(s string) error {
	if s == "" {
		*a = metricsAddr{}
		return nil
	}
	if path, ok := strings.CutPrefix(s, "unix:"); ok {
		if path == "" {
			return errors.New("unix: needs a socket path, e.g. unix:/run/relayd-metrics.sock")
		}
		*a = metricsAddr{network: "unix", address: path}
		return nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("want unix:PATH or a loopback HOST:PORT: %w", err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	const only = "metrics are served only on loopback (127.0.0.0/8, ::1, localhost) or a unix: socket"
	switch {
	case host == "":
		return fmt.Errorf("no host means every interface; %s", only)
	case !isLoopback(host):
		return fmt.Errorf("%s is not a loopback address; %s", host, only)
	}
	*a = metricsAddr{network: "tcp", address: s}
	return nil
}

// isLoopback reports whether host is localhost or a loopback IP literal. Other names are
// refused rather than resolved: what a name resolves to can change.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// metricsEndpoint serves relayd's metrics on --metrics-addr. A nil *metricsEndpoint is the
// endpoint turned off: every method does nothing and hands out nil hooks.
type metricsEndpoint struct {
	m      *metrics.Metrics
	ln     net.Listener
	srv    *http.Server
	log    hclog.Logger
	served chan struct{} // closed when Serve has returned

	mu       sync.Mutex
	closing  bool           // guarded by mu; no more requests are handled
	handlers sync.WaitGroup // requests being handled; Add under mu while !closing
}

// sandbox records which sandbox mechanisms the relay service's workers get.
func (e *metricsEndpoint) sandbox(r sandbox.Report) {
	if e == nil {
		return
	}
	var missing []string
	for _, m := range r.Missing {
		missing = append(missing, m.Mechanism)
	}
	e.m.SetSandbox(r.Enforced, missing)
}

// startMetrics binds --metrics-addr, before relayd forks or listens on anything else, so that a
// bad address fails the start. It returns nil when --metrics-addr is not set. Requests are served
// only once serve is called.
func startMetrics(cfg *config, log hclog.Logger) (*metricsEndpoint, error) {
	a := cfg.metricsAddr
	if a.network == "" {
		return nil, nil
	}
	var ln net.Listener
	var err error
	if a.network == "unix" {
		ln, err = listenMetricsUnix(a.address, cfg, log)
	} else {
		ln, err = listenMetricsTCP(a.address)
	}
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr %s: %w", a.String(), err)
	}
	e := &metricsEndpoint{
		m:   metrics.New(),
		ln:  ln,
		log: log.Named("metrics"),
	}
	return e, nil
}

func listenMetricsTCP(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	// localhost is resolved by the system; refuse it if it is not what it should be.
	if ta, ok := ln.Addr().(*net.TCPAddr); !ok || !ta.IP.IsLoopback() {
		ln.Close()
		return nil, fmt.Errorf("bound to %s, which is not a loopback address", ln.Addr())
	}
	return ln, nil
}

// listenMetricsUnix binds the metrics socket like the main one (mode 0660, the group of
// --socket-group, a stale file replaced), refusing relayd's own socket path.
func listenMetricsUnix(path string, cfg *config, log hclog.Logger) (net.Listener, error) {
	if path == cfg.socket {
		return nil, errors.New("is relayd's own socket")
	}
	ln, err := listenUnix(path, 0o660, cfg.socketGroup, log)
	if errors.Is(err, errSocketInUse) {
		return nil, fmt.Errorf("something is already listening on %s", path)
	}
	return ln, err
}

// onReady is a service's host's OnReady hook: spawn latency. It also makes the service's
// series exist from the start.
func (e *metricsEndpoint) onReady(service string) func(time.Duration) {
	if e == nil {
		return nil
	}
	e.m.AddService(service)
	return func(d time.Duration) { e.m.WorkerReady(service, d) }
}

// observer is the relay's and the server's Observer.
func (e *metricsEndpoint) observer() relay.Observer {
	if e == nil {
		return nil // A nil interface, not a nil pointer in one: the relay checks for nil.
	}
	return e.m
}

// serve starts answering scrapes of /metrics, with the gauges read from the services and srv.
func (e *metricsEndpoint) serve(services func() []metrics.ServiceStats, srv *relay.Server) {
	if e == nil {
		return
	}
	// Only fails if called twice, which run does not.
	if err := e.m.Watch(metrics.Source{Services: services, Conns: srv.Conns, Server: srv.Stats}); err != nil {
		e.log.Error("registering the relay's gauges", "error", err)
	}
	mux := http.NewServeMux()
	h := e.m.Handler()
	mux.Handle("GET /metrics", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !e.enter() {
			http.Error(w, "relayd is stopping", http.StatusServiceUnavailable)
			return
		}
		defer e.handlers.Done()
		h.ServeHTTP(w, r)
	}))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "relayd: metrics are at /metrics")
	})
	e.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          e.log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
	}
	e.served = make(chan struct{})
	e.log.Info("serving metrics", "addr", e.ln.Addr().String(), "path", "/metrics")
	go func() {
		defer close(e.served)
		if err := e.srv.Serve(e.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			e.log.Error("serving metrics", "error", err)
		}
	}()
}

// enter admits a request unless the endpoint is closing; the caller calls handlers.Done.
func (e *metricsEndpoint) enter() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closing {
		return false
	}
	e.handlers.Add(1)
	return true
}

// close stops the endpoint: scrapes in progress may finish for a second, then their
// connections are closed. It returns once Serve and every request handler have returned; a
// unix: socket file is removed.
func (e *metricsEndpoint) close() {
	if e == nil {
		return
	}
	if e.srv == nil { // Never served.
		e.ln.Close()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		e.srv.Close()
	}
	<-e.served
	e.mu.Lock()
	e.closing = true
	e.mu.Unlock()
	e.handlers.Wait()
}

package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"relayd/ipc"
	"relayd/metrics"
	"relayd/pluginhost"
	"relayd/relay"
	"relayd/sandbox"
	"relayd/supervisor"
)

// service is one running service: its host of worker processes and its relay loop.
type service struct {
	cfg  *serviceConfig
	sb   *sandbox.Sandbox
	host *supervisor.Host
	rl   *relay.Relay
	done chan error // Run's result
}

// services are relayd's services and the name registry clients reach them through. Only run's
// goroutine uses it; the registry is safe for the connections' readers.
type services struct {
	hard  context.Context
	log   hclog.Logger
	mx    *metricsEndpoint
	names relay.Registry[chan<- *relay.Message]

	// mu guards live for the metrics scrape; only run's goroutine changes it.
	mu   sync.Mutex
	live map[string]*service // guarded by mu
	// all holds every service started, removed ones too: a removed service drains what it
	// holds and its loop ends with the others'.
	all []*service
}

func newServices(hard context.Context, log hclog.Logger, mx *metricsEndpoint) *services {
	return &services{hard: hard, log: log, mx: mx, live: make(map[string]*service)}
}

// start starts a service's host and relay loop and registers its name.
func (ss *services) start(c *config, s *serviceConfig) error {
	log := ss.log
	if s.name != relayName {
		log = ss.log.With("service", s.name)
	}
	opts := supervisor.Options{
		Name:        "processes",
		Path:        s.worker,
		Args:        s.workerArgs,
		Env:         s.env,
		Limits:      s.limits,
		Credential:  s.credential,
		KillGrace:   s.killGrace,
		Subreaper:   true,
		Spares:      s.spares,
		MaxRequests: s.maxRequests,
		MaxIdle:     max(8, s.spares),
		// A reply line may be a little longer than the answer it becomes too_large at, so
		// that a long answer is too_large rather than a failed worker.
		MaxLineBytes: c.maxAnswerBytes + 64<<10,
		Logger:       log.Named("worker"),
	}
	if s.transport != "stdio" {
		opts.Transport = &pluginhost.Transport{
			Protocol:     s.transport,
			StartTimeout: s.pluginStart,
			StopGrace:    s.killGrace,
			Logger:       log.Named("plugin"),
		}
	}
	rc := relay.Config{
		Name:          s.name,
		Names:         ss.names.Names,
		Backoff:       supervisor.Backoff{Initial: 10 * time.Millisecond, Max: time.Second, Multiplier: 2, Jitter: 0.5},
		ProbeBackoff:  supervisor.Backoff{Initial: 100 * time.Millisecond, Max: 10 * time.Second, Multiplier: 2, Jitter: 0.2},
		StatsInterval: c.statsInterval,
		Logger:        log,
	}
	opts.OnReady = ss.mx.onReady(s.name)
	rc.Observer = ss.mx.observer()
	if s.name == relayName {
		// The relay service speaks for relayd to systemd and to the metrics, as it always has.
		rc.OnStats = func(s relay.Stats) {
			daemon.SdNotify(false, fmt.Sprintf("STATUS=messages=%d workers_spawned=%d in_flight=%d queued=%d restarts=%d",
				s.Messages, s.WorkersSpawned, s.InFlight, s.Queued, s.Restarts))
		}
		rc.WatchdogInterval = watchdogInterval()
		rc.Watchdog = func() { daemon.SdNotify(false, daemon.SdNotifyWatchdog) }
	}
	st := relaySettings(c, s)
	rc.MaxWorkers, rc.Queue, rc.MaxRestarts = st.MaxWorkers, st.Queue, st.MaxRestarts
	rc.MessageTimeout, rc.KillGrace, rc.ShutdownTimeout, rc.SlowThreshold = st.MessageTimeout, st.KillGrace, st.ShutdownTimeout, st.SlowThreshold

	sb, err := newSandbox(c, s)
	if err != nil {
		return err
	}
	if sb != nil {
		opts.Launch = sb.Launch
	}
	if s.name == relayName {
		ss.mx.sandbox(sb.Report())
	}
	rc.Sandbox = sandboxStatus(sb.Report())
	host, err := supervisor.New(opts)
	if err != nil {
		sb.Close()
		return err
	}
	rc.Host = host
	sv := &service{cfg: s, sb: sb, host: host, rl: relay.New(rc), done: make(chan error, 1)}
	if err := ss.names.Register(s.name, sv.rl.Inbox()); err != nil {
		host.Close()
		sb.Close()
		return err
	}
	ss.mu.Lock()
	ss.live[s.name] = sv
	ss.mu.Unlock()
	ss.all = append(ss.all, sv)
	go func() { sv.done <- sv.rl.Run(ss.hard) }()
	// "relay started" comes before anything relayd logs after this, such as shutting down.
	<-sv.rl.Started()
	return nil
}

// retire removes a service's name: messages to it are answered unknown_name from now on, and
// it finishes what it holds.
func (ss *services) retire(name string) {
	sv := ss.get(name)
	if sv == nil {
		return
	}
	ss.names.Unregister(name)
	ss.mu.Lock()
	delete(ss.live, name)
	ss.mu.Unlock()
	sv.rl.Retire()
}

// get returns the live service called name, or nil.
func (ss *services) get(name string) *service {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.live[name]
}

// perClient is the bound on one connection's messages in flight to the service name, beyond
// the connection's own (relay's max-per-client): 0 for relay and for no service.
func (ss *services) perClient(name string) int {
	sv := ss.get(name)
	if sv == nil || name == relayName {
		return 0
	}
	return sv.cfg.maxPerClient
}

// stats reads every live service's counters, for a metrics scrape, in name order.
func (ss *services) stats() []metrics.ServiceStats {
	ss.mu.Lock()
	list := make([]*service, 0, len(ss.live))
	for _, sv := range ss.live {
		list = append(list, sv)
	}
	ss.mu.Unlock()
	slices.SortFunc(list, func(a, b *service) int { return strings.Compare(a.cfg.name, b.cfg.name) })
	out := make([]metrics.ServiceStats, len(list))
	for i, sv := range list {
		out[i] = metrics.ServiceStats{Name: sv.cfg.name, Stats: sv.rl.Stats(), RetryTokens: sv.rl.RetryTokens()}
	}
	return out
}

// inFlight counts messages with a running worker, over every service.
func (ss *services) inFlight() int64 {
	var n int64
	for _, sv := range ss.all {
		n += sv.rl.Stats().InFlight
	}
	return n
}

// stopAll closes every relay's inbox, once no connection reads any more, and waits until each
// has answered what it took. It may be called once.
func (ss *services) stopAll() {
	for _, sv := range ss.all {
		sv.rl.CloseInbox()
	}
	for _, sv := range ss.all {
		<-sv.done
	}
}

// closeHosts closes every service's host, after stopAll; closing twice is harmless.
func (ss *services) closeHosts() error {
	var first error
	for _, sv := range ss.all {
		if err := sv.host.Close(); err != nil && first == nil {
			first = err
		}
		// Every worker is reaped and released now.
		sv.sb.Close()
	}
	return first
}

// newSandbox makes the sandbox of a service's workers, nil with --worker-sandbox=off (the
// Host's own spawner threads fork them then). Its probe starts relayd itself with --version
// once in the namespaces a worker would get.
func newSandbox(c *config, s *serviceConfig) (*sandbox.Sandbox, error) {
	if c.sandboxMode == sandbox.ModeOff {
		return nil, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("worker sandbox: %w", err)
	}
	sb, err := sandbox.New(sandbox.Config{
		Mode:          c.sandboxMode,
		Policy:        sandbox.Policy{Network: s.network, Writable: s.writable},
		ScratchParent: c.scratchParent,
		Probe:         func() *exec.Cmd { return exec.Command(exe, "--version") },
	})
	if err != nil && s.name != relayName {
		return nil, fmt.Errorf("service %q: %w", s.name, err)
	}
	return sb, err
}

// sandboxStatus is a sandbox report as the status topic shows it.
func sandboxStatus(r sandbox.Report) *ipc.SandboxStatus {
	st := &ipc.SandboxStatus{Mode: string(r.Mode), Enforced: r.Enforced}
	if st.Enforced == nil {
		st.Enforced = []string{}
	}
	for _, m := range r.Missing {
		st.Missing = append(st.Missing, ipc.SandboxMissing{Mechanism: m.Mechanism, Reason: m.Reason})
	}
	return st
}

// scratchParent is where the workers' scratch directories go: relayd's own $TMPDIR when it is
// set, else /dev/shm when it is a tmpfs relayd may write, else /tmp. A disk file system makes
// every worker pay for a directory made and removed on it: 0.46 ms on the ext4 of the project's
// machine, against 0.02 ms on tmpfs, which is more than the rest of the sandbox costs.
func scratchParent(getenv func(string) string) string {
	if dir := getenv("TMPDIR"); dir != "" {
		return dir
	}
	var st unix.Statfs_t
	if unix.Statfs("/dev/shm", &st) == nil && st.Type == unix.TMPFS_MAGIC && unix.Access("/dev/shm", unix.W_OK) == nil {
		return "/dev/shm"
	}
	return "/tmp"
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"relayd/internal/cli"
	"relayd/relay"
	"relayd/sdk/plugin"
	"relayd/supervisor"
)

// hup receives SIGHUP from before main runs: SIGHUP's default action kills the process, and a
// reload may be asked for as soon as READY=1 is sent, or before. A reload asked for before the
// main loop runs is applied once it does.
var hup = make(chan os.Signal, 1)

func init() { signal.Notify(hup, syscall.SIGHUP) }

// errHelp is returned by parseFlags for --help and --version: the output is written, exit 0.
var errHelp = errors.New("help requested")

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	cfg, err := parseFlags(args, stdout, getenv)
	if errors.Is(err, errHelp) {
		return nil
	}
	if err != nil {
		// Whatever parseFlags refuses is a mistake in how relayd was started: exit status 2.
		if !cli.IsUsage(err) {
			err = &cli.UsageError{Err: err}
		}
		return err
	}
	// Descriptors inherited from whoever started relayd must not reach the workers.
	closeOnExecInherited()
	nofile := raiseNofile()
	if cfg.cpuProfile != "" {
		stopProfile, err := startCPUProfile(cfg.cpuProfile)
		if err != nil {
			return err
		}
		defer stopProfile()
	}

	log := hclog.New(&hclog.LoggerOptions{
		Name:       "relayd",
		Level:      hclog.LevelFromString(cfg.logLevel),
		JSONFormat: cfg.logFormat == "json",
		Output:     stderr,
		// journald stamps every line itself.
		DisableTime: getenv("JOURNAL_STREAM") != "",
	})
	// gRPC, which go-plugin workers use, logs to standard error by default; into relayd's log
	// it goes, once for every service.
	plugin.SetGRPCLogger(log.Named("grpc"))
	for _, s := range cfg.services {
		if err := checkWorker(s.worker); err != nil {
			log.Warn("the worker is not usable yet; relayd starts anyway, since it may appear later", "service", s.name, "error", err)
		}
	}
	mx, err := startMetrics(cfg, log)
	if err != nil {
		return err
	}
	defer mx.close()
	fitConns(cfg, nofile, log)

	// A second SIGINT or SIGTERM during the drain stops every worker at once.
	hard, cancelHard := context.WithCancel(context.Background())
	defer cancelHard()
	ss := newServices(hard, log, mx)
	defer ss.closeHosts()
	// The services start before the socket is bound: a socket that accepts connections means
	// relayd is up, its sandbox probed and its spares forking.
	for _, sc := range cfg.services {
		if err := ss.start(cfg, sc); err != nil {
			ss.stopAll()
			return err
		}
	}
	ln, err := listen(cfg, log)
	if err != nil {
		ss.stopAll()
		return err
	}
	srv := relay.NewServer(relay.ServerConfig{
		Lookup:                ss.names.Lookup,
		MaxMessageBytes:       cfg.maxMessageBytes,
		MaxPerClient:          cfg.maxPerClient,
		PerClient:             ss.perClient,
		MaxConns:              cfg.maxConns,
		MaxConnsPerUID:        cfg.maxConnsPerUID,
		MaxPendingBytes:       cfg.maxPending,
		MaxClientPendingBytes: cfg.maxClientPend,
		MaxAnswerBytes:        cfg.maxAnswerBytes,
		FrameTimeout:          cfg.frameTimeout,
		IdleTimeout:           cfg.idleTimeout,
		Authorize:             cfg.authorize,
		Observer:              mx.observer(),
		Logger:                log,
	})
	mx.serve(ss.stats, srv)
	node, err := startNATS(ctx, cfg, log, ss, mx.observer())
	if err != nil {
		ln.Close()
		ss.stopAll()
		return err
	}

	// SIGHUP arrives on hup, taken since init: a reload sent while relayd was starting (its
	// socket accepts connections from the moment it is bound) is applied now.
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve(ln) }()
	daemon.SdNotify(false, daemon.SdNotifyReady)

	var serveErr error
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case serveErr = <-serveDone:
			break wait
		case <-hup:
			cfg = reload(cfg, args, getenv, log, ss)
			if node != nil {
				node.Sync()
			}
		}
	}
	daemon.SdNotify(false, daemon.SdNotifyStopping)
	// The stop is bounded whatever clients do: the drain may take --shutdown-timeout, workers
	// stopped then get --kill-grace, and answers get stopMargin more to be written. What is
	// still unwritten after that is dropped, and relayd exits.
	stopAt := time.Now()
	stopBound := stopBound(cfg)
	log.Info("shutting down", "in_flight", ss.inFlight(), "within", (stopBound + stopMargin).String())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		select {
		case <-sigs:
			cancelHard()
		case <-hard.Done():
		}
	}()

	// NATS first: the names leave discovery and no more requests come from there, while every
	// request already taken is still answered through the connection, which closes last.
	if node != nil {
		node.StopTaking()
	}
	srv.StopReading()
	if serveErr == nil {
		serveErr = <-serveDone
	}
	// The relays stop their workers at --shutdown-timeout and kill them --kill-grace later, so
	// they are done by then; if one is not, every worker is killed at once.
	stopped := make(chan struct{})
	go func() { ss.stopAll(); close(stopped) }()
	relayBound := time.NewTimer(time.Until(stopAt.Add(stopBound + stopMargin/2)))
	select {
	case <-stopped:
	case <-relayBound.C:
		log.Error("relays still running at their stop bound: killing every worker now")
		cancelHard()
		<-stopped
	}
	relayBound.Stop()
	cancelHard()
	if n := srv.Shutdown(stopAt.Add(stopBound + stopMargin)); n > 0 {
		log.Warn("stop deadline reached: answers not yet read by their clients were dropped", "dropped", n)
	}
	if node != nil {
		node.Close()
	}
	if err := ss.closeHosts(); err != nil {
		return err
	}
	st := srv.Stats()
	log.Info("relay stopped", "answers", st.Answers, "answers_dropped", st.AnswersDropped)
	return serveErr
}

// reload re-reads the flags and the config file on SIGHUP and applies what can change without
// dropping the socket or in-flight work: settings as their row in the settings table says,
// services added and removed. On any error it keeps the old settings. It returns the settings
// now in force.
func reload(cfg *config, args []string, getenv func(string) string, log hclog.Logger, ss *services) *config {
	next, err := parseFlags(args, io.Discard, getenv)
	if err != nil {
		log.Error("reload failed; keeping the old settings", "error", err)
		return cfg
	}
	changes := diffValues("", cfg.values, next.values)
	var added, removed []string
	for _, s := range next.services {
		old := cfg.service(s.name)
		if old == nil {
			added = append(added, s.name)
			continue
		}
		changes = append(changes, diffValues(s.name, old.values, s.values)...)
	}
	for _, s := range cfg.services {
		if next.service(s.name) == nil {
			removed = append(removed, s.name)
		}
	}
	var apply, restart []change
	for _, c := range changes {
		if c.applied == atRestart {
			restart = append(restart, c)
		} else {
			apply = append(apply, c)
		}
	}
	if len(restart) > 0 {
		labels := make([]string, len(restart))
		for i, c := range restart {
			labels[i] = c.label()
			// Keep comparing against what runs.
			if c.service == "" {
				next.values[c.name] = c.old
			} else {
				next.service(c.service).values[c.name] = c.old
			}
		}
		log.Warn("reload: these settings need a restart and were left as they are", "settings", strings.Join(labels, ","))
	}
	if len(apply) == 0 && len(added) == 0 && len(removed) == 0 {
		log.Info("reload: nothing to change")
		return next
	}
	globalRelay := false
	for _, c := range apply {
		switch {
		case c.applied == toLogger:
			log.SetLevel(hclog.LevelFromString(next.logLevel))
		case c.service == "":
			globalRelay = true
		}
	}
	for _, s := range next.services {
		sv := ss.get(s.name)
		if sv == nil {
			continue
		}
		toR, toH := globalRelay, false
		for _, c := range apply {
			if c.service == s.name {
				toR = toR || c.applied == toRelay || c.applied == toBoth
				toH = toH || c.applied == toHost || c.applied == toBoth
			}
		}
		if toH {
			sv.host.Reconfigure(workerSpec(s))
		}
		if toR {
			sv.rl.Reconfigure(relaySettings(next, s))
		}
	}
	for _, name := range removed {
		ss.retire(name)
	}
	for _, name := range added {
		if err := ss.start(next, next.service(name)); err != nil {
			log.Error("reload: starting a service", "service", name, "error", err)
			next.services = slices.DeleteFunc(next.services, func(s *serviceConfig) bool { return s.name == name })
		}
	}
	fields := make([]any, 0, 2*len(apply)+4)
	for _, c := range apply {
		fields = append(fields, c.label(), c.old+" -> "+c.new)
	}
	if len(added) > 0 {
		fields = append(fields, "services_added", strings.Join(added, ","))
	}
	if len(removed) > 0 {
		fields = append(fields, "services_removed", strings.Join(removed, ","))
	}
	log.Info("config reloaded", fields...)
	return next
}

// relaySettings are the settings of a service's relay loop.
func relaySettings(c *config, s *serviceConfig) relay.Settings {
	return relay.Settings{
		MaxWorkers: s.maxWorkers, Queue: s.queue, MaxRestarts: s.maxRestarts,
		MessageTimeout: s.messageTimeout, KillGrace: s.killGrace,
		ShutdownTimeout: c.shutdownTimeout, SlowThreshold: c.slowThreshold,
	}
}

// workerSpec is what a service's host may change about the workers it starts.
func workerSpec(s *serviceConfig) supervisor.WorkerSpec {
	return supervisor.WorkerSpec{Args: s.workerArgs, Env: s.env, Limits: s.limits, KillGrace: s.killGrace}
}

// stopMargin is what the stop may take beyond --shutdown-timeout + --kill-grace: time for
// answers to be written after the last worker ended. Shutdown's own last second and exiting
// fit in the 3 s the documentation promises.
const stopMargin = 1500 * time.Millisecond

// stopBound is the longest drain and kill of any service: its shutdown timeout plus its kill
// grace.
func stopBound(cfg *config) time.Duration {
	var d time.Duration
	for _, s := range cfg.services {
		st := relaySettings(cfg, s)
		d = max(d, st.ShutdownTimeout+st.KillGrace)
	}
	return d
}

// raiseNofile raises relayd's soft open-file limit to the hard limit (Go does this at start as
// well; doing it here states it) and returns the limit in force.
func raiseNofile() uint64 {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	if lim.Cur < lim.Max {
		raised := unix.Rlimit{Cur: lim.Max, Max: lim.Max}
		if unix.Setrlimit(unix.RLIMIT_NOFILE, &raised) == nil {
			lim = raised
		}
	}
	return lim.Cur
}

// fitConns lowers --max-conns so that connections, workers' pipes and relayd's own
// descriptors fit under the open-file limit: running out of descriptors would fail forks and
// accepts alike.
func fitConns(cfg *config, nofile uint64, log hclog.Logger) {
	if nofile == 0 || nofile == unix.RLIM_INFINITY {
		return
	}
	workers := 0
	for _, s := range cfg.services {
		workers += relaySettings(cfg, s).MaxWorkers
	}
	reserve := uint64(relay.FixedDescriptors + relay.DescriptorsPerWorker*workers)
	room := 1
	if nofile > reserve {
		room = int(nofile - reserve)
	}
	if cfg.maxConns == 0 || cfg.maxConns > room {
		log.Warn("lowering --max-conns to fit the open-file limit", "max_conns", room, "was", cfg.maxConns,
			"nofile", nofile, "reserved", reserve)
		cfg.maxConns = room
		cfg.maxConnsPerUID = min(cfg.maxConnsPerUID, room)
	}
}

func watchdogInterval() time.Duration {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil || d <= 0 {
		return 0
	}
	return d / 2
}

// closeOnExecInherited marks every descriptor above 2 close-on-exec.
func closeOnExecInherited() {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
}

// startCPUProfile writes a CPU profile to path until the returned function is called.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpu-profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpu-profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// version is relayd's version; the build may set it with -ldflags "-X main.version=…".
var version string

// defaultWorker is the worker executable beside relayd's own, or, for an installed relayd,
// the one in ../libexec/relayd/ (where make install puts it).
func defaultWorker() string {
	exe, err := os.Executable()
	if err != nil {
		return "worker"
	}
	dir := filepath.Dir(exe)
	beside := filepath.Join(dir, "worker")
	if _, err := os.Stat(beside); err != nil {
		if libexec := filepath.Join(dir, "..", "libexec", "relayd", "worker"); fileExists(libexec) {
			return filepath.Clean(libexec)
		}
	}
	return beside
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func defaultMaxWorkers() int { return 64 * runtime.NumCPU() }

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
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"relayd/internal/cli"
	"relayd/relay"
	"relayd/supervisor"
)

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

	log := hclog.New(&hclog.LoggerOptions{
		Name:       "relayd",
		Level:      hclog.LevelFromString(cfg.logLevel),
		JSONFormat: cfg.logFormat == "json",
		Output:     stderr,
		// journald stamps every line itself.
		DisableTime: getenv("JOURNAL_STREAM") != "",
	})
	if err := checkWorker(cfg.worker); err != nil {
		log.Warn("the worker is not usable yet; relayd starts anyway, since it may appear later", "error", err)
	}
	mx, err := startMetrics(cfg, log)
	if err != nil {
		return err
	}
	defer mx.close()

	host, err := supervisor.New(supervisor.Options{
		Name:        "processes",
		Path:        cfg.worker,
		Args:        cfg.workerArgs,
		Env:         cfg.workerEnv,
		Limits:      cfg.limits,
		Credential:  cfg.credential,
		KillGrace:   cfg.killGrace,
		Subreaper:   true,
		Spares:      cfg.spares,
		MaxRequests: cfg.maxRequests,
		MaxIdle:     max(8, cfg.spares),
		OnReady:     mx.onReady(),
		Logger:      log.Named("worker"),
	})
	if err != nil {
		return err
	}
	defer host.Close()

	ln, err := listen(cfg, log)
	if err != nil {
		return err
	}

	var names supervisor.Registry[chan<- *relay.Message]
	rl := relay.New(relay.Config{
		Names:           names.Names,
		Host:            host,
		MaxWorkers:      cfg.maxWorkers,
		Queue:           cfg.queue,
		MessageTimeout:  cfg.messageTimeout,
		KillGrace:       cfg.killGrace,
		ShutdownTimeout: cfg.shutdownTimeout,
		MaxRestarts:     cfg.maxRestarts,
		Backoff:         supervisor.Backoff{Initial: 10 * time.Millisecond, Max: time.Second, Multiplier: 2, Jitter: 0.5},
		ProbeBackoff:    supervisor.Backoff{Initial: 100 * time.Millisecond, Max: 10 * time.Second, Multiplier: 2, Jitter: 0.2},
		StatsInterval:   cfg.statsInterval,
		SlowThreshold:   cfg.slowThreshold,
		Budget:          mx.retryBudget(),
		Observer:        mx.observer(),
		OnStats: func(s relay.Stats) {
			daemon.SdNotify(false, fmt.Sprintf("STATUS=messages=%d workers_spawned=%d in_flight=%d queued=%d restarts=%d",
				s.Messages, s.WorkersSpawned, s.InFlight, s.Queued, s.Restarts))
		},
		WatchdogInterval: watchdogInterval(),
		Watchdog:         func() { daemon.SdNotify(false, daemon.SdNotifyWatchdog) },
		Logger:           log,
	})
	if err := names.Register(relay.Name, rl.Inbox()); err != nil {
		return err
	}
	srv := relay.NewServer(relay.ServerConfig{
		Lookup:          names.Lookup,
		MaxMessageBytes: cfg.maxMessageBytes,
		MaxPerClient:    cfg.maxPerClient,
		MaxConns:        cfg.maxConns,
		FrameTimeout:    cfg.frameTimeout,
		IdleTimeout:     cfg.idleTimeout,
		Authorize:       cfg.authorize,
		Observer:        mx.observer(),
		Logger:          log,
	})
	mx.serve(rl, srv)

	// A second SIGINT or SIGTERM during the drain stops every worker at once.
	hard, cancelHard := context.WithCancel(context.Background())
	defer cancelHard()
	relayDone := make(chan error, 1)
	go func() { relayDone <- rl.Run(hard) }()
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve(ln) }()
	daemon.SdNotify(false, daemon.SdNotifyReady)

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var serveErr error
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case serveErr = <-serveDone:
			break wait
		case <-hup:
			cfg = reload(cfg, args, getenv, log, host, rl)
		}
	}
	daemon.SdNotify(false, daemon.SdNotifyStopping)
	log.Info("shutting down", "in_flight", rl.Stats().InFlight)
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

	srv.StopReading()
	if serveErr == nil {
		serveErr = <-serveDone
	}
	rl.CloseInbox()
	<-relayDone
	cancelHard()
	srv.Wait()
	if err := host.Close(); err != nil {
		return err
	}
	log.Info("relay stopped")
	return serveErr
}

// reload re-reads the flags and the config file on SIGHUP and applies what can change without
// dropping the socket or in-flight work. On any error it keeps the old settings. It returns the
// settings now in force.
func reload(cfg *config, args []string, getenv func(string) string, log hclog.Logger, host *supervisor.Host, rl *relay.Relay) *config {
	next, err := parseFlags(args, io.Discard, getenv)
	if err != nil {
		log.Error("reload failed; keeping the old settings", "error", err)
		return cfg
	}
	apply, restart := diffSettings(cfg.values, next.values)
	if len(restart) > 0 {
		log.Warn("reload: these settings need a restart and were left as they are", "settings", strings.Join(restart, ","))
		for _, name := range restart {
			next.values[name] = cfg.values[name]
		}
	}
	if len(apply) == 0 {
		log.Info("reload: nothing to change")
		return cfg
	}
	log.SetLevel(hclog.LevelFromString(next.logLevel))
	host.Reconfigure(supervisor.WorkerSpec{Args: next.workerArgs, Env: next.workerEnv, Limits: next.limits, KillGrace: next.killGrace})
	rl.Reconfigure(relay.Settings{
		MaxWorkers: next.maxWorkers, Queue: next.queue, MaxRestarts: next.maxRestarts,
		MessageTimeout: next.messageTimeout, KillGrace: next.killGrace, ShutdownTimeout: next.shutdownTimeout,
		SlowThreshold: next.slowThreshold,
	})
	changes := make([]any, 0, 2*len(apply))
	for _, name := range apply {
		changes = append(changes, name, cfg.values[name]+" -> "+next.values[name])
	}
	log.Info("config reloaded", changes...)
	// Keep what needs a restart as it runs; take the rest.
	kept := *cfg
	kept.values = next.values
	kept.logLevel, kept.workerArgs, kept.workerEnv, kept.limits = next.logLevel, next.workerArgs, next.workerEnv, next.limits
	kept.killGrace, kept.maxWorkers, kept.queue, kept.maxRestarts = next.killGrace, next.maxWorkers, next.queue, next.maxRestarts
	kept.messageTimeout, kept.shutdownTimeout, kept.slowThreshold = next.messageTimeout, next.shutdownTimeout, next.slowThreshold
	return &kept
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

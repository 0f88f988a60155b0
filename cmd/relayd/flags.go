package main

import (
	"fmt"
	"io"
	"os"
	"os/user"

	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"relayd/internal/cli"
	"relayd/ipc"
	"relayd/supervisor"
)

// config is relayd's settings after flags are parsed and checked.
type config struct {
	socket          string
	socketMode      os.FileMode
	socketGroup     string
	worker          string
	workerArgs      []string
	workerEnv       []string
	limits          []supervisor.Rlimit
	credential      *syscall.Credential
	maxWorkers      int
	spares          int
	maxRequests     int
	queue           int
	maxPerClient    int
	maxConns        int
	frameTimeout    time.Duration
	idleTimeout     time.Duration
	messageTimeout  time.Duration
	killGrace       time.Duration
	maxRestarts     int
	statsInterval   time.Duration
	slowThreshold   time.Duration
	shutdownTimeout time.Duration
	maxMessageBytes int
	authorize       func(unix.Ucred) error
	logLevel        string
	logFormat       string
	metricsAddr     metricsAddr
	// values holds every setting as text, to tell what a reload changes.
	values map[string]string
}

const usageHead = `Usage: relayd [flags]

relayd listens on a Unix socket and answers each message sent to the name "relay" with the
reply of a worker process it forks, monitors and reaps for that message. Without --socket it
uses $RELAY_SOCKET, then ` + ipc.DefaultSocket + `; under systemd socket activation it uses the
socket it is passed.

Exit status: 0 after SIGTERM or SIGINT once every message is answered; 1 an error while
starting or running (the socket, the metrics address); 2 usage: a flag or setting it does not
know or a value it cannot take.

Flags:
`

func parseFlags(args []string, stdout io.Writer, getenv func(string) string) (*config, error) {
	fs := pflag.NewFlagSet("relayd", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(io.Discard)
	var (
		cfg          config
		socketMode   string
		workerEnv    []string
		allowUIDs    []string
		allowGIDs    []string
		faults       bool
		rlimitCPU    time.Duration
		rlimitNofile uint64
		rlimitData   string
		rlimitAS     string
		workerUser   string
		workerGroup  string
		showVersion  bool
		configPath   string
	)
	fs.StringVar(&configPath, "config", "", "read settings from this `file`: one \"name = value\" a line, names as the long flags; flags given here win; SIGHUP re-reads it")
	fs.StringVar(&cfg.socket, "socket", "", "Unix socket `path` to listen on (default $RELAY_SOCKET, then "+ipc.DefaultSocket+")")
	fs.StringVar(&socketMode, "socket-mode", "0660", "permission `mode` of the socket file (octal)")
	fs.StringVar(&cfg.socketGroup, "socket-group", "", "group `name` that owns the socket file")
	fs.StringArrayVar(&allowUIDs, "allow-uid", nil, "only let this `uid` connect (repeatable; default: anyone the socket mode lets in)")
	fs.StringArrayVar(&allowGIDs, "allow-gid", nil, "also let peers with this primary `gid` connect (repeatable)")
	fs.IntVar(&cfg.maxConns, "max-conns", 256, "most client connections open at once; more are answered busy and closed")
	fs.DurationVar(&cfg.frameTimeout, "frame-timeout", 10*time.Second, "deadline from a request line's first byte to its newline, however slowly it comes; past it the connection is closed")
	fs.DurationVar(&cfg.idleTimeout, "idle-timeout", 0, "close a connection with no partial line and nothing in flight after this long (0: idle connections may stay)")
	fs.StringVar(&cfg.worker, "worker", "", "worker executable `path` (default: worker beside relayd, else ../libexec/relayd/worker)")
	fs.StringArrayVar(&cfg.workerArgs, "worker-arg", nil, "argument passed to every worker (repeatable), e.g. --worker-arg=--delay=0s")
	fs.StringArrayVar(&workerEnv, "worker-env", nil, "pass this environment variable `KEY` from relayd to workers (repeatable)")
	fs.BoolVar(&faults, "allow-fault-injection", false, "let workers obey fault directives such as !crash (sets RELAY_FAULTS=1; for testing only)")
	fs.IntVar(&cfg.maxWorkers, "max-workers", defaultMaxWorkers(), "most worker processes at once (64 per CPU: workers mostly wait, and one is a few MiB)")
	fs.IntVar(&cfg.spares, "spares", 0, "workers to keep started and ready, so a message does not wait for a fork (default 0: a fresh fork per message, as in the tutorial)")
	fs.IntVar(&cfg.maxRequests, "max-requests", 1, "messages one worker serves before it is replaced; above 1 trades isolation for speed")
	fs.IntVar(&cfg.queue, "queue", 1024, "most messages waiting for a worker (enough for a burst of a thousand); more are answered busy at once")
	fs.IntVar(&cfg.maxPerClient, "max-per-client", 64, "most messages of one connection in flight, so one client cannot fill the queue; more wait their turn")
	fs.DurationVar(&cfg.messageTimeout, "message-timeout", 10*time.Second, "longest one attempt may take before its worker is stopped and the sender gets timeout")
	fs.DurationVar(&cfg.killGrace, "kill-grace", 2*time.Second, "time between SIGTERM and SIGKILL when a worker is stopped")
	fs.IntVar(&cfg.maxRestarts, "max-restarts", 2, "retries of a message whose worker failed, on fresh workers with backoff and a retry budget")
	fs.DurationVar(&cfg.statsInterval, "stats-interval", 5*time.Second, "period of the stats log line (0 turns it off)")
	fs.Var(&cfg.metricsAddr, "metrics-addr", "serve Prometheus metrics at /metrics on `addr`: unix:PATH (mode 0660) or a loopback HOST:PORT such as 127.0.0.1:9464 (port 0 picks a free one and logs it); off by default")
	fs.DurationVar(&cfg.slowThreshold, "slow-threshold", time.Second, "log every message answered later than this, with where the time went (0 turns it off)")
	fs.DurationVar(&cfg.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long running workers may finish after SIGTERM")
	fs.IntVar(&cfg.maxMessageBytes, "max-message-bytes", 1<<20, "longest request line; longer ones are answered too_large")
	fs.DurationVar(&rlimitCPU, "worker-rlimit-cpu", 30*time.Second, "CPU time limit of a worker (RLIMIT_CPU, 3x the message timeout; 0 for none)")
	fs.Uint64Var(&rlimitNofile, "worker-rlimit-nofile", 64, "open-file limit of a worker (RLIMIT_NOFILE: an echo needs a handful; 0 for relayd's own)")
	fs.StringVar(&rlimitData, "worker-rlimit-data", "1GiB", "data-segment limit of a worker (RLIMIT_DATA: a Go worker runs in a few MiB, !oom stops here; e.g. 512MiB, \"unlimited\")")
	fs.StringVar(&rlimitAS, "worker-rlimit-as", "unlimited", "address-space limit of a worker (RLIMIT_AS; Go reserves much address space, so leave it high)")
	fs.StringVar(&workerUser, "worker-user", "", "run workers as this `user` (relayd must run as root)")
	fs.StringVar(&workerGroup, "worker-group", "", "run workers with this `group` (default: the user's primary group)")
	fs.StringVar(&cfg.logLevel, "log-level", "info", "log `level`: trace, debug, info, warn, error")
	fs.StringVar(&cfg.logFormat, "log-format", "text", "log format: text or json")
	fs.BoolVar(&showVersion, "version", false, "print the version and exit")
	help := fs.BoolP("help", "h", false, "show this help and exit")

	if err := fs.Parse(args); err != nil {
		return nil, &cli.UsageError{Err: err}
	}
	switch {
	case *help:
		fmt.Fprint(stdout, usageHead+cli.FlagUsages(fs, 100))
		return nil, errHelp
	case showVersion:
		fmt.Fprintln(stdout, cli.Version("relayd", version))
		return nil, errHelp
	case fs.NArg() > 0:
		return nil, cli.Usagef("unexpected argument %q", fs.Arg(0))
	}
	if configPath != "" {
		if err := readConfig(fs, configPath); err != nil {
			return nil, err
		}
	}
	cfg.values = make(map[string]string)
	fs.VisitAll(func(f *pflag.Flag) { cfg.values[f.Name] = f.Value.String() })

	cfg.socket = ipc.ResolveSocket(cfg.socket, getenv)
	if cfg.worker == "" {
		cfg.worker = defaultWorker()
	}
	mode, err := strconv.ParseUint(socketMode, 8, 32)
	if err != nil || mode > 0o777 {
		return nil, fmt.Errorf("--socket-mode %q is not an octal permission mode", socketMode)
	}
	cfg.socketMode = os.FileMode(mode)
	if cfg.logFormat != "text" && cfg.logFormat != "json" {
		return nil, fmt.Errorf("--log-format %q: want text or json", cfg.logFormat)
	}
	if !slices.Contains([]string{"trace", "debug", "info", "warn", "error"}, strings.ToLower(cfg.logLevel)) {
		return nil, fmt.Errorf("--log-level %q: want trace, debug, info, warn or error", cfg.logLevel)
	}
	for _, c := range []struct {
		name string
		v    int
	}{{"--max-workers", cfg.maxWorkers}, {"--max-per-client", cfg.maxPerClient}, {"--max-message-bytes", cfg.maxMessageBytes}, {"--max-requests", cfg.maxRequests}} {
		if c.v < 1 {
			return nil, fmt.Errorf("%s must be at least 1", c.name)
		}
	}
	for _, c := range []struct {
		name string
		v    int
	}{{"--queue", cfg.queue}, {"--max-restarts", cfg.maxRestarts}, {"--max-conns", cfg.maxConns}, {"--spares", cfg.spares}} {
		if c.v < 0 {
			return nil, cli.Usagef("%s must not be negative, not %d", c.name, c.v)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"--message-timeout", cfg.messageTimeout}, {"--kill-grace", cfg.killGrace}, {"--shutdown-timeout", cfg.shutdownTimeout}, {"--stats-interval", cfg.statsInterval}, {"--frame-timeout", cfg.frameTimeout}, {"--idle-timeout", cfg.idleTimeout}, {"--slow-threshold", cfg.slowThreshold}} {
		if d.v < 0 {
			return nil, cli.Usagef("%s must not be negative, not %v", d.name, d.v)
		}
	}

	cfg.workerEnv = workerEnvironment(faults, workerEnv, getenv)
	if cfg.limits, err = workerLimits(rlimitCPU, rlimitNofile, rlimitData, rlimitAS); err != nil {
		return nil, err
	}
	if cfg.credential, err = workerCredential(workerUser, workerGroup); err != nil {
		return nil, err
	}
	if cfg.authorize, err = authorizer(allowUIDs, allowGIDs); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// workerEnvironment builds a worker's environment from scratch: nothing of relayd's reaches a
// worker unless named with --worker-env.
func workerEnvironment(faults bool, pass []string, getenv func(string) string) []string {
	lang := getenv("LANG")
	if lang == "" {
		lang = "C.UTF-8"
	}
	env := []string{"PATH=/usr/local/bin:/usr/bin:/bin", "LANG=" + lang, "GOMAXPROCS=1"}
	if faults {
		env = append(env, "RELAY_FAULTS=1")
	}
	for _, k := range pass {
		if v := getenv(k); v != "" && !strings.HasPrefix(k, "RELAY_") {
			env = append(env, k+"="+v)
		}
	}
	return env
}

func workerLimits(cpu time.Duration, nofile uint64, data, as string) ([]supervisor.Rlimit, error) {
	limits := []supervisor.Rlimit{{Resource: unix.RLIMIT_CORE}}
	if cpu > 0 {
		s := uint64(max(1, cpu.Round(time.Second)/time.Second))
		// The soft limit sends SIGXCPU; the hard one, a second later, SIGKILL.
		limits = append(limits, supervisor.Rlimit{Resource: unix.RLIMIT_CPU, Cur: s, Max: s + 1})
	}
	if nofile > 0 {
		limits = append(limits, supervisor.Rlimit{Resource: unix.RLIMIT_NOFILE, Cur: nofile, Max: nofile})
	}
	for _, l := range []struct {
		flag, value string
		resource    int
	}{{"--worker-rlimit-data", data, unix.RLIMIT_DATA}, {"--worker-rlimit-as", as, unix.RLIMIT_AS}} {
		n, err := parseBytes(l.value)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", l.flag, err)
		}
		if n != supervisor.Unlimited {
			limits = append(limits, supervisor.Rlimit{Resource: l.resource, Cur: n, Max: n})
		}
	}
	return limits, nil
}

// parseBytes reads sizes such as 512MiB, 1GiB, 65536 or unlimited.
func parseBytes(s string) (uint64, error) {
	if s == "" || s == "unlimited" || s == "0" {
		return supervisor.Unlimited, nil
	}
	mult := uint64(1)
	for _, u := range []struct {
		suffix string
		mult   uint64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size (e.g. 512MiB, 1GiB, unlimited)", s)
	}
	return n * mult, nil
}

func workerCredential(userName, groupName string) (*syscall.Credential, error) {
	if userName == "" {
		if groupName != "" {
			return nil, fmt.Errorf("--worker-group needs --worker-user")
		}
		return nil, nil
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("--worker-user needs relayd to run as root (it runs as uid %d)", os.Geteuid())
	}
	if !hasCapability(unix.CAP_SYS_RESOURCE) {
		// Setting limits on another user's process (prlimit) needs CAP_SYS_RESOURCE.
		return nil, fmt.Errorf("--worker-user needs CAP_SYS_RESOURCE to set the workers' resource limits; add it to the capability bounding set")
	}
	u, err := user.Lookup(userName)
	if err != nil {
		return nil, fmt.Errorf("--worker-user: %w", err)
	}
	gidStr := u.Gid
	if groupName != "" {
		g, err := user.LookupGroup(groupName)
		if err != nil {
			return nil, fmt.Errorf("--worker-group: %w", err)
		}
		gidStr = g.Gid
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(gidStr, 10, 32)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}

// authorizer returns the peer check of --allow-uid and --allow-gid, or nil when neither is set.
// relayd's own uid is always let in.
func authorizer(uids, gids []string) (func(unix.Ucred) error, error) {
	if len(uids) == 0 && len(gids) == 0 {
		return nil, nil
	}
	parse := func(flag string, vals []string) ([]uint32, error) {
		var ids []uint32
		for _, v := range vals {
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("%s %q is not a number", flag, v)
			}
			ids = append(ids, uint32(n))
		}
		return ids, nil
	}
	allowU, err := parse("--allow-uid", uids)
	if err != nil {
		return nil, err
	}
	allowG, err := parse("--allow-gid", gids)
	if err != nil {
		return nil, err
	}
	self := uint32(os.Geteuid())
	return func(c unix.Ucred) error {
		if c.Uid == self || slices.Contains(allowU, c.Uid) || slices.Contains(allowG, c.Gid) {
			return nil
		}
		return fmt.Errorf("uid %d is not allowed to use this relay", c.Uid)
	}, nil
}

// hasCapability reports whether capability c is in relayd's effective set.
func hasCapability(c int) bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[c/32].Effective&(1<<(uint(c)%32)) != 0
}

// readConfig sets every flag not given on the command line from a file of "name = value"
// lines. Blank lines and lines starting with # are skipped; a repeatable flag may appear on
// several lines.
func readConfig(fs *pflag.FlagSet, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading config: %w", err)
	}
	onCommandLine := map[string]bool{}
	fs.Visit(func(f *pflag.Flag) { onCommandLine[f.Name] = true })
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if unq, err := strconv.Unquote(value); err == nil {
			value = unq
		}
		f := fs.Lookup(name)
		switch {
		case !ok:
			return fmt.Errorf("%s:%d: want \"name = value\", got %q", path, i+1, line)
		case f == nil || name == "config" || name == "help" || name == "version":
			return fmt.Errorf("%s:%d: unknown setting %q", path, i+1, name)
		case onCommandLine[name]:
			continue
		}
		if err := fs.Set(name, value); err != nil {
			return fmt.Errorf("%s:%d: %s: %w", path, i+1, name, err)
		}
	}
	return nil
}

// reloadable are the settings a SIGHUP applies without a restart: they govern what relayd
// does from now on, not the socket or the process it runs as.
var reloadable = map[string]bool{
	"log-level": true, "message-timeout": true, "kill-grace": true, "shutdown-timeout": true,
	"max-restarts": true, "max-workers": true, "queue": true, "slow-threshold": true,
	"worker-arg": true, "worker-env": true, "allow-fault-injection": true,
	"worker-rlimit-cpu": true, "worker-rlimit-nofile": true, "worker-rlimit-data": true, "worker-rlimit-as": true,
}

// diffSettings lists the settings whose values differ, split into those a reload applies and
// those that need a restart.
func diffSettings(old, new map[string]string) (apply, restart []string) {
	for name, v := range new {
		if old[name] == v {
			continue
		}
		if reloadable[name] {
			apply = append(apply, name)
		} else {
			restart = append(restart, name)
		}
	}
	slices.Sort(apply)
	slices.Sort(restart)
	return apply, restart
}

package main

import (
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"

	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"relayd/internal/cli"
	"relayd/ipc"
	"relayd/relay"
	"relayd/sandbox"
	"relayd/supervisor"
)

// relayName is the tutorial's echo service, which relayd's flags configure.
const relayName = relay.Name

// config is relayd's settings after flags and the config file are parsed and checked.
type config struct {
	socket          string
	socketModeText  string
	socketMode      os.FileMode
	socketGroup     string
	allowUIDs       []string
	allowGIDs       []string
	maxPerClient    int
	maxConns        int
	frameTimeout    time.Duration
	idleTimeout     time.Duration
	statsInterval   time.Duration
	slowThreshold   time.Duration
	shutdownTimeout time.Duration
	maxMessageBytes int
	authorize       func(unix.Ucred) error
	logLevel        string
	logFormat       string
	metricsAddr     metricsAddr
	nats            natsConfig
	serviceFlags    []string
	cpuProfile      string
	sandboxModeText string
	sandboxMode     sandbox.Mode
	scratchParent   string // where workers' scratch directories go

	// The connection bounds: per uid, the pending-byte budgets and the answer cap, as given
	// and as derived.
	maxConnsPerUID                                   int
	maxPendingText, maxClientPendText, maxAnswerText string
	maxPending, maxClientPend                        int64
	maxAnswerBytes                                   int

	// services are the services to serve, relay first, then in the order of the config file
	// and of --service.
	services []*serviceConfig
	// values holds every global setting as text, to tell what a reload changes.
	values map[string]string
}

// serviceConfig is one service's settings.
type serviceConfig struct {
	name      string
	worker    string
	transport string
	// pluginStart bounds a go-plugin worker's start, from fork to its handshake line.
	pluginStart    time.Duration
	workerArgs     []string
	envNames       []string
	faults         bool
	maxWorkers     int
	spares         int
	maxRequests    int
	maxPerClient   int
	queue          int
	messageTimeout time.Duration
	killGrace      time.Duration
	maxRestarts    int
	rlimitCPU      time.Duration
	rlimitNofile   uint64
	rlimitData     string
	rlimitAS       string
	workerUser     string
	workerGroup    string
	network        bool
	writable       []string

	// Derived from the above by finish.
	env        []string
	limits     []supervisor.Rlimit
	credential *syscall.Credential
	// values holds every per-service setting as text, to tell what a reload changes.
	values map[string]string
}

// service returns the service called name, or nil.
func (c *config) service(name string) *serviceConfig {
	for _, s := range c.services {
		if s.name == name {
			return s
		}
	}
	return nil
}

const usageHead = `Usage: relayd [flags]

relayd listens on a Unix socket and answers each message sent to a registered name with the
reply of a worker process it forks, monitors and reaps for that message. The name "relay" is
the echo service these flags configure; --service and the config file add more. Without
--socket it uses $RELAY_SOCKET, then ` + ipc.DefaultSocket + `; under systemd socket activation it
uses the socket it is passed.

Exit status: 0 after SIGTERM or SIGINT once every message is answered; 1 an error while
starting or running (the socket, the metrics address); 2 usage: a flag or setting it does not
know or a value it cannot take.

Flags:
`

func parseFlags(args []string, stdout io.Writer, getenv func(string) string) (*config, error) {
	fs := pflag.NewFlagSet("relayd", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(io.Discard)
	cfg := &config{}
	rs := &serviceConfig{name: relayName}
	var (
		showVersion bool
		configPath  string
	)
	fs.StringVar(&configPath, "config", "", "read settings from this HCL `file`: top-level keys are the long flag names, service \"NAME\" { … } blocks add services; flags given here win; SIGHUP re-reads it")
	defineFlags(fs, cfg, rs)
	fs.StringVar(&cfg.cpuProfile, "cpu-profile", "", "write a CPU profile of relayd (pprof) to this `file` from start to exit, for performance work (make bench --profile uses it)")
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
	cfg.services = []*serviceConfig{rs}
	rfs := fs
	if configPath != "" {
		if err := readConfig(fs, cfg, configPath); err != nil {
			return nil, err
		}
	}
	cfg.values = values(rfs, global)
	rs.values = values(rfs, perService)
	for _, spec := range cfg.serviceFlags {
		name, path, ok := strings.Cut(spec, "=")
		if !ok || path == "" {
			return nil, fmt.Errorf("--service %q: want NAME=PATH", spec)
		}
		if err := checkServiceName(name); err != nil {
			return nil, fmt.Errorf("--service: %w", err)
		}
		if cfg.service(name) != nil {
			return nil, fmt.Errorf("--service %s: service %q is already defined", spec, name)
		}
		s := &serviceConfig{name: name}
		sfs := serviceFlags(s)
		s.worker = path
		s.values = values(sfs, perService)
		cfg.services = append(cfg.services, s)
	}

	cfg.socket = ipc.ResolveSocket(cfg.socket, getenv)
	mode, err := strconv.ParseUint(cfg.socketModeText, 8, 32)
	if err != nil || mode > 0o777 {
		return nil, fmt.Errorf("--socket-mode %q is not an octal permission mode", cfg.socketModeText)
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
	}{{"--max-message-bytes", cfg.maxMessageBytes}} {
		if c.v < 1 {
			return nil, fmt.Errorf("%s must be at least 1", c.name)
		}
	}
	if cfg.maxConns < 0 || cfg.maxConnsPerUID < 0 {
		return nil, cli.Usagef("--max-conns and --max-conns-per-uid must not be negative")
	}
	if !fs.Changed("max-conns-per-uid") {
		cfg.maxConnsPerUID = max(1, cfg.maxConns/2)
	}
	if err := byteBounds(cfg); err != nil {
		return nil, cli.Usagef("%v", err)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"--shutdown-timeout", cfg.shutdownTimeout}, {"--stats-interval", cfg.statsInterval}, {"--frame-timeout", cfg.frameTimeout}, {"--idle-timeout", cfg.idleTimeout}, {"--slow-threshold", cfg.slowThreshold}} {
		if d.v < 0 {
			return nil, cli.Usagef("%s must not be negative, not %v", d.name, d.v)
		}
	}
	if err := checkNATS(&cfg.nats); err != nil {
		return nil, cli.Usagef("%v", err)
	}
	for _, s := range cfg.services {
		if err := s.finish(getenv); err != nil {
			if s.name == relayName {
				return nil, err
			}
			return nil, fmt.Errorf("service %q: %w", s.name, err)
		}
	}
	if cfg.sandboxMode, err = sandbox.ParseMode(cfg.sandboxModeText); err != nil {
		return nil, cli.Usagef("--worker-sandbox %w", err)
	}
	cfg.scratchParent = scratchParent(getenv)
	// relay's bound is also the connection's in all; another service's bounds it further.
	cfg.maxPerClient = rs.maxPerClient
	if cfg.authorize, err = authorizer(cfg.allowUIDs, cfg.allowGIDs); err != nil {
		return nil, err
	}
	return cfg, nil
}

// byteBounds sets the pending-byte budgets and the answer cap from their flags, deriving what
// is not given from --max-message-bytes, and checks that a request of the longest size fits.
func byteBounds(cfg *config) error {
	defTotal, defClient := relay.DefaultPendingBytes(cfg.maxMessageBytes)
	parse := func(flag, v string, def int64) (int64, error) {
		if v == "" {
			return def, nil
		}
		n, err := parseBytes(v)
		if err != nil || n == supervisor.Unlimited || n > 1<<40 {
			return 0, fmt.Errorf("%s %q: want a size such as 64MiB", flag, v)
		}
		return int64(n), nil
	}
	var err error
	if cfg.maxClientPend, err = parse("--max-client-pending-bytes", cfg.maxClientPendText, defClient); err != nil {
		return err
	}
	if cfg.maxPending, err = parse("--max-pending-bytes", cfg.maxPendingText, max(defTotal, cfg.maxClientPend)); err != nil {
		return err
	}
	a, err := parse("--max-answer-bytes", cfg.maxAnswerText, int64(relay.DefaultMaxAnswerBytes(cfg.maxMessageBytes)))
	if err != nil {
		return err
	}
	cfg.maxAnswerBytes = int(a)
	// A whole request line and a read buffer must fit, or a connection could wait forever.
	if need := int64(cfg.maxMessageBytes) + 64<<10; cfg.maxClientPend < need || cfg.maxPending < cfg.maxClientPend {
		return fmt.Errorf("--max-client-pending-bytes must be at least --max-message-bytes + 64KiB (%d), and --max-pending-bytes at least that", need)
	}
	if cfg.maxAnswerBytes < 1024 {
		return fmt.Errorf("--max-answer-bytes must be at least 1KiB")
	}
	return nil
}

// finish checks a service's settings and derives its worker environment, limits and
// credential.
func (s *serviceConfig) finish(getenv func(string) string) error {
	if s.worker == "" {
		if s.name != relayName {
			return fmt.Errorf("worker is required: the path of the executable to run")
		}
		s.worker = defaultWorker()
	}
	switch s.transport {
	case "stdio", "netrpc", "grpc":
	default:
		return fmt.Errorf("transport %q: want stdio, netrpc or grpc", s.transport)
	}
	for _, c := range []struct {
		name string
		v    int
	}{{"--max-workers", s.maxWorkers}, {"--max-requests", s.maxRequests}, {"--max-per-client", s.maxPerClient}} {
		if c.v < 1 {
			return fmt.Errorf("%s must be at least 1", c.name)
		}
	}
	for _, c := range []struct {
		name string
		v    int
	}{{"--queue", s.queue}, {"--max-restarts", s.maxRestarts}, {"--spares", s.spares}} {
		if c.v < 0 {
			return fmt.Errorf("%s must not be negative, not %d", c.name, c.v)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"--message-timeout", s.messageTimeout}, {"--kill-grace", s.killGrace}} {
		if d.v < 0 {
			return fmt.Errorf("%s must not be negative, not %v", d.name, d.v)
		}
	}
	for _, p := range s.writable {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("--worker-writable %q: want an absolute path", p)
		}
	}
	s.env = workerEnvironment(s.faults, s.envNames, getenv)
	var err error
	if s.limits, err = workerLimits(s.rlimitCPU, s.rlimitNofile, s.rlimitData, s.rlimitAS); err != nil {
		return err
	}
	if s.credential, err = workerCredential(s.workerUser, s.workerGroup); err != nil {
		return err
	}
	return nil
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

// readConfig applies the HCL config file at path: top-level keys and the relay service's block
// to fs (flags given on the command line win), other service blocks to services of their own.
func readConfig(fs *pflag.FlagSet, cfg *config, path string) error {
	cf, err := readConfigFile(path)
	if err != nil {
		return err
	}
	onCommandLine := map[string]bool{}
	fs.Visit(func(f *pflag.Flag) { onCommandLine[f.Name] = true })
	setByFile := map[string]hcl.Range{}
	for _, a := range sortedAttrs(cf.top) {
		setByFile[a.Name] = a.NameRange
		if onCommandLine[a.Name] {
			continue
		}
		if err := setFromAttr(fs, a.Name, a); err != nil {
			return err
		}
	}
	for _, b := range cf.services {
		name := b.Labels[0]
		if name == relayName {
			for _, a := range sortedAttrs(b.Body.Attributes) {
				st := blockSetting(a.Name)
				if prev, ok := setByFile[st.name]; ok {
					return posErrorf(a.NameRange, "%s is also set at the top level (line %d); the top-level keys configure relay", a.Name, prev.Start.Line)
				}
				if onCommandLine[st.name] {
					continue
				}
				if err := setFromAttr(fs, st.name, a); err != nil {
					return err
				}
			}
			continue
		}
		s := &serviceConfig{name: name}
		sfs := serviceFlags(s)
		for _, a := range sortedAttrs(b.Body.Attributes) {
			if err := setFromAttr(sfs, blockSetting(a.Name).name, a); err != nil {
				return err
			}
		}
		if s.worker == "" {
			return posErrorf(b.LabelRanges[0], "service %q: worker is required: the path of the executable to run", name)
		}
		s.values = values(sfs, perService)
		cfg.services = append(cfg.services, s)
	}
	return nil
}

package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/spf13/pflag"
	"github.com/zclconf/go-cty/cty"

	"relayd/cluster"
	"relayd/ipc"
	"relayd/pluginhost"
)

// scope says where a setting may be given.
type scope int

const (
	// global settings are relayd's as a whole: a flag and a top-level key of the config file.
	global scope = iota
	// perService settings belong to one service: as a flag or a top-level key they configure
	// the "relay" service; in a service "NAME" block, that service.
	perService
)

// applied says what a SIGHUP does with a setting whose value changed.
type applied int

const (
	// atRestart settings stay as relayd started with them; a reload names them.
	atRestart applied = iota
	// toLogger is the log level, changed at once.
	toLogger
	// toRelay settings reach a service's relay loop (relay.Settings) for messages from now on.
	toRelay
	// toHost settings reach a service's worker spec (supervisor.WorkerSpec) for workers started
	// from now on.
	toHost
	// toBoth settings reach both.
	toBoth
)

// setting is one row of the table of relayd's settings. Its flag is defined by exactly one of
// global and service, bound to the field that holds its value; its name is the long flag and
// the top-level key of the config file.
type setting struct {
	name string
	// key is the setting's key in a service block when it differs from name ("args" for
	// "worker-arg").
	key     string
	scope   scope
	applied applied
	global  func(fs *pflag.FlagSet, c *config)
	service func(fs *pflag.FlagSet, s *serviceConfig)
}

// blockKey is the setting's key in a service block.
func (s *setting) blockKey() string {
	if s.key != "" {
		return s.key
	}
	return s.name
}

// settings is every setting of relayd, in the order of --help. A new setting is one row here;
// its field in config or serviceConfig is where run and reload read it.
var settings = []setting{
	{name: "socket", global: func(fs *pflag.FlagSet, c *config) {
		fs.StringVar(&c.socket, "socket", "", "Unix socket `path` to listen on (default $RELAY_SOCKET, then "+ipc.DefaultSocket+")")
	}},
	{name: "socket-mode", global: func(fs *pflag.FlagSet, c *config) {
		fs.StringVar(&c.socketModeText, "socket-mode", "0660", "permission `mode` of the socket file (octal)")
	}},
	{name: "socket-group", global: func(fs *pflag.FlagSet, c *config) {
		fs.StringVar(&c.socketGroup, "socket-group", "", "group `name` that owns the socket file")
	}},
	{name: "allow-uid", global: func(fs *pflag.FlagSet, c *config) {
		fs.StringArrayVar(&c.allowUIDs, "allow-uid", nil, "only let this `uid` connect (repeatable; default: anyone the socket mode lets in)")
	}},
	{name: "allow-gid", global: func(fs *pflag.FlagSet, c *config) {
		fs.StringArrayVar(&c.allowGIDs, "allow-gid", nil, "also let peers with this primary `gid` connect (repeatable)")
	}},
	{name: "max-conns", global: func(fs *pflag.FlagSet, c *config) {
		fs.IntVar(&c.maxConns, "max-conns", 256, "most client connections open at once; more are answered busy and closed (lowered to fit the open-file limit)")
	}},
	{name: "max-conns-per-uid", global: func(fs *pflag.FlagSet, c *config) {
		fs.IntVar(&c.maxConnsPerUID, "max-conns-per-uid", 128, "most connections of one peer uid, so one local user cannot lock out the others (half of --max-conns unless set; 0: no bound of its own)")
	}},
	{name: "frame-timeout", global: func(fs *pflag.FlagSet, c *config) {
		fs.DurationVar(&c.frameTimeout, "frame-timeout", 10*time.Second, "deadline from a request line's first byte to its newline, however slowly it comes; past it the connection is closed")
	}},
	{name: "idle-timeout", global: func(fs *pflag.FlagSet, c *config) {
		fs.DurationVar(&c.idleTimeout, "idle-timeout", 0, "close a connection with no partial line and nothing in flight after this long (0: idle connections may stay)")
	}},
	{name: "service", global: func(fs *pflag.FlagSet, c *config) {
		fs.StringArrayVar(&c.serviceFlags, "service", nil, "serve another name: `NAME=PATH` runs the executable PATH for every message to NAME, with the default settings (repeatable; more in the config file)")
	}},
	{name: "worker", scope: perService, service: func(fs *pflag.FlagSet, s *serviceConfig) {
		fs.StringVar(&s.worker, "worker", "", "worker executable `path` (default: worker beside relayd, else ../libexec/relayd/worker)")
	}},
	{name: "worker-arg", key: "args", scope: perService, applied: toHost, service: func(fs *pflag.FlagSet, s *serviceConfig) {
		fs.StringArrayVar(&s.workerArgs, "worker-arg", nil, "argument passed to every worker (repeatable), e.g. --worker-arg=--delay=0s")
	}},
	{name: "worker-env", key: "env", scope: perService, applied: toHost, service: func(fs *pflag.FlagSet, s *serviceConfig) {
		fs.StringArrayVar(&s.envNames, "worker-env", nil, "pass this environment variable `KEY` from relayd to workers (repeatable)")
	}},
	{name: "transport", scope: perService, service: func(fs *pflag.FlagSet, s *serviceConfig) {
		fs.StringVar(&s.transport, "transport", "stdio", "how relayd talks to workers: stdio (NDJSON on stdin and stdout); netrpc and grpc run go-plugin plugins (relayd/sdk/plugin; the echo worker serves both)")
	}},
	{name: "plugin-start-timeout", scope: perService, service: func(fs *pflag.FlagSet, s *serviceConfig) {
		fs.DurationVar(&s.pluginStart, "plugin-start-timeout", pluginhost.DefaultStartTimeout, "time a go-plugin worker (transport netrpc or grpc) has from its start to its handshake line; a plugin that has not shaken hands by then is stopped, and the error names what it printed")
	}},
	{name: "allow-fault-injection", scope: perService, applied: toHost, service: func(fs *pflag.FlagSet, s *serviceConfig) {
		fs.BoolVar(&s.faults, "allow-fault-injection", false, "let workers obey fault directives such as !crash (sets RELAY_FAULTS=1; for testing only)")
	}},
	{name: "max-workers", scope: perService, applied: toRelay, service: func(fs *pflag.FlagSet, s *serviceConfig) {
		fs.IntVar(&s.maxWorkers, "max-workers", defaultMaxWorkers(), "most worker processes at once (64 per CPU: workers mostly wait, and one is a few MiB)")
	}},
	{name: "spares", scope: perService, service: func(fs *pflag.FlagSet, s *serviceConfig) {
		fs.IntVar(&s.spares, "spares", 0, "workers to keep started and ready, so a message does not wait for a fork; a spare is still a fresh process for its message (default 0: a spare saves a sequential client about one worker start, nothing once the CPUs are busy, and is an idle process of about 3 MiB per service)")
	}},
	{name: "max-requests", scope: perService, service: func(fs *pflag.FlagSet, s *serviceConfig) {
		fs.IntVar(&s.maxRequests, "max-requests", 1, "messages one worker serves before it is replaced; above 1 trades isolation for speed")
	}},
	{name: "queue", scope: perService, applied: toRelay, service: func(fs *pflag.FlagSet, s *serviceConfig) {
		fs.IntVar(&s.queue, "queue", 1024, "most messages waiting for a worker (enough for a burst of a thousand); more are answered busy at once")
	}},
	{name: "max-per-client", scope: perService, service: func(fs *pflag.FlagSet, s *serviceConfig) {
		fs.IntVar(&s.maxPerClient, "max-per-client", 64, "most messages of one connection in flight, so one client cannot fill the queue; more wait their turn (relay's, and the connection's in all; a service's own bounds it further)")
	}},
	{name: "message-timeout", scope: perService, applied: toRelay, service: func(fs *pflag.FlagSet, s *serviceConfig) {
		fs.DurationVar(&s.messageTimeout, "message-timeout", 10*time.Second, "longest one attempt may take before its worker is stopped and the sender gets timeout")
	}},
	{name: "kill-grace", scope: perService, applied: toBoth, service: func(fs *pflag.FlagSet, s *serviceConfig) {
		fs.DurationVar(&s.killGrace, "kill-grace", 2*time.Second, "time between SIGTERM and SIGKILL when a worker is stopped")
	}},
	{name: "max-restarts", scope: perService, applied: toRelay, service: func(fs *pflag.FlagSet, s *serviceConfig) {
		fs.IntVar(&s.maxRestarts, "max-restarts", 2, "retries of a message whose worker failed, on fresh workers with backoff and a retry budget")
	}},
	{name: "stats-interval", global: func(fs *pflag.FlagSet, c *config) {
		fs.DurationVar(&c.statsInterval, "stats-interval", 5*time.Second, "period of the stats log line (0 turns it off)")
	}},
	{name: "metrics-addr", global: func(fs *pflag.FlagSet, c *config) {
		fs.Var(&c.metricsAddr, "metrics-addr", "serve Prometheus metrics at /metrics on `addr`: unix:PATH (mode 0660) or a loopback HOST:PORT such as 127.0.0.1:9464 (port 0 picks a free one and logs it); off by default")
	}},
	{name: "slow-threshold", applied: toRelay, global: func(fs *pflag.FlagSet, c *config) {
		fs.DurationVar(&c.slowThreshold, "slow-threshold", time.Second, "log every message answered later than this, with where the time went (0 turns it off)")
	}},
	{name: "shutdown-timeout", applied: toRelay, global: func(fs *pflag.FlagSet, c *config) {
		fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long running workers may finish after SIGTERM; relayd exits within this + --kill-grace + 3s whatever clients do")
	}},
	{name: "max-message-bytes", global: func(fs *pflag.FlagSet, c *config) {
		fs.IntVar(&c.maxMessageBytes, "max-message-bytes", 1<<20, "longest request line; longer ones are answered too_large")
	}},
	{name: "max-pending-bytes", global: func(fs *pflag.FlagSet, c *config) {
		fs.StringVar(&c.maxPendingText, "max-pending-bytes", "", "most `bytes` held for all clients together: requests read and not answered, answers not written; past it connections are not read until bytes drain (default 4 x --max-message-bytes)")
	}},
	{name: "max-client-pending-bytes", global: func(fs *pflag.FlagSet, c *config) {
		fs.StringVar(&c.maxClientPendText, "max-client-pending-bytes", "", "the same bound, in `bytes`, for one connection (default --max-message-bytes + 64KiB)")
	}},
	{name: "max-answer-bytes", global: func(fs *pflag.FlagSet, c *config) {
		fs.StringVar(&c.maxAnswerText, "max-answer-bytes", "", "longest answer in `bytes`; a longer one is answered too_large (default 2 x --max-message-bytes + 4KiB)")
	}},
	{name: "worker-rlimit-cpu", scope: perService, applied: toHost, service: func(fs *pflag.FlagSet, s *serviceConfig) {
		fs.DurationVar(&s.rlimitCPU, "worker-rlimit-cpu", 30*time.Second, "CPU time limit of a worker (RLIMIT_CPU, 3x the message timeout; 0 for none)")
	}},
	{name: "worker-rlimit-nofile", scope: perService, applied: toHost, service: func(fs *pflag.FlagSet, s *serviceConfig) {
		fs.Uint64Var(&s.rlimitNofile, "worker-rlimit-nofile", 64, "open-file limit of a worker (RLIMIT_NOFILE: an echo needs a handful; 0 for relayd's own)")
	}},
	{name: "worker-rlimit-data", scope: perService, applied: toHost, service: func(fs *pflag.FlagSet, s *serviceConfig) {
		fs.StringVar(&s.rlimitData, "worker-rlimit-data", "1GiB", "data-segment limit of a worker (RLIMIT_DATA: a Go worker runs in a few MiB, !oom stops here; e.g. 512MiB, \"unlimited\")")
	}},
	{name: "worker-rlimit-as", scope: perService, applied: toHost, service: func(fs *pflag.FlagSet, s *serviceConfig) {
		fs.StringVar(&s.rlimitAS, "worker-rlimit-as", "unlimited", "address-space limit of a worker (RLIMIT_AS; Go reserves much address space, so leave it high)")
	}},
	{name: "worker-user", scope: perService, service: func(fs *pflag.FlagSet, s *serviceConfig) {
		fs.StringVar(&s.workerUser, "worker-user", "", "run workers as this `user` (relayd must run as root)")
	}},
	{name: "worker-group", scope: perService, service: func(fs *pflag.FlagSet, s *serviceConfig) {
		fs.StringVar(&s.workerGroup, "worker-group", "", "run workers with this `group` (default: the user's primary group)")
	}},
	{name: "worker-sandbox", global: func(fs *pflag.FlagSet, c *config) {
		fs.StringVar(&c.sandboxModeText, "worker-sandbox", "auto", "confine every worker (a PID namespace, Landlock, seccomp): auto applies what the kernel enforces and logs what it lacks, strict refuses to start without all of it, off applies none")
	}},
	{name: "worker-network", key: "network", scope: perService, service: func(fs *pflag.FlagSet, s *serviceConfig) {
		fs.BoolVar(&s.network, "worker-network", false, "let workers use the network; without it they can make Unix sockets only")
	}},
	{name: "worker-writable", key: "writable", scope: perService, service: func(fs *pflag.FlagSet, s *serviceConfig) {
		fs.StringArrayVar(&s.writable, "worker-writable", nil, "let workers write beneath this absolute `path` (repeatable); otherwise only their scratch directory ($TMPDIR) is writable")
	}},
	{name: "log-level", applied: toLogger, global: func(fs *pflag.FlagSet, c *config) {
		fs.StringVar(&c.logLevel, "log-level", "info", "log `level`: trace, debug, info, warn, error")
	}},
	{name: "log-format", global: func(fs *pflag.FlagSet, c *config) {
		fs.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
	}},
	{name: "nats", global: func(fs *pflag.FlagSet, c *config) {
		fs.StringVar(&c.nats.url, "nats", "", "also serve every name on NATS at this `url` (several separated by commas): request subject relayd.NAME.TOPIC, queue group relayd; off by default")
	}},
	{name: "nats-creds", global: func(fs *pflag.FlagSet, c *config) {
		fs.StringVar(&c.nats.creds, "nats-creds", "", "NATS credentials `file` (JWT and NKey seed)")
	}},
	{name: "nats-tls-cert", global: func(fs *pflag.FlagSet, c *config) {
		fs.StringVar(&c.nats.tlsCert, "nats-tls-cert", "", "client certificate `file` for NATS over TLS (with --nats-tls-key)")
	}},
	{name: "nats-tls-key", global: func(fs *pflag.FlagSet, c *config) {
		fs.StringVar(&c.nats.tlsKey, "nats-tls-key", "", "key `file` of --nats-tls-cert")
	}},
	{name: "nats-tls-ca", global: func(fs *pflag.FlagSet, c *config) {
		fs.StringVar(&c.nats.tlsCA, "nats-tls-ca", "", "CA certificate `file` that verifies the NATS servers")
	}},
	{name: "nats-node", global: func(fs *pflag.FlagSet, c *config) {
		fs.StringVar(&c.nats.node, "nats-node", "", "this node's `name` in answers and discovery (default HOSTNAME-PID)")
	}},
	{name: "nats-durable", global: func(fs *pflag.FlagSet, c *config) {
		fs.BoolVar(&c.nats.durable, "nats-durable", false, "also take durable requests from the JetStream work-queue stream RELAYD (subject relayd-durable.NAME.TOPIC), acked once answered, so a node's crash loses none")
	}},
	{name: "nats-ack-wait", global: func(fs *pflag.FlagSet, c *config) {
		fs.DurationVar(&c.nats.ackWait, "nats-ack-wait", cluster.DefaultAckWait, "with --nats-durable: how long a dead node's requests wait before another node takes them (live nodes send in-progress acks)")
	}},
	{name: "nats-replicas", global: func(fs *pflag.FlagSet, c *config) {
		fs.IntVar(&c.nats.replicas, "nats-replicas", 1, "with --nats-durable: `N` replicas of the stream when this node creates it (3 on a 3-server NATS cluster survives the loss of a server)")
	}},
	{name: "nats-pending-limit", global: func(fs *pflag.FlagSet, c *config) {
		fs.IntVar(&c.nats.pendingLimit, "nats-pending-limit", cluster.DefaultPendingLimit, "most core requests (`N`) a name's subscription buffers; past it NATS drops requests and relayd logs a slow consumer")
	}},
}

// lookupSetting returns the row of the setting called name.
func lookupSetting(name string) *setting {
	for i := range settings {
		if settings[i].name == name {
			return &settings[i]
		}
	}
	return nil
}

// defineFlags defines the flag of every setting on fs: the global ones bound to c, the
// per-service ones to s (the relay service's).
func defineFlags(fs *pflag.FlagSet, c *config, s *serviceConfig) {
	for _, st := range settings {
		if st.global != nil {
			st.global(fs, c)
		} else {
			st.service(fs, s)
		}
	}
}

// serviceFlags is a flag set of the per-service settings alone, bound to s, for a service
// other than relay: its values come from its block of the config file, or are the defaults.
func serviceFlags(s *serviceConfig) *pflag.FlagSet {
	fs := pflag.NewFlagSet(s.name, pflag.ContinueOnError)
	fs.SetOutput(nopWriter{})
	for _, st := range settings {
		if st.scope == perService {
			st.service(fs, s)
		}
	}
	return fs
}

type nopWriter struct{}

func (nopWriter) Write(p []byte) (int, error) { return len(p), nil }

// values returns the text of every flag of fs whose setting has scope sc, to tell what a
// reload changes.
func values(fs *pflag.FlagSet, sc scope) map[string]string {
	v := make(map[string]string)
	fs.VisitAll(func(f *pflag.Flag) {
		if st := lookupSetting(f.Name); st != nil && st.scope == sc {
			v[f.Name] = f.Value.String()
		}
	})
	return v
}

// configFile is a parsed config file: the top-level keys, then the service blocks in order.
type configFile struct {
	top      hclsyntax.Attributes
	services []*hclsyntax.Block
}

// readConfigFile parses the HCL config file at path. It checks the file's shape (only known
// top-level keys, only service blocks with one name each, each name once); the values are
// checked as they are set.
func readConfigFile(path string) (*configFile, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	f, diags := hclsyntax.ParseConfig(src, path, hcl.InitialPos)
	if diags.HasErrors() {
		return nil, diagError(diags)
	}
	body := f.Body.(*hclsyntax.Body)
	cf := &configFile{top: body.Attributes}
	for _, a := range sortedAttrs(body.Attributes) {
		if st := lookupSetting(a.Name); st == nil || st.name == "service" {
			return nil, posErrorf(a.NameRange, "unknown setting %q%s", a.Name, suggest(a.Name, false))
		}
	}
	seen := map[string]hcl.Range{}
	for _, b := range body.Blocks {
		switch {
		case b.Type != "service":
			return nil, posErrorf(b.TypeRange, "unknown block %q (the only block is service \"NAME\" { … })", b.Type)
		case len(b.Labels) != 1:
			return nil, posErrorf(b.TypeRange, "a service block takes one name: service \"NAME\" { … }")
		}
		name := b.Labels[0]
		if err := checkServiceName(name); err != nil {
			return nil, posErrorf(b.LabelRanges[0], "%v", err)
		}
		if prev, ok := seen[name]; ok {
			return nil, posErrorf(b.LabelRanges[0], "service %q is defined twice (first at line %d)", name, prev.Start.Line)
		}
		seen[name] = b.LabelRanges[0]
		for _, inner := range b.Body.Blocks {
			return nil, posErrorf(inner.TypeRange, "unknown block %q in service %q", inner.Type, name)
		}
		for _, a := range sortedAttrs(b.Body.Attributes) {
			if blockSetting(a.Name) == nil {
				return nil, posErrorf(a.NameRange, "unknown key %q in service %q%s", a.Name, name, suggest(a.Name, true))
			}
		}
		cf.services = append(cf.services, b)
	}
	return cf, nil
}

// blockSetting returns the per-service setting whose service-block key is key.
func blockSetting(key string) *setting {
	for i := range settings {
		if st := &settings[i]; st.scope == perService && st.blockKey() == key {
			return st
		}
	}
	return nil
}

// suggest names a close known key, for a misspelt one.
func suggest(name string, inBlock bool) string {
	var known []string
	for _, st := range settings {
		switch {
		case inBlock && st.scope == perService:
			known = append(known, st.blockKey())
		case !inBlock && st.name != "service":
			known = append(known, st.name)
		}
	}
	for _, k := range known {
		if editDistance(name, k) <= 2 {
			return fmt.Sprintf("; did you mean %q?", k)
		}
	}
	return ""
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// sortedAttrs returns attrs in the order of the file, so that the first wrong one is reported.
func sortedAttrs(attrs hclsyntax.Attributes) []*hclsyntax.Attribute {
	list := make([]*hclsyntax.Attribute, 0, len(attrs))
	for _, a := range attrs {
		list = append(list, a)
	}
	slices.SortFunc(list, func(a, b *hclsyntax.Attribute) int { return a.SrcRange.Start.Byte - b.SrcRange.Start.Byte })
	return list
}

// setFromAttr sets flag name of fs from an attribute's value: a string, number or bool, or for
// a repeatable flag a list of them.
func setFromAttr(fs *pflag.FlagSet, name string, a *hclsyntax.Attribute) error {
	v, diags := a.Expr.Value(nil)
	if diags.HasErrors() {
		return diagError(diags)
	}
	f := fs.Lookup(name)
	repeatable := strings.HasSuffix(f.Value.Type(), "Array") || strings.HasSuffix(f.Value.Type(), "Slice")
	var texts []string
	switch {
	case v.IsNull():
		return posErrorf(a.Expr.Range(), "%s: a value is required", a.Name)
	case v.Type().IsTupleType() || v.Type().IsListType():
		if !repeatable {
			return posErrorf(a.Expr.Range(), "%s takes one value, not a list", a.Name)
		}
		for it := v.ElementIterator(); it.Next(); {
			_, ev := it.Element()
			t, err := scalarText(ev)
			if err != nil {
				return posErrorf(a.Expr.Range(), "%s: %v", a.Name, err)
			}
			texts = append(texts, t)
		}
	default:
		t, err := scalarText(v)
		if err != nil {
			return posErrorf(a.Expr.Range(), "%s: %v", a.Name, err)
		}
		texts = []string{t}
	}
	if repeatable && len(texts) == 0 {
		// An empty list clears the default.
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			f.Changed = true
			return sv.Replace(nil)
		}
	}
	for _, t := range texts {
		if err := fs.Set(name, t); err != nil {
			return posErrorf(a.Expr.Range(), "%s: %v", a.Name, err)
		}
	}
	return nil
}

// scalarText is the flag text of a string, number or bool.
func scalarText(v cty.Value) (string, error) {
	switch {
	case v.IsNull():
		return "", fmt.Errorf("null is not a value")
	case v.Type() == cty.String:
		return v.AsString(), nil
	case v.Type() == cty.Number:
		bf := v.AsBigFloat()
		if bf.IsInt() {
			return bf.Text('f', 0), nil
		}
		return bf.Text('g', -1), nil
	case v.Type() == cty.Bool:
		if v.True() {
			return "true", nil
		}
		return "false", nil
	}
	return "", fmt.Errorf("want a string, number or bool, not %s", v.Type().FriendlyName())
}

// posErrorf is an error that starts with the file:line:column of r.
func posErrorf(r hcl.Range, format string, args ...any) error {
	return fmt.Errorf("%s:%d:%d: %s", r.Filename, r.Start.Line, r.Start.Column, fmt.Sprintf(format, args...))
}

// diagError turns HCL's diagnostics into one error at the first problem's position.
func diagError(diags hcl.Diagnostics) error {
	for _, d := range diags {
		if d.Severity != hcl.DiagError {
			continue
		}
		msg := d.Summary
		if d.Detail != "" {
			msg += ": " + strings.TrimSuffix(d.Detail, ".")
		}
		if d.Subject != nil {
			return posErrorf(*d.Subject, "%s", msg)
		}
		return fmt.Errorf("%s", msg)
	}
	return diags
}

// checkServiceName accepts names a client can type and a NATS subject can carry: letters,
// digits, '-' and '_', up to 64 bytes.
func checkServiceName(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("service name %q: want 1 to 64 characters", name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("service name %q: only letters, digits, '-' and '_'", name)
		}
	}
	return nil
}

// change is one setting whose value a reload changes; service is "" for a global setting.
type change struct {
	service, name string
	old, new      string
	applied       applied
}

func (c change) label() string {
	if c.service == "" || c.service == relayName {
		return c.name
	}
	return c.service + "." + c.name
}

// diffValues lists the settings whose values differ between old and new, sorted by name.
func diffValues(service string, old, new map[string]string) []change {
	var cs []change
	for name, v := range new {
		if old[name] == v {
			continue
		}
		st := lookupSetting(name)
		cs = append(cs, change{service: service, name: name, old: old[name], new: v, applied: st.applied})
	}
	slices.SortFunc(cs, func(a, b change) int { return strings.Compare(a.name, b.name) })
	return cs
}

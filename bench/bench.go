package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Variant groups: the rows are compared within a group's clients count.
const (
	groupFloor       = "floor"
	groupWorker      = "worker direct"
	groupRelayd      = "relayd"
	groupSpares      = "relayd spares"
	groupSparesPaced = "relayd spares paced"
	groupPlugin      = "go-plugin per message"
	groupS6          = "s6-ipcserver"
	groupSoak        = "relayd soak"

	// Long-lived workers, compared with each other (not with the floor): the worker started
	// once per client and fed directly, relayd --max-requests, and a go-plugin client reused.
	groupWorkerReused = "worker direct, reused"
	groupMaxRequests  = "relayd max-requests"
	groupPluginReused = "go-plugin reused"

	// relayd's go-plugin transports (the echo worker's go-plugin mode, worker-plugin, started
	// by relayd), per message and reused, next to go-plugin's own client and the stdio rows.
	groupRelaydPlugin       = "relayd go-plugin per message"
	groupRelaydPluginReused = "relayd go-plugin reused"
)

// maxRequests is N of the relayd --max-requests=N variant: high enough that a worker is
// replaced about once per 1000 messages, so that what is left is the relaying itself.
const maxRequests = 1000

// variant is one way of answering a message at one concurrency: a row of the table.
type variant struct {
	name      string // shown in the table
	group     string
	clients   []client
	nclients  int           // len(clients), kept when they are closed
	target    int           // messages to measure
	pace      time.Duration // pause after each message
	server    *server       // whose own work is counted, or nil
	perClient int           // messages per client per batch

	hist *hdrhistogram.Histogram // latency in µs
	msgs int
	wall time.Duration // sum of the batches' wall-clock times
	cpu  time.Duration // CPU time of every process involved: bench, server, their children
	srv  usage         // the server's share
}

// label names the variant for --only and errors: "relayd c8".
func (v *variant) label() string { return v.name + " c" + strconv.Itoa(v.nclients) }

func (v *variant) throughput() float64 {
	if v.wall <= 0 {
		return 0
	}
	return float64(v.msgs) / v.wall.Seconds()
}

func (v *variant) quantile(q float64) time.Duration {
	return time.Duration(v.hist.ValueAtQuantile(q)) * time.Microsecond
}

// batch runs per messages on each client at once and, if record, adds them to the variant.
func (v *variant) batch(ctx context.Context, per int, record bool, prog *progress) error {
	var srvBefore usage
	if v.server != nil {
		srvBefore = readUsage(v.server.pid())
	}
	selfBefore, childBefore := selfUsage()
	liveBefore := v.liveCPU()
	lat := make([][]time.Duration, len(v.clients))
	errs := make([]error, len(v.clients))
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range v.clients {
		wg.Go(func() {
			l := make([]time.Duration, 0, per)
			for range per {
				if err := ctx.Err(); err != nil {
					errs[i] = err
					return
				}
				t := time.Now()
				if err := c.do(ctx); err != nil {
					errs[i] = fmt.Errorf("%s: %w", v.label(), err)
					return
				}
				l = append(l, time.Since(t))
				prog.add(1)
				if v.pace > 0 {
					time.Sleep(v.pace)
				}
			}
			lat[i] = l
		})
	}
	wg.Wait()
	wall := time.Since(start)
	selfAfter, childAfter := selfUsage()
	live := v.liveCPU() - liveBefore
	var srv usage
	if v.server != nil {
		if v.server.exited() {
			errs = append(errs, fmt.Errorf("%s: %s exited%s", v.label(), v.server.name, v.server.logTail()))
		} else {
			srv = readUsage(v.server.pid()).sub(srvBefore)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if !record {
		return nil
	}
	if v.hist == nil {
		v.hist = hdrhistogram.New(1, int64(opTimeout/time.Microsecond), 3)
	}
	for _, l := range lat {
		for _, d := range l {
			v.hist.RecordValue(max(d.Microseconds(), 1))
		}
		v.msgs += len(l)
	}
	v.wall += wall
	v.cpu += selfAfter - selfBefore + childAfter - childBefore + live + srv.cpu + srv.children + srv.live
	v.srv.cpu += srv.cpu
	v.srv.children += srv.children
	v.srv.live += srv.live
	v.srv.cs += srv.cs
	return nil
}

// liveProc is a client that keeps a process of the bench's alive across messages; its CPU time
// is read from /proc, since rusage counts only children that have been reaped.
type liveProc interface {
	livePID() int
}

// liveCPU is the CPU time so far of the variant's clients' long-lived processes.
func (v *variant) liveCPU() time.Duration {
	var d time.Duration
	for _, c := range v.clients {
		if lp, ok := c.(liveProc); ok {
			d += threadsCPU(lp.livePID())
		}
	}
	return d
}

// bench holds the state of one run.
type bench struct {
	cfg     *config
	bins    binaries
	tmp     string
	prog    *progress
	rep     *report
	servers *serverSet
	devnull *os.File
	nsock   int

	variants []*variant
}

// spec is a variant before its server and clients exist.
type spec struct {
	name    string
	group   string
	clients int
	target  int
	pace    time.Duration
	server  string // "relayd", "nosandbox", "spares", "maxreq", "s6" or ""
}

func (b *bench) setup(ctx context.Context) error {
	cfg := b.cfg
	var err error
	if b.devnull, err = os.OpenFile(os.DevNull, os.O_RDWR, 0); err != nil {
		return err
	}
	b.rep.spares = cfg.spares
	b.rep.rounds = cfg.rounds
	var specs []spec
	for _, c := range []int{1, 2, 8} {
		specs = append(specs,
			spec{name: "floor: empty Go binary", group: groupFloor, clients: c, target: cfg.n},
			spec{name: "worker direct", group: groupWorker, clients: c, target: cfg.n},
			spec{name: "relayd", group: groupRelayd, clients: c, target: cfg.n, server: "relayd"})
	}
	// The sandbox's cost per message: the same relayd with its workers unconfined.
	if b.bins.sandboxSupported {
		for _, c := range []int{1, 8} {
			specs = append(specs, spec{name: "relayd --worker-sandbox=off", group: groupRelayd, clients: c, target: cfg.n, server: "nosandbox"})
		}
	}
	sparesName := fmt.Sprintf("relayd --spares=%d", cfg.spares)
	if b.bins.sparesSupported {
		specs = append(specs,
			spec{name: sparesName + fmt.Sprintf(", paced %v", cfg.pace), group: groupSparesPaced, clients: 1, target: max(cfg.n/2, 1), pace: cfg.pace, server: "spares"},
			spec{name: sparesName, group: groupSpares, clients: 1, target: cfg.n, server: "spares"},
			spec{name: sparesName, group: groupSpares, clients: 8, target: cfg.n, server: "spares"})
	} else {
		b.rep.notes = append(b.rep.notes, "spares: not supported by this relayd")
	}
	for _, c := range []int{1, 8} {
		specs = append(specs, spec{name: "go-plugin per message", group: groupPlugin, clients: c, target: max(cfg.n/5, 1)})
	}
	if b.bins.transportSupported {
		for _, tr := range []string{"grpc", "netrpc"} {
			for _, c := range []int{1, 8} {
				specs = append(specs, spec{name: "relayd --transport=" + tr, group: groupRelaydPlugin, clients: c, target: max(cfg.n/5, 1), server: tr})
			}
		}
	} else {
		b.rep.notes = append(b.rep.notes, "go-plugin transports: not supported by this relayd")
	}
	if b.bins.s6ipcserver != "" {
		for _, c := range []int{1, 8} {
			specs = append(specs, spec{name: "s6-ipcserver", group: groupS6, clients: c, target: cfg.n, server: "s6"})
		}
	} else {
		b.rep.notes = append(b.rep.notes, "s6-ipcserver: not installed, skipped")
	}
	for _, c := range []int{1, 8} {
		specs = append(specs, spec{name: "worker direct, reused", group: groupWorkerReused, clients: c, target: cfg.n})
	}
	if b.bins.maxRequestsSupported {
		for _, c := range []int{1, 8} {
			specs = append(specs, spec{name: fmt.Sprintf("relayd --max-requests=%d", maxRequests), group: groupMaxRequests, clients: c, target: cfg.n, server: "maxreq"})
		}
	} else {
		b.rep.notes = append(b.rep.notes, "max-requests: not supported by this relayd")
	}
	for _, c := range []int{1, 8} {
		specs = append(specs, spec{name: "go-plugin, one client reused", group: groupPluginReused, clients: c, target: cfg.n})
	}
	if b.bins.transportSupported && b.bins.maxRequestsSupported {
		for _, tr := range []string{"grpc", "netrpc"} {
			for _, c := range []int{1, 8} {
				specs = append(specs, spec{name: fmt.Sprintf("relayd --transport=%s --max-requests=%d", tr, maxRequests), group: groupRelaydPluginReused, clients: c, target: cfg.n, server: tr + "maxreq"})
			}
		}
	}
	specs = slices.DeleteFunc(specs, func(s spec) bool {
		return !cfg.selected(s.name + " c" + strconv.Itoa(s.clients))
	})

	servers := map[string]*server{}
	for _, s := range specs {
		if s.server == "" || servers[s.server] != nil {
			continue
		}
		var srv *server
		switch s.server {
		case "relayd":
			args := []string{"--worker-arg=--delay=0s"}
			if cfg.profile != "" {
				if !b.bins.profileSupported {
					return fmt.Errorf("--profile: this relayd has no --cpu-profile")
				}
				args = append(args, "--cpu-profile="+cfg.profile)
			}
			srv, err = b.startRelayd(ctx, "relayd", args...)
		case "nosandbox":
			srv, err = b.startRelayd(ctx, "relayd-nosandbox", "--worker-arg=--delay=0s", "--worker-sandbox=off")
		case "spares":
			srv, err = b.startRelayd(ctx, "relayd-spares", "--worker-arg=--delay=0s", "--spares="+strconv.Itoa(cfg.spares))
		case "maxreq":
			srv, err = b.startRelayd(ctx, "relayd-maxreq", "--worker-arg=--delay=0s", "--max-requests="+strconv.Itoa(maxRequests))
		case "grpc", "netrpc", "grpcmaxreq", "netrpcmaxreq":
			// worker-plugin itself, as go-plugin's own client runs its plugin: the echo worker
			// would exec it first.
			tr := strings.TrimSuffix(s.server, "maxreq")
			args := []string{"--worker=" + b.bins.workerPlugin, "--worker-arg=--delay=0s", "--transport=" + tr}
			if strings.HasSuffix(s.server, "maxreq") {
				args = append(args, "--max-requests="+strconv.Itoa(maxRequests))
			}
			srv, err = b.startRelayd(ctx, "relayd-"+s.server, args...)
		case "s6":
			srv, err = b.startS6(ctx)
		}
		if err != nil {
			return err
		}
		servers[s.server] = srv
	}

	for _, s := range specs {
		v := &variant{name: s.name, group: s.group, nclients: s.clients, target: s.target, pace: s.pace, server: servers[s.server]}
		// Listed before its clients exist, so that closeClients stops every process a client
		// started, also when a later one fails to start.
		b.variants = append(b.variants, v)
		for range s.clients {
			var c client
			switch s.group {
			case groupFloor:
				c = floorClient{bin: b.bins.empty, devnull: b.devnull}
			case groupWorker:
				c = &workerClient{bin: b.bins.worker, devnull: b.devnull}
			case groupRelayd, groupSpares, groupSparesPaced, groupMaxRequests, groupRelaydPlugin, groupRelaydPluginReused:
				rc, err := dialRelay(ctx, socketOf(v.server))
				if err != nil {
					return fmt.Errorf("connecting to %s: %w", v.server.name, err)
				}
				c = rc
			case groupPlugin:
				c = pluginClient{bin: b.bins.plugin}
			case groupS6:
				c = &s6Client{sock: socketOf(v.server)}
			case groupWorkerReused:
				wc, err := startWorkerReused(b.bins.worker, b.devnull)
				if err != nil {
					return fmt.Errorf("%s: %w", v.label(), err)
				}
				c = wc
			case groupPluginReused:
				pc, err := startPluginReused(ctx, b.bins.plugin)
				if err != nil {
					return fmt.Errorf("%s: %w", v.label(), err)
				}
				c = pc
			}
			v.clients = append(v.clients, c)
		}
	}
	b.rep.variants = b.variants
	return nil
}

// profileTop returns the top of relayd's CPU profile by cumulative time (where the time goes,
// from the top down), as go tool pprof prints it, or a line saying why there is none.
func (b *bench) profileTop(ctx context.Context) string {
	out, err := exec.CommandContext(ctx, b.cfg.goCmd, "tool", "pprof", "-top", "-cum", "-nodecount=30", b.bins.relayd, b.cfg.profile).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("go tool pprof: %v\n%s", err, out)
	}
	return string(out)
}

// socketOf returns the socket path a relayd or s6-ipcserver was started with: the argument
// after --socket, or s6-ipcserver's path argument.
func socketOf(s *server) string {
	args := s.cmd.Args
	for i, a := range args {
		if a == "--socket" && i+1 < len(args) {
			return args[i+1]
		}
	}
	return args[len(args)-2]
}

// closeClients closes every variant's connections. It may be called more than once.
func (b *bench) closeClients() {
	for _, v := range b.variants {
		for _, c := range v.clients {
			c.close()
		}
	}
	if b.devnull != nil {
		b.devnull.Close()
		b.devnull = nil
	}
}

// relaydEnv is relayd's environment: the bench's, without what would make it act as a
// systemd service.
func relaydEnv() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		return k == "NOTIFY_SOCKET" || strings.HasPrefix(k, "LISTEN_") || k == "WATCHDOG_USEC" || k == "WATCHDOG_PID"
	})
}

// startRelayd starts a relayd on a fresh socket and waits until it accepts connections.
func (b *bench) startRelayd(ctx context.Context, name string, extra ...string) (*server, error) {
	b.nsock++
	sock := filepath.Join(b.tmp, "r"+strconv.Itoa(b.nsock)+".sock")
	args := append([]string{"--socket", sock, "--worker", b.bins.worker, "--log-level=warn", "--stats-interval=0"}, extra...)
	cmd := exec.Command(b.bins.relayd, args...)
	cmd.Env = relaydEnv()
	srv, err := b.servers.start(name, b.tmp, cmd, true)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			return srv, nil
		}
		if srv.exited() {
			return nil, fmt.Errorf("%s exited at start: %v%s", name, srv.waitErr, srv.logTail())
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s did not accept connections within 10s%s", name, srv.logTail())
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// startS6 starts s6-ipcserver forking the per-connection echo program for each connection,
// and waits for its readiness newline (-1).
func (b *bench) startS6(ctx context.Context) (*server, error) {
	sock := filepath.Join(b.tmp, "s6.sock")
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	cmd := exec.Command(b.bins.s6ipcserver, "-1", "-c", "64", "-C", "64", sock, b.bins.s6echo)
	// The children inherit this environment; s6 adds its PROTO and IPC* variables.
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, leanEnv...)
	cmd.Stdout = w
	srv, err := b.servers.start("s6-ipcserver", b.tmp, cmd, false)
	w.Close()
	if err != nil {
		return nil, err
	}
	r.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := r.Read(make([]byte, 1)); err != nil {
		return nil, fmt.Errorf("s6-ipcserver did not get ready: %w%s", err, srv.logTail())
	}
	return srv, ctx.Err()
}

// interleaved runs every variant in rounds, one batch per variant per round, rotating the order
// each round, so that the noise of a shared machine hits all of them alike.
func (b *bench) interleaved(ctx context.Context) error {
	vs := b.variants
	if len(vs) == 0 {
		return nil
	}
	rounds := b.cfg.rounds
	var total int64
	for _, v := range vs {
		c := v.nclients
		v.perClient = max((v.target+rounds*c-1)/(rounds*c), 1)
		total += int64(rounds * c * v.perClient)
	}
	if !b.cfg.smoke {
		// Warm up: page cache, relayd's threads and buffers, go's exec path. Not recorded.
		b.prog.note("warming up")
		for _, v := range vs {
			if err := v.batch(ctx, 2, false, b.prog); err != nil {
				return err
			}
		}
	}
	b.prog.start(fmt.Sprintf("interleaved: %d variants × %d rounds", len(vs), rounds), total)
	for r := range rounds {
		for i := range vs {
			v := vs[(i+r)%len(vs)]
			if err := v.batch(ctx, v.perClient, true, b.prog); err != nil {
				return err
			}
		}
	}
	return nil
}

// workerRSS reads the peak RSS (VmHWM) of live workers started directly: each gets a request
// and a delay, and is read while it sleeps, after it has decoded the request.
func (b *bench) workerRSS(ctx context.Context) error {
	if !b.cfg.selected("worker rss") {
		return nil
	}
	reps := 3
	if b.cfg.smoke {
		reps = 1
	}
	b.prog.start("worker peak RSS", int64(reps))
	for range reps {
		hwm, rss, err := b.oneWorkerRSS(ctx)
		if err != nil {
			return fmt.Errorf("worker rss: %w", err)
		}
		b.rep.workerHWM = max(b.rep.workerHWM, hwm)
		b.rep.workerRSS = max(b.rep.workerRSS, rss)
		b.prog.add(1)
	}
	return nil
}

func (b *bench) oneWorkerRSS(ctx context.Context) (hwm, rss int64, err error) {
	const delay = 500 * time.Millisecond
	cmd, inW, outR, err := startWorker(b.bins.worker, delay, b.devnull)
	if err != nil {
		return 0, 0, err
	}
	defer func() {
		if err != nil {
			cmd.Process.Kill()
		}
		inW.Close()
		if werr := cmd.Wait(); werr != nil && err == nil {
			err = werr
		}
		outR.Close()
	}()
	var buf []byte
	if _, err := inW.Write(workerRequest); err != nil {
		return 0, 0, err
	}
	outR.SetReadDeadline(time.Now().Add(opTimeout))
	if _, err := readLines(outR, &buf, 1); err != nil {
		return 0, 0, err
	}
	select {
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	case <-time.After(delay / 2):
	}
	pid := cmd.Process.Pid
	if hwm, err = statusKB(pid, "VmHWM"); err != nil {
		return 0, 0, err
	}
	if rss, err = statusKB(pid, "VmRSS"); err != nil {
		return 0, 0, err
	}
	// The ready line came alone: the reply follows the delay.
	if _, err := readLines(outR, &buf, 1); err != nil {
		return 0, 0, err
	}
	return hwm, rss, nil
}

// burst sends cfg.burst messages at once over cfg.burstConns connections to a relayd whose
// workers keep the tutorial's delay, and times until the last answer.
func (b *bench) burst(ctx context.Context) error {
	if !b.cfg.selected("burst") {
		return nil
	}
	cfg := b.cfg
	srv, err := b.startRelayd(ctx, "relayd-burst", "--worker-arg=--delay="+cfg.burstDelay.String())
	if err != nil {
		return err
	}
	b.rep.burstN, b.rep.burstConns, b.rep.burstDelay = cfg.burst, cfg.burstConns, cfg.burstDelay
	b.rep.burstMaxWorkers = b.maxWorkersDefault(ctx)
	b.prog.start(fmt.Sprintf("burst: %d messages at once, %v worker delay", cfg.burst, cfg.burstDelay), int64(cfg.burst*cfg.bursts))
	for i := range cfg.bursts {
		if i > 0 {
			// Let the last burst's workers be reaped before the next.
			time.Sleep(300 * time.Millisecond)
		}
		d, err := b.oneBurst(ctx, socketOf(srv))
		if err != nil {
			return fmt.Errorf("burst: %w", err)
		}
		b.rep.bursts = append(b.rep.bursts, d)
	}
	return srv.stop(20 * time.Second)
}

func (b *bench) oneBurst(ctx context.Context, sock string) (time.Duration, error) {
	n, k := b.cfg.burst, b.cfg.burstConns
	conns := make([]*relayClient, 0, k)
	defer func() {
		for _, c := range conns {
			c.close()
		}
	}()
	for range k {
		c, err := dialRelay(ctx, sock)
		if err != nil {
			return 0, err
		}
		conns = append(conns, c)
	}
	errs := make([]error, k)
	var wg sync.WaitGroup
	start := time.Now()
	for i, c := range conns {
		share := n / k
		if i < n%k {
			share++
		}
		wg.Go(func() {
			waiting := make(map[string]bool, share)
			var req []byte
			for range share {
				c.id++
				req = appendRequest(req, c.id)
				waiting[strconv.FormatInt(c.id, 10)] = true
			}
			c.conn.SetDeadline(time.Now().Add(opTimeout))
			if _, err := c.conn.Write(req); err != nil {
				errs[i] = err
				return
			}
			for range share {
				line, err := c.r.ReadSlice('\n')
				if err != nil {
					errs[i] = fmt.Errorf("%d answers missing: %w", len(waiting), err)
					return
				}
				id, err := checkReply(line, waiting)
				if err != nil {
					errs[i] = err
					return
				}
				delete(waiting, id)
				b.prog.add(1)
			}
		})
	}
	wg.Wait()
	return time.Since(start), errors.Join(errs...)
}

// maxWorkersDefault reads relayd's --max-workers default from its help, or 0.
func (b *bench) maxWorkersDefault(ctx context.Context) int {
	out, _ := exec.CommandContext(ctx, b.bins.relayd, "--help").CombinedOutput()
	s := string(out)
	i := strings.Index(s, "--max-workers")
	if i < 0 {
		return 0
	}
	m := regexp.MustCompile(`\(default (\d+)\)`).FindStringSubmatch(s[i:])
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// rssSample is relayd's memory after a number of messages.
type rssSample struct {
	msgs     int
	rss, hwm int64 // kB
}

// soak sends cfg.soak messages over 8 connections to a fresh relayd and reads its RSS before,
// and after every tenth of them.
func (b *bench) soak(ctx context.Context) error {
	if !b.cfg.selected("soak") {
		return nil
	}
	srv, err := b.startRelayd(ctx, "relayd-soak", "--worker-arg=--delay=0s")
	if err != nil {
		return err
	}
	const clients = 8
	chunks := 10
	if b.cfg.smoke {
		chunks = 2
	}
	v := &variant{name: "relayd, soak", group: groupSoak, nclients: clients, server: srv}
	defer func() {
		for _, c := range v.clients {
			c.close()
		}
	}()
	// The variant's clients are closed before relayd is stopped, on every path.
	for range clients {
		c, err := dialRelay(ctx, socketOf(srv))
		if err != nil {
			return err
		}
		v.clients = append(v.clients, c)
	}
	sample := func() error {
		rss, err := statusKB(srv.pid(), "VmRSS")
		if err != nil {
			return err
		}
		hwm, err := statusKB(srv.pid(), "VmHWM")
		if err != nil {
			return err
		}
		b.rep.rss = append(b.rep.rss, rssSample{msgs: v.msgs, rss: rss, hwm: hwm})
		return nil
	}
	if err := sample(); err != nil {
		return err
	}
	per := max((b.cfg.soak+chunks*clients-1)/(chunks*clients), 1)
	b.prog.start(fmt.Sprintf("soak: relayd RSS over %d messages", per*chunks*clients), int64(per*chunks*clients))
	for range chunks {
		if err := v.batch(ctx, per, true, b.prog); err != nil {
			return err
		}
		if err := sample(); err != nil {
			return err
		}
	}
	b.rep.soak = v
	for _, c := range v.clients {
		c.close()
	}
	v.clients = v.clients[:0:0]
	return srv.stop(20 * time.Second)
}

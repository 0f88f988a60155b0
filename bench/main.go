// Command relay-bench is relayd's benchmark: it measures, interleaved in one run, the
// floor (start and wait of an empty static Go binary), the worker started directly, relayd's
// echo round trip and throughput, go-plugin and s6-ipcserver peers doing the same work, and
// long-lived workers (the stdio worker fed directly, relayd --max-requests, a go-plugin client
// reused), then a burst of slow messages and relayd's and the worker's memory, and prints a
// markdown report.
//
// Usage (from the module root; make bench runs it after make build):
//
//	go run ./bench --bin bin [--n 3000] [--smoke] [--out FILE] [--only REGEXP]
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	interrupted := ctx.Err() != nil
	stop()
	if err != nil && interrupted {
		// Cancellation is a clean exit, not an error; every process is stopped by now.
		fmt.Fprintln(os.Stderr, "relay-bench: interrupted; no report")
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "relay-bench: %v\n", err)
		os.Exit(1)
	}
}

// config is what the flags select.
type config struct {
	smoke      bool
	n          int // messages measured per variant
	rounds     int // interleaving rounds: every variant runs one batch per round
	soak       int // messages sent before relayd's RSS is read again
	burst      int // messages of the burst
	burstConns int
	bursts     int // repetitions of the burst
	burstDelay time.Duration
	spares     int
	pace       time.Duration
	bin        string
	goCmd      string
	out        string
	svg        string // where the pictures go, or ""
	profile    string // where relayd's CPU profile goes, or ""
	only       *regexp.Regexp
	args       []string
}

// selected reports whether the measurement called name is to be run.
func (c *config) selected(name string) bool { return c.only == nil || c.only.MatchString(name) }

func parseFlags(args []string, stdout, stderr io.Writer) (*config, error) {
	fs := pflag.NewFlagSet("relay-bench", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &config{args: args}
	fs.BoolVar(&c.smoke, "smoke", false, "a few dozen messages in all, to prove that every measurement works (CI)")
	fs.IntVar(&c.n, "n", 4000, "messages measured per variant (go-plugin per message gets a fifth, the paced variant half)")
	fs.IntVar(&c.rounds, "rounds", 30, "interleaving rounds; every variant runs one batch of n/rounds messages per round")
	fs.IntVar(&c.soak, "soak", 100000, "messages relayd answers between its two RSS readings")
	fs.IntVar(&c.burst, "burst", 1000, "messages of the burst, sent at once with the worker's default 100ms delay")
	fs.IntVar(&c.burstConns, "burst-conns", 16, "connections the burst is spread over (relayd allows 64 in flight per connection)")
	fs.IntVar(&c.bursts, "bursts", 3, "repetitions of the burst; the report gives each and the median")
	fs.DurationVar(&c.burstDelay, "burst-delay", 100*time.Millisecond, "worker --delay during the burst")
	fs.IntVar(&c.spares, "spares", 4, "N of the relayd --spares=N variants, when relayd has that flag")
	fs.DurationVar(&c.pace, "pace", 5*time.Millisecond, "pause between messages of the paced --spares variant, longer than a spare's refill")
	fs.StringVar(&c.bin, "bin", "", "directory holding relayd and worker (default: build them)")
	fs.StringVar(&c.goCmd, "go", "go", "go command used to build the helper programs")
	fs.StringVar(&c.out, "out", "", "also write the markdown report to this file")
	fs.StringVar(&c.svg, "svg", "", "write the pictures (latency CDFs on a log scale, throughput against clients) to this SVG `file`")
	fs.StringVar(&c.profile, "profile", "", "write a pprof CPU profile of the relayd of the \"relayd\" rows (a fresh worker per message) to this `file`, and its top functions to the report (default with no value: relayd.pprof beside --out)")
	fs.Lookup("profile").NoOptDefVal = "auto"
	only := fs.String("only", "", "run only the measurements whose name matches this regexp (e.g. '^relayd c1$', burst, soak, 'worker rss')")
	fs.Usage = func() {
		fmt.Fprintf(stdout, "Usage: relay-bench [flags]\n\nrelay-bench measures relayd against the cost of starting a process and against peers,\ninterleaved in one run, and prints a markdown report.\n\nFlags:\n%s", fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if c.profile == "auto" {
		c.profile = "relayd.pprof"
		if c.out != "" {
			c.profile = filepath.Join(filepath.Dir(c.out), "relayd.pprof")
		}
	}
	if *only != "" {
		re, err := regexp.Compile(*only)
		if err != nil {
			return nil, fmt.Errorf("--only: %w", err)
		}
		c.only = re
	}
	if c.smoke {
		c.n, c.rounds, c.soak, c.burst, c.bursts = 2, 1, 32, 32, 1
		c.burstDelay = 20 * time.Millisecond
	}
	if c.n < 1 || c.rounds < 1 || c.soak < 1 || c.burst < 1 || c.burstConns < 1 || c.bursts < 1 {
		return nil, errors.New("--n, --rounds, --soak, --burst, --burst-conns and --bursts must be positive")
	}
	return c, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	cfg, err := parseFlags(args, stdout, stderr)
	if errors.Is(err, pflag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	began := time.Now()
	rep := &report{machine: readMachine(), command: "relay-bench " + strings.Join(cfg.args, " "), smoke: cfg.smoke}

	tmp, err := os.MkdirTemp("", "rbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	prog := newProgress(stderr)
	defer prog.close()

	prog.note("building")
	bins, err := build(ctx, cfg, tmp)
	if err != nil {
		return err
	}
	rep.buildTime = time.Since(began)

	// Every process started from here on is stopped, and waited for, on every return path.
	var servers serverSet
	defer func() {
		if serr := servers.stopAll(); serr != nil && err == nil {
			err = serr
		}
	}()

	b := &bench{cfg: cfg, bins: bins, tmp: tmp, prog: prog, rep: rep, servers: &servers}
	defer b.closeClients() // before the servers are stopped
	if err := b.setup(ctx); err != nil {
		return err
	}
	if err := b.interleaved(ctx); err != nil {
		return err
	}
	if err := b.workerRSS(ctx); err != nil {
		return err
	}
	if err := b.burst(ctx); err != nil {
		return err
	}
	if err := b.soak(ctx); err != nil {
		return err
	}
	b.closeClients()
	if err := servers.stopAll(); err != nil {
		return err
	}
	rep.notes = append(rep.notes, servers.logs()...)
	if cfg.profile != "" {
		rep.profile = b.profileTop(ctx)
	}
	prog.close()
	rep.elapsed = time.Since(began)
	rep.machine.loadAfter = loadAvg()

	md := rep.markdown()
	if _, err := io.WriteString(stdout, md); err != nil {
		return err
	}
	if cfg.out != "" {
		if err := os.WriteFile(cfg.out, []byte(md), 0o644); err != nil {
			return err
		}
	}
	if cfg.svg != "" {
		if err := os.WriteFile(cfg.svg, []byte(rep.svg()), 0o644); err != nil {
			return err
		}
	}
	return nil
}

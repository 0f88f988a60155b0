package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"relayd/ipc"
)

// topicStatus is the relay's topic that lists its names and live workers.
const topicStatus = "status"

// status asks the relay for its names and live workers and prints them as a table, or with
// --json the reply frame: for every service, grouped, unless --to names one.
func status(ctx context.Context, o options, stdout io.Writer) error {
	if o.nats.url != "" {
		return gather(ctx, o, true, stdout)
	}
	p := &poller{o: o}
	defer p.close()
	answers, err := p.statuses(ctx)
	if err != nil {
		return err
	}
	var sts []ipc.Status
	for _, a := range answers {
		show, err := showFrame(stdout, o, a)
		if !show {
			if err != nil {
				return err
			}
			continue
		}
		st, err := parseStatus(a.Data)
		if err != nil {
			return err
		}
		sts = append(sts, st)
	}
	if len(sts) == 0 {
		return nil
	}
	return writeStatuses(stdout, sts)
}

// writeStatuses prints one service's status as writeStatus does, or several grouped by
// service under one names line.
func writeStatuses(w io.Writer, sts []ipc.Status) error {
	if len(sts) == 1 {
		return writeStatus(w, sts[0])
	}
	var b strings.Builder
	fmt.Fprintf(&b, "names: %s\n", namesText(sts[0].Names))
	for _, st := range sts {
		fmt.Fprintf(&b, "\nservice %s\n", clean(st.Service))
		writeWorkers(&b, st.Workers)
		fmt.Fprintf(&b, "stats: %s\n", statsLine(st.Stats))
		writeSandbox(&b, st.Sandbox)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func parseStatus(data json.RawMessage) (ipc.Status, error) {
	var st ipc.Status
	if err := json.Unmarshal(data, &st); err != nil {
		return st, &exitError{code: exitReplyError, err: fmt.Errorf("status reply is not a status: %v", err)}
	}
	return st, nil
}

// writeStatus prints the registered names, the workers table and the stats line:
//
//	names: relay
//
//	PID    AGE   STATE  ATTEMPT  SENDER                   MESSAGE
//	18601  0.7s  busy   1        conn-1(pid=19853,uid=0)  1
//	18607  0.7s  idle   -        -                        -
//
//	stats: messages=1 workers_spawned=3 in_flight=1 …
//	sandbox: auto, enforced: pid-namespace landlock-fs landlock-net landlock-scope seccomp
func writeStatus(w io.Writer, st ipc.Status) error {
	var b strings.Builder
	fmt.Fprintf(&b, "names: %s\n\n", namesText(st.Names))
	writeWorkers(&b, st.Workers)
	fmt.Fprintf(&b, "\nstats: %s\n", statsLine(st.Stats))
	writeSandbox(&b, st.Sandbox)
	_, err := io.WriteString(w, b.String())
	return err
}

// writeSandbox prints the sandbox line, and a line for each mechanism the kernel lacks. Without
// a PID namespace, descendants are stopped by the process group and relayd's subreaper sweep,
// which the line says.
func writeSandbox(b *strings.Builder, sb *ipc.SandboxStatus) {
	if sb == nil {
		return
	}
	enforced := "none"
	if len(sb.Enforced) > 0 {
		enforced = clean(strings.Join(sb.Enforced, " "))
	}
	fmt.Fprintf(b, "sandbox: %s, enforced: %s\n", clean(sb.Mode), enforced)
	for _, m := range sb.Missing {
		fmt.Fprintf(b, "sandbox: not enforced: %s (%s)\n", clean(m.Mechanism), clean(m.Reason))
	}
	if sb.Mode != "off" && !slices.Contains(sb.Enforced, "pid-namespace") {
		b.WriteString("sandbox: descendants are stopped by process group and subreaper sweep\n")
	}
}

// writeTop prints one frame of --top: a title line, the stats, then the workers; with several
// services, their stats and workers one service after another.
func writeTop(w io.Writer, socket string, now time.Time, sts ...ipc.Status) error {
	var b strings.Builder
	st := sts[0]
	fmt.Fprintf(&b, "relayd %s  %s  up %s  names: %s\n", clean(socket), now.Format(time.TimeOnly),
		formatAge(st.Stats.UptimeSeconds), namesText(st.Names))
	if len(sts) == 1 {
		fmt.Fprintf(&b, "stats: %s\n\n", statsLine(st.Stats))
		writeWorkers(&b, st.Workers)
	} else {
		for _, st := range sts {
			fmt.Fprintf(&b, "\nservice %s  stats: %s\n", clean(st.Service), statsLine(st.Stats))
			writeWorkers(&b, st.Workers)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func namesText(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = clean(n)
	}
	return strings.Join(out, ", ")
}

// writeWorkers prints the workers table, oldest first (a stuck worker rises to the top), or a
// line saying there are none.
func writeWorkers(b *strings.Builder, workers []ipc.WorkerStatus) {
	if len(workers) == 0 {
		b.WriteString("no live workers\n")
		return
	}
	ws := slices.Clone(workers)
	slices.SortStableFunc(ws, func(x, y ipc.WorkerStatus) int {
		if c := cmp.Compare(y.AgeSeconds, x.AgeSeconds); c != 0 {
			return c
		}
		return cmp.Compare(x.PID, y.PID)
	})
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PID\tAGE\tSTATE\tATTEMPT\tSENDER\tMESSAGE")
	for _, w := range ws {
		attempt, sender, msg := "-", "-", "-"
		if w.Attempt > 0 {
			attempt = strconv.Itoa(w.Attempt)
		}
		if w.Sender != "" {
			sender = clean(w.Sender)
		}
		if len(w.MessageID) > 0 {
			msg = clean(dataText(w.MessageID))
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", w.PID, formatAge(w.AgeSeconds), clean(w.State), attempt, sender, msg)
	}
	tw.Flush()
}

// statsLine is the stats as one line of name=value pairs, in the order of the stats log line.
func statsLine(s ipc.Stats) string {
	exits := "none"
	if len(s.Exits) > 0 {
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(s.Exits)) {
			parts = append(parts, fmt.Sprintf("%s:%d", clean(k), s.Exits[k]))
		}
		exits = strings.Join(parts, ",")
	}
	return fmt.Sprintf("messages=%d workers_spawned=%d in_flight=%d queued=%d spares_ready=%d restarts=%d exits=%s uptime=%s goroutines=%d",
		s.Messages, s.WorkersSpawned, s.InFlight, s.Queued, s.SparesReady, s.Restarts, exits, formatAge(s.UptimeSeconds), s.Goroutines)
}

// formatAge prints seconds as a short age: 0.7s, 42.0s, 3m07s, 2h05m, 3d04h.
func formatAge(seconds float64) string {
	if seconds < 0 {
		seconds = 0
	}
	if seconds < 60 {
		return strconv.FormatFloat(seconds, 'f', 1, 64) + "s"
	}
	s := int64(seconds)
	switch {
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	}
	return fmt.Sprintf("%dd%02dh", s/86400, s%86400/3600)
}

// clean makes text from the relay safe to print on a terminal: a string with control characters
// (an escape sequence in a client's message id, say) prints quoted, with them escaped.
func clean(s string) string {
	if strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) < 0 {
		return s
	}
	return strconv.Quote(s)
}

// poller asks the relay for its status over one connection, dialing again when it breaks, as
// --top does once a second.
type poller struct {
	o options
	c conn
}

func (p *poller) close() {
	if p.c != nil {
		p.c.Close()
		p.c = nil
	}
}

// status returns the relay's status reply. Its errors carry echo's exit codes, as ask's do.
func (p *poller) status(ctx context.Context) (ipc.Answer, error) {
	if p.c != nil {
		select {
		case <-p.c.Done():
			p.close()
		default:
		}
	}
	if p.c == nil {
		c, err := dial(ctx, p.o)
		if err != nil {
			return ipc.Answer{}, err
		}
		p.c = c
	}
	a, err := askOn(ctx, p.c, p.o, topicStatus, nil, false)
	var ee *exitError
	if errors.As(err, &ee) && ee.code == exitUnavailable {
		p.close() // The connection is broken: dial again next time.
	}
	return a, err
}

// statuses asks for the status of --to, and, when --to was not given, of every other name the
// first answer lists, on one connection, in the order of the names. A name removed meanwhile
// (unknown_name) is left out. The answers are in the order asked, --to's first.
func (p *poller) statuses(ctx context.Context) ([]ipc.Answer, error) {
	if p.o.nats.url != "" {
		return p.natsStatuses(ctx)
	}
	first, err := p.status(ctx)
	if err != nil || first.Error != nil || !p.o.every {
		return []ipc.Answer{first}, err
	}
	var st ipc.Status
	if json.Unmarshal(first.Data, &st) != nil {
		return []ipc.Answer{first}, nil
	}
	answers := []ipc.Answer{first}
	for _, name := range st.Names {
		if name == p.o.to {
			continue
		}
		o := p.o
		o.to = name
		a, err := askOn(ctx, p.c, o, topicStatus, nil, false)
		if err != nil {
			return nil, err
		}
		if a.Error != nil && a.Error.Code == ipc.CodeUnknownName {
			continue
		}
		answers = append(answers, a)
	}
	return answers, nil
}

package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// report is everything one run measured.
type report struct {
	machine   machine
	command   string
	smoke     bool
	buildTime time.Duration
	elapsed   time.Duration
	notes     []string
	rounds    int
	spares    int

	variants []*variant

	workerHWM, workerRSS int64 // kB

	burstN, burstConns int
	burstDelay         time.Duration
	burstMaxWorkers    int
	bursts             []time.Duration

	soak *variant
	rss  []rssSample

	profile string // the top of relayd's CPU profile, with --profile
}

// find returns the variant of group with c clients, or nil.
func (r *report) find(group string, c int) *variant {
	for _, v := range r.variants {
		if v.group == group && v.nclients == c && v.msgs > 0 {
			return v
		}
	}
	return nil
}

func us(d time.Duration) string { return fmt.Sprintf("%d", d.Microseconds()) }

func ratio(a, b float64) string {
	if a <= 0 || b <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", a/b)
}

func mib(kb int64) string { return fmt.Sprintf("%.1f MiB", float64(kb)/1024) }

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func (r *report) markdown() string {
	var b strings.Builder
	m := r.machine
	fmt.Fprintf(&b, "## relay-bench results\n\n")
	fmt.Fprintf(&b, "- machine: %d CPUs, %s, Linux %s, %s; load average %s before, %s after\n", m.nproc, m.cpu, m.kernel, m.goVersion, m.loadBefore, m.loadAfter)
	fmt.Fprintf(&b, "- command: `%s`\n", strings.TrimSpace(r.command))
	fmt.Fprintf(&b, "- run time: %v (of which building %v)\n", r.elapsed.Round(time.Second), r.buildTime.Round(100*time.Millisecond))
	for _, n := range r.notes {
		fmt.Fprintf(&b, "- %s\n", n)
	}
	if r.smoke {
		fmt.Fprintf(&b, "- smoke run: too few messages for the numbers to mean anything\n")
	}

	if len(r.variants) > 0 {
		fmt.Fprintf(&b, "\n### Echo round trip, interleaved (%d rounds; worker --delay=0s; every process GOMAXPROCS=1)\n\n", r.rounds)
		fmt.Fprintf(&b, "Latency per message in µs; msg/s over all clients; CPU: all processes involved (bench, server, children) per message. Ratios against the floor and the worker started directly, at the same number of clients.\n\n")
		fmt.Fprintf(&b, "| variant | clients | n | p50 µs | p90 µs | p99 µs | max µs | msg/s | CPU ms/msg | p50 ÷ floor | p50 ÷ worker | msg/s ÷ floor | msg/s ÷ worker |\n")
		fmt.Fprintf(&b, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
		for _, v := range r.variants {
			if v.msgs == 0 {
				continue
			}
			c := v.nclients
			tput := v.throughput()
			tputS := fmt.Sprintf("%.0f", tput)
			if v.pace > 0 {
				tput, tputS = 0, "(paced)"
			}
			p50 := float64(v.quantile(50))
			var fl50, fltp, wk50, wktp float64
			if longLived(v.group) {
				// Compared with each other below, not with starting a process.
			} else if f := r.find(groupFloor, c); f != nil {
				fl50, fltp = float64(f.quantile(50)), f.throughput()
			}
			if w := r.find(groupWorker, c); w != nil && !longLived(v.group) {
				wk50, wktp = float64(w.quantile(50)), w.throughput()
			}
			fmt.Fprintf(&b, "| %s | %d | %d | %s | %s | %s | %s | %s | %.2f | %s | %s | %s | %s |\n",
				v.name, c, v.msgs, us(v.quantile(50)), us(v.quantile(90)), us(v.quantile(99)), us(v.quantile(100)), tputS,
				float64(v.cpu.Microseconds())/1000/float64(v.msgs),
				ratio(p50, fl50), ratio(p50, wk50), ratio(tput, fltp), ratio(tput, wktp))
		}

		fmt.Fprintf(&b, "\n### The server's own work per message\n\n")
		fmt.Fprintf(&b, "From /proc of the server process: its CPU time (utime + stime, threads that ended included) and its threads' context switches (voluntary + involuntary), and the CPU time of its children (workers: those it reaped, from its cutime and cstime, and those still alive, from their schedstat).\n\n")
		fmt.Fprintf(&b, "| variant | clients | own CPU µs/msg | context switches/msg | children's CPU µs/msg |\n|---|--:|--:|--:|--:|\n")
		rows := slices.Clone(r.variants)
		if r.soak != nil {
			rows = append(rows, r.soak)
		}
		for _, v := range rows {
			if v.server == nil || v.msgs == 0 {
				continue
			}
			n := float64(v.msgs)
			fmt.Fprintf(&b, "| %s | %d | %.0f | %.1f | %.0f |\n", v.name, v.nclients,
				float64(v.srv.cpu.Microseconds())/n, float64(v.srv.cs)/n, float64((v.srv.children+v.srv.live).Microseconds())/n)
		}
		b.WriteString(r.longLived())
		b.WriteString(r.transports())
	}

	if len(r.bursts) > 0 {
		fmt.Fprintf(&b, "\n### Burst\n\n")
		ds := make([]string, len(r.bursts))
		for i, d := range r.bursts {
			ds[i] = fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1000)
		}
		fmt.Fprintf(&b, "%d messages written at once over %d connections (%d in flight per connection at most; relayd's --max-per-client default is 64), worker --delay=%v: all answered after %s (median %.0f ms).",
			r.burstN, r.burstConns, (r.burstN+r.burstConns-1)/r.burstConns, r.burstDelay, strings.Join(ds, ", "), float64(median(r.bursts).Microseconds())/1000)
		if r.burstMaxWorkers > 0 {
			waves := (r.burstN + r.burstMaxWorkers - 1) / r.burstMaxWorkers
			fmt.Fprintf(&b, " With --max-workers=%d (the default) the delay alone bounds it below by %d waves × %v = %v.", r.burstMaxWorkers, waves, r.burstDelay, time.Duration(waves)*r.burstDelay)
		}
		fmt.Fprintf(&b, "\n")
	}

	if r.workerHWM > 0 || len(r.rss) > 0 {
		fmt.Fprintf(&b, "\n### Memory\n\n")
		if r.workerHWM > 0 {
			fmt.Fprintf(&b, "- worker peak RSS (VmHWM of a live worker started directly, read while it sleeps on a request; max of the runs): %s (VmRSS %s)\n", mib(r.workerHWM), mib(r.workerRSS))
		}
		if len(r.rss) > 0 {
			var parts []string
			for _, s := range r.rss {
				parts = append(parts, fmt.Sprintf("%d: %s", s.msgs, mib(s.rss)))
			}
			last := r.rss[len(r.rss)-1]
			fmt.Fprintf(&b, "- relayd VmRSS after N messages (N: RSS), 8 clients, worker --delay=0s: %s; VmHWM at the end %s\n", strings.Join(parts, ", "), mib(last.hwm))
			if r.soak != nil && r.soak.msgs > 0 {
				fmt.Fprintf(&b, "- soak throughput: %.0f msg/s with 8 clients over %d messages (not interleaved)\n", r.soak.throughput(), r.soak.msgs)
			}
		}
	}

	b.WriteString(r.targets())
	if r.profile != "" {
		fmt.Fprintf(&b, "\n### relayd's CPU profile (the \"relayd\" rows' relayd, whole run)\n\n```\n%s```\n", r.profile)
	}
	return b.String()
}

// longLived reports whether a group's workers serve many messages each.
func longLived(group string) bool {
	return group == groupWorkerReused || group == groupMaxRequests || group == groupPluginReused || group == groupRelaydPluginReused
}

// longLived compares the long-lived workers: a go-plugin client reused for every message with
// relayd --max-requests and with the stdio worker fed directly, at the same number of clients.
func (r *report) longLived() string {
	var b strings.Builder
	for _, c := range []int{1, 8} {
		pv := r.find(groupPluginReused, c)
		if pv == nil {
			continue
		}
		if b.Len() == 0 {
			fmt.Fprintf(&b, "\n### Long-lived workers: go-plugin reused against stdio workers\n\n")
			fmt.Fprintf(&b, "Each client keeps one worker for all its messages: a go-plugin client and plugin process (gRPC), relayd --max-requests=%d (a worker serves %d messages), or the stdio worker fed directly by the bench. Ratios are go-plugin's number over the other's: above 1 means go-plugin is slower (p50, CPU) or faster (msg/s).\n\n", maxRequests, maxRequests)
			fmt.Fprintf(&b, "| go-plugin reused against | clients | p50 µs | msg/s | CPU µs/msg | go-plugin p50 ÷ | go-plugin msg/s ÷ | go-plugin CPU ÷ |\n|---|--:|--:|--:|--:|--:|--:|--:|\n")
		}
		cpu := func(v *variant) float64 { return float64(v.cpu.Microseconds()) / float64(v.msgs) }
		fmt.Fprintf(&b, "| (go-plugin, one client reused) | %d | %s | %.0f | %.0f | | | |\n", c, us(pv.quantile(50)), pv.throughput(), cpu(pv))
		for _, g := range []string{groupMaxRequests, groupWorkerReused} {
			o := r.find(g, c)
			if o == nil {
				continue
			}
			fmt.Fprintf(&b, "| %s | %d | %s | %.0f | %.0f | %s | %s | %s |\n", o.name, c, us(o.quantile(50)), o.throughput(), cpu(o),
				ratio(float64(pv.quantile(50)), float64(o.quantile(50))), ratio(pv.throughput(), o.throughput()), ratio(cpu(pv), cpu(o)))
		}
	}
	return b.String()
}

// transports puts relayd's three transports side by side, per message and reused, with
// go-plugin's own client as the reference: p50 and msg/s at 1 and 8 clients.
func (r *report) transports() string {
	rows := []struct {
		label, group, name string
	}{
		{"stdio, per message", groupRelayd, "relayd"},
		{"grpc, per message", groupRelaydPlugin, "relayd --transport=grpc"},
		{"netrpc, per message", groupRelaydPlugin, "relayd --transport=netrpc"},
		{"go-plugin's own client, per message (no relayd)", groupPlugin, "go-plugin per message"},
		{"stdio, reused", groupMaxRequests, fmt.Sprintf("relayd --max-requests=%d", maxRequests)},
		{"grpc, reused", groupRelaydPluginReused, fmt.Sprintf("relayd --transport=grpc --max-requests=%d", maxRequests)},
		{"netrpc, reused", groupRelaydPluginReused, fmt.Sprintf("relayd --transport=netrpc --max-requests=%d", maxRequests)},
		{"go-plugin's own client, reused (no relayd)", groupPluginReused, "go-plugin, one client reused"},
	}
	find := func(group, name string, c int) *variant {
		for _, v := range r.variants {
			if v.group == group && v.name == name && v.nclients == c && v.msgs > 0 {
				return v
			}
		}
		return nil
	}
	var b strings.Builder
	for _, row := range rows {
		v1, v8 := find(row.group, row.name, 1), find(row.group, row.name, 8)
		if v1 == nil && v8 == nil {
			continue
		}
		if b.Len() == 0 {
			fmt.Fprintf(&b, "\n### Transports side by side\n\nrelayd's transports with the echo worker (`--delay=0s`; the go-plugin rows run worker-plugin, the worker's go-plugin mode), per message and reused (`--max-requests=%d`), and go-plugin's own client without relayd for reference.\n\n", maxRequests)
			b.WriteString("| transport | p50 µs, 1 client | msg/s, 1 client | p50 µs, 8 clients | msg/s, 8 clients |\n|---|--:|--:|--:|--:|\n")
		}
		cell := func(v *variant) (string, string) {
			if v == nil {
				return "–", "–"
			}
			return us(v.quantile(50)), fmt.Sprintf("%.0f", v.throughput())
		}
		p1, t1 := cell(v1)
		p8, t8 := cell(v8)
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", row.label, p1, t1, p8, t8)
	}
	return b.String()
}

// targets evaluates the project's speed and memory targets on this run.
func (r *report) targets() string {
	type row struct{ what, measured, goal, met string }
	var rows []row
	yes := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**not met**"
	}
	p50 := func(v *variant) float64 { return float64(v.quantile(50)) }
	relayd1, relayd8 := r.find(groupRelayd, 1), r.find(groupRelayd, 8)
	for _, v := range []*variant{relayd1, relayd8} {
		if v != nil && v.server != nil {
			x := float64(v.srv.cpu.Microseconds()) / float64(v.msgs)
			rows = append(rows, row{fmt.Sprintf("relayd's own CPU per message, a fresh worker each, %d client(s)", v.nclients), fmt.Sprintf("%.0f µs", x), "≤ 150 µs", yes(x <= 150)})
		}
	}
	if s := r.find(groupS6, 1); relayd1 != nil && s != nil {
		x := p50(relayd1) / p50(s)
		rows = append(rows, row{"p50 ÷ s6-ipcserver, 1 client", fmt.Sprintf("%.2f× (%s ÷ %s µs)", x, us(relayd1.quantile(50)), us(s.quantile(50))), "≤ 1.00×", yes(x <= 1.0)})
	}
	if s := r.find(groupS6, 8); relayd8 != nil && s != nil {
		x := relayd8.throughput() / s.throughput()
		rows = append(rows, row{"msg/s ÷ s6-ipcserver, 8 clients", fmt.Sprintf("%.2f× (%.0f ÷ %.0f)", x, relayd8.throughput(), s.throughput()), "≥ 0.95×", yes(x >= 0.95)})
	}
	if w, f := r.find(groupWorker, 1), r.find(groupFloor, 1); w != nil && f != nil {
		x := p50(w) / p50(f)
		rows = append(rows, row{"the worker's own start: worker direct p50 ÷ floor, 1 client", fmt.Sprintf("%.2f× (%s ÷ %s µs)", x, us(w.quantile(50)), us(f.quantile(50))), "≤ 1.20×", yes(x <= 1.20)})
	}
	if w := r.find(groupWorker, 1); relayd1 != nil && w != nil {
		x := p50(relayd1) / p50(w)
		rows = append(rows, row{"relayd's share: sequential p50 ÷ worker direct", fmt.Sprintf("%.2f× (%s ÷ %s µs)", x, us(relayd1.quantile(50)), us(w.quantile(50))), "≤ 1.10×", yes(x <= 1.10)})
	}
	if w := r.find(groupWorker, 8); relayd8 != nil && w != nil {
		x := relayd8.throughput() / w.throughput()
		rows = append(rows, row{"relayd's share: 8-client msg/s ÷ worker direct", fmt.Sprintf("%.2f× (%.0f ÷ %.0f)", x, relayd8.throughput(), w.throughput()), "≥ 0.90×", yes(x >= 0.90)})
	}
	if f := r.find(groupFloor, 1); relayd1 != nil && f != nil {
		x := p50(relayd1) / p50(f)
		rows = append(rows, row{"whole: sequential p50 ÷ floor", fmt.Sprintf("%.2f× (%s ÷ %s µs)", x, us(relayd1.quantile(50)), us(f.quantile(50))), "≤ 1.25×", yes(x <= 1.25)})
	}
	if f := r.find(groupFloor, 8); relayd8 != nil && f != nil {
		x := relayd8.throughput() / f.throughput()
		rows = append(rows, row{"whole: 8-client msg/s ÷ floor", fmt.Sprintf("%.2f× (%.0f ÷ %.0f)", x, relayd8.throughput(), f.throughput()), "≥ 0.70×", yes(x >= 0.70)})
	}
	for _, c := range []int{8, 1} {
		rv, pv := r.find(groupRelayd, c), r.find(groupPlugin, c)
		if rv != nil && pv != nil {
			x := rv.throughput() / pv.throughput()
			rows = append(rows, row{fmt.Sprintf("%d-client msg/s ÷ go-plugin per message", c), fmt.Sprintf("%.2f× (%.0f ÷ %.0f)", x, rv.throughput(), pv.throughput()), "≥ 4×", yes(x >= 4)})
		}
	}
	if v := r.find(groupSparesPaced, 1); v != nil {
		rows = append(rows, row{"with spares, paced: p50", us(v.quantile(50)) + " µs", "≤ 350 µs", yes(v.quantile(50) <= 350*time.Microsecond)})
	} else {
		rows = append(rows, row{"with spares, paced: p50", "not measured", "≤ 350 µs", "–"})
	}
	if len(r.bursts) > 0 {
		d := median(r.bursts)
		rows = append(rows, row{fmt.Sprintf("burst of %d answered (median)", r.burstN), fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1000), "≤ 1500 ms", yes(d <= 1500*time.Millisecond)})
	}
	if len(r.rss) >= 2 {
		first, last := r.rss[1], r.rss[len(r.rss)-1]
		maxRSS := int64(0)
		for _, s := range r.rss {
			maxRSS = max(maxRSS, s.rss)
		}
		rows = append(rows, row{"relayd RSS (max over the soak)", mib(maxRSS), "≤ 30 MiB", yes(maxRSS <= 30<<10)})
		flat := float64(last.rss) <= 1.10*float64(first.rss)
		rows = append(rows, row{fmt.Sprintf("relayd RSS flat: after %d ÷ after %d messages", last.msgs, first.msgs), fmt.Sprintf("%.2f× (%s ÷ %s)", float64(last.rss)/float64(first.rss), mib(last.rss), mib(first.rss)), "≤ 1.10×", yes(flat)})
	}
	if r.workerHWM > 0 {
		rows = append(rows, row{"worker peak RSS (VmHWM)", mib(r.workerHWM), "≤ 5 MiB", yes(r.workerHWM <= 5<<10)})
	}
	if len(rows) == 0 {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n### Targets\n\n")
	if r.smoke {
		fmt.Fprintf(&b, "A smoke run proves that each measurement works; its few messages say nothing about the targets.\n\n")
	}
	fmt.Fprintf(&b, "| target | measured | goal | |\n|---|--:|--:|---|\n")
	for _, x := range rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", x.what, x.measured, x.goal, x.met)
	}
	return b.String()
}

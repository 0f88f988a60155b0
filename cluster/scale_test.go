package cluster_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"relayd/ipc"
)

// TestScale measures what docs/PERFORMANCE.md reports for cluster mode: throughput of 1, 2 and
// 3 nodes (worker delay 100 ms, --max-workers 4 per node) and the cost of the NATS hop against
// the Unix socket. It takes about a minute, so it runs only with RELAYD_CLUSTER_BENCH=1
// (make bench-cluster); RELAYD_CLUSTER_BENCH_OUT names a file for the markdown table.
func TestScale(t *testing.T) {
	if os.Getenv("RELAYD_CLUSTER_BENCH") == "" {
		t.Skip("set RELAYD_CLUSTER_BENCH=1 (make bench-cluster) to measure cluster scaling")
	}
	const messages = 240
	var b strings.Builder
	fmt.Fprintf(&b, "| nodes | mode | messages | wall time | throughput | per node |\n|---|---|---|---|---|---|\n")
	rates := map[string][]float64{}
	for _, durable := range []bool{false, true} {
		mode := "core"
		if durable {
			mode = "durable"
		}
		for nodes := 1; nodes <= 3; nodes++ {
			rate, wall := scaleRun(t, nodes, durable, messages)
			rates[mode] = append(rates[mode], rate)
			fmt.Fprintf(&b, "| %d | %s | %d | %.2f s | %.1f msg/s | %.1f msg/s |\n", nodes, mode, messages, wall.Seconds(), rate, rate/float64(nodes))
		}
	}
	b.WriteString("\n")
	hop := hopCost(t)
	b.WriteString(hop)
	t.Logf("\n%s", b.String())
	if out := os.Getenv("RELAYD_CLUSTER_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Sleep-bound work scales with nodes even on two cores; a run that does not is a bug.
	for mode, r := range rates {
		if r[2] < 2*r[0] {
			t.Errorf("%s: 3 nodes %.1f msg/s, 1 node %.1f msg/s: want at least twice", mode, r[2], r[0])
		}
	}
}

// scaleRun starts nodes relayd processes and measures one burst of messages through them.
func scaleRun(t *testing.T, nodes int, durable bool, messages int) (float64, time.Duration) {
	var rate float64
	var wall time.Duration
	t.Run(fmt.Sprintf("%d-nodes-durable=%v", nodes, durable), func(t *testing.T) {
		nc := startCluster(t, 1)
		args := []string{"--max-workers", "4", "--worker-arg=--delay=100ms"}
		if durable {
			args = append(args, "--nats-durable")
		}
		for i := range nodes {
			startNode(t, fmt.Sprintf("node%d", i+1), nc.urls(), args...)
		}
		c := dial(t, nc.urls(), durable)
		waitNodes(t, c, "relay", nodes)
		// One message through each node first, so that no node's first fork is timed.
		burst(t, c, nodes*4, 60*time.Second, nil)
		start := time.Now()
		answers := burst(t, c, messages, 120*time.Second, nil)
		wall = time.Since(start)
		rate = float64(messages) / wall.Seconds()
		t.Logf("%d nodes durable=%v: %d messages in %v (%.1f msg/s), by node %v", nodes, durable, messages, wall, rate, byNode(answers))
	})
	return rate, wall
}

// hopCost measures one request at a time on one node (no worker delay): the stats topic, which
// the relay answers itself, isolates the transport; echo adds a worker's fork.
func hopCost(t *testing.T) string {
	var b strings.Builder
	t.Run("hop", func(t *testing.T) {
		nc := startCluster(t, 1)
		n := startNode(t, "node1", nc.urls(), "--nats-durable", "--worker-arg=--delay=0s")
		sock := n.socket()
		uc, err := ipc.Dial(t.Context(), sock)
		if err != nil {
			t.Fatal(err)
		}
		defer uc.Close()
		core := dial(t, nc.urls(), false)
		dur := dial(t, nc.urls(), true)
		waitNodes(t, core, "relay", 1)
		type client interface {
			Send(to, topic string, data any) (*ipc.Call, error)
			Wait(ctx context.Context, call *ipc.Call) (ipc.Answer, error)
		}
		once := func(c client, topic string) time.Duration {
			var data any
			if topic == "echo" {
				data = "hop"
			}
			start := time.Now()
			call, err := c.Send("relay", topic, data)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			a, err := c.Wait(ctx, call)
			cancel()
			if err != nil || a.Error != nil {
				t.Fatalf("%s: %v %v", topic, err, a.Error)
			}
			return time.Since(start)
		}
		rows := []struct {
			name string
			c    client
		}{{"Unix socket", uc}, {"NATS core request-reply", core}, {"NATS durable (JetStream)", dur}}
		// Interleaved rounds, so that the machine's noise hits every transport alike.
		stats := make([][]time.Duration, len(rows))
		echo := make([][]time.Duration, len(rows))
		for round := range 30 {
			for k := range rows {
				i := (k + round) % len(rows)
				for range 10 {
					stats[i] = append(stats[i], once(rows[i].c, "stats"))
				}
				for range 3 {
					echo[i] = append(echo[i], once(rows[i].c, "echo"))
				}
			}
		}
		median := func(d []time.Duration) time.Duration {
			slices.Sort(d)
			return d[len(d)/2].Round(time.Microsecond)
		}
		fmt.Fprintf(&b, "| one request at a time, one node | median round trip, stats (no worker) | median round trip, echo (a worker per message) |\n|---|---|---|\n")
		for i, row := range rows {
			fmt.Fprintf(&b, "| %s | %v | %v |\n", row.name, median(stats[i]), median(echo[i]))
		}
	})
	return b.String()
}

// socket is the node's Unix socket.
func (n *node) socket() string {
	for i, a := range n.cmd.Args {
		if a == "--socket" {
			return n.cmd.Args[i+1]
		}
	}
	return ""
}

package cluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relayd/cluster"
	"relayd/ipc"
)

// burst sends n echo messages "m-1"… and waits for every answer within limit. It returns the
// answers by message number, and fails the test for a message answered wrongly or not at all.
func burst(t *testing.T, c *cluster.Client, n int, limit time.Duration, during func(answered int)) []ipc.Answer {
	t.Helper()
	calls := make([]*ipc.Call, n)
	for i := range n {
		call, err := c.Send("relay", "echo", fmt.Sprintf("m-%d", i+1))
		if err != nil {
			t.Fatalf("sending message %d: %v", i+1, err)
		}
		calls[i] = call
	}
	ctx, cancel := context.WithTimeout(t.Context(), limit)
	defer cancel()
	answers := make([]ipc.Answer, n)
	for i, call := range calls {
		a, err := c.Wait(ctx, call)
		if err != nil {
			t.Fatalf("message %d: no answer within %v (%v)", i+1, limit, err)
		}
		answers[i] = a
		if during != nil {
			during(i + 1)
		}
	}
	for i, a := range answers {
		if a.Error != nil {
			t.Errorf("message %d: error %v, want a reply", i+1, a.Error)
			continue
		}
		if got, want := string(a.Data), fmt.Sprintf(`"M-%d"`, i+1); got != want {
			t.Errorf("message %d: data %s, want %s", i+1, got, want)
		}
		if a.Worker == nil || a.Worker.Node == "" {
			t.Errorf("message %d: answer %s names no node", i+1, a.Raw)
		}
	}
	return answers
}

func byNode(answers []ipc.Answer) map[string]int {
	m := map[string]int{}
	for _, a := range answers {
		if a.Worker != nil {
			m[a.Worker.Node]++
		}
	}
	return m
}

// Three nodes answer one name; a burst is spread over all of them.
func TestCoreBurstSpreadsOverNodes(t *testing.T) {
	nc := startCluster(t, 3)
	for i, s := range nc.servers {
		startNode(t, fmt.Sprintf("node%d", i+1), s.ClientURL(), "--worker-arg=--delay=20ms", "--max-workers", "4")
	}
	c := dial(t, nc.urls(), false)
	waitNodes(t, c, "relay", 3)

	answers := burst(t, c, 90, 60*time.Second, nil)
	counts := byNode(answers)
	t.Logf("answers by node: %v", counts)
	for i := range 3 {
		if name := fmt.Sprintf("node%d", i+1); counts[name] == 0 {
			t.Errorf("%s answered none of 90 messages: %v", name, counts)
		}
	}

	// Discovery: every node is listed, with relayd's own counts in its endpoint data.
	st, err := c.Gather(t.Context(), "relay", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var total uint64
	for _, s := range st {
		if s.Micro.QueueGroup != cluster.QueueGroup || s.Micro.Subject != "relayd.relay.*" {
			t.Errorf("node %s: endpoint %+v, want subject relayd.relay.* in queue group %s", s.Node, s.Micro, cluster.QueueGroup)
		}
		if s.Data.Status == nil || s.Data.Node != s.Node {
			t.Errorf("node %s: endpoint data %+v, want its node and status", s.Node, s.Data)
		}
		total += s.Data.Answered
	}
	if len(st) != 3 || total < 90 {
		t.Errorf("stats of %d nodes counting %d answers, want 3 nodes and at least 90", len(st), total)
	}
}

// The wire contract seen by a plain NATS client: payload the JSON data, reply the socket's
// frame without id, and micro's error headers with the contract's code.
func TestCoreWireFormat(t *testing.T) {
	nc := startCluster(t, 1)
	metricsSock := filepath.Join(shortDir(t), "m")
	n := startNode(t, "solo", nc.urls(), "--worker-arg=--delay=0s", "--metrics-addr", "unix:"+metricsSock)
	conn := connectTest(t, nc.urls())

	m, err := conn.Request("relayd.relay.echo", []byte(`"hello"`), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var r ipc.Reply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		t.Fatalf("reply %q: %v", m.Data, err)
	}
	if r.Topic != "echo_response" || string(r.Data) != `"HELLO"` || r.ID != nil || r.Worker == nil || r.Worker.Node != "solo" || r.Worker.PID == 0 {
		t.Errorf("reply %s, want {\"topic\":\"echo_response\",\"data\":\"HELLO\",\"worker\":{…,\"node\":\"solo\"}} without id", m.Data)
	}
	if got := m.Header.Get(cluster.HeaderNode); got != "solo" {
		t.Errorf("%s header %q, want solo", cluster.HeaderNode, got)
	}

	for _, tc := range []struct{ subject, payload, code string }{
		{"relayd.relay.echo", `42`, ipc.CodeBadRequest},
		{"relayd.relay.echo", `not json`, ipc.CodeBadRequest},
		{"relayd.relay.nosuch", `"x"`, ipc.CodeUnknownTopic},
	} {
		m, err := conn.Request(tc.subject, []byte(tc.payload), 10*time.Second)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.subject, tc.payload, err)
		}
		if got := m.Header.Get(cluster.HeaderErrorCode); got != tc.code {
			t.Errorf("%s %s: %s %q, want %q", tc.subject, tc.payload, cluster.HeaderErrorCode, got, tc.code)
		}
		if m.Header.Get(cluster.HeaderError) == "" {
			t.Errorf("%s %s: no %s header", tc.subject, tc.payload, cluster.HeaderError)
		}
		if err := json.Unmarshal(m.Data, &r); err != nil || r.Topic != "error" || r.Error == nil || r.Error.Code != tc.code {
			t.Errorf("%s %s: body %s, want the error frame with code %s", tc.subject, tc.payload, m.Data, tc.code)
		}
	}

	// stats through NATS has the relay's counters.
	m, err = conn.Request("relayd.relay.stats", nil, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(m.Data, &r); err != nil || r.Topic != "stats_response" || !strings.Contains(string(r.Data), `"messages"`) {
		t.Errorf("stats reply %s, want stats_response with the counters", m.Data)
	}

	// Discovery: $SRV.PING lists the node.
	m, err = conn.Request("$SRV.PING.relay", nil, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(m.Data), `"node":"solo"`) {
		t.Errorf("$SRV.PING.relay answered %s, want the node in its metadata", m.Data)
	}
	m, err = conn.Request("$SRV.INFO.relay", nil, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(m.Data), `"subject":"relayd.relay.*"`) || !strings.Contains(string(m.Data), `"queue_group":"relayd"`) {
		t.Errorf("$SRV.INFO.relay answered %s, want the endpoint relayd.relay.* in queue group relayd", m.Data)
	}

	// Answers on NATS are in the metrics, as the socket's are.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", metricsSock)
	}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://relayd/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "\n"+`relayd_messages_total{outcome="bad_request",service="relay",topic="echo"} 2`+"\n") {
		t.Errorf("metrics do not count the 2 bad_request answers on NATS:\n%s", grepLines(string(body), "relayd_messages_total"))
	}

	// The socket works beside NATS, into the same relay.
	uc, err := ipc.Dial(t.Context(), n.socket())
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	call, err := uc.Send("relay", "echo", "socket")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	a, err := uc.Wait(ctx, call)
	if err != nil || string(a.Data) != `"SOCKET"` || a.Worker == nil || a.Worker.Node != "" {
		t.Errorf("through the socket: %s (%v), want SOCKET without a node", a.Raw, err)
	}
}

// No node serving a name is unavailable at once, not after the client's timeout.
func TestNoRespondersUnavailableAtOnce(t *testing.T) {
	nc := startCluster(t, 1)
	c := dial(t, nc.urls(), false)
	start := time.Now()
	call, err := c.Send("relay", "echo", "hello")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	a, err := c.Wait(ctx, call)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	if a.Error == nil || a.Error.Code != ipc.CodeUnavailable {
		t.Fatalf("answer %s, want unavailable", a.Raw)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("unavailable after %v, want it at once", took)
	}

	// The same for a durable client when no node created the stream.
	d := dial(t, nc.urls(), true)
	call, err = d.Send("relay", "echo", "hello")
	if err != nil {
		t.Fatal(err)
	}
	if a, err = d.Wait(ctx, call); err != nil || a.Error == nil || a.Error.Code != ipc.CodeUnavailable {
		t.Fatalf("durable answer %s (%v), want unavailable", a.Raw, err)
	}
}

// In durable mode a node killed with SIGKILL in the middle of a burst loses nothing: its
// unacked requests go to another node, and the client shows each answer once.
func TestDurableSIGKILLMidBurst(t *testing.T) {
	nc := startCluster(t, 3)
	var nodes []*node
	for i, s := range nc.servers {
		nodes = append(nodes, startNode(t, fmt.Sprintf("node%d", i+1), s.ClientURL(),
			"--nats-durable", "--nats-ack-wait", "1s", "--max-workers", "4", "--worker-arg=--delay=100ms"))
	}
	c := dial(t, nc.urls(), true)
	waitNodes(t, c, "relay", 3)

	const n = 300
	killed := false
	answers := burst(t, c, n, 90*time.Second, func(answered int) {
		if answered == 30 && !killed {
			killed = true
			nodes[1].kill()
		}
	})
	counts := byNode(answers)
	t.Logf("%d messages, node2 killed after 30 answers; answers by node: %v; duplicate answers dropped by the client: %d", n, counts, c.Duplicates())
	if !killed {
		t.Fatal("node2 was never killed")
	}
	if counts["node2"] == 0 {
		t.Errorf("node2 answered nothing before it was killed: %v", counts)
	}
	// The kill must have left requests unacked for the others, or this test proved nothing.
	redelivered := strings.Count(nodes[0].log.String(), "taking a redelivered durable request") +
		strings.Count(nodes[2].log.String(), "taking a redelivered durable request")
	js, err := jetstream.New(connectTest(t, nc.urls()))
	if err != nil {
		t.Fatal(err)
	}
	cons, err := js.Consumer(t.Context(), cluster.Stream, cluster.Consumer)
	if err != nil {
		t.Fatal(err)
	}
	ci, err := cons.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("redelivered after the kill: %d; answered %d of %d (lost 0); shown twice 0 (every call got one answer)", redelivered, len(answers), n)
	if redelivered == 0 {
		t.Errorf("no request was redelivered after node2's SIGKILL: it held none")
	}
	if ci.NumAckPending != 0 || ci.NumPending != 0 {
		t.Errorf("after the burst: %d requests unacked, %d undelivered; want none", ci.NumAckPending, ci.NumPending)
	}
}

// SIGTERM drains a node under load: it stops taking requests, answers what it holds, and
// exits 0; nothing is lost.
func TestDrainUnderLoad(t *testing.T) {
	nc := startCluster(t, 1)
	var nodes []*node
	for i := range 2 {
		nodes = append(nodes, startNode(t, fmt.Sprintf("node%d", i+1), nc.urls(),
			"--nats-durable", "--nats-ack-wait", "1s", "--max-workers", "4", "--worker-arg=--delay=100ms", "--shutdown-timeout", "5s"))
	}
	c := dial(t, nc.urls(), true)
	waitNodes(t, c, "relay", 2)

	stopped := make(chan struct{})
	burst(t, c, 80, 60*time.Second, func(answered int) {
		if answered == 10 {
			go func() { defer close(stopped); nodes[0].stop(t) }()
		}
	})
	<-stopped
	if nodes[0].err != nil {
		t.Fatalf("node1 exit: %v", nodes[0].err)
	}
	log := nodes[0].log.String()
	if !strings.Contains(log, "relay stopped") {
		t.Errorf("node1 log has no \"relay stopped\":\n%s", log)
	}
	if c.Duplicates() != 0 {
		t.Errorf("%d duplicate answers after a clean drain, want 0", c.Duplicates())
	}
}

// A draining node that cannot finish in --shutdown-timeout hands its durable requests back,
// and another node answers them: nothing fails, nothing is lost.
func TestDrainHandsBack(t *testing.T) {
	nc := startCluster(t, 1)
	var nodes []*node
	for i := range 2 {
		nodes = append(nodes, startNode(t, fmt.Sprintf("node%d", i+1), nc.urls(),
			"--nats-durable", "--nats-ack-wait", "1s", "--max-workers", "2", "--worker-arg=--delay=800ms",
			"--shutdown-timeout", "200ms", "--kill-grace", "200ms"))
	}
	c := dial(t, nc.urls(), true)
	waitNodes(t, c, "relay", 2)
	calls := make([]*ipc.Call, 6)
	for i := range calls {
		call, err := c.Send("relay", "echo", fmt.Sprintf("m-%d", i+1))
		if err != nil {
			t.Fatal(err)
		}
		calls[i] = call
	}
	waitFor(t, 20*time.Second, "node1 holding requests", func() error {
		st, err := c.Gather(t.Context(), "relay", 2*time.Second)
		if err != nil {
			return err
		}
		for _, s := range st {
			if s.Node == "node1" && s.Data.InFlight > 0 {
				return nil
			}
		}
		return fmt.Errorf("node1 holds nothing yet: %+v", st)
	})
	nodes[0].stop(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	for i, call := range calls {
		a, err := c.Wait(ctx, call)
		if err != nil {
			t.Fatalf("message %d: %v", i+1, err)
		}
		if a.Error != nil || string(a.Data) != fmt.Sprintf(`"M-%d"`, i+1) {
			t.Errorf("message %d: answer %s, want M-%d", i+1, a.Raw, i+1)
		}
	}
	if !strings.Contains(nodes[0].log.String(), "handing a durable request back") {
		t.Errorf("node1 handed nothing back; its log:\n%s", nodes[0].log)
	}
}

// A NATS server restart: the node reconnects and serves again.
func TestServerRestart(t *testing.T) {
	port := freePort(t)
	opts := serverOptions(t, "s1", false)
	opts.Port = port
	s := runServer(t, opts)
	url := s.ClientURL()
	n := startNode(t, "node1", url, "--worker-arg=--delay=0s")
	conn := connectTest(t, url)
	if _, err := conn.Request("relayd.relay.echo", []byte(`"one"`), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	s.Shutdown()
	s.WaitForShutdown()
	opts = serverOptions(t, "s1", false)
	opts.Port = port
	s = runServer(t, opts)
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	waitFor(t, 20*time.Second, "an answer after the server restart", func() error {
		m, err := conn.Request("relayd.relay.echo", []byte(`"two"`), 2*time.Second)
		if err != nil {
			return err
		}
		if !strings.Contains(string(m.Data), `"TWO"`) {
			return fmt.Errorf("answer %s", m.Data)
		}
		return nil
	})
	if !strings.Contains(n.log.String(), "nats: reconnected") {
		t.Errorf("node log does not say it reconnected:\n%s", n.log)
	}
}

// A node that cannot keep up with core requests reports a slow consumer and serves on.
func TestSlowConsumerNotFatal(t *testing.T) {
	nc := startCluster(t, 1)
	n := startNode(t, "node1", nc.urls(), "--worker-arg=--delay=0s", "--nats-pending-limit", "1")
	conn := connectTest(t, nc.urls())
	inbox := nats.NewInbox()
	for range 2000 {
		if err := conn.PublishRequest("relayd.relay.echo", inbox, []byte(`"x"`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "a slow consumer in the node's log", func() error {
		if !strings.Contains(n.log.String(), "slow consumer") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	waitFor(t, 20*time.Second, "an answer after the slow consumer", func() error {
		_, err := conn.Request("relayd.relay.echo", []byte(`"after"`), 2*time.Second)
		return err
	})
}

// runEcho runs the echo client with args and stdin, and returns its stdout, stderr and exit code.
func runEcho(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "echo"), args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running echo %v: %v", args, err)
	}
	return out.String(), errOut.String(), code
}

// relay-echo speaks NATS in one-shot, pipe, --stats and --status mode, core and durable.
func TestEchoThroughNATS(t *testing.T) {
	nc := startCluster(t, 1)
	url := nc.urls()
	for i := range 2 {
		startNode(t, fmt.Sprintf("node%d", i+1), url, "--nats-durable", "--worker-arg=--delay=0s")
	}
	waitNodes(t, dial(t, url, false), "relay", 2)

	for _, tc := range []struct {
		name, stdin string
		args        []string
		want        string
	}{
		{"one-shot", "", []string{"--nats", url, "hello", "world"}, "HELLO WORLD\n"},
		{"one-shot durable", "", []string{"--nats", url, "--nats-durable", "hello"}, "HELLO\n"},
		{"pipe", "a\nb\nc\n", []string{"--nats", url}, "A\nB\nC\n"},
		{"pipe durable", "x\ny\n", []string{"--nats", url, "--nats-durable"}, "X\nY\n"},
	} {
		out, errOut, code := runEcho(t, tc.stdin, tc.args...)
		if out != tc.want || code != 0 {
			t.Errorf("%s: stdout %q, exit %d (stderr %q), want %q and 0", tc.name, out, code, errOut, tc.want)
		}
	}

	out, errOut, code := runEcho(t, "", "--nats", url, "--stats")
	if code != 0 || !strings.Contains(out, "node node1 ") || !strings.Contains(out, "node node2 ") || !strings.Contains(out, "\nmessages ") {
		t.Errorf("--stats: exit %d, stdout:\n%s\nstderr: %s\nwant a block of counters for node1 and node2", code, out, errOut)
	}
	out, _, code = runEcho(t, "", "--nats", url, "--status", "--json")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); code != 0 || len(lines) != 2 || !strings.Contains(out, `"names":["relay"]`) {
		t.Errorf("--status --json: exit %d, stdout:\n%s\nwant one status line per node", code, out)
	}

	out, errOut, code = runEcho(t, "", "--nats", url, "--top", "--count", "1")
	if code != 0 || !strings.Contains(out, "service relay@node1") || !strings.Contains(out, "service relay@node2") {
		t.Errorf("--top --count 1: exit %d, stdout:\n%s\nstderr: %s\nwant a block per node", code, out, errOut)
	}

	start := time.Now()
	out, errOut, code = runEcho(t, "", "--nats", url, "--to", "nosuch", "hello")
	if code != 1 || !strings.Contains(errOut, "unavailable") || out != "" || time.Since(start) > 10*time.Second {
		t.Errorf("a name no node serves: exit %d after %v, stderr %q, want 1 and unavailable at once", code, time.Since(start), errOut)
	}
	_, errOut, code = runEcho(t, "", "--nats", fmt.Sprintf("nats://127.0.0.1:%d", freePort(t)), "hello")
	if code != 3 || !strings.Contains(errOut, "relay not available on NATS") {
		t.Errorf("no NATS server: exit %d, stderr %q, want 3 and relay not available", code, errOut)
	}
}

// A service added to the config file and reloaded with SIGHUP is served on NATS too; a removed
// one leaves discovery.
func TestReloadServesNewNames(t *testing.T) {
	nc := startCluster(t, 1)
	cfg := filepath.Join(t.TempDir(), "relayd.hcl")
	if err := os.WriteFile(cfg, []byte("log-level = \"debug\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, "node1", nc.urls(), "--config", cfg, "--worker-arg=--delay=0s")
	c := dial(t, nc.urls(), false)
	waitNodes(t, c, "relay", 1)
	block := fmt.Sprintf("log-level = \"debug\"\nservice \"thumbs\" {\n  worker = %q\n  args = [\"--delay=0s\"]\n}\n", filepath.Join(binDir, "worker"))
	if err := os.WriteFile(cfg, []byte(block), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := n.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitNodes(t, c, "thumbs", 1)
	conn := connectTest(t, nc.urls())
	m, err := conn.Request("relayd.thumbs.echo", []byte(`"thumb"`), 10*time.Second)
	if err != nil || !strings.Contains(string(m.Data), `"THUMB"`) {
		t.Fatalf("relayd.thumbs.echo after the reload: %q, %v; want THUMB", m.Data, err)
	}
	if err := os.WriteFile(cfg, []byte("log-level = \"debug\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := n.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitNodes(t, c, "thumbs", 0)
}

// grepLines returns the lines of s that contain substr.
func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

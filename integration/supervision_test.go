package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"relayd/ipc"
)

// descendants returns the pids of every live or zombie process below pid.
func descendants(pid int) []int {
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", p))
		for _, t := range tasks {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", p, t.Name()))
			for _, f := range strings.Fields(string(b)) {
				c, _ := strconv.Atoi(f)
				out = append(out, c)
				queue = append(queue, c)
			}
		}
	}
	return out
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func fdCount(pid int) int {
	entries, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(entries)
}

// eventually polls cond every 20ms until it holds or d passes.
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

func stats(t *testing.T, socket string) map[string]any {
	t.Helper()
	a := dialAndRequest(t, socket, "stats", nil)
	var s map[string]any
	if err := json.Unmarshal(a.Data, &s); err != nil {
		t.Fatalf("stats data %s: %v", a.Data, err)
	}
	return s
}

// TestChaos sends every fault directive, mixed with ordinary messages, from several clients at
// once. Every request must be answered exactly once with the code its directive calls for, and
// afterwards relayd must have no descendants, and its descriptors and goroutines must be back
// where they started.
func TestChaos(t *testing.T) {
	dir := shortTempDir(t)
	sock := filepath.Join(dir, "s")
	// Directives that never answer go to a service of their own with a short deadline; the
	// rest have a deadline no busy machine reaches (spinning workers eat both CPUs for a
	// second each), so that a timeout there is a real failure, not a slow machine.
	conf := filepath.Join(dir, "relayd.hcl")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`
service "stall" {
  worker                = %q
  args                  = ["--delay=5ms"]
  allow-fault-injection = true
  message-timeout       = "1s"
  kill-grace            = "200ms"
  max-workers           = 32
}
`, filepath.Join(binDir, "worker"))), 0o600); err != nil {
		t.Fatal(err)
	}
	r := startRelayd(t, sock, "--config", conf, "--allow-fault-injection", "--worker-arg=--delay=5ms",
		"--message-timeout=20s", "--kill-grace=200ms", "--max-workers=32", "--max-restarts=2",
		"--worker-rlimit-data=256MiB", "--stats-interval=0", "--log-level=warn")
	pid := r.cmd.Process.Pid
	// Each service sets up its workers' sandbox at its first worker: count from there.
	for _, name := range []string{"relay", "stall"} {
		if a := askTo(t, sock, name, "warm"); a.Error != nil {
			t.Fatalf("%s: %s", name, a.Raw)
		}
	}
	baseFDs := fdCount(pid)
	baseGoroutines := stats(t, sock)["goroutines"].(float64)

	// Each directive with the codes it may be answered with ("" is a reply).
	directives := []struct {
		data  string
		codes []string
		to    string // the service, "relay" if empty
	}{
		{data: "hello", codes: []string{""}},
		{data: "straße", codes: []string{""}},
		{data: "!crash", codes: []string{ipc.CodeWorkerFailed}},
		{data: "!exit 3", codes: []string{ipc.CodeWorkerFailed}},
		{data: "!panic", codes: []string{ipc.CodeWorkerFailed}},
		{data: "!segv", codes: []string{ipc.CodeWorkerFailed}},
		{data: "!garbage", codes: []string{ipc.CodeWorkerFailed}},
		{data: "!noreply", codes: []string{ipc.CodeWorkerFailed}},
		{data: "!hang", codes: []string{ipc.CodeTimeout}, to: "stall"},
		{data: "!spin", codes: []string{ipc.CodeTimeout}, to: "stall"},
		{data: "!oom", codes: []string{ipc.CodeWorkerFailed, ipc.CodeTimeout}},
		{data: "!sleep 20ms", codes: []string{""}},
		{data: "!fork", codes: []string{""}},
		{data: "!stderr 5", codes: []string{""}},
		{data: "!env", codes: []string{""}},
		{data: "!fds", codes: []string{""}},
		{data: "!rlimits", codes: []string{""}},
		// A crash storm may pause retries; then a flaky message fails instead.
		{data: "!flaky 1", codes: []string{"", ipc.CodeWorkerFailed}},
	}
	const clients, rounds = 4, 3
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	counts := map[string]int{}
	for c := range clients {
		wg.Go(func() {
			conn, err := ipc.Dial(t.Context(), sock)
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			type sent struct {
				call *ipc.Call
				i    int
			}
			var calls []sent
			for round := range rounds {
				for k := range directives {
					i := (k + c + round) % len(directives)
					to := directives[i].to
					if to == "" {
						to = "relay"
					}
					call, err := conn.Send(to, "echo", directives[i].data)
					if err != nil {
						t.Error(err)
						return
					}
					calls = append(calls, sent{call, i})
				}
			}
			conn.CloseWrite()
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			for _, s := range calls {
				a, err := conn.Wait(ctx, s.call)
				if err != nil {
					t.Errorf("client %d, %q: %v", c, directives[s.i].data, err)
					continue
				}
				got := ""
				if a.Error != nil {
					got = a.Error.Code
				}
				if !slices.Contains(directives[s.i].codes, got) {
					t.Errorf("client %d, %q: answered %s, want code in %q", c, directives[s.i].data, a.Raw, directives[s.i].codes)
				}
				mu.Lock()
				counts[got]++
				mu.Unlock()
			}
			// Every request has had its answer; nothing more may come before relayd closes.
			select {
			case <-conn.Done():
			case <-time.After(30 * time.Second):
				t.Errorf("client %d: relayd did not close the connection within 30s of its last answer", c)
				return
			}
			if err := conn.Err(); !errors.Is(err, ipc.ErrClosed) {
				t.Errorf("client %d: connection ended with %v", c, err)
			}
		})
	}
	wg.Wait()
	total := clients * rounds * len(directives)
	t.Logf("chaos: %d messages from %d clients (%d directives) answered in %v: %v", total, clients, len(directives), time.Since(start).Round(time.Millisecond), counts)

	if !eventually(3*time.Second, func() bool { return len(descendants(pid)) == 0 }) {
		t.Errorf("relayd still has descendants: %v", descendants(pid))
	}
	if !eventually(3*time.Second, func() bool { return fdCount(pid) <= baseFDs }) {
		out, _ := exec.Command("ls", "-l", fmt.Sprintf("/proc/%d/fd", pid)).CombinedOutput()
		t.Errorf("relayd has %d descriptors, %d before the chaos:\n%s", fdCount(pid), baseFDs, out)
	}
	var g float64
	if !eventually(3*time.Second, func() bool { g = stats(t, sock)["goroutines"].(float64); return g <= baseGoroutines }) {
		t.Errorf("relayd has %v goroutines, %v before the chaos", g, baseGoroutines)
	}
}

// TestSIGKILLLeavesNoWorkers kills relayd with 20 workers running: Pdeathsig takes them down
// with it.
func TestSIGKILLLeavesNoWorkers(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s")
	r := startRelayd(t, sock, "--allow-fault-injection", "--worker-arg=--delay=0s", "--max-workers=32", "--message-timeout=1m")
	c, err := ipc.Dial(t.Context(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range 20 {
		if _, err := c.Send("relay", "echo", "!sleep 60s"); err != nil {
			t.Fatal(err)
		}
	}
	pid := r.cmd.Process.Pid
	var workers []int
	if !eventually(30*time.Second, func() bool { workers = descendants(pid); return len(workers) >= 20 }) {
		t.Fatalf("relayd has %d descendants after 30s, want 20 workers", len(workers))
	}
	r.once.Do(func() {}) // It will not exit 0: skip the SIGTERM check at cleanup.
	if err := r.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-r.exited
	killed := time.Now()
	// The kernel ends them at relayd's death; 5s is for a loaded machine.
	if !eventually(5*time.Second, func() bool { return !slices.ContainsFunc(workers, alive) }) {
		t.Errorf("workers alive 5s after relayd was killed: %v", slices.DeleteFunc(workers, func(p int) bool { return !alive(p) }))
	}
	t.Logf("all %d workers gone %v after SIGKILL of relayd", len(workers), time.Since(killed).Round(time.Millisecond))
	os.Remove(sock)
}

// TestSIGTERMAnswersInFlight stops relayd while messages run and wait: running ones get their
// replies, queued ones shutting_down, relayd exits 0 and removes its socket.
func TestSIGTERMAnswersInFlight(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s")
	r := startRelayd(t, sock, "--worker-arg=--delay=500ms", "--max-workers=4")
	c, err := ipc.Dial(t.Context(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var calls []*ipc.Call
	for i := range 10 {
		call, err := c.Send("relay", "echo", fmt.Sprintf("m%d", i))
		if err != nil {
			t.Fatal(err)
		}
		calls = append(calls, call)
	}
	if !eventually(20*time.Second, func() bool { return len(descendants(r.cmd.Process.Pid)) >= 4 }) {
		t.Fatal("workers did not start")
	}
	r.stop(t) // SIGTERM; requires exit 0 and the socket removed.
	replies, down := 0, 0
	for i, call := range calls {
		a, err := c.Wait(t.Context(), call)
		switch {
		case err != nil:
			t.Errorf("m%d: %v", i, err)
		case a.Error != nil && a.Error.Code == ipc.CodeShuttingDown:
			down++
		case a.Error == nil && string(a.Data) == strconv.Quote(fmt.Sprintf("M%d", i)):
			replies++
		default:
			t.Errorf("m%d: answered %s", i, a.Raw)
		}
	}
	if replies != 4 || down != 6 {
		t.Errorf("%d replies and %d shutting_down, want 4 (running) and 6 (queued)", replies, down)
	}
}

// TestOneClientCannotStarveAnother has one client pipeline many slow messages while another
// sends one: with --max-per-client the second is served alongside the first's, not after them.
func TestOneClientCannotStarveAnother(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s")
	startRelayd(t, sock, "--worker-arg=--delay=300ms", "--max-workers=4", "--max-per-client=2", "--queue=100")
	greedy, err := ipc.Dial(t.Context(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer greedy.Close()
	const n = 20
	var mu sync.Mutex
	var calls []*ipc.Call
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		// relayd stops reading this connection at two in flight, so sends block in turn.
		for range n {
			call, err := greedy.Send("relay", "echo", "greedy")
			if err != nil {
				return
			}
			mu.Lock()
			calls = append(calls, call)
			mu.Unlock()
		}
	}()
	if !eventually(20*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(calls) >= 2 }) {
		t.Fatal("greedy client could not send")
	}
	if a := ask(t, sock, "modest"); a.Error != nil {
		t.Fatalf("modest client: %s", a.Raw)
	}
	// Count the greedy answers that had arrived when the modest one did.
	done, cancel := context.WithCancel(t.Context())
	cancel()
	mu.Lock()
	answered := 0
	for _, c := range calls {
		if _, err := greedy.Wait(done, c); err == nil {
			answered++
		}
	}
	mu.Unlock()
	if answered >= n/2 {
		t.Errorf("%d of the greedy client's %d messages were answered before the modest client's one", answered, n)
	}
	greedy.Close()
	<-sent
}

// TestClientGoneMidFlight: a client that sends slow messages and goes away loses its answers and
// nothing else. The workers finish and are reaped, and relayd's descriptors and goroutines
// come back to where they were.
func TestClientGoneMidFlight(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s")
	r := startRelayd(t, sock, "--worker-arg=--delay=300ms", "--stats-interval=0")
	pid := r.cmd.Process.Pid
	baseFDs := fdCount(pid)
	baseGoroutines := stats(t, sock)["goroutines"].(float64)
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		fmt.Fprintf(c, `{"id":%d,"to":"relay","topic":"echo","data":"gone"}`+"\n", i)
	}
	if !eventually(20*time.Second, func() bool { return len(descendants(pid)) >= 10 }) {
		t.Fatalf("workers did not start: %v", descendants(pid))
	}
	c.Close()
	if !eventually(20*time.Second, func() bool { return len(descendants(pid)) == 0 }) {
		t.Errorf("workers left 20s after their client went away: %v", descendants(pid))
	}
	if !eventually(10*time.Second, func() bool { return fdCount(pid) <= baseFDs }) {
		t.Errorf("relayd has %d descriptors, %d before", fdCount(pid), baseFDs)
	}
	var g float64
	if !eventually(10*time.Second, func() bool { g = stats(t, sock)["goroutines"].(float64); return g <= baseGoroutines }) {
		t.Errorf("relayd has %v goroutines, %v before", g, baseGoroutines)
	}
	if a := ask(t, sock, "still serving"); a.Error != nil {
		t.Errorf("after the client went away: %s", a.Raw)
	}
	if strings.Contains(r.log.String(), "panic") {
		t.Errorf("relayd log mentions a panic:\n%s", r.log)
	}
}

// TestSecondSignalKillsAtOnce: the first SIGTERM waits up to --shutdown-timeout for running
// workers; a second one stops them at once, and their senders get shutting_down.
func TestSecondSignalKillsAtOnce(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s")
	r := startRelayd(t, sock, "--allow-fault-injection", "--worker-arg=--delay=0s", "--shutdown-timeout=1m", "--message-timeout=1m")
	c, err := ipc.Dial(t.Context(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	call, err := c.Send("relay", "echo", "!hang")
	if err != nil {
		t.Fatal(err)
	}
	// The worker says so when it takes the directive; a count of descendants could also see
	// a process relayd starts for itself.
	if !eventually(20*time.Second, func() bool { return strings.Contains(r.log.String(), `directive="!hang"`) }) {
		t.Fatalf("worker did not start within 20s; log:\n%s", r.log)
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	if !eventually(20*time.Second, func() bool { return strings.Contains(r.log.String(), "shutting down") }) {
		t.Fatalf("no shutdown after SIGTERM; log:\n%s", r.log)
	}
	select {
	case err := <-r.exited:
		r.exited <- err // for the cleanup's stop, which waits for it
		t.Fatalf("relayd exited (%v) with a worker running and a minute of shutdown timeout left; log:\n%s", err, r.log)
	case <-time.After(300 * time.Millisecond):
	}
	start := time.Now()
	r.stop(t) // The second SIGTERM; requires exit 0 and the socket removed.
	a, err := c.Wait(t.Context(), call)
	if err != nil || a.Error == nil || a.Error.Code != ipc.CodeShuttingDown {
		t.Errorf("answer %s (%v), want shutting_down", a.Raw, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("relayd took %v to stop after the second signal", d)
	}
}

// TestUnavailableWorker runs relayd with a worker executable that does not exist: messages are
// answered unavailable, and the state is logged once, not once per message.
func TestUnavailableWorker(t *testing.T) {
	dir := shortTempDir(t)
	sock := filepath.Join(dir, "s")
	r := startRelayd(t, sock, "--worker", filepath.Join(dir, "missing"))
	for range 5 {
		a := ask(t, sock, "anyone?")
		if a.Error == nil || a.Error.Code != ipc.CodeUnavailable || !strings.Contains(a.Error.Message, "no such file") {
			t.Errorf("answer %s, want unavailable naming the missing file", a.Raw)
		}
	}
	if n := strings.Count(r.log.String(), "spawn failed"); n != 1 {
		t.Errorf("%q logged %d times, want once; log:\n%s", "spawn failed", n, r.log)
	}
}

// TestSparesAndMaxRequests runs the two ways around a fork per message through relayd: a
// spare listed idle by the status topic answers the next message, and with --max-requests=3
// one worker answers three messages before a new one takes over.
func TestSparesAndMaxRequests(t *testing.T) {
	t.Run("spares", func(t *testing.T) {
		sock := filepath.Join(shortTempDir(t), "s")
		startRelayd(t, sock, "--spares=1", "--worker-arg=--delay=0s")
		var idle int
		if !eventually(5*time.Second, func() bool {
			var st ipc.Status
			if json.Unmarshal(dialAndRequest(t, sock, "status", nil).Data, &st) != nil || len(st.Workers) != 1 {
				return false
			}
			idle = st.Workers[0].PID
			return st.Workers[0].State == "idle"
		}) {
			t.Fatal("no idle spare listed")
		}
		if a := ask(t, sock, "spare"); a.Worker == nil || a.Worker.PID != idle {
			t.Errorf("answer %s, want it from the spare %d", a.Raw, idle)
		}
	})
	t.Run("max-requests", func(t *testing.T) {
		sock := filepath.Join(shortTempDir(t), "s")
		startRelayd(t, sock, "--max-requests=3", "--worker-arg=--delay=0s")
		var pids []int
		for range 4 {
			a := ask(t, sock, "again")
			if a.Worker == nil {
				t.Fatalf("answer %s", a.Raw)
			}
			pids = append(pids, a.Worker.PID)
		}
		if pids[0] != pids[1] || pids[1] != pids[2] || pids[3] == pids[0] {
			t.Errorf("worker pids %v, want one worker for three messages, then a new one", pids)
		}
	})
}

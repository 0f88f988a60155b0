package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"relayd/ipc"
)

// TestConfigReload runs relayd from a config file, changes the file and sends SIGHUP: what can
// change applies to the next worker, what needs a restart is named and left alone, a broken
// file keeps the old settings, and flags on the command line win over the file throughout.
func TestConfigReload(t *testing.T) {
	dir := shortTempDir(t)
	conf := filepath.Join(dir, "relayd.hcl")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(conf, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The file's delay is far above what an answer takes on a loaded machine, so that a slow
	// answer cannot pass for the file's delay winning, nor the other way round.
	write(`# relayd settings
allow-fault-injection = true
worker-rlimit-nofile  = 64
worker-arg            = ["--delay=20s"]
`)
	sock := filepath.Join(dir, "s")
	r := startRelayd(t, sock, "--config", conf, "--worker-arg=--delay=0s", "--stats-interval=0")
	nofile := func() string {
		t.Helper()
		for _, line := range strings.Split(unquote(t, ask(t, sock, "!rlimits")), "\n") {
			if strings.HasPrefix(line, "nofile ") {
				return line
			}
		}
		t.Fatal("no nofile line")
		return ""
	}
	start := time.Now()
	if got := nofile(); got != "nofile 64 64" {
		t.Errorf("from the file: %q, want nofile 64 64", got)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("answer took %v: the command line's --delay=0s must win over the file's 20s", d)
	}

	write(`allow-fault-injection = true
worker-arg = ["--delay=3s"]
socket-mode = "0600"

service "relay" {
  worker-rlimit-nofile = 32
}
`)
	r.hup(t, "config reloaded")
	if got := nofile(); got != "nofile 32 32" {
		t.Errorf("after reload: %q, want nofile 32 32", got)
	}
	log := r.log.String()
	if !strings.Contains(log, "worker-rlimit-nofile=\"64 -> 32\"") {
		t.Errorf("reload did not log the change; log:\n%s", log)
	}
	if !strings.Contains(log, "need a restart") || !strings.Contains(log, "socket-mode") {
		t.Errorf("reload did not name socket-mode as needing a restart; log:\n%s", log)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode after reload: %v %v, want 0660 kept", fi.Mode().Perm(), err)
	}

	write("worker-rlimit-nofile = 16\n\nno-such-setting = 1\n")
	r.hup(t, "reload failed; keeping the old settings")
	if got := nofile(); got != "nofile 32 32" {
		t.Errorf("after a failed reload: %q, want the old nofile 32 32", got)
	}
	if !slices.ContainsFunc(strings.Split(r.log.String(), "\n"), func(l string) bool {
		return strings.Contains(l, "reload failed") && strings.Contains(l, "relayd.hcl:3:1") && strings.Contains(l, "no-such-setting")
	}) {
		t.Errorf("failed reload does not name the bad line by file:line:column; log:\n%s", r.log)
	}
}

// hup sends relayd SIGHUP and waits for one more wantLog line in its log.
func (r *relayd) hup(t *testing.T, wantLog string) {
	t.Helper()
	before := strings.Count(r.log.String(), wantLog)
	if err := r.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if !eventually(10*time.Second, func() bool { return strings.Count(r.log.String(), wantLog) > before }) {
		t.Fatalf("no %q after SIGHUP; log:\n%s", wantLog, r.log)
	}
}

// requestTo sends one request to the service name on c and waits for its answer.
func requestTo(t *testing.T, c *ipc.Client, name, topic string, data any) ipc.Answer {
	t.Helper()
	call, err := c.Send(name, topic, data)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	a, err := c.Wait(ctx, call)
	if err != nil {
		t.Fatalf("%s %s %v: %v", name, topic, data, err)
	}
	return a
}

// askTo sends one echo message to the service name on a connection of its own.
func askTo(t *testing.T, socket, name string, data any) ipc.Answer {
	t.Helper()
	c, err := ipc.Dial(t.Context(), socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return requestTo(t, c, name, "echo", data)
}

func codeOf(a ipc.Answer) string {
	if a.Error == nil {
		return ""
	}
	return a.Error.Code
}

// TestServicesReload adds a service with SIGHUP, sends it a message that is still running when
// a second SIGHUP removes it, and checks that the removed name answers unknown_name at once while
// the message it held is still answered, and that relay serves throughout.
func TestServicesReload(t *testing.T) {
	dir := shortTempDir(t)
	conf := filepath.Join(dir, "relayd.hcl")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(conf, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("worker-arg = [\"--delay=0s\"]\n")
	sock := filepath.Join(dir, "s")
	r := startRelayd(t, sock, "--config", conf, "--stats-interval=0")
	if a := askTo(t, sock, "upper", "x"); codeOf(a) != ipc.CodeUnknownName {
		t.Fatalf("before the reload: %s, want unknown_name", a.Raw)
	}
	write(fmt.Sprintf(`worker-arg = ["--delay=0s"]

service "upper" {
  worker                = %q
  args                  = ["--delay=0s"]
  allow-fault-injection = true
}
`, filepath.Join(binDir, "worker")))
	r.hup(t, "config reloaded")
	if got := unquote(t, askTo(t, sock, "upper", "hello")); got != "HELLO" {
		t.Fatalf("added service answered %q, want HELLO", got)
	}

	c, err := ipc.Dial(t.Context(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	held, err := c.Send("upper", "echo", "!sleep 1s")
	if err != nil {
		t.Fatal(err)
	}
	// The sleeping worker is running once status shows it busy.
	if !eventually(10*time.Second, func() bool {
		a := requestTo(t, c, "upper", "status", nil)
		return strings.Contains(string(a.Data), `"busy"`)
	}) {
		t.Fatal("the held message's worker never showed as busy")
	}
	write("worker-arg = [\"--delay=0s\"]\n")
	r.hup(t, "services_removed=upper")
	if a := askTo(t, sock, "upper", "x"); codeOf(a) != ipc.CodeUnknownName {
		t.Errorf("after removal: %s, want unknown_name", a.Raw)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	a, err := c.Wait(ctx, held)
	if err != nil || a.Error != nil || unquoteData(a) != "!SLEEP 1S" {
		t.Errorf("the message held by the removed service: %s %v, want !SLEEP 1S", a.Raw, err)
	}
	if got := unquote(t, ask(t, sock, "still")); got != "STILL" {
		t.Errorf("relay after the removal answered %q", got)
	}
	if !eventually(10*time.Second, func() bool { return strings.Contains(r.log.String(), "service drained") }) {
		t.Errorf("no \"service drained\" in the log:\n%s", r.log)
	}
}

func unquoteData(a ipc.Answer) string {
	var s string
	jsonUnmarshal(a.Data, &s)
	return s
}

// TestServicesIsolated runs relay beside two other services, one whose executable is missing
// and one in a crash storm, and checks that neither touches relay: relay answers while the
// first is unavailable, and relay still retries a failing worker after the storm has spent the
// other service's whole retry budget.
func TestServicesIsolated(t *testing.T) {
	dir := shortTempDir(t)
	conf := filepath.Join(dir, "relayd.hcl")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`
service "storm" {
  worker                = %q
  args                  = ["--delay=0s"]
  allow-fault-injection = true
  max-workers           = 4
  max-restarts          = 1
}

service "narrow" {
  worker                = %q
  args                  = ["--delay=0s"]
  allow-fault-injection = true
  max-workers           = 1
  queue                 = 0
}
`, filepath.Join(binDir, "worker"), filepath.Join(binDir, "worker"))), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s")
	startRelayd(t, sock, "--config", conf, "--service", "broken="+filepath.Join(dir, "missing"),
		"--allow-fault-injection", "--worker-arg=--delay=0s", "--stats-interval=0", "--shutdown-timeout=1s",
		"--metrics-addr=unix:"+filepath.Join(dir, "m"))
	scr := unixScraper(filepath.Join(dir, "m"))
	defer scr.close()

	if a := askTo(t, sock, "broken", "x"); codeOf(a) != ipc.CodeUnavailable {
		t.Fatalf("broken service: %s, want unavailable", a.Raw)
	}
	if got := unquote(t, ask(t, sock, "hello")); got != "HELLO" {
		t.Fatalf("relay beside an unavailable service answered %q", got)
	}

	c, err := ipc.Dial(t.Context(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// A full service answers busy; relay, beside it, answers at once.
	held, err := c.Send("narrow", "echo", "!sleep 30s")
	if err != nil {
		t.Fatal(err)
	}
	if !eventually(20*time.Second, func() bool {
		return strings.Contains(string(requestTo(t, c, "narrow", "status", nil).Data), `"busy"`)
	}) {
		t.Fatal("narrow's worker never showed as busy")
	}
	if a := requestTo(t, c, "narrow", "echo", "x"); codeOf(a) != ipc.CodeBusy {
		t.Errorf("narrow with its one worker busy and no queue: %s, want busy", a.Raw)
	}
	if a := requestTo(t, c, "relay", "echo", "beside"); a.Error != nil || unquoteData(a) != "BESIDE" {
		t.Errorf("relay beside a full service: %s", a.Raw)
	}
	c.Forget(held)

	// Each crash is two failed attempts; 40 of them spend far more than the half of the
	// 100-token budget after which retries pause.
	var calls []*ipc.Call
	for range 40 {
		call, err := c.Send("storm", "echo", "!crash")
		if err != nil {
			t.Fatal(err)
		}
		calls = append(calls, call)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	for _, call := range calls {
		a, err := c.Wait(ctx, call)
		if err != nil {
			t.Fatalf("storm: %v", err)
		}
		if codeOf(a) != ipc.CodeWorkerFailed {
			t.Fatalf("storm: %s, want worker_failed", a.Raw)
		}
	}
	if a := requestTo(t, c, "storm", "echo", "!flaky 1"); codeOf(a) != ipc.CodeWorkerFailed || !strings.Contains(a.Error.Message, "retries paused") {
		t.Errorf("storm after the storm: %s, want worker_failed with retries paused", a.Raw)
	}
	a := requestTo(t, c, "relay", "echo", "!flaky 1")
	if a.Error != nil || unquoteData(a) != "!FLAKY 1" {
		t.Errorf("relay after the other service's storm: %s, want its retry to succeed", a.Raw)
	}
	// The reply says which attempt answered and what it cost the worker.
	if w := a.Worker; w == nil || w.Attempt != 2 || w.Usage == nil || w.Usage.WallUS <= 0 || w.Usage.CPUUS <= 0 || w.Usage.MaxRSSKiB <= 0 {
		t.Errorf("worker of the retried reply: %s, want attempt 2 and its usage", a.Raw)
	}
	var st ipc.Stats
	if err := jsonUnmarshal(requestTo(t, c, "relay", "stats", nil).Data, &st); err != nil {
		t.Fatal(err)
	}
	if st.Exits["exit(1)"] != 1 {
		t.Errorf("relay's stats count %d exit(1), want 1 (its own flaky attempt alone): %+v", st.Exits["exit(1)"], st)
	}

	// The metrics tell the services apart.
	fams := scr.scrape(t)
	storm := map[string]string{"service": "storm"}
	if v, ok := sample(fams, "relayd_retry_budget_tokens", storm); !ok || v > 50 {
		t.Errorf("storm's retry budget = %v (%v), want 50 or less", v, ok)
	}
	if v, ok := sample(fams, "relayd_retry_budget_tokens", relayLabel); !ok || v < 99 {
		t.Errorf("relay's retry budget = %v (%v), want it about full", v, ok)
	}
	if v, _ := sample(fams, "relayd_worker_exits_total", map[string]string{"service": "relay", "reason": "exit(1)"}); v != 1 {
		t.Errorf("relay's exit(1) count = %v, want 1", v)
	}
	if v, _ := sample(fams, "relayd_messages_total", map[string]string{"service": "broken", "topic": "echo", "outcome": "unavailable"}); v != 1 {
		t.Errorf("broken's unavailable answers = %v, want 1", v)
	}
}

// TestEchoServices drives echo --to in every mode against a relayd with a second service, and
// checks that --status and --top group workers by service unless --to names one.
func TestEchoServices(t *testing.T) {
	dir := shortTempDir(t)
	conf := filepath.Join(dir, "relayd.hcl")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`
service "upper" {
  worker = %q
  args   = ["--delay=0s"]
}
`, filepath.Join(binDir, "worker"))), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s")
	startRelayd(t, sock, "--config", conf, "--worker-arg=--delay=0s", "--stats-interval=0")

	if got := runEcho(t, sock, "--to", "upper", "hello"); got != "HELLO\n" {
		t.Errorf("one-shot --to upper: %q", got)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "echo"), "--socket", sock, "--to", "upper")
	cmd.Stdin = strings.NewReader("a\nb\n")
	if out, err := cmd.Output(); err != nil || string(out) != "A\nB\n" {
		t.Errorf("pipe --to upper: %q, %v", out, err)
	}
	if got := runEcho(t, sock, "--to", "upper", "--stats"); !strings.Contains(got, "messages 3\n") {
		t.Errorf("--stats --to upper counts upper's 3 messages alone:\n%s", got)
	}
	if got := runEcho(t, sock, "--stats"); !strings.Contains(got, "messages 0\n") {
		t.Errorf("--stats of relay counts none of upper's:\n%s", got)
	}

	all := runEcho(t, sock, "--status")
	for _, want := range []string{"names: relay, upper\n", "\nservice relay\n", "\nservice upper\n"} {
		if !strings.Contains(all, want) {
			t.Errorf("--status lacks %q:\n%s", want, all)
		}
	}
	if strings.Index(all, "service relay") > strings.Index(all, "service upper") {
		t.Errorf("--status: relay, the default, comes first:\n%s", all)
	}
	one := runEcho(t, sock, "--status", "--to", "upper")
	if strings.Contains(one, "service ") || !strings.Contains(one, "names: relay, upper\n") || !strings.Contains(one, "messages=3 ") {
		t.Errorf("--status --to upper shows upper alone:\n%s", one)
	}
	frames := runEcho(t, sock, "--status", "--json")
	var services []string
	for _, line := range strings.Split(strings.TrimSpace(frames), "\n") {
		var a ipc.Reply
		var st ipc.Status
		if err := jsonUnmarshal([]byte(line), &a); err != nil || jsonUnmarshal(a.Data, &st) != nil {
			t.Fatalf("--status --json line %q", line)
		}
		services = append(services, st.Service)
	}
	if strings.Join(services, ",") != "relay,upper" {
		t.Errorf("--status --json frames are of %v, want relay and upper", services)
	}
	if got := runEcho(t, sock, "--top", "--count=1"); !strings.Contains(got, "\nservice upper  stats: messages=3 ") {
		t.Errorf("--top lacks upper's line:\n%s", got)
	}

	// The REPL, with the tutorial's words, talks to --to.
	tm := startTerminal(t, []string{"RELAY_SOCKET=" + sock, "NO_COLOR=1"}, "--to", "upper")
	tm.expect("Echo Client\r\nType messages to echo. Ctrl+C to exit.\r\n\r\n> ")
	tm.send("hi\r")
	tm.expectRegexp("\r\n  HI\r\n  from worker: \\{processes\\|[0-9]+\\}\r\n> ")
	tm.send("\x04")
	tm.expect("\r\nGoodbye!\r\n")
	tm.waitExit()
	if got := runEcho(t, sock, "--to", "upper", "--stats"); !strings.Contains(got, "messages 4\n") {
		t.Errorf("the REPL's message did not reach upper:\n%s", got)
	}
}

// TestServiceMaxPerClient checks a service's own max-per-client: with a bound of 1, a
// connection's second message to it waits for the first to be answered, however many workers
// the service may run.
func TestServiceMaxPerClient(t *testing.T) {
	dir := shortTempDir(t)
	conf := filepath.Join(dir, "relayd.hcl")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`
service "one" {
  worker                = %q
  args                  = ["--delay=0s"]
  allow-fault-injection = true
  max-workers           = 4
  max-per-client        = 1
}
`, filepath.Join(binDir, "worker"))), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s")
	startRelayd(t, sock, "--config", conf, "--worker-arg=--delay=0s", "--stats-interval=0")
	c, err := ipc.Dial(t.Context(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	slow, err := c.Send("one", "echo", "!sleep 2s")
	if err != nil {
		t.Fatal(err)
	}
	quick, err := c.Send("one", "echo", "quick")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	a, err := c.Wait(ctx, quick)
	if err != nil || a.Error != nil || unquoteData(a) != "QUICK" {
		t.Fatalf("quick: %s %v", a.Raw, err)
	}
	if d := time.Since(start); d < 2*time.Second {
		t.Errorf("the second message was answered after %v, before the first's 2s: max-per-client = 1 did not hold it", d)
	}
	if a, err := c.Wait(ctx, slow); err != nil || a.Error != nil {
		t.Errorf("slow: %s %v", a.Raw, err)
	}
}

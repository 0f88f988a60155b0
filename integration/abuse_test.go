package integration

// The abuse suite: clients that do what a hostile or broken local client can do, against the
// real relayd. Each test states the bound it holds relayd to (memory, descriptors, time) and
// checks it from outside, in /proc, as an operator would.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"relayd/ipc"
)

// vmRSS returns the resident set size of pid in bytes, from /proc/PID/status.
func vmRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("reading relayd's status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS line %q: %v", line, err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in relayd's status")
	return 0
}

const mib = 1 << 20

// dialRaw opens a plain connection to relayd, closed at the end of the test.
func dialRaw(t *testing.T, sock string) *net.UnixConn {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.UnixConn)
}

// readAnswers reads answer lines from c until it has n or the connection ends, waiting at most
// d in all. Every line must be valid UTF-8 and valid JSON.
func readAnswers(t *testing.T, c net.Conn, n int, d time.Duration) ([]ipc.Answer, error) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	br := bufio.NewReader(c)
	var out []ipc.Answer
	for len(out) < n {
		// A last line without its newline is an answer cut off by relayd's stop: dropped,
		// not answered.
		line, err := br.ReadBytes('\n')
		if err != nil {
			return out, err
		}
		line = line[:len(line)-1]
		if !utf8.Valid(line) || !json.Valid(line) {
			t.Errorf("answer is not valid UTF-8 JSON: %q", clipBytes(line, 200))
		}
		a := ipc.Answer{Raw: bytes.Clone(line)}
		if err := json.Unmarshal(line, &a); err != nil {
			t.Errorf("answer %q: %v", clipBytes(line, 200), err)
		}
		out = append(out, a)
	}
	return out, nil
}

func clipBytes(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

// TestAbuseInvalidUTF8 sends requests with invalid UTF-8 in each of its strings. Each must be
// answered bad_request, the answer must be valid UTF-8 JSON, and no invalid byte may come back.
func TestAbuseInvalidUTF8(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s")
	startRelayd(t, sock, "--worker-arg=--delay=0s", "--stats-interval=0")
	lines := []string{
		"{\"id\":\"\xff\",\"to\":\"relay\",\"topic\":\"echo\",\"data\":\"x\"}",
		"{\"id\":2,\"to\":\"relay\",\"topic\":\"echo\",\"data\":\"caf\xe9\"}",
		"{\"id\":3,\"to\":\"re\xc3lay\",\"topic\":\"echo\",\"data\":\"x\"}",
		"{\"id\":4,\"to\":\"relay\",\"topic\":\"ech\xf0\",\"data\":\"x\"}",
		"{\"id\":\"a\xed\xa0\x80\",\"to\":\"relay\",\"topic\":\"echo\",\"data\":\"x\"}",
		`{"id":6,"to":"relay","topic":"echo","data":"valid ✓"}`,
	}
	c := dialRaw(t, sock)
	if _, err := c.Write([]byte(strings.Join(lines, "\n") + "\n")); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	answers, err := readAnswers(t, c, len(lines), 20*time.Second)
	if err != nil {
		t.Fatalf("after %d answers: %v", len(answers), err)
	}
	for _, a := range answers {
		if !utf8.Valid(a.Raw) {
			t.Errorf("answer with invalid UTF-8: %q", a.Raw)
		}
		if string(a.ID) == "6" {
			if a.Error != nil || string(a.Data) != `"VALID ✓"` {
				t.Errorf("valid request: got %s, want VALID ✓", a.Raw)
			}
			continue
		}
		if a.Error == nil || a.Error.Code != ipc.CodeBadRequest {
			t.Errorf("got %q, want bad_request", a.Raw)
		}
	}
}

// TestAbuseTrickle sends half a request line one byte every 50ms. --frame-timeout is a
// deadline from the line's first byte, so relayd must answer bad_request and close the
// connection within it (plus slack for a loaded machine), however the bytes trickle.
func TestAbuseTrickle(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s")
	const frame = time.Second
	r := startRelayd(t, sock, append(abuseFlags, "--frame-timeout="+frame.String())...)
	c := dialRaw(t, sock)
	start := time.Now()
	if _, err := c.Write([]byte(`{"id":1,"to":"relay","topic":"echo","data":"`)); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	trickled := make(chan struct{})
	go func() {
		defer close(trickled)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if _, err := c.Write([]byte("x")); err != nil {
				return
			}
		}
	}()
	defer func() { close(stop); <-trickled }()
	// Without the deadline no answer would ever come while the bytes trickle: the slack is
	// for a loaded machine, not what the test measures.
	const bound = frame + 10*time.Second
	answers, err := readAnswers(t, c, 2, bound)
	took := time.Since(start)
	if len(answers) != 1 || answers[0].Error == nil || !strings.Contains(answers[0].Error.Message, "still incomplete") {
		t.Fatalf("after %s: answers %v (%v), want one bad_request: still incomplete", took.Round(time.Millisecond), answers, err)
	}
	if !errors.Is(err, io.EOF) || took > bound {
		t.Errorf("connection after the answer: %v after %s, want closed (EOF) within %s", err, took.Round(time.Millisecond), bound)
	}
	// A SIGTERM while another client trickles a line ends within the stop bound.
	c2 := dialRaw(t, sock)
	if _, err := c2.Write([]byte(`{"id":2,"to":"relay","topic":"ec`)); err != nil {
		t.Fatal(err)
	}
	t.Logf("stop took %s", r.stopWithin(t).Round(time.Millisecond))
}

// TestAbuseAnswerInflation sends text the worker's JSON encoder used to escape (< > &, six
// bytes each): the answer must be about the size of the request, not six times it.
func TestAbuseAnswerInflation(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s")
	startRelayd(t, sock, "--worker-arg=--delay=0s", "--stats-interval=0")
	data := strings.Repeat("<&>", 20000)
	req, _ := json.Marshal(map[string]any{"id": 1, "to": "relay", "topic": "echo", "data": data})
	req = bytes.ReplaceAll(req, []byte(`\u003c`), []byte("<"))
	req = bytes.ReplaceAll(req, []byte(`\u003e`), []byte(">"))
	req = bytes.ReplaceAll(req, []byte(`\u0026`), []byte("&"))
	c := dialRaw(t, sock)
	if _, err := c.Write(append(req, '\n')); err != nil {
		t.Fatal(err)
	}
	answers, err := readAnswers(t, c, 1, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if a := answers[0]; a.Error != nil || len(a.Raw) > len(req)+512 {
		t.Errorf("answer of %d bytes (error %v) to a request of %d, want at most %d", len(a.Raw), a.Error, len(req), len(req)+512)
	}
}

// TestIdleTimeout checks --idle-timeout: a connection with nothing to do is closed, one waiting
// for an answer is not.
func TestIdleTimeout(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s")
	// The busy connection's request must reach relayd within the idle timeout, which a loaded
	// machine does in far less than 2s; its answer comes 2s after that timeout.
	const idleTimeout = 2 * time.Second
	startRelayd(t, sock, "--idle-timeout="+idleTimeout.String(), "--allow-fault-injection", "--worker-arg=--delay=0s", "--stats-interval=0")
	// The clock starts before the dial: relayd's idle timer cannot start earlier than that.
	start := time.Now()
	idle := dialRaw(t, sock)
	busy := dialRaw(t, sock)
	if _, err := busy.Write([]byte(`{"id":1,"to":"relay","topic":"echo","data":"!sleep 4s"}` + "\n")); err != nil {
		t.Fatal(err)
	}
	idle.SetReadDeadline(time.Now().Add(30 * time.Second))
	if n, err := bufio.NewReader(idle).ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("idle connection: read %q, %v; want it closed", n, err)
	}
	if took := time.Since(start); took < idleTimeout {
		t.Errorf("idle connection closed after %s, before the idle timeout", took)
	}
	answers, err := readAnswers(t, busy, 1, 30*time.Second)
	if err != nil || answers[0].Error != nil {
		t.Errorf("connection waiting for its answer: %v %v, want the answer", answers, err)
	}
}

// Timings of the abuse tests: a stop must end within --shutdown-timeout + --kill-grace + 3 s
// (the documented bound); stopSlack is added for a loaded machine to start and reap processes.
const (
	abuseShutdown = 500 * time.Millisecond
	abuseGrace    = 200 * time.Millisecond
	stopBound     = abuseShutdown + abuseGrace + 3*time.Second
	stopSlack     = 3 * time.Second
)

// abuseFlags are the stop timings every abuse test runs relayd with.
var abuseFlags = []string{"--shutdown-timeout=" + abuseShutdown.String(), "--kill-grace=" + abuseGrace.String(),
	"--stats-interval=0", "--worker-arg=--delay=0s"}

// stopWithin sends relayd SIGTERM and requires it to exit 0 within the stop bound, whatever
// its clients are doing. It returns how long the stop took.
func (r *relayd) stopWithin(t *testing.T) time.Duration {
	t.Helper()
	var took time.Duration
	r.once.Do(func() {
		start := time.Now()
		if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatalf("signalling relayd: %v", err)
		}
		select {
		case err := <-r.exited:
			took = time.Since(start)
			if err != nil {
				t.Errorf("relayd after SIGTERM: %v, want exit status 0; its log:\n%s", err, r.log)
			}
		case <-time.After(stopBound + stopSlack):
			r.cmd.Process.Kill()
			<-r.exited
			t.Fatalf("relayd still running %s after SIGTERM, past its stop bound of %s", stopBound+stopSlack, stopBound)
		}
	})
	return took
}

// peakRSS samples pid's RSS every 10ms until stop is closed and returns the highest value.
func peakRSS(t *testing.T, pid int, stop <-chan struct{}) <-chan int64 {
	out := make(chan int64, 1)
	go func() {
		var peak int64
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
			if err == nil {
				for _, line := range strings.Split(string(b), "\n") {
					if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
						kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
						peak = max(peak, kb<<10)
					}
				}
			}
			select {
			case <-stop:
				out <- peak
				return
			case <-tick.C:
			}
		}
	}()
	return out
}

// echoLine is a request line with data of n copies of c.
func echoLine(id int, c byte, n int) []byte {
	return []byte(fmt.Sprintf(`{"id":%d,"to":"relay","topic":"echo","data":"%s"}`+"\n", id, bytes.Repeat([]byte{c}, n)))
}

// TestAbuseNeverRead: clients send long requests of text that used to be inflated six times
// and never read their answers. relayd must hold its pending bytes to their bound: RSS stays
// under memBound above idle; a SIGTERM in the middle ends within the stop bound; every
// message read is answered exactly once, or counted as dropped at the stop.
func TestAbuseNeverRead(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s")
	// A quarter of the default --max-message-bytes, so the bounds scale by a quarter too.
	r := startRelaydBin(t, plainRelayd, sock, append(abuseFlags, "--max-message-bytes=262144")...)
	pid := r.cmd.Process.Pid
	// Idle is measured after one message, so that the code a message runs is paged in.
	ask(t, sock, "warm")
	idle := vmRSS(t, pid)
	const clients, perClient, size = 8, 32, 250 << 10
	stop := make(chan struct{})
	peak := peakRSS(t, pid, stop)
	conns := make([]*net.UnixConn, clients)
	written := make(chan int, clients)
	for i := range conns {
		conns[i] = dialRaw(t, sock)
		go func(c *net.UnixConn) {
			n := 0
			c.SetWriteDeadline(time.Now().Add(3 * time.Second))
			for j := range perClient {
				if _, err := c.Write(echoLine(j, '<', size)); err != nil {
					break
				}
				n++
			}
			written <- n
		}(conns[i])
	}
	for range clients {
		<-written
	}
	fds := fdCount(pid)
	took := r.stopWithin(t)
	close(stop)
	grew := <-peak - idle
	t.Logf("RSS grew by %.1f MiB (idle %.1f MiB); %d fds; stop took %s", float64(grew)/mib, float64(idle)/mib, fds, took.Round(time.Millisecond))
	// 16 MiB is the 64 MiB of the defaults scaled by the same quarter.
	const memBound = 16 * mib
	if grew > memBound {
		t.Errorf("relayd's RSS grew by %.1f MiB, over the bound of %d MiB", float64(grew)/mib, memBound/mib)
	}
	if fds > clients+64 {
		t.Errorf("relayd had %d fds open with %d clients", fds, clients)
	}
	var read []ipc.Answer
	for _, c := range conns {
		answers, _ := readAnswers(t, c, perClient, 10*time.Second)
		read = append(read, answers...)
	}
	checkAnsweredOnce(t, r, read, 1)
}

// stopCounts returns the answers relayd handed to its connections and those it dropped, from
// its "relay stopped" log line.
func stopCounts(t *testing.T, r *relayd) (answers, dropped int) {
	t.Helper()
	for _, line := range strings.Split(r.log.String(), "\n") {
		if !strings.Contains(line, "relay stopped") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "answers="); ok {
				answers, _ = strconv.Atoi(v)
			}
			if v, ok := strings.CutPrefix(f, "answers_dropped="); ok {
				dropped, _ = strconv.Atoi(v)
			}
		}
		return answers, dropped
	}
	t.Fatalf("no \"relay stopped\" line in relayd's log:\n%s", r.log)
	return 0, 0
}

// checkAnsweredOnce requires every answer relayd handed out to have been read by a client
// exactly once or counted as dropped; others is the number of answers the test read on
// connections of their own (stats, a first message).
func checkAnsweredOnce(t *testing.T, r *relayd, read []ipc.Answer, others int) {
	t.Helper()
	n := countUnique(t, read) + others
	answers, dropped := stopCounts(t, r)
	t.Logf("relayd answered %d, dropped %d; clients read %d", answers, dropped, n)
	if n+dropped != answers {
		t.Errorf("clients read %d answers and relayd dropped %d, but relayd answered %d", n, dropped, answers)
	}
}

// countUnique counts answers, failing the test on an id answered twice.
func countUnique(t *testing.T, answers []ipc.Answer) int {
	t.Helper()
	seen := map[string]bool{}
	for _, a := range answers {
		if id := string(a.ID); id != "" {
			if seen[id] {
				t.Errorf("id %s answered twice", id)
			}
			seen[id] = true
		}
	}
	return len(answers)
}

// TestAbuseStopAtMaxPerClient: a client at --max-per-client has a line waiting for a slot
// behind a message whose worker hangs. SIGTERM must still end relayd within the stop bound,
// not after --message-timeout, and both messages must be answered.
func TestAbuseStopAtMaxPerClient(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s")
	r := startRelayd(t, sock, append(abuseFlags, "--allow-fault-injection", "--max-per-client=1", "--message-timeout=30s")...)
	c := dialRaw(t, sock)
	if _, err := c.Write([]byte(`{"id":1,"to":"relay","topic":"echo","data":"!hang"}` + "\n" + `{"id":2,"to":"relay","topic":"echo","data":"x"}` + "\n")); err != nil {
		t.Fatal(err)
	}
	// The first message is with its worker once the worker says so.
	if !eventually(20*time.Second, func() bool { return strings.Contains(r.log.String(), `directive="!hang"`) }) {
		t.Fatalf("no worker took the first message; log:\n%s", r.log)
	}
	took := r.stopWithin(t)
	t.Logf("stop took %s", took.Round(time.Millisecond))
	answers, err := readAnswers(t, c, 2, 10*time.Second)
	if len(answers) != 2 {
		t.Fatalf("got %d answers (%v), want both messages answered", len(answers), err)
	}
	countUnique(t, answers)
	for _, a := range answers {
		if a.Error == nil || a.Error.Code != ipc.CodeShuttingDown {
			t.Errorf("answer %s, want shutting_down", a.Raw)
		}
	}
}

// TestAbuseSlowReader: a client with many answers pending reads them slowly, never slowly
// enough to trip the write timeout. SIGTERM must end relayd within the stop bound; the
// answers not read by then are dropped and counted, and every message is either answered
// once or counted.
func TestAbuseSlowReader(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s")
	r := startRelayd(t, sock, abuseFlags...)
	c := dialRaw(t, sock)
	// Answers of 900 KiB: two of them, all the connection may have pending, are more than the
	// kernel's socket buffer holds, so some are still relayd's when it stops.
	const n, size = 8, 900 << 10
	go func() {
		c.SetWriteDeadline(time.Now().Add(20 * time.Second))
		for i := range n {
			if _, err := c.Write(echoLine(i, 'a', size)); err != nil {
				return
			}
		}
	}()
	// Read 16 KiB every 100ms: a trickle, yet an answer is written well within the 10 s
	// write timeout.
	got := make(chan []byte, 1)
	quit := make(chan struct{})
	first := make(chan struct{})
	go func() {
		var all []byte
		buf := make([]byte, 16<<10)
		for {
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			k, err := c.Read(buf)
			if len(all) == 0 && k > 0 {
				close(first)
			}
			all = append(all, buf[:k]...)
			if err != nil {
				got <- all
				return
			}
			select {
			case <-quit:
				// Relayd is gone: read the rest as fast as it comes.
				rest, _ := io.ReadAll(c)
				got <- append(all, rest...)
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	// Stop once answers are coming.
	select {
	case <-first:
	case <-time.After(15 * time.Second):
		t.Fatal("no answer within 15s")
	}
	took := r.stopWithin(t)
	close(quit)
	all := <-got
	var answers []ipc.Answer
	// A last line without its newline is an answer cut off by the stop: dropped, not answered.
	lines := bytes.Split(all, []byte("\n"))
	for _, line := range lines[:len(lines)-1] {
		var a ipc.Answer
		if err := json.Unmarshal(line, &a); err != nil {
			t.Errorf("answer %q: %v", clipBytes(line, 100), err)
		}
		answers = append(answers, a)
	}
	t.Logf("stop took %s", took.Round(time.Millisecond))
	checkAnsweredOnce(t, r, answers, 0)
	if _, dropped := stopCounts(t, r); dropped == 0 {
		t.Errorf("no answer counted as dropped at the stop; log:\n%s", r.log)
	}
	if !strings.Contains(r.log.String(), "stop deadline reached") {
		t.Errorf("no log line for the answers dropped at the stop; log:\n%s", r.log)
	}
}

// TestAbuseHalfLines: many clients each send most of a long request line, then trickle a
// byte every 100ms and never finish it. relayd reads only as much as its pending bytes allow,
// so its RSS stays bounded; each line it reads is cut at --frame-timeout after its first byte;
// a SIGTERM in the middle ends within the stop bound.
func TestAbuseHalfLines(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s")
	const frame = time.Second
	r := startRelaydBin(t, plainRelayd, sock, append(abuseFlags, "--max-message-bytes=262144", "--frame-timeout="+frame.String())...)
	pid := r.cmd.Process.Pid
	ask(t, sock, "warm")
	idle, idleFDs := vmRSS(t, pid), fdCount(pid)
	stop := make(chan struct{})
	peak := peakRSS(t, pid, stop)
	const clients, size = 64, 240 << 10
	start := time.Now()
	cut := make(chan time.Duration, clients)
	done := make(chan struct{})
	for range clients {
		c := dialRaw(t, sock)
		go func() {
			c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			line := echoLine(1, 'h', size)
			if _, err := c.Write(line[:len(line)-10]); err != nil {
				return
			}
			for {
				select {
				case <-done:
					return
				case <-time.After(100 * time.Millisecond):
				}
				if _, err := c.Write([]byte("h")); err != nil {
					return
				}
			}
		}()
		go func() {
			answers, err := readAnswers(t, c, 2, 10*time.Second)
			if len(answers) == 1 && answers[0].Error != nil && strings.Contains(answers[0].Error.Message, "still incomplete") && errors.Is(err, io.EOF) {
				cut <- time.Since(start)
			}
		}()
	}
	defer close(done)
	// The first lines relayd reads are cut at the frame deadline, however the bytes trickle.
	var first time.Duration
	select {
	case first = <-cut:
	case <-time.After(frame + 5*time.Second):
		t.Fatalf("no half line cut within %s of --frame-timeout=%s", frame+5*time.Second, frame)
	}
	fds := fdCount(pid)
	took := r.stopWithin(t)
	close(stop)
	grew := <-peak - idle
	t.Logf("first line cut after %s; RSS grew by %.1f MiB (idle %.1f MiB); %d fds (idle %d); stop took %s",
		first.Round(time.Millisecond), float64(grew)/mib, float64(idle)/mib, fds, idleFDs, took.Round(time.Millisecond))
	const memBound = 16 * mib // the 64 MiB of the defaults, scaled like --max-message-bytes
	if grew > memBound {
		t.Errorf("relayd's RSS grew by %.1f MiB, over the bound of %d MiB", float64(grew)/mib, memBound/mib)
	}
	if fds > idleFDs+clients+8 {
		t.Errorf("relayd had %d fds open with %d clients (idle %d)", fds, clients, idleFDs)
	}
}

// TestAbuseConnFlood: with an open-file limit of 192, hundreds of connections that never send
// anything arrive while a well-behaved client, connected before, sends its messages one by
// one. relayd's descriptors must stay within --max-conns plus a fixed number (plus the
// workers' pipes), every message of the well-behaved client gets its reply, and a SIGTERM in
// the flood ends within the stop bound.
func TestAbuseConnFlood(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s")
	const maxConns, workers, nofile = 16, 4, 192
	r := startRelayd(t, sock, append(abuseFlags, fmt.Sprintf("--max-conns=%d", maxConns), fmt.Sprintf("--max-workers=%d", workers), "--log-level=error")...)
	pid := r.cmd.Process.Pid
	lim := unix.Rlimit{Cur: nofile, Max: nofile}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
		t.Fatalf("lowering relayd's open-file limit: %v", err)
	}
	good, err := ipc.Dial(t.Context(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	idleFDs := fdCount(pid)
	// What relayd may hold: --max-conns, the fixed number relayd documents, and four per worker.
	bound := idleFDs + maxConns + 49 + 4*workers
	flood := make(chan struct{})
	floodDone := make(chan int)
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
			floodDone <- len(held)
		}()
		for len(held) < 600 {
			select {
			case <-flood:
				return
			default:
			}
			c, err := net.DialTimeout("unix", sock, time.Second)
			if err != nil {
				continue
			}
			held = append(held, c)
		}
		<-flood
	}()
	peakFDs := 0
	for i := range 30 {
		call, err := good.Send("relay", "echo", fmt.Sprintf("m%d", i))
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		a, err := good.Wait(t.Context(), call)
		if err != nil || a.Error != nil {
			t.Errorf("message %d during the flood: %v %s, want a reply", i, err, a.Raw)
		}
		peakFDs = max(peakFDs, fdCount(pid))
	}
	peakFDs = max(peakFDs, fdCount(pid))
	took := r.stopWithin(t)
	close(flood)
	held := <-floodDone
	t.Logf("%d flood connections; relayd's fds peaked at %d (bound %d, idle %d); stop took %s", held, peakFDs, bound, idleFDs, took.Round(time.Millisecond))
	if peakFDs > bound {
		t.Errorf("relayd had %d fds open, over idle + --max-conns + 49 + 4 per worker = %d", peakFDs, bound)
	}
}

// TestAbuseChurn: a client that connects and closes, strictly one connection after another,
// must never be refused, though relayd cleans up closed connections in the background; and
// when churning clients are refused, the refusals are logged at a bounded rate with a count
// of those suppressed. A SIGTERM during the churn ends within the stop bound.
func TestAbuseChurn(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s")
	r := startRelayd(t, sock, append(abuseFlags, "--max-conns=4", "--max-conns-per-uid=4")...)
	var held []*net.UnixConn
	for range 3 {
		held = append(held, dialRaw(t, sock))
	}
	// One at a time: each closed before the next connects.
	for i := range 2000 {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		c.Close()
	}
	if a := ask(t, sock, "after"); a.Error != nil {
		t.Errorf("message after the sequential churn: %s", a.Raw)
	}
	if strings.Contains(r.log.String(), "connection refused") {
		t.Errorf("a strictly sequential connect-and-close loop was refused; log:\n%s", r.log)
	}

	// Now past the bound, from several clients at once: 2000 attempts, then a SIGTERM while
	// more come.
	held = append(held, dialRaw(t, sock))
	stop := make(chan struct{})
	var churn sync.WaitGroup
	var attempts atomic.Int64
	for range 4 {
		churn.Add(1)
		go func() {
			defer churn.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if c, err := net.Dial("unix", sock); err == nil {
					c.Close()
				}
				attempts.Add(1)
			}
		}()
	}
	if !eventually(20*time.Second, func() bool { return attempts.Load() >= 2000 }) {
		t.Errorf("only %d connection attempts in 20s", attempts.Load())
	}
	took := r.stopWithin(t)
	close(stop)
	churn.Wait()
	lines := strings.Count(r.log.String(), "connection refused")
	t.Logf("%d refusal lines; stop took %s", lines, took.Round(time.Millisecond))
	// A burst of 10, then one a second: the churn and the stop last a few seconds at most.
	if lines > 10+int(stopBound/time.Second)+3 {
		t.Errorf("%d refusal lines logged, want a bounded rate; log:\n%s", lines, clipBytes([]byte(r.log.String()), 3000))
	}
	if lines > 0 && !strings.Contains(r.log.String(), "suppressed=") {
		t.Errorf("no count of suppressed refusals in the log")
	}
	_ = held
}

// TestAbuseOneUIDCannotLockOut: connections of one uid past --max-conns-per-uid are refused
// busy, while another uid still gets in.
func TestAbuseOneUIDCannotLockOut(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to connect as another uid with setpriv")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv not installed")
	}
	dir := shortTempDir(t)
	for _, d := range []string{dir, binDir, filepath.Dir(binDir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(dir, "s")
	startRelayd(t, sock, append(abuseFlags, "--socket-mode=0666", "--max-conns=8", "--max-conns-per-uid=4")...)
	for range 4 {
		dialRaw(t, sock)
	}
	// The fifth of this uid is refused, though only half of --max-conns is in use.
	c := dialRaw(t, sock)
	answers, _ := readAnswers(t, c, 1, 10*time.Second)
	if len(answers) != 1 || answers[0].Error == nil || answers[0].Error.Code != ipc.CodeBusy || !strings.Contains(answers[0].Error.Message, "of uid") {
		t.Errorf("fifth connection of one uid: got %v, want busy: too many connections of uid", answers)
	}
	cmd := exec.Command(setpriv, "--reuid=4242", "--regid=4242", "--clear-groups",
		filepath.Join(binDir, "echo"), "--socket", sock, "hi")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "GORACE=atexit_sleep_ms=0"}
	if out, err := cmd.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "HI" {
		t.Errorf("another uid while the first is at its bound: %v, %q; want HI", err, out)
	}
}

// TestAbuseAnswerTooLarge: an answer longer than --max-answer-bytes is replaced by too_large,
// so no worker can make relayd hold more; a shorter one on the same connection still comes.
func TestAbuseAnswerTooLarge(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s")
	startRelayd(t, sock, append(abuseFlags, "--max-answer-bytes=2048")...)
	c := dialRaw(t, sock)
	if _, err := c.Write(append(echoLine(1, 'a', 4000), echoLine(2, 'b', 100)...)); err != nil {
		t.Fatal(err)
	}
	answers, err := readAnswers(t, c, 2, 20*time.Second)
	if err != nil {
		t.Fatalf("after %d answers: %v", len(answers), err)
	}
	for _, a := range answers {
		switch string(a.ID) {
		case "1":
			if a.Error == nil || a.Error.Code != ipc.CodeTooLarge || len(a.Raw) > 2048 {
				t.Errorf("answer of 4000 bytes of data: %q, want too_large", clipBytes(a.Raw, 200))
			}
		case "2":
			if a.Error != nil {
				t.Errorf("short answer: %s", a.Raw)
			}
		}
	}
}

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
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

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
	lr := ipc.NewLineReader(c, 64*mib)
	var out []ipc.Answer
	for len(out) < n {
		line, err := lr.ReadLine()
		if err != nil {
			return out, err
		}
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
	startRelayd(t, sock, "--frame-timeout="+frame.String(), "--worker-arg=--delay=0s", "--stats-interval=0")
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
	const bound = frame + 4*time.Second
	answers, err := readAnswers(t, c, 2, bound)
	took := time.Since(start)
	if len(answers) != 1 || answers[0].Error == nil || !strings.Contains(answers[0].Error.Message, "still incomplete") {
		t.Fatalf("after %s: answers %v (%v), want one bad_request: still incomplete", took.Round(time.Millisecond), answers, err)
	}
	if !errors.Is(err, io.EOF) || took > bound {
		t.Errorf("connection after the answer: %v after %s, want closed (EOF) within %s", err, took.Round(time.Millisecond), bound)
	}
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
	startRelayd(t, sock, "--idle-timeout=300ms", "--allow-fault-injection", "--worker-arg=--delay=0s", "--stats-interval=0")
	idle := dialRaw(t, sock)
	busy := dialRaw(t, sock)
	if _, err := busy.Write([]byte(`{"id":1,"to":"relay","topic":"echo","data":"!sleep 1s"}` + "\n")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	idle.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := bufio.NewReader(idle).ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("idle connection: read %q, %v; want it closed", n, err)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("idle connection closed after %s, before the idle timeout", took)
	}
	answers, err := readAnswers(t, busy, 1, 20*time.Second)
	if err != nil || answers[0].Error != nil {
		t.Errorf("connection waiting for its answer: %v %v, want the answer", answers, err)
	}
}

package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"relayd/ipc"
)

// ask sends one echo message and returns its answer.
func ask(t *testing.T, socket, data string) ipc.Answer {
	t.Helper()
	return dialAndRequest(t, socket, "echo", data)
}

// dialAndRequest sends one message on topic to the relay, on a connection of its own, and
// returns its answer.
func dialAndRequest(t *testing.T, socket, topic string, data any) ipc.Answer {
	t.Helper()
	c, err := ipc.Dial(t.Context(), socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return request(t, c, topic, data)
}

func unquote(t *testing.T, a ipc.Answer) string {
	t.Helper()
	if a.Error != nil {
		t.Fatalf("error answer: %s", a.Raw)
	}
	var s string
	if err := jsonUnmarshal(a.Data, &s); err != nil {
		t.Fatalf("data %s: %v", a.Data, err)
	}
	return s
}

// TestNotify checks the sd_notify protocol against a unixgram listener set as NOTIFY_SOCKET:
// READY=1 once the socket accepts, STATUS= at stats ticks, WATCHDOG=1 at half of
// WATCHDOG_USEC, STOPPING=1 at SIGTERM.
func TestNotify(t *testing.T) {
	dir := shortTempDir(t)
	notifyPath := filepath.Join(dir, "n")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	type dgram struct {
		at   time.Time
		text string
	}
	msgs := make(chan dgram, 256)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := notify.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- dgram{time.Now(), string(buf[:n])}
		}
	}()

	sock := filepath.Join(dir, "s")
	cmd := exec.Command(filepath.Join(binDir, "relayd"), "--socket", sock, "--stats-interval=150ms", "--log-level=warn")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notifyPath, "WATCHDOG_USEC=200000")
	log := new(syncBuffer)
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
	}()

	next := func(prefix string) dgram {
		t.Helper()
		timeout := time.After(5 * time.Second)
		// Until SIGTERM, relayd exiting is the failure to report (a SIGHUP killed it, say).
		died := exited
		if prefix == "STOPPING=1" {
			died = nil
		}
		for {
			select {
			case m, ok := <-msgs:
				if !ok {
					t.Fatalf("notify socket closed before %q", prefix)
				}
				if strings.HasPrefix(m.text, prefix) {
					return m
				}
			case err := <-died:
				t.Fatalf("relayd exited (%v) before %q; relayd log:\n%s", err, prefix, log)
			case <-timeout:
				t.Fatalf("no %q notification within 5s; relayd log:\n%s", prefix, log)
			}
		}
	}
	next("READY=1")
	// A reload asked for the moment relayd is ready must not kill it (SIGHUP's default action):
	// systemctl reload may come right after systemd sees READY=1.
	for range 20 {
		if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatalf("relayd gone after a SIGHUP right after READY=1: %v; log:\n%s", err, log)
		}
	}
	// READY means the socket accepts: connect at once, without waiting.
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("connecting right after READY=1: %v", err)
	}
	c.Close()
	if st := next("STATUS="); !strings.Contains(st.text, "messages=") || !strings.Contains(st.text, "workers_spawned=") {
		t.Errorf("status = %q, want the stats", st.text)
	}
	var beats []time.Time
	for range 5 {
		beats = append(beats, next("WATCHDOG=1").at)
	}
	var gaps []time.Duration
	for i := 1; i < len(beats); i++ {
		gaps = append(gaps, beats[i].Sub(beats[i-1]))
	}
	slices.Sort(gaps)
	// Half of WATCHDOG_USEC is 100ms; the median gap must be near it, far from the 200ms limit.
	if med := gaps[len(gaps)/2]; med < 50*time.Millisecond || med > 180*time.Millisecond {
		t.Errorf("median watchdog gap %v (gaps %v), want about 100ms", med, gaps)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	next("STOPPING=1")
	if err := <-exited; err != nil {
		t.Errorf("relayd after SIGTERM: %v; log:\n%s", err, log)
	}
}

// TestSocketActivation runs relayd under systemd-socket-activate: it must serve the socket it
// is passed, keep LISTEN_* and NOTIFY_SOCKET from its workers, and leave the socket file alone
// when it exits, since systemd owns it.
func TestSocketActivation(t *testing.T) {
	activate, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("systemd-socket-activate not installed; skipping socket activation test")
	}
	sock := filepath.Join(shortTempDir(t), "s")
	cmd := exec.Command(activate, "-l", sock, filepath.Join(binDir, "relayd"), "--allow-fault-injection", "--worker-arg=--delay=0s")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET=/nonexistent/notify")
	log := new(syncBuffer)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := waitSocket(ctx, sock); err != nil {
		t.Fatal(err)
	}
	if got := unquote(t, ask(t, sock, "activated")); got != "ACTIVATED" {
		t.Errorf("reply = %q, want ACTIVATED; log:\n%s", got, log)
	}
	env := unquote(t, ask(t, sock, "!env"))
	for _, bad := range []string{"LISTEN_", "NOTIFY_SOCKET"} {
		if strings.Contains(env, bad) {
			t.Errorf("worker environment has %s:\n%s", bad, env)
		}
	}
	if !strings.Contains(log.String(), "socket from systemd") {
		t.Errorf("relayd did not say it uses systemd's socket; log:\n%s", log)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("relayd after SIGTERM: %v; log:\n%s", err, log)
	}
	if fi, err := os.Lstat(sock); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("systemd's socket after relayd exited: %v, want it left in place", err)
	}
}

// TestWorkerSandbox checks what a worker gets: an environment built from scratch, descriptors
// 0, 1 and 2 only (even when relayd itself inherited more), and its resource limits.
func TestWorkerSandbox(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s")
	extra, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	t.Setenv("RELAY_TEST_SECRET", "hunter2")
	t.Setenv("RELAY_TEST_PASS", "passed")
	t.Setenv("LANG", "C.UTF-8")
	r := startRelayd(t, sock, "--allow-fault-injection", "--worker-arg=--delay=0s",
		"--worker-env=RELAY_TEST_PASS", "--worker-env=HOME", "--worker-rlimit-nofile=32", "--worker-rlimit-data=512MiB")
	_ = r
	t.Run("env", func(t *testing.T) {
		got := unquote(t, ask(t, sock, "!env"))
		home := os.Getenv("HOME")
		want := []string{"GOMAXPROCS=1", "LANG=C.UTF-8", "PATH=/usr/local/bin:/usr/bin:/bin", "RELAY_ATTEMPT=1", "RELAY_FAULTS=1"}
		if home != "" {
			want = append(want, "HOME="+home)
		}
		slices.Sort(want)
		// TMPDIR is the worker's own scratch directory, a new one each time.
		lines := strings.Split(got, "\n")
		i := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "TMPDIR=/") })
		if i < 0 {
			t.Errorf("worker environment has no TMPDIR:\n%s", got)
		} else {
			got = strings.Join(slices.Delete(lines, i, i+1), "\n")
		}
		if got != strings.Join(want, "\n") {
			t.Errorf("worker environment:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
		}
	})
	t.Run("fds", func(t *testing.T) {
		if got := unquote(t, ask(t, sock, "!fds")); got != "0 1 2" {
			t.Errorf("worker descriptors = %q, want \"0 1 2\"", got)
		}
	})
	t.Run("rlimits", func(t *testing.T) {
		got := unquote(t, ask(t, sock, "!rlimits"))
		for _, want := range []string{"core 0 0", "nofile 32 32", "cpu 30 31", "data 536870912 536870912"} {
			if !slices.Contains(strings.Split(got, "\n"), want) {
				t.Errorf("worker limits lack %q:\n%s", want, got)
			}
		}
	})
}

// TestWorkerSandboxInheritedFD starts relayd with a descriptor it inherits without
// close-on-exec; relayd must not pass it on to workers.
func TestWorkerSandboxInheritedFD(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s")
	extra, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	cmd := exec.Command(filepath.Join(binDir, "relayd"), "--socket", sock, "--allow-fault-injection", "--worker-arg=--delay=0s")
	cmd.ExtraFiles = []*os.File{extra} // fd 3 in relayd, without close-on-exec
	log := new(syncBuffer)
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := waitSocket(ctx, sock); err != nil {
		t.Fatal(err)
	}
	if got := unquote(t, ask(t, sock, "!fds")); got != "0 1 2" {
		t.Errorf("worker descriptors = %q, want \"0 1 2\" although relayd inherited fd 3", got)
	}
}

// TestSocketFile covers the socket file: its mode, a stale socket left by a dead relayd, a
// second relayd on a live socket, and a path that is not a socket.
func TestSocketFile(t *testing.T) {
	dir := shortTempDir(t)
	t.Run("default mode", func(t *testing.T) {
		sock := filepath.Join(dir, "m1")
		startRelayd(t, sock)
		fi, err := os.Stat(sock)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != 0o660 {
			t.Errorf("mode = %#o, want 0660", got)
		}
	})
	t.Run("explicit mode", func(t *testing.T) {
		sock := filepath.Join(dir, "m2")
		startRelayd(t, sock, "--socket-mode=0600")
		fi, err := os.Stat(sock)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != 0o600 {
			t.Errorf("mode = %#o, want 0600", got)
		}
	})
	t.Run("group", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root to give the socket to another group")
		}
		g, err := user.LookupGroup("daemon")
		if err != nil {
			t.Skip("no group daemon to give the socket to")
		}
		sock := filepath.Join(dir, "g")
		startRelayd(t, sock, "--socket-group=daemon")
		fi, err := os.Stat(sock)
		if err != nil {
			t.Fatal(err)
		}
		if gid := fmt.Sprint(fi.Sys().(*syscall.Stat_t).Gid); gid != g.Gid {
			t.Errorf("socket gid = %s, want %s (daemon)", gid, g.Gid)
		}
	})
	t.Run("stale socket is replaced", func(t *testing.T) {
		sock := filepath.Join(dir, "st")
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		ln.SetUnlinkOnClose(false)
		ln.Close() // The file stays; nothing listens.
		r := startRelayd(t, sock)
		if got := unquote(t, ask(t, sock, "fresh")); got != "FRESH" {
			t.Errorf("reply = %q", got)
		}
		if !strings.Contains(r.log.String(), "removing stale socket") {
			t.Errorf("relayd did not log the stale socket; log:\n%s", r.log)
		}
	})
	t.Run("second relayd refuses", func(t *testing.T) {
		sock := filepath.Join(dir, "dup")
		startRelayd(t, sock)
		out, err := exec.Command(filepath.Join(binDir, "relayd"), "--socket", sock).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "another relayd is already listening") {
			t.Errorf("second relayd: %v, output %q; want exit 1 naming the other relayd", err, out)
		}
		if got := unquote(t, ask(t, sock, "still here")); got != "STILL HERE" {
			t.Errorf("first relayd after the second tried: %q", got)
		}
	})
	t.Run("not a socket", func(t *testing.T) {
		path := filepath.Join(dir, "file")
		if err := os.WriteFile(path, []byte("data"), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(filepath.Join(binDir, "relayd"), "--socket", path).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "is not a socket") {
			t.Errorf("relayd on a regular file: %v, %q; want a refusal", err, out)
		}
		if b, _ := os.ReadFile(path); string(b) != "data" {
			t.Errorf("relayd touched the file: %q", b)
		}
	})
}

// TestPeerCredentials connects as other uids with setpriv: a uid not in --allow-uid gets
// forbidden, one in it gets its reply.
func TestPeerCredentials(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to connect as other uids with setpriv")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv not installed")
	}
	dir := shortTempDir(t)
	// Other uids must reach the socket and run echo from the bin dir.
	for _, d := range []string{dir, binDir, filepath.Dir(binDir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(dir, "s")
	r := startRelayd(t, sock, "--socket-mode=0666", "--allow-uid=4242", "--worker-arg=--delay=0s")
	echo := func(uid int) (string, int) {
		cmd := exec.Command(setpriv, fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", uid), "--clear-groups",
			filepath.Join(binDir, "echo"), "--socket", sock, "hi")
		cmd.Env = []string{"PATH=/usr/bin:/bin", "GORACE=atexit_sleep_ms=0"}
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	if out, code := echo(4343); code != 1 || !strings.Contains(out, "forbidden") {
		t.Errorf("uid 4343: exit %d, %q; want exit 1 and forbidden", code, out)
	}
	if out, code := echo(4242); code != 0 || strings.TrimSpace(out) != "HI" {
		t.Errorf("uid 4242: exit %d, %q; want HI", code, out)
	}
	if !strings.Contains(r.log.String(), "uid=4343") {
		t.Errorf("refusal not logged with the uid; log:\n%s", r.log)
	}
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// TestWorkerUser runs workers as another user when relayd runs as root, and refuses the flag
// with a clear error otherwise.
func TestWorkerUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run workers as another user")
	}
	for _, d := range []string{binDir, filepath.Dir(binDir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(shortTempDir(t), "s")
	if !hasCapSysResource() {
		out, err := exec.Command(filepath.Join(binDir, "relayd"), "--socket", sock, "--worker-user=nobody").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "needs CAP_SYS_RESOURCE") {
			t.Errorf("relayd with --worker-user and no CAP_SYS_RESOURCE: %v, %q; want a clear refusal", err, out)
		}
		t.Skip("root here lacks CAP_SYS_RESOURCE, which setting another user's limits needs; checked the refusal only")
	}
	r := startRelayd(t, sock, "--worker-user=nobody", "--allow-fault-injection", "--worker-arg=--delay=0s")
	done := make(chan ipc.Answer, 1)
	go func() { done <- ask(t, sock, "!sleep 1s") }()
	var uid string
	// Only a process that runs the worker's executable counts: one forked but not yet
	// executed still has relayd's credentials.
	worker := filepath.Join(binDir, "worker")
	if !eventually(20*time.Second, func() bool {
		for _, pid := range descendants(r.cmd.Process.Pid) {
			if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); !bytes.HasPrefix(b, []byte(worker+"\x00")) {
				continue
			}
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(b), "\n") {
				if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
					uid = f[1]
					return true
				}
			}
		}
		return false
	}) {
		t.Fatal("no worker seen")
	}
	if uid != "65534" {
		t.Errorf("worker uid = %s, want 65534 (nobody)", uid)
	}
	if a := <-done; a.Error != nil {
		t.Errorf("answer: %s", a.Raw)
	}
	// The worker's scratch directory is its user's.
	if got := unquote(t, ask(t, sock, "!scratch")); !filepath.IsAbs(got) {
		t.Errorf("!scratch as nobody: %q, want the path of a writable TMPDIR", got)
	}

	if setpriv, err := exec.LookPath("setpriv"); err == nil {
		out, err := exec.Command(setpriv, "--reuid=4242", "--regid=4242", "--clear-groups",
			filepath.Join(binDir, "relayd"), "--socket", sock+"2", "--worker-user=nobody").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "--worker-user needs relayd to run as root") {
			t.Errorf("unprivileged relayd with --worker-user: %v, %q; want a clear refusal", err, out)
		}
	}
}

// hasCapSysResource reports whether this process has CAP_SYS_RESOURCE (bit 24 of CapEff).
func hasCapSysResource() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			var caps uint64
			fmt.Sscanf(strings.TrimSpace(v), "%x", &caps)
			return caps&(1<<24) != 0
		}
	}
	return false
}

// TestLogFormats checks both log formats, and that under journald (JOURNAL_STREAM set) relayd
// writes no timestamps of its own.
func TestLogFormats(t *testing.T) {
	tests := []struct {
		name       string
		journald   bool
		format     string
		wantStamp  bool
		wantPrefix string
	}{
		{"text", false, "text", true, "20"},
		{"text under journald", true, "text", false, "[INFO]"},
		{"json", false, "json", true, "{"},
		{"json under journald", true, "json", false, "{"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sock := filepath.Join(shortTempDir(t), "s")
			if tt.journald {
				t.Setenv("JOURNAL_STREAM", "8:12345")
			}
			r := startRelayd(t, sock, "--log-format="+tt.format)
			// The relay's loop logs its start on its own goroutine; a stop at once may come
			// first, so wait for it.
			if !eventually(20*time.Second, func() bool { return strings.Contains(r.log.String(), "relay started") }) {
				t.Fatalf("no relay started line; log:\n%s", r.log)
			}
			r.stop(t)
			first, _, _ := strings.Cut(r.log.String(), "\n")
			if !strings.HasPrefix(first, tt.wantPrefix) || !strings.Contains(first, "relay started") {
				t.Errorf("first line %q, want it to start with %q and say relay started", first, tt.wantPrefix)
			}
			if got := strings.Contains(first, "@timestamp") || strings.HasPrefix(first, "20"); got != tt.wantStamp {
				t.Errorf("first line %q: timestamp %v, want %v", first, got, tt.wantStamp)
			}
		})
	}
}

// TestConnectionLimits covers the limits that keep one client from hurting others: a line left
// half received past --frame-timeout closes its connection (an idle one stays), and
// connections past --max-conns are refused with busy.
func TestConnectionLimits(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s")
	// --max-conns-per-uid=0: the per-uid bound (half of --max-conns otherwise) would refuse
	// the second connection of this test's uid before --max-conns is reached.
	startRelayd(t, sock, "--frame-timeout=300ms", "--max-conns=2", "--max-conns-per-uid=0", "--worker-arg=--delay=0s")
	readAll := func(c net.Conn) string {
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		var b strings.Builder
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				return b.String()
			}
		}
	}

	t.Run("half a line", func(t *testing.T) {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte(`{"id":1,"to":"relay","topic":"echo","data":"whole"}` + "\n" + `{"id":2,"to":"re`))
		got := readAll(c) // relayd answers, then closes the connection
		if !strings.Contains(got, `"WHOLE"`) || !strings.Contains(got, "still incomplete after 300ms") {
			t.Errorf("got %q, want the whole line answered, then bad_request for the half one", got)
		}
	})
	t.Run("idle connection stays", func(t *testing.T) {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		time.Sleep(600 * time.Millisecond) // twice the frame timeout, with nothing sent
		c.Write([]byte(`{"id":3,"to":"relay","topic":"echo","data":"later"}` + "\n"))
		c.(*net.UnixConn).CloseWrite()
		if got := readAll(c); !strings.Contains(got, `"LATER"`) {
			t.Errorf("idle connection: got %q, want its message answered", got)
		}
	})
	t.Run("too many connections", func(t *testing.T) {
		var open []net.Conn
		defer func() {
			for _, c := range open {
				c.Close()
			}
		}()
		// A connection holds its slot once relayd has answered on it. A slot of an earlier
		// subtest's connection is freed as relayd sees it closed, so a refusal here is
		// tried again, within a bound.
		for i := range 2 {
			deadline := time.Now().Add(20 * time.Second)
			for {
				c, err := net.Dial("unix", sock)
				if err != nil {
					t.Fatal(err)
				}
				c.Write([]byte(fmt.Sprintf(`{"id":%d,"to":"relay","topic":"echo","data":"hold"}`+"\n", 10+i)))
				c.SetReadDeadline(time.Now().Add(20 * time.Second))
				line, err := bufio.NewReader(c).ReadString('\n')
				if strings.Contains(line, `"HOLD"`) {
					open = append(open, c)
					break
				}
				c.Close()
				if !strings.Contains(line, "too many connections") || time.Now().After(deadline) {
					t.Fatalf("connection %d of 2: got %q (%v), want its message answered", i+1, line, err)
				}
			}
		}
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte(`{"id":4,"to":"relay","topic":"echo","data":"x"}` + "\n"))
		if got := readAll(c); !strings.Contains(got, `"busy"`) || !strings.Contains(got, "too many connections (at most 2)") {
			t.Errorf("third connection: got %q, want busy: too many connections", got)
		}
	})
}

package integration

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
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

// requireSandbox asks relayd's status for its worker sandbox and skips the test when the
// kernel does not enforce every mechanism in need.
func requireSandbox(t *testing.T, sock string, need ...string) {
	t.Helper()
	var st ipc.Status
	if err := json.Unmarshal(dialAndRequest(t, sock, "status", nil).Data, &st); err != nil || st.Sandbox == nil {
		t.Fatalf("status without a sandbox: %v", err)
	}
	for _, m := range need {
		if !slices.Contains(st.Sandbox.Enforced, m) {
			t.Skipf("the kernel does not enforce %s here: %+v", m, st.Sandbox.Missing)
		}
	}
}

// TestSandboxNetwork opens a loopback listener and has a worker connect to it: refused by
// default, connected when the service allows the network.
func TestSandboxNetwork(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted sync.WaitGroup
	accepted.Add(1)
	go func() {
		defer accepted.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	defer accepted.Wait()
	defer ln.Close()
	directive := "!net " + ln.Addr().String()

	off := filepath.Join(shortTempDir(t), "s")
	startRelayd(t, off, "--allow-fault-injection", "--worker-arg=--delay=0s")
	requireSandbox(t, off, "seccomp")
	if got := unquote(t, ask(t, off, directive)); got == "connected" || !strings.Contains(got, "not supported") {
		t.Errorf("network off: %s = %q, want the socket refused", directive, got)
	}

	on := filepath.Join(shortTempDir(t), "s")
	startRelayd(t, on, "--allow-fault-injection", "--worker-arg=--delay=0s", "--worker-network")
	if got := unquote(t, ask(t, on, directive)); got != "connected" {
		t.Errorf("network on: %s = %q, want connected", directive, got)
	}
}

// TestSandboxFileSystem writes outside the scratch directory (refused), into a writable path
// (allowed), and into the scratch directory, which is gone once its worker has exited.
func TestSandboxFileSystem(t *testing.T) {
	outside, writable := t.TempDir(), t.TempDir()
	sock := filepath.Join(shortTempDir(t), "s")
	startRelayd(t, sock, "--allow-fault-injection", "--worker-arg=--delay=0s", "--worker-writable="+writable, "--kill-grace=1s")
	requireSandbox(t, sock, "landlock-fs")

	target := filepath.Join(outside, "f")
	if got := unquote(t, ask(t, sock, "!write "+target)); got != "open "+target+": permission denied" {
		t.Errorf("!write outside: %q, want permission denied", got)
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Errorf("the file outside exists: %v", err)
	}
	if got := unquote(t, ask(t, sock, "!write "+filepath.Join(writable, "f"))); got != "written" {
		t.Errorf("!write to a writable path: %q, want written", got)
	}

	scratch := unquote(t, ask(t, sock, "!scratch"))
	if !filepath.IsAbs(scratch) {
		t.Fatalf("!scratch = %q, want a path", scratch)
	}
	// The answer comes before the worker exits; its directory goes within --kill-grace.
	if !eventually(20*time.Second, func() bool { _, err := os.Stat(scratch); return os.IsNotExist(err) }) {
		t.Errorf("scratch directory %s still there 20s after its worker answered", scratch)
	}
	if other := unquote(t, ask(t, sock, "!scratch")); other == scratch {
		t.Errorf("two workers got the same scratch directory %s", other)
	}
}

// workerCopy copies the worker executable to a directory of the test's own, so that the test
// can tell its workers and their grandchildren (which run the same executable) from those of
// tests running beside it.
func workerCopy(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(binDir, "worker"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "worker")
	if err := os.WriteFile(path, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// processesOf lists the live processes running exe: its workers, and with grandchildren,
// only the grandchildren that !fork started.
func processesOf(exe string, grandchildren bool) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := bytes.Split(bytes.TrimSuffix(b, []byte{0}), []byte{0})
		if string(args[0]) != exe || !alive(pid) {
			continue
		}
		isGrandchild := slices.ContainsFunc(args, func(a []byte) bool { return bytes.HasPrefix(a, []byte("--grandchild-sleep")) })
		if isGrandchild == grandchildren {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestForkGrandchildrenDieWithKilledRelayd is the first escape of a setsid grandchild: relayd
// SIGKILLed while its workers' !fork grandchildren run. relayd is stopped (SIGSTOP) once every
// worker has its message, so that no answer and no clean-up comes between: the workers fork
// their grandchildren and wait for a stdin that never closes, until relayd is killed.
func TestForkGrandchildrenDieWithKilledRelayd(t *testing.T) {
	const n = 8
	exe := workerCopy(t)
	sock := filepath.Join(shortTempDir(t), "s")
	// A worker forks its grandchild --delay after it took its message, and answers right
	// after: relayd must be stopped within that time of the first message taken. The
	// delay is the time all n workers have to be forked and given their messages, which a
	// loaded machine does in well under a second; it is not what the test measures.
	r := startRelayd(t, sock, "--worker="+exe, "--allow-fault-injection", "--worker-arg=--delay=5s", "--message-timeout=1m")
	requireSandbox(t, sock, "pid-namespace")
	c, err := ipc.Dial(t.Context(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range n {
		if _, err := c.Send("relay", "echo", "!fork"); err != nil {
			t.Fatal(err)
		}
	}
	// A worker is busy once relayd has written its message to it; counting processes
	// instead would also count a grandchild forked but not yet executed (it has the
	// worker's command line), or a worker that has not got its message yet.
	var st ipc.Status
	busy := func() int {
		st = ipc.Status{}
		if err := json.Unmarshal(dialAndRequest(t, sock, "status", nil).Data, &st); err != nil {
			t.Fatalf("status: %v", err)
		}
		k := 0
		for _, w := range st.Workers {
			if w.State == "busy" {
				k++
			}
		}
		return k
	}
	if !eventually(20*time.Second, func() bool { return busy() == n }) {
		t.Fatalf("%d workers busy after 20s, want %d: %+v", busy(), n, st.Workers)
	}
	r.once.Do(func() {}) // It will not exit 0: skip the SIGTERM check at cleanup.
	if err := r.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var grandchildren []int
	if !eventually(30*time.Second, func() bool { grandchildren = processesOf(exe, true); return len(grandchildren) == n }) {
		r.cmd.Process.Kill()
		t.Fatalf("%d grandchildren running 30s after relayd was stopped with %d busy workers, want %d", len(grandchildren), n, n)
	}
	if err := r.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-r.exited
	killed := time.Now()
	// The kernel kills them with their PID namespace's init; 5s is for a loaded machine.
	if !eventually(5*time.Second, func() bool { return len(processesOf(exe, true)) == 0 }) {
		left := processesOf(exe, true)
		for _, pid := range left {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		t.Fatalf("%d of %d !fork grandchildren alive 5s after relayd's SIGKILL: %v", len(left), n, left)
	}
	t.Logf("all %d grandchildren gone %v after SIGKILL of relayd", n, time.Since(killed).Round(time.Millisecond))
	os.Remove(sock)
}

// TestReusedWorkerDescendants is the second escape: with --max-requests above 1, a worker's
// !fork grandchild must die when that message is answered, while the worker waits for more.
func TestReusedWorkerDescendants(t *testing.T) {
	const n = 8
	exe := workerCopy(t)
	sock := filepath.Join(shortTempDir(t), "s")
	startRelayd(t, sock, "--worker="+exe, "--allow-fault-injection", "--worker-arg=--delay=0s", "--max-requests=100")
	for range n {
		if got := unquote(t, ask(t, sock, "!fork")); got != "!FORK" {
			t.Fatalf("!fork answered %q", got)
		}
	}
	if !eventually(5*time.Second, func() bool { return len(processesOf(exe, true)) == 0 }) {
		t.Errorf("grandchildren alive after their messages were answered: %v", processesOf(exe, true))
	}
	if workers := processesOf(exe, false); len(workers) == 0 {
		t.Errorf("no worker alive: the reused worker should wait for more messages")
	}
}

// TestSandboxServiceKeys opens the sandbox of one service with network and writable in its
// block, while the relay service keeps it closed.
func TestSandboxServiceKeys(t *testing.T) {
	dir := shortTempDir(t)
	out := t.TempDir()
	conf := filepath.Join(dir, "relayd.hcl")
	if err := os.WriteFile(conf, []byte(`
service "open" {
  worker                = "`+filepath.Join(binDir, "worker")+`"
  args                  = ["--delay=0s"]
  allow-fault-injection = true
  network               = true
  writable              = ["`+out+`"]
}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s")
	startRelayd(t, sock, "--config", conf, "--allow-fault-injection", "--worker-arg=--delay=0s")
	requireSandbox(t, sock, "landlock-fs", "seccomp")
	target := filepath.Join(out, "f")
	// 127.0.0.1:1 is closed: an allowed socket is refused by the peer, a denied one earlier.
	for _, c := range []struct{ to, data, want string }{
		{"open", "!write " + target, "written"},
		{"relay", "!write " + target, "open " + target + ": permission denied"},
		{"open", "!net 127.0.0.1:1", "connect: connection refused"},
		{"relay", "!net 127.0.0.1:1", "socket: address family not supported by protocol"},
	} {
		if got := unquote(t, askTo(t, sock, c.to, c.data)); got != c.want {
			t.Errorf("%s %s: %q, want %q", c.to, c.data, got, c.want)
		}
	}
}

package sandbox

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestFileSystemReadOnlyButScratchAndWritable(t *testing.T) {
	writable := t.TempDir()
	s := newSandbox(t, Policy{Writable: []string{writable}})
	require(t, s, LandlockFS)
	outside := t.TempDir()
	for _, c := range []struct {
		name, path, want string
	}{
		{"outside", filepath.Join(outside, "f"), "permission denied"},
		{"writable", filepath.Join(writable, "f"), "ok"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := runHelper(t, s, "write", c.path)
			if !strings.Contains(got, c.want) {
				t.Errorf("writing %s: got %q, want %q", c.path, got, c.want)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(outside, "f")); err == nil {
		t.Errorf("the file outside was created")
	}
	t.Run("scratch", func(t *testing.T) {
		got := runHelper(t, s, "tmpdir")
		dir, result, _ := strings.Cut(got, "\n")
		if result != "ok" {
			t.Fatalf("writing in TMPDIR %s: %s", dir, result)
		}
		if !strings.HasPrefix(dir, s.root+"/") {
			t.Errorf("TMPDIR %q is not under the scratch root %q", dir, s.root)
		}
		// runHelper released the worker: its scratch directory is gone.
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("scratch directory %s still there after release: %v", dir, err)
		}
	})
}

// TestWorkersCannotWriteEachOthersScratch runs two workers at once: the second cannot write
// into the first's scratch directory, and a later worker gets an empty one.
func TestWorkersCannotWriteEachOthersScratch(t *testing.T) {
	s := newSandbox(t, Policy{})
	require(t, s, LandlockFS)
	cmd := helperCmd(t, "tmpdir-sleep")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	release, err := s.Launch(cmd, cmd.Start)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
		release()
	}()
	line := make([]byte, 256)
	n, err := out.Read(line)
	if err != nil {
		t.Fatal(err)
	}
	first := strings.TrimSpace(string(line[:n]))
	if got := runHelper(t, s, "write", filepath.Join(first, "f")); !strings.Contains(got, "permission denied") {
		t.Errorf("writing into another worker's scratch %s: got %q, want permission denied", first, got)
	}
	if got := runHelper(t, s, "write", filepath.Join(filepath.Dir(first), "f")); !strings.Contains(got, "permission denied") {
		t.Errorf("writing beside another worker's scratch: got %q, want permission denied", got)
	}
	// A slot given back is emptied before the next worker gets it.
	got := runHelper(t, s, "tmpdir")
	dir, _, _ := strings.Cut(got, "\n")
	entries, _ := os.ReadDir(filepath.Dir(dir))
	if len(entries) != 0 {
		t.Errorf("slot directory after release holds %d entries, want none", len(entries))
	}
}

func TestNetworkOffUnlessAllowed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	addr := ln.Addr().String()

	off := newSandbox(t, Policy{})
	require(t, off, Seccomp)
	if got := runHelper(t, off, "connect", addr); got == "ok" {
		t.Errorf("network off: connect to %s: got %q, want an error", addr, got)
	}
	if got := runHelper(t, off, "unix"); got != "ok" {
		t.Errorf("network off: a Unix socket: got %q, want ok", got)
	}
	on := newSandbox(t, Policy{Network: true})
	if got := runHelper(t, on, "connect", addr); got != "ok" {
		t.Errorf("network on: connect to %s: got %q, want ok", addr, got)
	}
}

func TestLandlockDeniesTCPWithoutSeccomp(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s := newSandbox(t, Policy{})
	require(t, s, LandlockNet)
	s.prog = nil // Landlock alone must keep TCP out.
	resetSlots(s)
	got := runHelper(t, s, "connect", ln.Addr().String())
	if !strings.Contains(got, "permission denied") {
		t.Errorf("connect with Landlock alone: got %q, want permission denied", got)
	}
}

func TestDeniedCallsFailWithEPERM(t *testing.T) {
	s := newSandbox(t, Policy{})
	require(t, s, Seccomp)
	for _, action := range []string{"ptrace", "keyctl"} {
		if got := runHelper(t, s, action); got != "operation not permitted" {
			t.Errorf("%s: got %q, want operation not permitted", action, got)
		}
	}
}

func TestSignalsStayInside(t *testing.T) {
	s := newSandbox(t, Policy{})
	require(t, s, LandlockScope)
	// In its own PID namespace the helper cannot even name the test's pid.
	s.cloneflags = 0
	got := runHelper(t, s, "kill", strconv.Itoa(os.Getpid()))
	if got != "operation not permitted" {
		t.Errorf("signalling the parent: got %q, want operation not permitted", got)
	}
}

func TestWorkerIsNamespaceInit(t *testing.T) {
	s := newSandbox(t, Policy{})
	require(t, s, PIDNamespace)
	if got := runHelper(t, s, "pid"); got != "1" {
		t.Errorf("pid inside: got %s, want 1", got)
	}
	// The way an unprivileged relayd makes it, also when this test runs as root.
	s.cloneflags = unix.CLONE_NEWUSER | unix.CLONE_NEWPID
	if got := runHelper(t, s, "pid"); got != "1" {
		t.Errorf("pid inside a new user namespace: got %s, want 1", got)
	}
	if got := runHelper(t, s, "ptrace"); got != "operation not permitted" {
		t.Errorf("ptrace inside a new user namespace: got %q, want operation not permitted", got)
	}
}

// TestDescendantsDieWithWorker kills a worker whose setsid grandchild would otherwise live a
// minute, and checks the grandchild goes with it.
func TestDescendantsDieWithWorker(t *testing.T) {
	s := newSandbox(t, Policy{})
	require(t, s, PIDNamespace)
	cmd, grandchild := startForker(t, s)
	cmd.Process.Kill()
	cmd.Wait()
	waitGone(t, grandchild)
}

func TestKillDescendants(t *testing.T) {
	for _, c := range []struct {
		name string
		mode Mode
	}{{"sandbox", ModeAuto}, {"off", ModeOff}} {
		t.Run(c.name, func(t *testing.T) {
			s, err := New(Config{Mode: c.mode, ScratchParent: t.TempDir(), Probe: func() *exec.Cmd { return helperCmd(t, "exit") }})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			cmd, grandchild := startForker(t, s)
			if n := KillDescendants(cmd.Process.Pid); n != 1 {
				t.Errorf("KillDescendants: killed %d, want 1", n)
			}
			waitGone(t, grandchild)
			if !alive(cmd.Process.Pid, make([]byte, 4096)) {
				t.Errorf("the worker itself was killed")
			}
			cmd.Process.Kill()
			cmd.Wait()
		})
	}
}

// startForker starts a helper that forks a setsid grandchild, and returns it with the
// grandchild's pid. The helper is killed at the end of the test.
func startForker(t *testing.T, s *Sandbox) (*exec.Cmd, int) {
	t.Helper()
	cmd := helperCmd(t, "fork")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	release, err := s.Launch(cmd, cmd.Start)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		release()
	})
	line := make([]byte, 64)
	n, err := out.Read(line)
	if err != nil || strings.TrimSpace(string(line[:n])) != "ok" {
		t.Fatalf("the helper did not fork: %q %v", line[:n], err)
	}
	kids := childrenOf(cmd.Process.Pid, make([]byte, 4096))
	if len(kids) != 1 {
		t.Fatalf("the helper has children %v, want one", kids)
	}
	return cmd, kids[0]
}

// waitGone waits, bounded, until pid is no longer a live process.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	buf := make([]byte, 4096)
	for alive(pid, buf) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still alive after 10s", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestStrictRefusesWhatIsMissing(t *testing.T) {
	_, err := New(Config{Mode: ModeStrict, ScratchParent: t.TempDir()}) // No probe: namespaces unknown.
	if err == nil || !strings.Contains(err.Error(), PIDNamespace) {
		t.Errorf("strict without a probe: got %v, want an error naming %s", err, PIDNamespace)
	}
}

func BenchmarkLaunch(b *testing.B) {
	for _, mode := range []Mode{ModeOff, ModeAuto} {
		b.Run(string(mode), func(b *testing.B) {
			s, err := New(Config{Mode: mode, ScratchParent: b.TempDir(), Probe: func() *exec.Cmd { return helperCmd(b, "exit") }})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			for b.Loop() {
				cmd := helperCmd(b, "exit")
				release, err := s.Launch(cmd, cmd.Start)
				if err != nil {
					b.Fatal(err)
				}
				cmd.Wait()
				release()
			}
		})
	}
}

// TestStaleScratchRemoved leaves the directory a killed relayd would, and one of a live
// process, and checks that a new sandbox removes the first only.
func TestStaleScratchRemoved(t *testing.T) {
	parent := t.TempDir()
	// A pid above the kernel's maximum is never in use.
	stale := filepath.Join(parent, scratchPrefix+"99999999-1")
	live := filepath.Join(parent, scratchPrefix+strconv.Itoa(os.Getpid())+"-1")
	other := filepath.Join(parent, "unrelated")
	for _, d := range []string{stale, live, other} {
		if err := os.MkdirAll(filepath.Join(d, "s1"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	s, err := New(Config{Mode: ModeOff, ScratchParent: parent})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale %s: %v, want removed", stale, err)
	}
	for _, d := range []string{live, other} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s: %v, want kept", d, err)
		}
	}
}

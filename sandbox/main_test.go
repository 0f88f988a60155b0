package sandbox

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// helperEnv turns the test binary into the confined process a test starts: it does what the
// variable names and prints the outcome.
const helperEnv = "SANDBOX_TEST_HELPER"

func TestMain(m *testing.M) {
	if action := os.Getenv(helperEnv); action != "" {
		os.Exit(helper(action, os.Args[1:]))
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// helper is the confined process: each action prints "ok" or the error, one line.
func helper(action string, args []string) int {
	report := func(err error) int {
		if err != nil {
			fmt.Println(err)
		} else {
			fmt.Println("ok")
		}
		return 0
	}
	switch action {
	case "exit":
		return 0
	case "write":
		return report(os.WriteFile(args[0], []byte("x"), 0o600))
	case "tmpdir":
		fmt.Println(os.Getenv("TMPDIR"))
		return report(os.WriteFile(os.Getenv("TMPDIR")+"/f", []byte("x"), 0o600))
	case "connect":
		c, err := net.DialTimeout("tcp", args[0], 5*time.Second)
		if err == nil {
			c.Close()
		}
		return report(err)
	case "unix":
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err == nil {
			unix.Close(fd)
		}
		return report(err)
	case "ptrace":
		_, _, errno := syscall.RawSyscall(syscall.SYS_PTRACE, syscall.PTRACE_TRACEME, 0, 0)
		if errno != 0 {
			return report(errno)
		}
		return report(nil)
	case "keyctl":
		_, err := unix.KeyctlInt(unix.KEYCTL_GET_KEYRING_ID, unix.KEY_SPEC_SESSION_KEYRING, 0, 0, 0)
		return report(err)
	case "kill":
		pid, _ := strconv.Atoi(args[0])
		return report(unix.Kill(pid, 0))
	case "pid":
		fmt.Println(os.Getpid())
		return 0
	case "fork":
		// A grandchild in a new session that outlives this process unless something kills
		// it; then wait to be killed.
		exe, _ := os.Executable()
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"=sleep")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			return report(err)
		}
		fmt.Println("ok")
		time.Sleep(time.Minute)
		return 0
	case "sleep":
		time.Sleep(time.Minute)
		return 0
	case "tmpdir-sleep":
		fmt.Println(os.Getenv("TMPDIR"))
		time.Sleep(time.Minute)
		return 0
	}
	fmt.Println("unknown action", action)
	return 2
}

// helperCmd returns a command running the test binary as helper for action.
func helperCmd(t testing.TB, action string, args ...string) *exec.Cmd {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	// The race runtime would pause a second at every helper exit.
	cmd.Env = []string{helperEnv + "=" + action, "PATH=/usr/bin:/bin", "GORACE=atexit_sleep_ms=0"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	return cmd
}

// newSandbox makes an auto-mode sandbox with policy, closed at the end of the test.
func newSandbox(t testing.TB, policy Policy) *Sandbox {
	t.Helper()
	s, err := New(Config{Mode: ModeAuto, Policy: policy, ScratchParent: t.TempDir(),
		Probe: func() *exec.Cmd { return helperCmd(t, "exit") }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// require skips the test when the kernel does not enforce mechanism m.
func require(t testing.TB, s *Sandbox, m string) {
	t.Helper()
	for _, x := range s.Report().Missing {
		if x.Mechanism == m {
			t.Skipf("the kernel does not enforce %s here: %s", m, x.Reason)
		}
	}
}

// runHelper runs action in s and returns its output without the trailing newline.
func runHelper(t testing.TB, s *Sandbox, action string, args ...string) string {
	t.Helper()
	cmd := helperCmd(t, action, args...)
	out := &bytes.Buffer{}
	cmd.Stdout = out
	release, err := s.Launch(cmd, cmd.Start)
	if err != nil {
		t.Fatalf("launching %s: %v", action, err)
	}
	defer release()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper %s: %v (output %q)", action, err, out.String())
	}
	return trimNL(out.String())
}

func trimNL(s string) string {
	for len(s) > 0 && s[len(s)-1] == '\n' {
		s = s[:len(s)-1]
	}
	return s
}

// resetSlots ends the parked slots of s, so that a test's change to s reaches the next worker.
func resetSlots(s *Sandbox) {
	s.mu.Lock()
	idle := s.idle
	s.idle = nil
	s.mu.Unlock()
	for _, sl := range idle {
		close(sl.jobs)
		<-sl.done
		os.RemoveAll(sl.dir)
	}
}

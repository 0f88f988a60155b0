// Package integration runs the real relayd, worker and echo binaries against each other through a
// real Unix socket: testscript scripts in testdata/ and Go tests for what scripts cannot drive,
// such as a pseudo-terminal.
package integration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"relayd/internal/testbin"
)

// commands are the binaries TestMain builds, by package directory under the module root. Under
// -race, relayd and echo are built with the race detector; the worker is not, because relayd
// scrubs its environment (so GORACE cannot reach it) and the race runtime's one-second pause at
// exit would change the worker timings that scripts observe.
var commands = []struct {
	pkg  string
	race bool
}{
	{"./cmd/relayd", true},
	{"./cmd/worker", false},
	{"./cmd/echo", true},
}

// binDir holds the built commands; TestMain puts it first on PATH.
var binDir string

// plainRelayd is relayd built without the race detector, whose memory tests measure: the race
// runtime multiplies a program's memory several times over. Without -race it is binDir's relayd.
var plainRelayd string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	tmp, err := os.MkdirTemp("", "relayd-integration")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	binDir = filepath.Join(tmp, "bin")
	if err := build(binDir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	plainRelayd = filepath.Join(binDir, "relayd")
	if raceEnabled {
		plainRelayd = filepath.Join(tmp, "plain", "relayd")
		if err := testbin.Build(plainRelayd, nil, nil, "relayd/cmd/relayd"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	os.Setenv("PATH", binDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	if os.Getenv("GODEBUG") == "" {
		// A started command that is never waited for panics when collected, in the tests and in
		// the commands they run.
		os.Setenv("GODEBUG", "execwait=2")
	}
	if raceEnabled && os.Getenv("GORACE") == "" {
		// The race runtime pauses a second at every exit by default; scripts run echo often.
		// testscript passes GORACE on to the commands it runs.
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}

	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: errors on successful test run: %v\n", err)
			code = 1
		}
	}
	return code
}

// build compiles the commands into dir, quietly unless it fails.
func build(dir string) error {
	for _, c := range commands {
		var flags []string
		if c.race && raceEnabled {
			flags = []string{"-race"}
		}
		if err := testbin.Build(dir+string(os.PathSeparator), nil, flags, "relayd/"+strings.TrimPrefix(c.pkg, "./")); err != nil {
			return err
		}
	}
	// The worker's go-plugin mode, which the worker execs from its own directory.
	// Built as make build builds it (static, -trimpath), so that it shares the build cache's
	// gRPC with make build and the bench's go-plugin peer instead of compiling it once more.
	return testbin.Build(filepath.Join(dir, "worker-plugin"), []string{"CGO_ENABLED=0"}, []string{"-tags=goplugin", "-trimpath", "-ldflags=-s -w"}, "relayd/cmd/worker")
}

// shortTempDir returns a new directory for sockets, removed at the end of the test. t.TempDir
// is too deep for the 108-byte limit on Unix socket paths.
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "rl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// waitSocket waits until something accepts connections on the Unix socket at path.
func waitSocket(ctx context.Context, path string) error {
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			return conn.Close()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("socket %s not accepting connections: %w", path, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// syncBuffer collects a command's output while a test reads it.
type syncBuffer = testbin.SyncBuffer

// relayd is a background relayd started by a Go test.
type relayd struct {
	socket string
	cmd    *exec.Cmd
	log    *syncBuffer // its stderr
	exited chan error
	once   sync.Once
}

// startRelayd starts relayd on socket with args and waits until the socket accepts connections.
// At the end of the test, unless stop was called before, it stops relayd.
func startRelayd(t *testing.T, socket string, args ...string) *relayd {
	t.Helper()
	return startRelaydBin(t, filepath.Join(binDir, "relayd"), socket, args...)
}

// startRelaydBin is startRelayd with the relayd executable at bin.
func startRelaydBin(t *testing.T, bin, socket string, args ...string) *relayd {
	t.Helper()
	r := &relayd{socket: socket, log: new(syncBuffer), exited: make(chan error, 1)}
	args = append([]string{"--socket", socket, "--worker", filepath.Join(binDir, "worker")}, args...)
	r.cmd = exec.Command(bin, args...)
	r.cmd.Stdout = r.log
	r.cmd.Stderr = r.log
	// Once relayd has exited, Wait returns even if something it started still holds its
	// output: the test reports that rather than hanging.
	r.cmd.WaitDelay = 5 * time.Second
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.exited <- r.cmd.Wait() }()
	t.Cleanup(func() { r.stop(t) })
	// relayd starts in well under a second; a loaded machine may take many.
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := waitSocket(ctx, socket); err != nil {
		t.Fatalf("%v; relayd's log:\n%s", err, r.log)
	}
	return r
}

// stop sends relayd SIGTERM and requires exit status 0 and its socket removed, as docs/OPERATIONS.md
// promises.
func (r *relayd) stop(t *testing.T) {
	t.Helper()
	r.once.Do(func() {
		if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			t.Errorf("signalling relayd: %v", err)
		}
		select {
		case err := <-r.exited:
			if err != nil {
				t.Errorf("relayd after SIGTERM: %v, want exit status 0; its log:\n%s", err, r.log)
			}
		case <-time.After(10 * time.Second):
			r.cmd.Process.Kill()
			<-r.exited
			t.Errorf("relayd did not exit within 10s of SIGTERM; its log:\n%s", r.log)
		}
		if _, err := os.Stat(r.socket); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("relayd's socket after exit: %v, want it removed", err)
		}
	})
}

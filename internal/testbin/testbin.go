// Package testbin builds the project's commands for tests that run them as real processes.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

// Build compiles pkgs (import paths such as relayd/cmd/worker) with `go build -o out`, adding
// env to the go command's environment and flags to its arguments. It prints nothing unless the
// build fails.
func Build(out string, env, flags []string, pkgs ...string) error {
	args := append(append([]string{"build", "-o", out}, flags...), pkgs...)
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building %s: %v\n%s", strings.Join(pkgs, " "), err, b)
	}
	return nil
}

// Main builds the worker into a temporary directory and stores its path in *worker, runs the
// tests, then checks that no goroutine was left running. It returns the exit code for os.Exit.
func Main(m *testing.M, worker *string) int {
	dir, err := os.MkdirTemp("", "relayd-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	*worker = filepath.Join(dir, "worker")
	if err := Build(*worker, nil, nil, "relayd/cmd/worker"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			return 1
		}
	}
	return code
}

// SyncBuffer collects output written from several goroutines, such as a logger's or a
// command's, for a test to read.
type SyncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

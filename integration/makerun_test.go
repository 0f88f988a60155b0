package integration

import (
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMakeRun runs `make run` as a new user would, with its binaries built into a directory of
// the test's own: relayd's error and a failing make when relayd cannot start, and a working
// relay otherwise (echo reads its standard input, which is not a terminal here, as a pipe).
func TestMakeRun(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	bin := t.TempDir()
	run := func(t *testing.T, stdin string, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "make", append([]string{"--no-print-directory", "-C", "..", "run", "BIN=" + bin}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	t.Run("relayd refuses its flags", func(t *testing.T) {
		out, err := run(t, "hello\n", "RUN_FLAGS=--bogus")
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("make run: %v, want a failure; output:\n%s", err, out)
		}
		for _, want := range []string{"relayd exited with status 2 before it listened", "relayd: unknown flag: --bogus"} {
			if !strings.Contains(out, want) {
				t.Errorf("output does not say %q:\n%s", want, out)
			}
		}
		if strings.Contains(out, "relay not available") {
			t.Errorf("echo ran although relayd never started:\n%s", out)
		}
	})
	t.Run("relayd runs", func(t *testing.T) {
		out, err := run(t, "hello\n")
		if err != nil {
			t.Fatalf("make run: %v; output:\n%s", err, out)
		}
		if !strings.Contains(out, "\nHELLO\n") {
			t.Errorf("output has no HELLO line:\n%s", out)
		}
		if _, err := exec.LookPath(filepath.Join(bin, "relayd")); err != nil {
			t.Errorf("make run did not build into BIN: %v", err)
		}
	})
}

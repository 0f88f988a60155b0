package integration

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestPipeManyLines pipes more lines than echo keeps in flight, with some answered late, and
// requires every answer in input order.
func TestPipeManyLines(t *testing.T) {
	t.Parallel()
	socket := filepath.Join(shortTempDir(t), "relayd.sock")
	startRelayd(t, socket, "--allow-fault-injection", "--worker-arg=--delay=0s", "--stats-interval=0")

	const n = 200
	var in, want strings.Builder
	for i := 1; i <= n; i++ {
		line := fmt.Sprintf("line %d ünïcödé", i)
		if i%25 == 0 {
			line = "!sleep 150ms" // Answered after many later lines.
		}
		fmt.Fprintln(&in, line)
		fmt.Fprintln(&want, strings.ToUpper(line))
	}
	cmd := exec.Command(filepath.Join(binDir, "echo"), "--socket", socket, "--timeout=10s")
	cmd.Stdin = strings.NewReader(in.String())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("echo: %v, want exit status 0; stderr:\n%s", err, &stderr)
	}
	if got := stdout.String(); got != want.String() {
		t.Errorf("stdout differs from the uppercased input in order\ngot:\n%s\nwant:\n%s", got, want.String())
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr = %q, want nothing", &stderr)
	}
}

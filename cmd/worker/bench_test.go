package main

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkStart measures what relayd pays per message when every worker serves one: start the
// worker, read its ready line, write one request, read the reply, close stdin and wait. "eof"
// is the same without a request. "empty" starts and waits for a Go program that does nothing,
// built the same way (static, stripped): the floor for any worker written in Go. All run with
// GOMAXPROCS=1 and --delay=0s. Besides wall time each reports child-cpu-ns/op, the user and
// system CPU time of the started process, which a busy machine disturbs less.
func BenchmarkStart(b *testing.B) {
	env := []string{"GOMAXPROCS=1"}
	b.Run("worker", func(b *testing.B) {
		var cpu time.Duration
		for b.Loop() {
			cpu += exchange(b, env, `{"id":"1","topic":"echo","data":"hello"}`+"\n", `{"id":"1","data":"HELLO"}`+"\n")
		}
		reportCPU(b, cpu)
	})
	b.Run("eof", func(b *testing.B) {
		var cpu time.Duration
		for b.Loop() {
			cpu += exchange(b, env, "", "")
		}
		reportCPU(b, cpu)
	})
	b.Run("empty", func(b *testing.B) {
		dir := b.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\nfunc main() {}\n"), 0o644); err != nil {
			b.Fatal(err)
		}
		bin := filepath.Join(dir, "empty")
		if err := goBuild(bin, "main.go", dir); err != nil {
			b.Fatal(err)
		}
		var cpu time.Duration
		for b.Loop() {
			cmd := exec.Command(bin)
			cmd.Env = env
			if err := cmd.Run(); err != nil {
				b.Fatal(err)
			}
			cpu += childCPU(cmd)
		}
		reportCPU(b, cpu)
	})
}

// childCPU is the CPU time the finished command used.
func childCPU(cmd *exec.Cmd) time.Duration {
	return cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
}

// reportCPU reports the started processes' CPU time per operation.
func reportCPU(b *testing.B, cpu time.Duration) {
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "child-cpu-ns/op")
}

// exchange runs one worker through its protocol: it writes request, unless empty, and expects
// reply after the ready line, then closes stdin and waits for exit status 0. It returns the
// worker's CPU time.
func exchange(b *testing.B, env []string, request, reply string) time.Duration {
	cmd := exec.Command(workerBin, "--delay=0s")
	cmd.Env = env
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	out := bufio.NewReader(stdout)
	if _, err := out.ReadString('\n'); err != nil {
		b.Fatalf("reading ready line: %v", err)
	}
	if request != "" {
		if _, err := io.WriteString(stdin, request); err != nil {
			b.Fatal(err)
		}
		if got, err := out.ReadString('\n'); err != nil || got != reply {
			b.Fatalf("reply = %q, %v; want %q", got, err, reply)
		}
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		b.Fatal(err)
	}
	return childCPU(cmd)
}

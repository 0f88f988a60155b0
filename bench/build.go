package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// binaries are the programs the bench runs.
type binaries struct {
	relayd, worker  string // from --bin, or built like make build does
	workerPlugin    string // the worker's go-plugin mode, beside the worker
	empty           string // the floor: package main; func main() {}
	plugin          string // the worker's echo behind go-plugin (gRPC)
	s6echo          string // the per-connection program s6-ipcserver forks
	s6ipcserver     string // empty when s6 is not installed
	sparesSupported bool   // relayd has --spares
	// relayd has --max-requests
	maxRequestsSupported bool
	profileSupported     bool // relayd has --cpu-profile
	transportSupported   bool // relayd has --transport (go-plugin workers)
	sandboxSupported     bool // relayd has --worker-sandbox
}

// leanFlags builds the way the Makefile builds the worker: static and stripped, so that each
// program measured starts as cheaply as a Go program can.
var leanFlags = []string{"-trimpath", "-ldflags=-s -w"}

// build builds the helper programs from the module's bench/ directory, and relayd and the worker
// too unless --bin names a directory that holds them.
func build(ctx context.Context, cfg *config, tmp string) (binaries, error) {
	var b binaries
	root, err := moduleRoot(ctx, cfg.goCmd)
	if err != nil {
		return b, err
	}
	b.empty = filepath.Join(tmp, "empty")
	b.plugin = filepath.Join(tmp, "pluginworker")
	b.s6echo = filepath.Join(tmp, "s6echo")
	type job struct {
		out, pkg string
		lean     bool
		tags     string
	}
	jobs := []job{
		{b.empty, "./bench/empty", true, ""},
		{b.plugin, "./bench/pluginworker", true, ""},
		{b.s6echo, "./bench/s6echo", true, ""},
	}
	if cfg.bin != "" {
		dir, err := filepath.Abs(cfg.bin)
		if err != nil {
			return b, err
		}
		b.relayd, b.worker = filepath.Join(dir, "relayd"), filepath.Join(dir, "worker")
		b.workerPlugin = filepath.Join(dir, "worker-plugin")
		for _, p := range []string{b.relayd, b.worker} {
			if _, err := os.Stat(p); err != nil {
				return b, fmt.Errorf("--bin: %w (run make build first)", err)
			}
		}
	} else {
		b.relayd, b.worker = filepath.Join(tmp, "relayd"), filepath.Join(tmp, "worker")
		b.workerPlugin = filepath.Join(tmp, "worker-plugin")
		jobs = append(jobs, job{b.relayd, "./cmd/relayd", false, ""}, job{b.worker, "./cmd/worker", true, ""},
			job{b.workerPlugin, "./cmd/worker", true, "goplugin"})
	}

	var wg sync.WaitGroup
	errs := make([]error, len(jobs))
	for i, j := range jobs {
		wg.Go(func() {
			args := []string{"build", "-o", j.out}
			env := os.Environ()
			if j.lean {
				args = append(args, leanFlags...)
				env = append(env, "CGO_ENABLED=0")
			}
			if j.tags != "" {
				args = append(args, "-tags="+j.tags)
			}
			cmd := exec.CommandContext(ctx, cfg.goCmd, append(args, j.pkg)...)
			cmd.Dir, cmd.Env = root, env
			if out, err := cmd.CombinedOutput(); err != nil {
				errs[i] = fmt.Errorf("building %s: %w\n%s", j.pkg, err, out)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return b, err
	}

	help, err := exec.CommandContext(ctx, b.relayd, "--help").CombinedOutput()
	if err != nil {
		return b, fmt.Errorf("running relayd --help: %w\n%s", err, help)
	}
	b.sparesSupported = bytes.Contains(help, []byte("--spares"))
	b.maxRequestsSupported = bytes.Contains(help, []byte("--max-requests"))
	b.profileSupported = bytes.Contains(help, []byte("--cpu-profile"))
	_, err = os.Stat(b.workerPlugin)
	b.transportSupported = bytes.Contains(help, []byte("--transport")) && err == nil
	b.sandboxSupported = bytes.Contains(help, []byte("--worker-sandbox"))
	if p, err := exec.LookPath("s6-ipcserver"); err == nil {
		b.s6ipcserver = p
	}
	return b, nil
}

// moduleRoot is the directory of the relayd module's go.mod, found from the working directory.
func moduleRoot(ctx context.Context, goCmd string) (string, error) {
	out, err := exec.CommandContext(ctx, goCmd, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("finding the module: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("run relay-bench inside the relayd module")
	}
	root := filepath.Dir(gomod)
	if _, err := os.Stat(filepath.Join(root, "bench", "empty", "main.go")); err != nil {
		return "", fmt.Errorf("module at %s has no bench/empty: %w", root, err)
	}
	return root, nil
}

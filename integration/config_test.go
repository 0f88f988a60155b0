package integration

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestConfigReload runs relayd from a config file, changes the file and sends SIGHUP: what can
// change applies to the next worker, what needs a restart is named and left alone, a broken
// file keeps the old settings, and flags on the command line win over the file throughout.
func TestConfigReload(t *testing.T) {
	dir := shortTempDir(t)
	conf := filepath.Join(dir, "relayd.conf")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(conf, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`# relayd settings
allow-fault-injection = true
worker-rlimit-nofile = 64
worker-arg = --delay=3s
`)
	sock := filepath.Join(dir, "s")
	r := startRelayd(t, sock, "--config", conf, "--worker-arg=--delay=0s", "--stats-interval=0")
	nofile := func() string {
		t.Helper()
		for _, line := range strings.Split(unquote(t, ask(t, sock, "!rlimits")), "\n") {
			if strings.HasPrefix(line, "nofile ") {
				return line
			}
		}
		t.Fatal("no nofile line")
		return ""
	}
	start := time.Now()
	if got := nofile(); got != "nofile 64 64" {
		t.Errorf("from the file: %q, want nofile 64 64", got)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("answer took %v: the command line's --delay=0s must win over the file's 3s", d)
	}

	hup := func(wantLog string) {
		t.Helper()
		before := strings.Count(r.log.String(), wantLog)
		if err := r.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		if !eventually(5*time.Second, func() bool { return strings.Count(r.log.String(), wantLog) > before }) {
			t.Fatalf("no %q after SIGHUP; log:\n%s", wantLog, r.log)
		}
	}
	write(`allow-fault-injection = true
worker-rlimit-nofile = 32
worker-arg = --delay=3s
socket-mode = 0600
`)
	hup("config reloaded")
	if got := nofile(); got != "nofile 32 32" {
		t.Errorf("after reload: %q, want nofile 32 32", got)
	}
	log := r.log.String()
	if !strings.Contains(log, "worker-rlimit-nofile=\"64 -> 32\"") {
		t.Errorf("reload did not log the change; log:\n%s", log)
	}
	if !strings.Contains(log, "need a restart") || !strings.Contains(log, "socket-mode") {
		t.Errorf("reload did not name socket-mode as needing a restart; log:\n%s", log)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode after reload: %v %v, want 0660 kept", fi.Mode().Perm(), err)
	}

	write("worker-rlimit-nofile = 16\nno-such-setting = 1\n")
	hup("reload failed; keeping the old settings")
	if got := nofile(); got != "nofile 32 32" {
		t.Errorf("after a failed reload: %q, want the old nofile 32 32", got)
	}
	if !slices.ContainsFunc(strings.Split(r.log.String(), "\n"), func(l string) bool {
		return strings.Contains(l, "reload failed") && strings.Contains(l, "no-such-setting")
	}) {
		t.Errorf("failed reload does not name the bad line; log:\n%s", r.log)
	}
}

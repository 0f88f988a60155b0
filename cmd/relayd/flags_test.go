package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	env := func(string) string { return "" }
	dir := t.TempDir()
	conf := func(s string) string {
		p := filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_")+".conf")
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name    string
		args    []string
		file    string
		wantErr string
		check   func(t *testing.T, c *config)
	}{
		{name: "defaults", check: func(t *testing.T, c *config) {
			if c.socket != "/run/relayd.sock" || c.maxRestarts != 2 || c.messageTimeout != 10*time.Second || c.maxRequests != 1 {
				t.Errorf("defaults = %+v", c)
			}
		}},
		{name: "file sets", file: "# comment\n\nqueue = 7\nworker-arg = --delay=1s\nworker-arg = \"--x=y z\"\n", check: func(t *testing.T, c *config) {
			if c.queue != 7 || strings.Join(c.workerArgs, "|") != "--delay=1s|--x=y z" {
				t.Errorf("queue %d, worker args %q", c.queue, c.workerArgs)
			}
		}},
		{name: "command line wins", args: []string{"--queue=3"}, file: "queue = 7\n", check: func(t *testing.T, c *config) {
			if c.queue != 3 {
				t.Errorf("queue = %d, want the command line's 3", c.queue)
			}
		}},
		{name: "unknown setting", file: "colour = blue\n", wantErr: `:1: unknown setting "colour"`},
		{name: "no equals", file: "queue 7\n", wantErr: `want "name = value"`},
		{name: "bad value", file: "queue = many\n", wantErr: ":1: queue:"},
		{name: "config in config", file: "config = /x\n", wantErr: `unknown setting "config"`},
		{name: "bad socket mode", args: []string{"--socket-mode=rw"}, wantErr: "not an octal"},
		{name: "bad size", args: []string{"--worker-rlimit-data=lots"}, wantErr: "--worker-rlimit-data"},
		{name: "stray argument", args: []string{"extra"}, wantErr: `unexpected argument "extra"`},
		{name: "negative spares", args: []string{"--spares=-1"}, wantErr: "--spares must not be negative, not -1"},
		{name: "negative duration", args: []string{"--kill-grace=-2s"}, wantErr: "--kill-grace must not be negative, not -2s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.file != "" {
				args = append(args, "--config", conf(tt.file))
			}
			c, err := parseFlags(args, io.Discard, env)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

func TestDiffSettings(t *testing.T) {
	old := map[string]string{"queue": "1", "socket": "/a", "log-level": "info"}
	apply, restart := diffSettings(old, map[string]string{"queue": "2", "socket": "/b", "log-level": "info"})
	if strings.Join(apply, ",") != "queue" || strings.Join(restart, ",") != "socket" {
		t.Errorf("apply %q, restart %q; want queue and socket", apply, restart)
	}
}

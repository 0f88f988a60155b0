package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
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
	relayOf := func(c *config) *serviceConfig { return c.service(relayName) }
	tests := []struct {
		name    string
		args    []string
		file    string
		wantErr string
		check   func(t *testing.T, c *config)
	}{
		{name: "defaults", check: func(t *testing.T, c *config) {
			r := relayOf(c)
			if c.socket != "/run/relayd.sock" || r.maxRestarts != 2 || r.messageTimeout != 10*time.Second || r.maxRequests != 1 || len(c.services) != 1 {
				t.Errorf("defaults = %+v, relay %+v", c, r)
			}
		}},
		{name: "file sets", file: "# comment\n\nqueue = 7\nworker-arg = [\"--delay=1s\", \"--x=y z\"]\n", check: func(t *testing.T, c *config) {
			if r := relayOf(c); r.queue != 7 || strings.Join(r.workerArgs, "|") != "--delay=1s|--x=y z" {
				t.Errorf("queue %d, worker args %q", r.queue, r.workerArgs)
			}
		}},
		{name: "one value for a list", file: "worker-arg = \"--delay=1s\"\nallow-fault-injection = true\nmax-message-bytes = 4096\n", check: func(t *testing.T, c *config) {
			if r := relayOf(c); strings.Join(r.workerArgs, "|") != "--delay=1s" || !r.faults || c.maxMessageBytes != 4096 {
				t.Errorf("worker args %q, faults %v, max-message-bytes %d", r.workerArgs, r.faults, c.maxMessageBytes)
			}
		}},
		{name: "command line wins", args: []string{"--queue=3"}, file: "queue = 7\nservice \"relay\" {\n  max-restarts = 5\n}\n", check: func(t *testing.T, c *config) {
			if r := relayOf(c); r.queue != 3 || r.maxRestarts != 5 {
				t.Errorf("queue = %d, max-restarts %d; want the command line's 3 and the block's 5", r.queue, r.maxRestarts)
			}
		}},
		{name: "relay block", file: "service \"relay\" {\n  args = [\"--delay=0s\"]\n  spares = 2\n  message-timeout = \"5s\"\n}\n", check: func(t *testing.T, c *config) {
			if r := relayOf(c); strings.Join(r.workerArgs, "|") != "--delay=0s" || r.spares != 2 || r.messageTimeout != 5*time.Second {
				t.Errorf("relay = %+v", r)
			}
		}},
		{name: "services", args: []string{"--service=quick=/bin/cat"}, file: "service \"thumbs\" {\n  worker = \"/opt/thumbs\"\n  max-workers = 8\n  env = [\"LANG\"]\n}\n", check: func(t *testing.T, c *config) {
			th, q := c.service("thumbs"), c.service("quick")
			if th == nil || q == nil || len(c.services) != 3 {
				t.Fatalf("services = %v", c.services)
			}
			if th.worker != "/opt/thumbs" || th.maxWorkers != 8 || th.queue != 1024 || th.spares != 0 {
				t.Errorf("thumbs = %+v", th)
			}
			if q.worker != "/bin/cat" || q.maxRequests != 1 {
				t.Errorf("quick = %+v", q)
			}
		}},
		{name: "unknown setting", file: "\n  colour = \"blue\"\n", wantErr: `:2:3: unknown setting "colour"`},
		{name: "misspelt setting", file: "max-worker = 3\n", wantErr: `did you mean "max-workers"`},
		{name: "unknown key in service", file: "service \"x\" {\n  worker = \"/bin/cat\"\n  socket = \"/x\"\n}\n", wantErr: `:3:3: unknown key "socket" in service "x"`},
		{name: "flag name in service", file: "service \"x\" {\n  worker-arg = [\"a\"]\n}\n", wantErr: `unknown key "worker-arg"`},
		{name: "service without worker", file: "service \"x\" {\n  queue = 1\n}\n", wantErr: `:1:9: service "x": worker is required`},
		{name: "service twice", file: "service \"x\" {\n  worker = \"a\"\n}\nservice \"x\" {\n  worker = \"b\"\n}\n", wantErr: `:4:9: service "x" is defined twice`},
		{name: "bad service name", file: "service \"a b\" {\n  worker = \"a\"\n}\n", wantErr: `only letters, digits`},
		{name: "service flag twice", args: []string{"--service=a=/x", "--service=a=/y"}, wantErr: `already defined`},
		{name: "service flag without path", args: []string{"--service=a"}, wantErr: `want NAME=PATH`},
		{name: "top level and relay block", file: "queue = 1\nservice \"relay\" {\n  queue = 2\n}\n", wantErr: `:3:3: queue is also set at the top level`},
		{name: "syntax error", file: "queue = = 7\n", wantErr: ":1:9:"},
		{name: "bad value", file: "queue = \"many\"\n", wantErr: ":1:9: queue:"},
		{name: "list for one value", file: "queue = [1, 2]\n", wantErr: "takes one value"},
		{name: "config in config", file: "config = \"/x\"\n", wantErr: `unknown setting "config"`},
		{name: "other block", file: "pool \"x\" {\n}\n", wantErr: `unknown block "pool"`},
		{name: "transport", file: "service \"x\" {\n  worker = \"a\"\n  transport = \"carrier-pigeon\"\n}\n", wantErr: `want stdio, netrpc or grpc`},
		{name: "bad socket mode", args: []string{"--socket-mode=rw"}, wantErr: "not an octal"},
		{name: "nats flag without nats", args: []string{"--nats-durable"}, wantErr: "the --nats-* flags need --nats URL"},
		{name: "short ack wait", args: []string{"--nats=nats://127.0.0.1:4222", "--nats-ack-wait=10ms"}, wantErr: "--nats-ack-wait must be at least 300ms"},
		{name: "nats replicas in the file", file: "nats = \"nats://127.0.0.1:4222\"\nnats-replicas = 9\n", wantErr: "--nats-replicas must be 1 to 5"},
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

func TestDiffValues(t *testing.T) {
	old := map[string]string{"queue": "1", "socket": "/a", "log-level": "info"}
	cs := diffValues("", old, map[string]string{"queue": "2", "socket": "/b", "log-level": "info"})
	if len(cs) != 2 || cs[0].name != "queue" || cs[0].applied != toRelay || cs[1].name != "socket" || cs[1].applied != atRestart {
		t.Errorf("changes = %+v; want queue (to the relay) and socket (at restart)", cs)
	}
}

// TestSettingsTable checks the table itself: every setting defines exactly one flag of its
// name, per-service keys are unique, and every flag of relayd is in the table.
func TestSettingsTable(t *testing.T) {
	keys := map[string]bool{}
	for _, st := range settings {
		if (st.global == nil) == (st.service == nil) {
			t.Errorf("%s: want exactly one of global and service", st.name)
		}
		if (st.scope == perService) != (st.service != nil) {
			t.Errorf("%s: scope and definition disagree", st.name)
		}
		if st.scope == perService {
			if keys[st.blockKey()] {
				t.Errorf("service key %q twice", st.blockKey())
			}
			keys[st.blockKey()] = true
		}
	}
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	defineFlags(fs, &config{}, &serviceConfig{})
	n := 0
	fs.VisitAll(func(f *pflag.Flag) {
		n++
		if lookupSetting(f.Name) == nil {
			t.Errorf("flag --%s has no row", f.Name)
		}
	})
	if n != len(settings) {
		t.Errorf("%d flags for %d rows", n, len(settings))
	}
}

// TestExampleConfig parses the annotated example config the project ships.
func TestExampleConfig(t *testing.T) {
	c, err := parseFlags([]string{"--config", "../../examples/relayd.hcl"}, io.Discard, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	r, th := c.service(relayName), c.service("thumbs")
	if r.spares != 2 || r.messageTimeout != 5*time.Second || th == nil || th.maxWorkers != 8 || th.messageTimeout != 30*time.Second {
		t.Errorf("relay %+v, thumbs %+v", r, th)
	}
}

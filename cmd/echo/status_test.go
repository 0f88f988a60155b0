package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/term"
)

func TestWriteStatus(t *testing.T) {
	tests := []struct {
		name, data, want string
	}{
		{
			name: "busy and idle workers, oldest first",
			data: `{"names":["relay"],"workers":[
				{"pid":31,"age_seconds":0.3,"state":"idle"},
				{"pid":20,"age_seconds":1.25,"state":"busy","attempt":2,"sender":"conn-1(pid=9,uid=0)","message_id":"abc"},
				{"pid":21,"age_seconds":1.25,"state":"busy","attempt":1,"sender":"conn-2(pid=9,uid=0)","message_id":7}],
				"stats":{"messages":3,"workers_spawned":4,"in_flight":2,"queued":0,"spares_ready":1,"restarts":1,
				"exits":{"normal":1,"exit(1)":1},"uptime_seconds":75.5,"goroutines":20,"new_field":1}}`,
			want: `names: relay

PID  AGE   STATE  ATTEMPT  SENDER               MESSAGE
20   1.2s  busy   2        conn-1(pid=9,uid=0)  abc
21   1.2s  busy   1        conn-2(pid=9,uid=0)  7
31   0.3s  idle   -        -                    -

stats: messages=3 workers_spawned=4 in_flight=2 queued=0 spares_ready=1 restarts=1 exits=exit(1):1,normal:1 uptime=1m15s goroutines=20
`,
		},
		{
			name: "no workers, several names",
			data: `{"names":["relay","other"],"workers":[],"stats":{"exits":{}}}`,
			want: `names: relay, other

no live workers

stats: messages=0 workers_spawned=0 in_flight=0 queued=0 spares_ready=0 restarts=0 exits=none uptime=0.0s goroutines=0
`,
		},
		{
			name: "sandbox, all enforced",
			data: `{"names":["relay"],"workers":[],"stats":{},"sandbox":{"mode":"auto","enforced":["pid-namespace","landlock-fs","seccomp"]}}`,
			want: `names: relay

no live workers

stats: messages=0 workers_spawned=0 in_flight=0 queued=0 spares_ready=0 restarts=0 exits=none uptime=0.0s goroutines=0
sandbox: auto, enforced: pid-namespace landlock-fs seccomp
`,
		},
		{
			name: "sandbox without a PID namespace",
			data: `{"names":["relay"],"workers":[],"stats":{},"sandbox":{"mode":"auto","enforced":["seccomp"],"missing":[{"mechanism":"pid-namespace","reason":"operation not permitted"}]}}`,
			want: `names: relay

no live workers

stats: messages=0 workers_spawned=0 in_flight=0 queued=0 spares_ready=0 restarts=0 exits=none uptime=0.0s goroutines=0
sandbox: auto, enforced: seccomp
sandbox: not enforced: pid-namespace (operation not permitted)
sandbox: descendants are stopped by process group and subreaper sweep
`,
		},
		{
			name: "control characters from clients are escaped",
			data: `{"names":["re\u001b[2Jlay"],"workers":[{"pid":5,"age_seconds":1,"state":"busy","attempt":1,"sender":"conn-1","message_id":"x\u001b]0;pwned\u0007"}],"stats":{}}`,
			want: `names: "re\x1b[2Jlay"

PID  AGE   STATE  ATTEMPT  SENDER  MESSAGE
5    1.0s  busy   1        conn-1  "x\x1b]0;pwned\a"

stats: messages=0 workers_spawned=0 in_flight=0 queued=0 spares_ready=0 restarts=0 exits=none uptime=0.0s goroutines=0
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := parseStatus(json.RawMessage(tt.data))
			if err != nil {
				t.Fatal(err)
			}
			var b bytes.Buffer
			if err := writeStatus(&b, st); err != nil {
				t.Fatal(err)
			}
			if got := b.String(); got != tt.want {
				t.Errorf("writeStatus printed\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestParseStatusNotAStatus(t *testing.T) {
	_, err := parseStatus(json.RawMessage(`"HELLO"`))
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != exitReplyError {
		t.Fatalf("parseStatus of a string: %v, want an exit-1 error", err)
	}
	if !strings.Contains(err.Error(), "status reply is not a status") {
		t.Errorf("error %q, want it to say the reply is not a status", err)
	}
}

func TestWriteTop(t *testing.T) {
	st, err := parseStatus(json.RawMessage(`{"names":["relay"],"workers":[{"pid":5,"age_seconds":2,"state":"idle"}],"stats":{"messages":1,"uptime_seconds":3725}}`))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	now := time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)
	if err := writeTop(&b, "/run/relayd.sock", now, st); err != nil {
		t.Fatal(err)
	}
	want := `relayd /run/relayd.sock  15:04:05  up 1h02m  names: relay
stats: messages=1 workers_spawned=0 in_flight=0 queued=0 spares_ready=0 restarts=0 exits=none uptime=1h02m goroutines=0

PID  AGE   STATE  ATTEMPT  SENDER  MESSAGE
5    2.0s  idle   -        -       -
`
	if got := b.String(); got != want {
		t.Errorf("writeTop printed\n%s\nwant\n%s", got, want)
	}
}

func TestFormatAge(t *testing.T) {
	tests := []struct {
		seconds float64
		want    string
	}{
		{-1, "0.0s"},
		{0, "0.0s"},
		{0.04, "0.0s"},
		{0.75, "0.8s"},
		{59.94, "59.9s"},
		{60, "1m00s"},
		{187, "3m07s"},
		{3599, "59m59s"},
		{3600, "1h00m"},
		{7500, "2h05m"},
		{86400, "1d00h"},
		{3*86400 + 4*3600 + 59, "3d04h"},
	}
	for _, tt := range tests {
		if got := formatAge(tt.seconds); got != tt.want {
			t.Errorf("formatAge(%v) = %q, want %q", tt.seconds, got, tt.want)
		}
	}
}

func TestClean(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"conn-1(pid=9,uid=0)", "conn-1(pid=9,uid=0)"},
		{"straße ✓", "straße ✓"},
		{"", ""},
		{"a\x1b[31mb", `"a\x1b[31mb"`},
		{"tab\there", `"tab\there"`},
		{"new\nline", `"new\nline"`},
	}
	for _, tt := range tests {
		if got := clean(tt.in); got != tt.want {
			t.Errorf("clean(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestFitScreen(t *testing.T) {
	tests := []struct {
		name          string
		frame         string
		width, height int
		want          string
	}{
		{
			name: "fits", frame: "ab\ncd\n", width: 10, height: 5,
			want: "\x1b[Hab\x1b[K\r\ncd\x1b[K\x1b[J",
		},
		{
			name: "long line cut", frame: "abcdef\n", width: 4, height: 5,
			want: "\x1b[Habc…\x1b[K\x1b[J",
		},
		{
			name: "a multi-byte rune is one column", frame: "ßßßß\n", width: 4, height: 5,
			want: "\x1b[Hßßßß\x1b[K\x1b[J",
		},
		{
			name: "too many lines", frame: "1\n2\n3\n4\n5\n", width: 20, height: 4,
			want: "\x1b[H1\x1b[K\r\n2\x1b[K\r\n… 3 more lines\x1b[K\x1b[J",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fitScreen(tt.frame, tt.width, tt.height); got != tt.want {
				t.Errorf("fitScreen(%q, %d, %d) = %q, want %q", tt.frame, tt.width, tt.height, got, tt.want)
			}
		})
	}
}

// TestReadKeys types at a raw pseudo-terminal: q, Q, Ctrl+C and Ctrl+D quit, other keys do
// not, and stop ends the reader either way.
func TestReadKeys(t *testing.T) {
	tests := []struct {
		name     string
		input    string
		wantQuit bool
	}{
		{"q", "q", true},
		{"Q after others", "xyQ", true},
		{"Ctrl+C", "\x03", true},
		{"Ctrl+D", "\x04", true},
		{"other keys", "hello", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ptmx, tty, err := pty.Open()
			if err != nil {
				t.Fatal(err)
			}
			defer ptmx.Close()
			defer tty.Close()
			fd := int(tty.Fd())
			state, err := term.MakeRaw(fd)
			if err != nil {
				t.Fatal(err)
			}
			defer term.Restore(fd, state)

			quit := make(chan struct{})
			stop, err := readKeys(fd, sync.OnceFunc(func() { close(quit) }))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ptmx.WriteString(tt.input); err != nil {
				t.Fatal(err)
			}
			wait := 200 * time.Millisecond
			if tt.wantQuit {
				wait = 5 * time.Second
			}
			select {
			case <-quit:
				if !tt.wantQuit {
					t.Errorf("typing %q quit, want it ignored", tt.input)
				}
			case <-time.After(wait):
				if tt.wantQuit {
					t.Errorf("typing %q did not quit within %v", tt.input, wait)
				}
			}
			stop()
		})
	}
}

package ipc

import (
	"errors"
	"io"
	"strings"
	"testing"
)

func TestDecodeRequest(t *testing.T) {
	tests := []struct {
		line     string
		wantCode string
		wantID   string
		wantTo   string
	}{
		{line: `{"id":1,"to":"relay","topic":"echo","data":"hello"}`, wantID: "1", wantTo: "relay"},
		{line: `{"id":"a-b","to":"relay","topic":"echo","data":"hello"}`, wantID: `"a-b"`, wantTo: "relay"},
		{line: `  {"to":"relay","topic":"stats"}  `, wantTo: "relay"},
		{line: `{"id":null,"to":"relay","topic":"stats"}`, wantTo: "relay"},
		{line: `{"id":-2.5e3,"to":"relay","topic":"stats"}`, wantID: "-2.5e3", wantTo: "relay"},
		{line: `not json`, wantCode: CodeBadRequest},
		{line: `[1,2]`, wantCode: CodeBadRequest},
		{line: `{"id":1,"to":"relay","topic":"echo"`, wantCode: CodeBadRequest},
		{line: `{"id":7,"topic":"echo","data":"x"}`, wantCode: CodeBadRequest, wantID: "7"},
		{line: `{"id":7,"to":"","topic":"echo"}`, wantCode: CodeBadRequest, wantID: "7"},
		{line: `{"id":7,"to":"relay"}`, wantCode: CodeBadRequest, wantID: "7"},
		{line: `{"id":7,"to":5,"topic":"echo"}`, wantCode: CodeBadRequest, wantID: "7"},
		{line: `{"id":7,"to":"relay","topic":["echo"]}`, wantCode: CodeBadRequest, wantID: "7"},
		{line: `{"id":{"a":1},"to":"relay","topic":"echo"}`, wantCode: CodeBadRequest},
		{line: `{"id":true,"to":"relay","topic":"echo"}`, wantCode: CodeBadRequest},
		{line: `{"id":"` + strings.Repeat("x", 200) + `","to":"relay","topic":"echo"}`, wantCode: CodeBadRequest},
		// Invalid UTF-8 anywhere is bad_request; an id with invalid bytes is not given back.
		{line: "{\"id\":\"\xff\",\"to\":\"relay\",\"topic\":\"echo\",\"data\":\"x\"}", wantCode: CodeBadRequest},
		{line: "{\"id\":8,\"to\":\"relay\",\"topic\":\"echo\",\"data\":\"a\xc3(b\"}", wantCode: CodeBadRequest, wantID: "8"},
		{line: "{\"id\":9,\"to\":\"re\xfflay\",\"topic\":\"echo\"}", wantCode: CodeBadRequest, wantID: "9"},
		{line: "{\"id\":10,\"to\":\"relay\",\"topic\":\"ec\xedho\"}", wantCode: CodeBadRequest, wantID: "10"},
		{line: "{\"id\":11,\"to\":\"relay\",\"topic\":\"echo\",\"x\xf0\":1}", wantCode: CodeBadRequest, wantID: "11"},
		{line: `{"id":12,"to":"relay","topic":"echo","data":"straße ✓"}`, wantID: "12", wantTo: "relay"},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			req, err := DecodeRequest([]byte(tt.line))
			gotCode := ""
			if err != nil {
				gotCode = err.Code
				if err.Message == "" {
					t.Error("error without a message")
				}
			}
			if gotCode != tt.wantCode {
				t.Fatalf("code = %q, want %q (err %v)", gotCode, tt.wantCode, err)
			}
			if got := string(req.ID); got != tt.wantID {
				t.Errorf("id = %q, want %q", got, tt.wantID)
			}
			if err == nil && req.To != tt.wantTo {
				t.Errorf("to = %q, want %q", req.To, tt.wantTo)
			}
		})
	}
}

func TestLineReader(t *testing.T) {
	long := strings.Repeat("y", 40)
	tests := []struct {
		name  string
		input string
		max   int
		want  []string // "ERR" marks ErrTooLarge
	}{
		{"lines", "a\nbb\n\nccc\n", 10, []string{"a", "bb", "", "ccc"}},
		{"final line without newline", "a\nlast", 10, []string{"a", "last"}},
		{"exactly max", "0123456789\nx\n", 10, []string{"0123456789", "x"}},
		{"over max then recovers", "01234567890\nok\n", 10, []string{"ERR", "ok"}},
		{"long line across buffer fills", long + "\n" + "z\n", 16, []string{"ERR", "z"}},
		{"long final line", "a\n" + long, 16, []string{"a", "ERR"}},
		{"line longer than buffer but within max", long + "\n", 64, []string{long}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lr := NewLineReader(strings.NewReader(tt.input), tt.max)
			var got []string
			for {
				line, err := lr.ReadLine()
				if errors.Is(err, io.EOF) {
					break
				}
				if errors.Is(err, ErrTooLarge) {
					got = append(got, "ERR")
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, string(line))
			}
			if strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Errorf("lines = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestResolveSocket(t *testing.T) {
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == SocketEnv {
				return v
			}
			return ""
		}
	}
	tests := []struct{ flag, env, want string }{
		{"/a.sock", "/b.sock", "/a.sock"},
		{"", "/b.sock", "/b.sock"},
		{"", "", DefaultSocket},
	}
	for _, tt := range tests {
		if got := ResolveSocket(tt.flag, env(tt.env)); got != tt.want {
			t.Errorf("ResolveSocket(%q) with RELAY_SOCKET=%q = %q, want %q", tt.flag, tt.env, got, tt.want)
		}
	}
}

func TestSniffID(t *testing.T) {
	tests := []struct{ head, want string }{
		{`{"id":12,"to":"relay","topic":"echo","data":"xxxxxxxx`, `12`},
		{`{ "id" : "abc", "to":"relay"`, `"abc"`},
		{`{"to":"relay","id":12,"data":"xxxx`, ``},
		{`{"id":{"a":1},"to":"relay"`, ``},
		{`{"id":123`, ``}, // the number may go on past the head
		{`not json at all`, ``},
		{`{"id":"unterminated`, ``},
		{"{\"id\":\"\xff\",\"to\":\"relay\"", ``}, // never echo invalid UTF-8
	}
	for _, tt := range tests {
		if got := string(SniffID([]byte(tt.head))); got != tt.want {
			t.Errorf("SniffID(%q) = %q, want %q", tt.head, got, tt.want)
		}
	}
}

func TestLineReaderHead(t *testing.T) {
	line := `{"id":5,"data":"` + strings.Repeat("z", 1000) + `"}`
	lr := NewLineReader(strings.NewReader(line+"\nok\n"), 100)
	if _, err := lr.ReadLine(); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err = %v, want ErrTooLarge", err)
	}
	if got := string(lr.Head()); !strings.HasPrefix(line, got) || len(got) < 20 {
		t.Errorf("head = %q, want the start of the refused line", got)
	}
	if got := string(SniffID(lr.Head())); got != "5" {
		t.Errorf("id of the refused line = %q, want 5", got)
	}
}

package integration

import (
	"bufio"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestProtocolOverOneConnection sends malformed and well-formed lines down one raw connection:
// each gets the right answer, in the right shape, and the connection stays usable to the end,
// including after a line over --max-message-bytes. It half-closes after the last line, as
// `printf … | socat` does, and every answer still arrives.
func TestProtocolOverOneConnection(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s")
	startRelayd(t, sock, "--worker-arg=--delay=0s", "--max-message-bytes=4096")
	tests := []struct {
		line      string
		wantID    string // the id the answer must carry, "" for none
		wantTopic string
		wantCode  string
		wantData  string
	}{
		{line: `{"id":1,"to":"relay","topic":"echo","data":"hello world"}`, wantID: "1", wantTopic: "echo_response", wantData: `"HELLO WORLD"`},
		{line: `not json`, wantTopic: "error", wantCode: "bad_request"},
		{line: `{"id":"s","to":"relay","topic":"echo","data":"привет"}`, wantID: `"s"`, wantTopic: "echo_response", wantData: `"ПРИВЕТ"`},
		{line: `{"id":3,"topic":"echo","data":"x"}`, wantID: "3", wantTopic: "error", wantCode: "bad_request"},
		{line: `{"id":4,"to":"nobody","topic":"echo","data":"x"}`, wantID: "4", wantTopic: "error", wantCode: "unknown_name"},
		{line: `{"id":5,"to":"relay","topic":"dance","data":"x"}`, wantID: "5", wantTopic: "error", wantCode: "unknown_topic"},
		{line: `{"id":6,"to":"relay","topic":"echo","data":42}`, wantID: "6", wantTopic: "error", wantCode: "bad_request"},
		{line: `{"id":7,"to":"relay","topic":"echo","data":"` + strings.Repeat("x", 5000) + `"}`, wantID: "7", wantTopic: "error", wantCode: "too_large"},
		{line: `{"id":{"x":1},"to":"relay","topic":"echo","data":"x"}`, wantTopic: "error", wantCode: "bad_request"},
		{line: `{"id":9,"to":"relay","topic":"stats"}`, wantID: "9", wantTopic: "stats_response"},
		{line: `{"id":"<&>","to":"relay","topic":"echo","data":"last"}`, wantID: `"<&>"`, wantTopic: "echo_response", wantData: `"LAST"`},
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(c)
	for _, tt := range tests {
		if _, err := c.Write([]byte(tt.line + "\n")); err != nil {
			t.Fatal(err)
		}
		if tt == tests[len(tests)-1] {
			c.(*net.UnixConn).CloseWrite()
		}
		line, err := r.ReadBytes('\n')
		if err != nil {
			t.Fatalf("after %.40q: %v", tt.line, err)
		}
		var got struct {
			ID    json.RawMessage `json:"id"`
			Topic string          `json:"topic"`
			Data  json.RawMessage `json:"data"`
			Error *struct{ Code, Message string }
		}
		if err := json.Unmarshal(line, &got); err != nil {
			t.Fatalf("answer %q: %v", line, err)
		}
		name := tt.line[:min(len(tt.line), 40)]
		if string(got.ID) != tt.wantID || got.Topic != tt.wantTopic {
			t.Errorf("%s: id, topic = %s, %q; want %s, %q", name, got.ID, got.Topic, tt.wantID, tt.wantTopic)
		}
		if code := ""; got.Error != nil {
			code = got.Error.Code
			if code != tt.wantCode || got.Error.Message == "" {
				t.Errorf("%s: error %+v, want code %q with a message", name, got.Error, tt.wantCode)
			}
		} else if tt.wantCode != "" {
			t.Errorf("%s: answer %s, want error %q", name, line, tt.wantCode)
		}
		if tt.wantData != "" && string(got.Data) != tt.wantData {
			t.Errorf("%s: data = %s, want %s", name, got.Data, tt.wantData)
		}
	}
	if _, err := r.ReadByte(); err == nil {
		t.Error("more after the last answer; want relayd to close the half-closed connection")
	}
}

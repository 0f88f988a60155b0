package sdk

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestServe(t *testing.T) {
	boom := errors.New("boom")
	handle := func(req *Request) (json.RawMessage, error) {
		switch req.Topic {
		case "plain":
			return nil, errors.New("no can do")
		case "coded":
			return nil, Errorf("quota", "over quota")
		case "stop":
			return nil, Stop(boom)
		case "nothing":
			return nil, nil
		case "invalid":
			return json.RawMessage("{"), nil
		case "attempt":
			return JSON(req.Attempt)
		case "echo":
			return req.Data, nil
		}
		return nil, Errorf(CodeUnknownTopic, "no topic %q", req.Topic)
	}
	tests := []struct {
		name, in string
		want     []string // reply lines after the ready line
		wantErr  error
	}{
		{"plain error", `{"id":"1","topic":"plain"}`, []string{`{"id":"1","error":{"message":"no can do"}}`}, nil},
		{"coded error", `{"id":"1","topic":"coded","data":1}`, []string{`{"id":"1","error":{"code":"quota","message":"over quota"}}`}, nil},
		{"no data is null, no answer is null", `{"id":"a","topic":"echo"}` + "\n" + `{"id":"b","topic":"nothing"}`, []string{`{"id":"a","data":null}`, `{"id":"b","data":null}`}, nil},
		{"html is not escaped", `{"id":"1","topic":"echo","data":"<&>"}`, []string{`{"id":"1","data":"<&>"}`}, nil},
		{"invalid answer", `{"id":"1","topic":"invalid"}`, []string{`{"id":"1","error":{"message":"the worker's answer is not one JSON value"}}`}, nil},
		{"attempt", `{"id":"1","topic":"attempt"}`, []string{`{"id":"1","data":3}`}, nil},
		{"blank lines skipped, last line without newline", "\n\n" + `{"id":"1","topic":"echo","data":[1]}`, []string{`{"id":"1","data":[1]}`}, nil},
		{"stop ends the worker", `{"id":"1","topic":"stop"}` + "\n" + `{"id":"2","topic":"echo"}`, nil, boom},
		{"not a request", "hello\n", nil, errors.New("decoding request")},
		{"too long", `{"id":"1","topic":"echo","data":"` + strings.Repeat("x", 200) + `"}`, nil, errTooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			w := &Worker{Handler: handle, In: strings.NewReader(tt.in), Out: &out, PID: 7, Attempt: 3, MaxRequestBytes: 100}
			err := w.Serve()
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("Serve: %v", err)
			case tt.wantErr != nil && (err == nil || !errors.Is(err, tt.wantErr) && !strings.Contains(err.Error(), tt.wantErr.Error())):
				t.Fatalf("Serve = %v, want %v", err, tt.wantErr)
			}
			lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
			if lines[0] != `{"ready":true,"protocol":1,"pid":7}` {
				t.Errorf("ready line %q", lines[0])
			}
			if got, want := strings.Join(lines[1:], "\n"), strings.Join(tt.want, "\n"); got != want {
				t.Errorf("replies:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

func TestDecode(t *testing.T) {
	tests := []struct {
		data string
		into any
		want string // "" for success, else part of the error
	}{
		{`"x"`, new(string), ""},
		{`null`, new(string), "wants data"},
		{`42`, new(string), "must be a string, not number"},
		{`"x"`, new([]int), "must be an array, not string"},
		{`{"a":1}`, new(map[string]int), ""},
		{`null`, new(map[string]int), ""},
		{`[1,"x"]`, new([]int), "must be a number, not string"},
	}
	for _, tt := range tests {
		err := (&Request{Topic: "t", Data: json.RawMessage(tt.data)}).Decode(tt.into)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("Decode(%s) into %T: %v", tt.data, tt.into, err)
		case tt.want != "":
			var e *Error
			if !errors.As(err, &e) || e.Code != CodeBadRequest || !strings.Contains(e.Message, tt.want) {
				t.Errorf("Decode(%s) into %T = %v, want bad_request containing %q", tt.data, tt.into, err, tt.want)
			}
		}
	}
}

// TestReadyLine checks the hand-built ready line against the protocol's JSON.
func TestReadyLine(t *testing.T) {
	for _, pid := range []int{1, 48213, 4194304} {
		want, err := json.Marshal(struct {
			Ready    bool `json:"ready"`
			Protocol int  `json:"protocol"`
			PID      int  `json:"pid"`
		}{true, ProtocolVersion, pid})
		if err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		if err := (&Worker{Handler: func(*Request) (json.RawMessage, error) { return nil, nil }, In: strings.NewReader(""), Out: &out, PID: pid}).Serve(); err != nil {
			t.Fatal(err)
		}
		if got := out.String(); got != string(want)+"\n" {
			t.Errorf("ready line for pid %d = %q, want %q", pid, got, want)
		}
	}
}

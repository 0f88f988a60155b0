package ipc

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzDecodeRequest checks that any line is either a valid request or a bad_request error, and
// that a valid request survives a round trip through its own encoding.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"id":1,"to":"relay","topic":"echo","data":"hello world"}`,
		`{"id":"x","to":"relay","topic":"stats"}`,
		`{"to":"relay","topic":"echo","data":{"nested":[1,2,3]}}`,
		`{"id":1e400,"to":"relay","topic":"echo"}`,
		`{"id":1,"to":"relay","to":"other","topic":"echo"}`,
		`{"id":"\u0000","to":"\ud800","topic":"echo"}`,
		"{\"id\":\"\xff\",\"to\":\"relay\",\"topic\":\"echo\",\"data\":\"\xc3(\"}",
		`not json`, `{}`, `[]`, `{"id":`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		req, err := DecodeRequest(line)
		if err != nil {
			if err.Code != CodeBadRequest || err.Message == "" {
				t.Fatalf("error %+v, want bad_request with a message", err)
			}
			if len(req.ID) > MaxIDBytes {
				t.Fatalf("id of %d bytes kept on an error", len(req.ID))
			}
			if !utf8.Valid(req.ID) {
				t.Fatalf("id %q with invalid UTF-8 kept on an error", req.ID)
			}
			return
		}
		if !utf8.Valid(line) {
			t.Fatalf("accepted a request that is not valid UTF-8: %q", line)
		}
		if req.To == "" || req.Topic == "" {
			t.Fatalf("accepted request without to or topic: %+v", req)
		}
		if len(req.ID) > MaxIDBytes {
			t.Fatalf("accepted id of %d bytes", len(req.ID))
		}
		if len(req.ID) > 0 && !json.Valid(req.ID) {
			t.Fatalf("accepted invalid id %q", req.ID)
		}
		enc, jerr := AppendFrame(nil, req)
		if jerr != nil {
			t.Fatalf("re-encoding %+v: %v", req, jerr)
		}
		enc = bytes.TrimSuffix(enc, []byte("\n"))
		again, err := DecodeRequest(enc)
		if err != nil {
			t.Fatalf("re-encoded request %s rejected: %v", enc, err)
		}
		if again.To != req.To || again.Topic != req.Topic || !bytes.Equal(again.ID, req.ID) {
			t.Fatalf("round trip changed %+v into %+v", req, again)
		}
		if strings.ContainsRune(string(enc), '\n') {
			t.Fatalf("encoding contains a newline: %q", enc)
		}
	})
}

package supervisor

import (
	"strings"
	"testing"
)

func TestLastWords(t *testing.T) {
	tests := []struct {
		name, line, want string
		oom              bool
	}{
		{"plain", "ValueError: the data is not what I want", "ValueError: the data is not what I want", false},
		{"python out of memory", "MemoryError", "MemoryError", true},
		{"json log line", `{"@level":"info","@message":"fault injected","@module":"worker","@timestamp":"t","directive":"!crash"}`, "fault injected directive=!crash", false},
		{"json without a message", `{"a":1}`, `{"a":1}`, false},
		{"errno", "write: cannot allocate memory", "write: cannot allocate memory", true},
		{"long", strings.Repeat("é", 400), strings.Repeat("é", lastWordsMax/2) + "…", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := summarize([]byte(tt.line))
			if got != tt.want {
				t.Errorf("summarize = %q, want %q", got, tt.want)
			}
			if oom := saysOutOfMemory(got); oom != tt.oom {
				t.Errorf("saysOutOfMemory(%q) = %v, want %v", got, oom, tt.oom)
			}
		})
	}
}

func TestTraceHeadline(t *testing.T) {
	tests := []struct{ trace, want string }{
		{"runtime: out of memory: cannot allocate 4194304-byte block (1073741824 in use)\nfatal error: out of memory\n\ngoroutine 1 [running]:\n", "fatal error: out of memory"},
		{"panic: boom\n\ngoroutine 1 [running]:\nmain.main()\n", "panic: boom"},
		{"SIGSEGV: segmentation violation\nPC=0x0\n", "SIGSEGV: segmentation violation"},
	}
	for _, tt := range tests {
		if got := string(traceHeadline([]byte(tt.trace))); got != tt.want {
			t.Errorf("traceHeadline(%q) = %q, want %q", tt.trace, got, tt.want)
		}
	}
}

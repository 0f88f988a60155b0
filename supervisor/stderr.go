package supervisor

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"relayd/ipc"
)

// Limits on what one worker may put in relayd's log through its stderr.
const (
	stderrBurst = 100      // lines logged before the rate limit applies
	stderrRate  = 20       // lines per second after that
	traceCap    = 64 << 10 // bytes of a panic trace kept
)

// panicStarts are how a Go runtime crash report begins; everything after it is one trace.
var panicStarts = [][]byte{[]byte("panic: "), []byte("fatal error: "), []byte("runtime: "), []byte("SIGSEGV: ")}

// forwardStderr copies the worker's stderr into the log a line at a time, with its pid. Lines
// are capped at StderrLineBytes; a worker that writes more than stderrBurst lines is held to
// stderrRate lines a second and the log says how many were dropped; a Go panic trace is kept
// whole (up to traceCap) and logged as one entry. It returns the worker's last words (see
// lastWords), which the EXIT of a worker that died gives as its cause.
func (h *Host) forwardStderr(p *proc) (lastWords string) {
	lr := ipc.NewLineReader(p.stderr, h.opts.StderrLineBytes)
	tokens, last := float64(stderrBurst), time.Now()
	dropped := 0
	var trace, final []byte
	for {
		line, err := lr.ReadLine()
		if errors.Is(err, ipc.ErrTooLarge) {
			line, err = append(lr.Head(), " … (cut)"...), nil
		}
		if err != nil {
			break
		}
		if trace == nil && hasAnyPrefix(line, panicStarts) {
			trace = []byte{}
		}
		if len(bytes.TrimSpace(line)) > 0 && trace == nil {
			final = append(final[:0], line...)
		}
		if trace != nil {
			if len(trace)+len(line) < traceCap {
				trace = append(append(trace, line...), '\n')
			} else {
				dropped++
			}
			continue
		}
		now := time.Now()
		tokens = min(stderrBurst, tokens+now.Sub(last).Seconds()*stderrRate)
		last = now
		if tokens < 1 {
			dropped++
			continue
		}
		tokens--
		h.logStderrLine(p.pid, line)
	}
	if trace != nil {
		h.log.Error("worker crash report", "pid", p.pid, "trace", string(trace))
	}
	if dropped > 0 {
		h.log.Warn("worker stderr lines dropped", "pid", p.pid, "dropped", dropped)
	}
	if trace != nil {
		return summarize(traceHeadline(trace))
	}
	return summarize(final)
}

// lastWordsMax caps the last words quoted in an EXIT.
const lastWordsMax = 300

// traceHeadline is the line of a Go crash report that says what happened: its "panic: " or
// "fatal error: " line ("fatal error: runtime: out of memory"), else its first line.
func traceHeadline(trace []byte) []byte {
	first := trace
	for len(trace) > 0 {
		var line []byte
		line, trace, _ = bytes.Cut(trace, []byte("\n"))
		if bytes.HasPrefix(line, []byte("panic: ")) || bytes.HasPrefix(line, []byte("fatal error: ")) {
			return line
		}
	}
	line, _, _ := bytes.Cut(first, []byte("\n"))
	return line
}

// summarize makes a worker's stderr line fit an EXIT: a JSON log line (hclog's or the worker's
// own) becomes its message and its fields, "fault injected directive=!crash"; anything else,
// such as a Python traceback's last line ("MemoryError"), stays as it is. Both are capped at
// lastWordsMax bytes.
func summarize(line []byte) string {
	line = bytes.TrimSpace(line)
	if len(line) > 0 && line[0] == '{' {
		var m map[string]any
		if json.Unmarshal(line, &m) == nil {
			if msg, ok := m["@message"].(string); ok {
				keys := make([]string, 0, len(m))
				for k := range m {
					if !strings.HasPrefix(k, "@") {
						keys = append(keys, k)
					}
				}
				slices.Sort(keys)
				var b strings.Builder
				b.WriteString(msg)
				for _, k := range keys {
					fmt.Fprintf(&b, " %s=%v", k, m[k])
				}
				line = []byte(b.String())
			}
		}
	}
	if len(line) > lastWordsMax {
		cut := lastWordsMax
		for cut > 0 && !utf8.RuneStart(line[cut]) {
			cut--
		}
		return string(line[:cut]) + "…"
	}
	return string(line)
}

// outOfMemory are what programs say as they die for want of memory: Go's runtime ("fatal
// error: runtime: out of memory", "out of memory allocating heap arena metadata"), C's
// strerror(ENOMEM), Python's MemoryError, C++'s std::bad_alloc.
var outOfMemory = []string{"out of memory", "cannot allocate memory", "memoryerror", "bad_alloc"}

// saysOutOfMemory reports whether last words tell of a memory-limit death.
func saysOutOfMemory(words string) bool {
	w := strings.ToLower(words)
	for _, s := range outOfMemory {
		if strings.Contains(w, s) {
			return true
		}
	}
	return false
}

func hasAnyPrefix(b []byte, prefixes [][]byte) bool {
	for _, p := range prefixes {
		if bytes.HasPrefix(b, p) {
			return true
		}
	}
	return false
}

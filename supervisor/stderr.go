package supervisor

import (
	"bytes"
	"errors"
	"time"

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
// whole (up to traceCap) and logged as one entry.
func (h *Host) forwardStderr(p *proc) {
	lr := ipc.NewLineReader(p.stderr, h.opts.StderrLineBytes)
	tokens, last := float64(stderrBurst), time.Now()
	dropped := 0
	var trace []byte
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
}

func hasAnyPrefix(b []byte, prefixes [][]byte) bool {
	for _, p := range prefixes {
		if bytes.HasPrefix(b, p) {
			return true
		}
	}
	return false
}

package supervisor

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// logStderrLine logs one line of a worker's stderr with its pid. A line of hclog JSON — what
// the echo worker and go-plugin plugins write — is logged at its own level with its own message,
// its module as "module" and its fields as fields, not as a quoted string; any other line is
// logged as "worker stderr" with the line.
func (h *Host) logStderrLine(pid int, line []byte) {
	if msg, level, args, ok := parseHCLogJSON(line); ok {
		h.log.Log(level, msg, append([]any{"pid", pid}, args...)...)
		return
	}
	h.log.Info("worker stderr", "pid", pid, "line", string(line))
}

// parseHCLogJSON reads a line of hclog's JSON format: "@message", "@level", "@module",
// "@timestamp" (dropped: relayd stamps its own log) and fields, which it returns sorted by name.
// Nested values come back as their JSON text.
func parseHCLogJSON(line []byte) (msg string, level hclog.Level, args []any, ok bool) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 || line[0] != '{' {
		return "", 0, nil, false
	}
	var entry map[string]json.RawMessage
	if json.Unmarshal(line, &entry) != nil {
		return "", 0, nil, false
	}
	if json.Unmarshal(entry["@message"], &msg) != nil {
		return "", 0, nil, false
	}
	var lv, module string
	json.Unmarshal(entry["@level"], &lv)
	if level = hclog.LevelFromString(lv); level == hclog.NoLevel {
		level = hclog.Info
	}
	if json.Unmarshal(entry["@module"], &module) == nil && module != "" {
		args = append(args, "module", module)
	}
	keys := make([]string, 0, len(entry))
	for k := range entry {
		if !strings.HasPrefix(k, "@") {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		args = append(args, k, jsonValue(entry[k]))
	}
	return msg, level, args, true
}

// jsonValue is a JSON value as a log field: strings as themselves, numbers, booleans and null
// as their text, arrays and objects as compact JSON.
func jsonValue(raw json.RawMessage) any {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var buf bytes.Buffer
	if json.Compact(&buf, raw) == nil {
		return buf.String()
	}
	return string(raw)
}

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
)

// paint adds the tutorial's ANSI colours to text when true and leaves text alone when false.
type paint bool

func (p paint) wrap(code, s string) string {
	if !p {
		return s
	}
	return "\x1b[" + code + "m" + s + "\x1b[0m"
}

func (p paint) dim(s string) string    { return p.wrap("2", s) }
func (p paint) green(s string) string  { return p.wrap("32", s) }
func (p paint) yellow(s string) string { return p.wrap("33", s) }
func (p paint) cyan(s string) string   { return p.wrap("36", s) }

// dataText is how a reply's data prints: a JSON string as its text, any other value as compact
// JSON, and no data as nothing.
func dataText(data json.RawMessage) string {
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return ""
	}
	var s string
	if data[0] == '"' && json.Unmarshal(data, &s) == nil {
		return s
	}
	var buf bytes.Buffer
	if json.Compact(&buf, data) != nil {
		return string(data)
	}
	return buf.String()
}

// writeStats prints the counters in data as sorted "name value" lines. Nested objects are
// flattened with dots (exits.signal 2); strings print as their text, other values as JSON. Data
// that is not an object prints as dataText does.
func writeStats(w io.Writer, data json.RawMessage) error {
	var lines []string
	if err := flatten("", data, &lines); err != nil {
		_, err = fmt.Fprintln(w, dataText(data))
		return err
	}
	slices.Sort(lines)
	_, err := io.WriteString(w, strings.Join(lines, ""))
	return err
}

func flatten(prefix string, data json.RawMessage, lines *[]string) error {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(data, &obj); err != nil || obj == nil {
		if prefix == "" {
			return fmt.Errorf("stats data is not an object")
		}
		*lines = append(*lines, prefix+" "+dataText(data)+"\n")
		return nil
	}
	if len(obj) == 0 && prefix != "" {
		*lines = append(*lines, prefix+" {}\n")
	}
	for k, v := range obj {
		name := k
		if prefix != "" {
			name = prefix + "." + k
		}
		if err := flatten(name, v, lines); err != nil {
			return err
		}
	}
	return nil
}

package supervisor

import (
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"relayd/internal/testbin"
)

func TestLogStderrLine(t *testing.T) {
	for _, c := range []struct {
		line, want string
	}{
		{`{"@level":"warn","@message":"disk low","@module":"plugin","@timestamp":"2026-01-01T00:00:00Z","free":12,"path":"/x","tags":["a", "b"]}`,
			`[WARN]  worker: disk low: pid=42 module=plugin free=12 path=/x tags="[\"a\",\"b\"]"`},
		{`{"@message":"no level"}`, `[INFO]  worker: no level: pid=42`},
		{`plain text`, `[INFO]  worker: worker stderr: pid=42 line="plain text"`},
		{`{"not":"hclog"}`, `[INFO]  worker: worker stderr: pid=42 line="{\"not\":\"hclog\"}"`},
		{`{broken`, `[INFO]  worker: worker stderr: pid=42 line={broken`},
	} {
		log := new(testbin.SyncBuffer)
		h := &Host{log: hclog.New(&hclog.LoggerOptions{Name: "worker", Output: log, DisableTime: true})}
		h.logStderrLine(42, []byte(c.line))
		if got := strings.TrimSpace(log.String()); got != c.want {
			t.Errorf("line %s logged\n%s\nwant\n%s", c.line, got, c.want)
		}
	}
}

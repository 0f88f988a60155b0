package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"relayd/internal/testbin"
	"relayd/ipc"
)

// TestExampleWorkers serves the example workers of examples/ — Go on the SDK, Python with the
// standard library, POSIX sh with jq — each under its own name from one config file, and sends
// each an answer, a bad_request, an unknown_topic, a crash and a timeout. The Python and sh
// workers are skipped, with the reason, when python3 or jq is not installed.
func TestExampleWorkers(t *testing.T) {
	dir := shortTempDir(t)
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if err := testbin.Build(dir+string(os.PathSeparator), []string{"CGO_ENABLED=0"}, nil, "relayd/examples/go-worker"); err != nil {
		t.Fatal(err)
	}
	type example struct {
		name, worker string
		args         []string
		env          []string
		skip         string
	}
	examples := []example{{name: "count-go", worker: filepath.Join(dir, "go-worker")}}

	py := example{name: "count-py"}
	if p, err := exec.LookPath("python3"); err != nil {
		py.skip = "python3 is not on PATH (Debian: python3)"
	} else if out, err := exec.Command(p, "-c", "import sys; print(sys.executable)").Output(); err != nil {
		py.skip = fmt.Sprintf("%s does not run: %v", p, err)
	} else {
		// The real interpreter, not a version manager's shim, which wants an environment
		// relayd does not pass.
		py.worker, py.args = strings.TrimSpace(string(out)), []string{filepath.Join(root, "examples/python-worker/worker.py")}
	}
	examples = append(examples, py)

	sh := example{name: "count-sh"}
	shell, errSh := exec.LookPath("sh")
	jq, errJQ := exec.LookPath("jq")
	switch {
	case errSh != nil:
		sh.skip = "sh is not on PATH"
	case errJQ != nil:
		sh.skip = "jq is not on PATH (Debian: jq)"
	default:
		sh.worker, sh.args, sh.env = shell, []string{filepath.Join(root, "examples/sh-worker/worker.sh")}, []string{"JQ"}
		t.Setenv("JQ", jq)
	}
	examples = append(examples, sh)

	var conf strings.Builder
	for _, e := range examples {
		if e.skip != "" {
			continue
		}
		args := `["` + strings.Join(e.args, `", "`) + `"]`
		if len(e.args) == 0 {
			args = "[]"
		}
		fmt.Fprintf(&conf, `
service %q {
  worker                = %q
  args                  = %s
  env                   = [%s]
  allow-fault-injection = true
  message-timeout       = "2s"
  kill-grace            = "200ms"
  max-restarts          = 1
}
`, e.name, e.worker, args, strings.Join(quoteAll(e.env), ", "))
	}
	path := filepath.Join(dir, "relayd.hcl")
	if err := os.WriteFile(path, []byte(conf.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s")
	r := startRelayd(t, sock, "--config", path, "--stats-interval=0")

	for _, e := range examples {
		t.Run(e.name, func(t *testing.T) {
			if e.skip != "" {
				t.Skip(e.skip)
			}
			c, err := ipc.Dial(t.Context(), sock)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			a := requestTo(t, c, e.name, "count", "héllo wide  world")
			var got struct{ Words, Chars int }
			if a.Error != nil || jsonUnmarshal(a.Data, &got) != nil || got.Words != 3 || got.Chars != 17 {
				t.Errorf("count: %s, want 3 words and 17 characters", a.Raw)
			}
			if a.Worker == nil || a.Worker.Attempt != 1 || a.Worker.Usage == nil {
				t.Errorf("count: worker %s, want attempt 1 and its usage", a.Raw)
			}
			for _, tt := range []struct {
				topic    string
				data     any
				code, in string
			}{
				{"count", 42, ipc.CodeBadRequest, "must be a string"},
				{"dance", nil, ipc.CodeUnknownTopic, "dance"},
				{"crash", nil, ipc.CodeWorkerFailed, "exited with status 3; 2 attempts"},
				{"sleep", 30, ipc.CodeTimeout, "did not answer within 2s"},
			} {
				a := requestTo(t, c, e.name, tt.topic, tt.data)
				if a.Error == nil || a.Error.Code != tt.code || !strings.Contains(a.Error.Message, tt.in) {
					t.Errorf("%s %v: %s, want %s with %q", tt.topic, tt.data, a.Raw, tt.code, tt.in)
				}
			}
		})
	}
	if t.Failed() {
		t.Logf("relayd's log:\n%s", r.log)
	}
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = fmt.Sprintf("%q", s)
	}
	return out
}

// TestProtocolDocWorkers runs the Python and sh workers that docs/PROTOCOL.md shows, as a
// reader would: saved to a file, added to the config of a running relayd with a reload, and
// called with relay-echo --to. The doc's examples are thus known to work.
func TestProtocolDocWorkers(t *testing.T) {
	doc, err := os.ReadFile("../docs/PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	block := func(after, lang string) string {
		t.Helper()
		_, rest, ok := strings.Cut(string(doc), after)
		if !ok {
			t.Fatalf("docs/PROTOCOL.md has no %q", after)
		}
		_, rest, ok = strings.Cut(rest, "```"+lang+"\n")
		code, _, ok2 := strings.Cut(rest, "```")
		if !ok || !ok2 {
			t.Fatalf("docs/PROTOCOL.md has no %s block after %q", lang, after)
		}
		return code
	}
	dir := shortTempDir(t)
	conf := filepath.Join(dir, "relayd.hcl")
	if err := os.WriteFile(conf, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s")
	r := startRelayd(t, sock, "--config", conf, "--stats-interval=0")

	var services strings.Builder
	var want []string
	if p, err := exec.LookPath("python3"); err != nil {
		t.Log("skipping the Python worker: python3 is not on PATH")
	} else if out, err := exec.Command(p, "-c", "import sys; print(sys.executable)").Output(); err != nil {
		t.Logf("skipping the Python worker: %s does not run: %v", p, err)
	} else {
		file := filepath.Join(dir, "shout.py")
		if err := os.WriteFile(file, []byte(block("### A worker in Python", "python")), 0o755); err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(block("### A worker in Python", "python"), "\n"); n > 15 {
			t.Errorf("the doc's Python worker has %d lines, and its heading says 15", n)
		}
		fmt.Fprintf(&services, "service \"shout-py\" {\n  worker = %q\n  args = [%q]\n}\n", strings.TrimSpace(string(out)), file)
		want = append(want, "shout-py")
	}
	if _, err := exec.LookPath("jq"); err != nil {
		t.Log("skipping the sh worker: jq is not on PATH (Debian: jq)")
	} else if jq, _ := exec.LookPath("jq"); !strings.HasPrefix(jq, "/usr/bin/") && !strings.HasPrefix(jq, "/bin/") && !strings.HasPrefix(jq, "/usr/local/bin/") {
		t.Logf("skipping the sh worker: jq is at %s, not on a worker's PATH", jq)
	} else {
		file := filepath.Join(dir, "shout.sh")
		if err := os.WriteFile(file, []byte(block("### A worker in sh", "sh")), 0o755); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&services, "service \"shout-sh\" {\n  worker = %q\n}\n", file)
		want = append(want, "shout-sh")
	}
	if len(want) == 0 {
		t.Skip("neither python3 nor jq is installed")
	}
	if err := os.WriteFile(conf, []byte(services.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	r.hup(t, "config reloaded")
	for _, name := range want {
		got := runEcho(t, sock, "--to", name, "--topic", "shout", "hello")
		if w := map[string]string{"shout-py": "HELLO!\n", "shout-sh": "HELLO\n"}[name]; got != w {
			t.Errorf("%s answered %q, want %q", name, got, w)
		}
	}
}

// Package pythonplugin tests the Python example plugin against go-plugin's own client; relayd
// serving it end to end is in the integration tests.
package pythonplugin

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
	"go.uber.org/goleak"

	"relayd/internal/testbin"
	"relayd/sdk/plugin"
)

// python is the interpreter the plugin's first line names.
const python = "/usr/bin/python3"

// needGRPC skips the test when the system Python lacks grpcio or protobuf, which a fresh
// machine may (.ci/run installs them when it can).
func needGRPC(t *testing.T) {
	t.Helper()
	if out, err := exec.Command(python, "-c", "import grpc, google.protobuf").CombinedOutput(); err != nil {
		t.Skipf("the Python plugin needs %s with grpcio and protobuf (Debian: python3-grpcio python3-protobuf): %v %s", python, err, out)
	}
}

func TestPythonPlugin(t *testing.T) {
	for _, args := range [][]string{nil, {"--tcp"}} {
		t.Run(strings.Join(append([]string{"default"}, args...), " "), func(t *testing.T) { testPythonPlugin(t, args) })
	}
}

// testPythonPlugin starts the plugin with args through go-plugin's client and checks every call.
func testPythonPlugin(t *testing.T, args []string) {
	needGRPC(t)
	cmd := exec.Command("./plugin.py", args...)
	cmd.Env = []string{"TMPDIR=" + t.TempDir()}
	log := new(testbin.SyncBuffer)
	pc := goplugin.NewClient(&goplugin.ClientConfig{
		HandshakeConfig:  plugin.Handshake,
		Plugins:          plugin.PluginSet(),
		Cmd:              cmd,
		SkipHostEnv:      true,
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		Logger:           hclog.New(&hclog.LoggerOptions{Output: log, Level: hclog.Debug}),
		StartTimeout:     60 * time.Second,
	})
	defer pc.Kill()
	defer func() {
		if t.Failed() {
			t.Logf("go-plugin client's log:\n%s", log)
		}
	}()
	cp, err := pc.Client()
	if err != nil {
		t.Fatalf("starting the Python plugin: %v", err)
	}
	if err := cp.Ping(); err != nil {
		t.Errorf("health check of service plugin: %v", err)
	}
	raw, err := cp.Dispense(plugin.Name)
	if err != nil {
		t.Fatal(err)
	}
	w := raw.(plugin.Worker)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	if got, err := w.Handle(ctx, "echo", []byte(`"héllo wörld"`)); err != nil || string(got) != `"HÉLLO WÖRLD"` {
		t.Errorf("echo = %s, %v; want \"HÉLLO WÖRLD\"", got, err)
	}
	for _, c := range []struct{ topic, data, code string }{
		{"nope", `"x"`, "unknown_topic"},
		{"echo", `42`, "bad_request"},
	} {
		_, err := w.Handle(ctx, c.topic, []byte(c.data))
		var perr *plugin.Error
		if !errors.As(err, &perr) || perr.Code != c.code {
			t.Errorf("%s %s: error %v, want code %s", c.topic, c.data, err, c.code)
		}
	}
	// Kill asks the controller to shut the plugin down; a plugin that obeys exits 0, where one
	// that did not would be killed after go-plugin's two seconds.
	pc.Kill()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Exited() || ws.ExitStatus() != 0 {
		t.Errorf("after the controller's Shutdown: %v, want exit status 0", cmd.ProcessState)
	}
}

// TestPythonPluginSIGTERM checks that SIGTERM is a graceful stop: exit status 0.
func TestPythonPluginSIGTERM(t *testing.T) {
	needGRPC(t)
	cmd := exec.Command("./plugin.py")
	cmd.Env = []string{plugin.MagicCookieKey + "=" + plugin.MagicCookieValue}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 256)
	if n, err := stdout.Read(buf); err != nil || n == 0 {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("reading the handshake line: %v", err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("after SIGTERM: %v, want exit status 0", err)
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatal("still running 60s after SIGTERM")
	}
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

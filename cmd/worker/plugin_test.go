package main

import (
	"context"
	"errors"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"

	"relayd/internal/testbin"
	"relayd/sdk/plugin"
)

// buildPluginOnce builds worker-plugin beside workerBin for the tests that need it.
var (
	buildPluginOnce sync.Once
	buildPluginErr  error
)

func TestPluginCookie(t *testing.T) {
	if pluginCookieKey != plugin.MagicCookieKey || pluginCookieValue != plugin.MagicCookieValue {
		t.Errorf("worker's cookie %s=%s, want sdk/plugin's %s=%s",
			pluginCookieKey, pluginCookieValue, plugin.MagicCookieKey, plugin.MagicCookieValue)
	}
}

// startPlugin starts the worker as relayd starts a go-plugin plugin over transport, with fault
// directives on. The worker execs worker-plugin, built beside it.
func startPlugin(t *testing.T, transport string) (plugin.Worker, *exec.Cmd, *goplugin.Client) {
	t.Helper()
	pluginBin := filepath.Join(filepath.Dir(workerBin), pluginExecutable)
	buildPluginOnce.Do(func() {
		// As make build builds it, sharing the build cache's gRPC.
		buildPluginErr = testbin.Build(pluginBin, []string{"CGO_ENABLED=0"}, []string{"-tags=goplugin", "-trimpath", "-ldflags=-s -w"}, ".")
	})
	if buildPluginErr != nil {
		t.Fatal(buildPluginErr)
	}
	cmd := exec.Command(workerBin, "--delay=0s")
	cmd.Env = append(faultEnv(1), plugin.EnvTransport+"="+transport)
	log := new(testbin.SyncBuffer)
	pc := goplugin.NewClient(&goplugin.ClientConfig{
		HandshakeConfig:  plugin.Handshake,
		Plugins:          plugin.PluginSet(),
		Cmd:              cmd,
		SkipHostEnv:      true,
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC, goplugin.ProtocolNetRPC},
		Logger:           hclog.New(&hclog.LoggerOptions{Output: log, Level: hclog.Debug}),
		StartTimeout:     30 * time.Second,
	})
	t.Cleanup(func() {
		pc.Kill()
		if t.Failed() {
			t.Logf("go-plugin client's log:\n%s", log)
		}
	})
	addr, err := pc.Start()
	if err != nil {
		t.Fatalf("starting the worker as a plugin: %v", err)
	}
	if transport == plugin.TransportNetRPC {
		conn, err := net.Dial(addr.Network(), addr.String())
		if err != nil {
			t.Fatal(err)
		}
		rc, err := plugin.NewRPCConn(conn, hclog.New(&hclog.LoggerOptions{Output: log}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rc.Close() })
		return rc.Worker(), cmd, pc
	}
	cp, err := pc.Client()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := cp.Dispense(plugin.Name)
	if err != nil {
		t.Fatal(err)
	}
	return raw.(plugin.Worker), cmd, pc
}

// TestPluginMode checks that the worker serves go-plugin over both transports when the magic
// cookie is in its environment: replies, error replies and fault directives.
func TestPluginMode(t *testing.T) {
	for _, transport := range []string{plugin.TransportGRPC, plugin.TransportNetRPC} {
		t.Run(transport, func(t *testing.T) {
			w, cmd, pc := startPlugin(t, transport)
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			got, err := w.Handle(ctx, "echo", []byte(`"héllo wörld"`))
			if err != nil || string(got) != `"HÉLLO WÖRLD"` {
				t.Errorf("echo = %s, %v; want \"HÉLLO WÖRLD\"", got, err)
			}
			_, err = w.Handle(ctx, "echo", []byte(`42`))
			var perr *plugin.Error
			if !errors.As(err, &perr) || !strings.Contains(perr.Message, "must be a JSON string") {
				t.Errorf("echo 42: error %v, want the worker's refusal", err)
			}
			got, err = w.Handle(ctx, "echo", []byte(`"!env"`))
			if err != nil || !strings.Contains(string(got), "RELAY_FAULTS=1") || !strings.Contains(string(got), plugin.MagicCookieKey) {
				t.Errorf("!env = %s, %v; want the plugin's environment", got, err)
			}
			// !exit ends the process with its status, as in stdio mode.
			if _, err := w.Handle(ctx, "echo", []byte(`"!exit 3"`)); err == nil {
				t.Error("!exit 3 answered, want the call to fail")
			}
			pc.Kill()
			ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
			if !ok || !ws.Exited() || ws.ExitStatus() != 3 {
				t.Errorf("after !exit 3: %v, want exit status 3", cmd.ProcessState)
			}
		})
	}
}

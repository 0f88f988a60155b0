package plugin_test

import (
	"context"
	"errors"
	"net"
	"os"
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

// TestMain doubles as the plugin: started with the magic cookie, the test binary serves upper.
func TestMain(m *testing.M) {
	if os.Getenv(plugin.MagicCookieKey) != "" {
		plugin.Serve(upper{})
		return
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			os.Stderr.WriteString("goleak: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}

// upper answers echo with its data uppercased, refuses other topics with unknown_topic, and
// fails "fail" with an error without a code.
type upper struct{}

func (upper) Handle(_ context.Context, topic string, data []byte) ([]byte, error) {
	switch {
	case topic != "echo":
		return nil, &plugin.Error{Code: "unknown_topic", Message: "unknown topic " + topic}
	case string(data) == `"fail"`:
		return nil, errors.New("failing as asked")
	}
	return []byte(strings.ToUpper(string(data))), nil
}

// start starts the test binary as a plugin over transport and returns a Worker, the client and
// a function that closes the connection the way relayd retires a plugin.
func start(t *testing.T, transport string) (plugin.Worker, *goplugin.Client, func() error) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = []string{plugin.EnvTransport + "=" + transport}
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
			t.Logf("client log:\n%s", log)
		}
	})
	addr, err := pc.Start()
	if err != nil {
		t.Fatalf("starting the plugin: %v", err)
	}
	if transport == plugin.TransportGRPC {
		cp, err := pc.Client()
		if err != nil {
			t.Fatal(err)
		}
		raw, err := cp.Dispense(plugin.Name)
		if err != nil {
			t.Fatal(err)
		}
		return raw.(plugin.Worker), pc, cp.Close
	}
	conn, err := net.Dial(addr.Network(), addr.String())
	if err != nil {
		t.Fatal(err)
	}
	rc, err := plugin.NewRPCConn(conn, hclog.New(&hclog.LoggerOptions{Output: log}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close() })
	return rc.Worker(), pc, func() error { err := rc.Quit(context.Background()); rc.Close(); return err }
}

func TestTransports(t *testing.T) {
	for _, transport := range []string{plugin.TransportGRPC, plugin.TransportNetRPC} {
		t.Run(transport, func(t *testing.T) {
			w, pc, closeConn := start(t, transport)
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			got, err := w.Handle(ctx, "echo", []byte(`"hello"`))
			if err != nil || string(got) != `"HELLO"` {
				t.Errorf("Handle(echo, hello) = %s, %v; want \"HELLO\"", got, err)
			}
			_, err = w.Handle(ctx, "nope", []byte(`"x"`))
			var perr *plugin.Error
			if !errors.As(err, &perr) || perr.Code != "unknown_topic" || perr.Message != "unknown topic nope" {
				t.Errorf("Handle(nope) error = %#v, want *Error unknown_topic", err)
			}
			_, err = w.Handle(ctx, "echo", []byte(`"fail"`))
			if !errors.As(err, &perr) || perr.Code != "" || perr.Message != "failing as asked" {
				t.Errorf("Handle(fail) error = %#v, want *Error without a code", err)
			}
			// Closing the connection the way relayd retires a plugin ends it at once.
			if err := closeConn(); err != nil {
				t.Errorf("closing: %v", err)
			}
			deadline := time.Now().Add(30 * time.Second)
			for !pc.Exited() {
				if time.Now().After(deadline) {
					t.Fatal("plugin still running 30s after it was closed")
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// TestSIGTERM checks that SIGTERM ends a plugin served by Serve with exit status 0, not by the
// signal (go-plugin's own server dies of it).
func TestSIGTERM(t *testing.T) {
	for _, transport := range []string{plugin.TransportGRPC, plugin.TransportNetRPC} {
		t.Run(transport, func(t *testing.T) {
			cmd := exec.Command(os.Args[0])
			cmd.Env = []string{plugin.EnvTransport + "=" + transport,
				plugin.MagicCookieKey + "=" + plugin.MagicCookieValue,
				"PLUGIN_PROTOCOL_VERSIONS=1"}
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// The handshake line says it serves; then it is told to stop.
			buf := make([]byte, 512)
			if n, err := stdout.Read(buf); err != nil || !strings.HasPrefix(string(buf[:n]), "1|1|") {
				t.Fatalf("handshake = %q, %v", buf[:n], err)
			}
			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("plugin after SIGTERM: %v, want exit status 0", err)
				}
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Fatal("plugin still running 30s after SIGTERM")
			}
		})
	}
}

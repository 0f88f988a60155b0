package pluginhost

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/goleak"

	"relayd/internal/testbin"
	"relayd/ipc"
	"relayd/sdk/plugin"
	"relayd/supervisor"
)

// envMode makes the test binary a plugin of some kind (see TestMain).
const envMode = "PLUGINHOST_TEST_MODE"

// TestMain doubles as the plugins of these tests, by the mode in envMode: "serve" serves
// upper with sdk/plugin; "stdout" prints a line before anything else; "silent" never shakes
// hands.
func TestMain(m *testing.M) {
	switch os.Getenv(envMode) {
	case "serve":
		plugin.Serve(upper{})
		return
	case "stdout":
		fmt.Println("hello from the plugin")
		time.Sleep(time.Minute)
		return
	case "silent":
		fmt.Print("half a line")
		time.Sleep(time.Minute)
		return
	}
	goleak.VerifyTestMain(m)
}

type upper struct{}

func (upper) Handle(_ context.Context, topic string, data []byte) ([]byte, error) {
	if topic != "echo" {
		return nil, &plugin.Error{Code: "unknown_topic", Message: "unknown topic " + topic}
	}
	return []byte(strings.ToUpper(string(data))), nil
}

// started is a plugin process started through a Transport the way a Host starts one.
type started struct {
	cmd  *exec.Cmd
	conn supervisor.Conn
	log  *testbin.SyncBuffer
	done chan error
}

func start(t *testing.T, tr *Transport, mode string) *started {
	t.Helper()
	s := &started{log: new(testbin.SyncBuffer), done: make(chan error, 1)}
	tr.Logger = hclog.New(&hclog.LoggerOptions{Output: s.log, Level: hclog.Debug})
	s.cmd = exec.Command(os.Args[0])
	s.cmd.Env = []string{envMode + "=" + mode}
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	conn, err := tr.Prepare(s.cmd)
	if err != nil {
		t.Fatal(err)
	}
	s.conn = conn
	if err := s.cmd.Start(); err != nil {
		conn.Close()
		t.Fatal(err)
	}
	if err := conn.Forked(s.cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	go func() { s.done <- s.cmd.Wait() }()
	t.Cleanup(func() {
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
		conn.Close()
		if t.Failed() {
			t.Logf("log:\n%s", s.log)
		}
	})
	return s
}

// recv reads the next frame or error, within a bound.
func (s *started) recv(t *testing.T) (supervisor.Frame, error) {
	t.Helper()
	type res struct {
		f   supervisor.Frame
		err error
	}
	ch := make(chan res, 1)
	go func() { f, err := s.conn.Recv(); ch <- res{f, err} }()
	select {
	case r := <-ch:
		return r.f, r.err
	case <-time.After(30 * time.Second):
		t.Fatal("no frame within 30s")
		return supervisor.Frame{}, nil
	}
}

func (s *started) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-s.done:
		s.done <- err
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("the plugin did not exit within 30s")
		return nil
	}
}

func TestConn(t *testing.T) {
	for _, proto := range []string{plugin.TransportGRPC, plugin.TransportNetRPC} {
		t.Run(proto, func(t *testing.T) {
			s := start(t, &Transport{Protocol: proto, StartTimeout: 30 * time.Second, StopGrace: 30 * time.Second}, "serve")
			if err := s.conn.Send(ipc.WorkerRequest{ID: "7", Topic: "echo", Data: []byte(`"hi"`)}); err != nil {
				t.Fatal(err)
			}
			f, err := s.recv(t)
			if err != nil || f.Ready == nil || f.Ready.PID != s.cmd.Process.Pid || f.Ready.Protocol != ipc.ProtocolVersion {
				t.Fatalf("first frame %+v, %v; want a ready frame with pid %d", f, err, s.cmd.Process.Pid)
			}
			f, err = s.recv(t)
			if err != nil || f.Reply == nil || f.Reply.ID != "7" || string(f.Reply.Data) != `"HI"` {
				t.Fatalf("reply %+v, %v; want id 7 data \"HI\"", f.Reply, err)
			}
			s.conn.Send(ipc.WorkerRequest{ID: "8", Topic: "nope", Data: []byte(`1`)})
			f, err = s.recv(t)
			if err != nil || f.Reply == nil || f.Reply.Error == nil || f.Reply.Error.Code != "unknown_topic" {
				t.Fatalf("reply %+v, %v; want an unknown_topic error", f.Reply, err)
			}
			// Told to stop, it goes with exit status 0 (go-plugin's controller), and its output
			// ends.
			s.conn.CloseSend()
			if err := s.wait(t); err != nil {
				t.Errorf("after CloseSend: %v, want exit status 0", err)
			}
			if _, err := s.recv(t); !errors.Is(err, io.EOF) {
				t.Errorf("Recv after the exit: %v, want EOF", err)
			}
		})
	}
}

// TestHandshakeErrors checks that what a plugin prints instead of its handshake is named in the
// protocol error, and that a plugin that never shakes hands gets one within the start timeout.
func TestHandshakeErrors(t *testing.T) {
	for _, c := range []struct {
		mode, want string
	}{
		{"stdout", `bad go-plugin handshake line "hello from the plugin"`},
		{"silent", `no go-plugin handshake line within 1s (stdout so far: "half a line")`},
	} {
		t.Run(c.mode, func(t *testing.T) {
			s := start(t, &Transport{Protocol: plugin.TransportGRPC, StartTimeout: time.Second}, c.mode)
			_, err := s.recv(t)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Recv: %v, want an error containing %q", err, c.want)
			}
		})
	}
}

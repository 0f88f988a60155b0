// Package pluginhost is relayd's go-plugin transport: it runs hashicorp/go-plugin plugins
// (relayd/sdk/plugin's Worker, over net/rpc or gRPC) as the workers of a supervisor.Host.
//
// The Host forks every plugin itself, exactly as it forks a stdio worker — process group,
// Pdeathsig, scratch environment, limits, stderr forwarding, deadlines, the reap, the EXIT event
// and the group kill — and go-plugin's Client runs on top of that process through
// ClientConfig.RunnerFunc: its runner's Start hands go-plugin the process relayd forked, and its
// Kill leaves killing to the Host, which knows when a pid is still its child.
package pluginhost

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/rpc"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/runner"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"relayd/ipc"
	"relayd/sdk/plugin"
	"relayd/supervisor"
)

// DefaultStartTimeout bounds the time from fork to a plugin's handshake line when
// Transport.StartTimeout is zero.
const DefaultStartTimeout = 10 * time.Second

// Transport runs go-plugin plugins. It implements supervisor.Transport.
type Transport struct {
	// Protocol is plugin.TransportGRPC or plugin.TransportNetRPC; the plugin is told which in
	// plugin.EnvTransport, and a plugin that answers with the other is refused.
	Protocol string
	// StartTimeout bounds the time from fork to the handshake line (DefaultStartTimeout when
	// zero). A plugin that has not shaken hands by then broke the protocol, and the error says
	// what it had printed.
	StartTimeout time.Duration
	// StopGrace is how long a plugin told to stop (go-plugin's controller, or SIGTERM for a
	// plugin without one) may take to exit before it is killed; relayd passes its kill grace.
	StopGrace time.Duration
	// Logger receives go-plugin's and yamux's own logs (at debug level: relayd's EXIT events
	// say what matters) and gRPC's.
	Logger hclog.Logger
}

// Name implements supervisor.Transport.
func (t *Transport) Name() string { return t.Protocol }

func (t *Transport) startTimeout() time.Duration {
	if t.StartTimeout > 0 {
		return t.StartTimeout
	}
	return DefaultStartTimeout
}

func (t *Transport) logger() hclog.Logger {
	if t.Logger == nil {
		return hclog.NewNullLogger()
	}
	return t.Logger
}

// Prepare implements supervisor.Transport: stdin on /dev/null, stdout a pipe for the
// handshake, and go-plugin's variables in the environment. go-plugin's Client starts at once in
// a goroutine of the connection and waits in the runner's Start for the Host's fork.
func (t *Transport) Prepare(cmd *exec.Cmd) (supervisor.Conn, error) {
	if t.Protocol != plugin.TransportGRPC && t.Protocol != plugin.TransportNetRPC {
		return nil, fmt.Errorf("go-plugin transport %q: want %s or %s", t.Protocol, plugin.TransportGRPC, plugin.TransportNetRPC)
	}
	plugin.SetGRPCLogger(t.logger().Named("grpc"))
	c := &conn{
		t:         t,
		forked:    make(chan struct{}),
		frames:    make(chan result, 8),
		reqs:      make(chan ipc.WorkerRequest, 4),
		quit:      make(chan struct{}),
		closed:    make(chan struct{}),
		outputEnd: make(chan struct{}),
		ended:     make(chan struct{}),
		pidfd:     -1,
	}
	var err error
	if c.devNull, err = os.Open(os.DevNull); err != nil {
		return nil, err
	}
	var stdout *os.File
	if stdout, c.childOut, err = readPipe(); err != nil {
		c.devNull.Close()
		return nil, err
	}
	c.stdout = &stdoutReader{f: stdout, c: c}
	cmd.Stdin, cmd.Stdout = c.devNull, c.childOut

	env := make(chan []string, 1)
	proto := goplugin.ProtocolGRPC
	if t.Protocol == plugin.TransportNetRPC {
		proto = goplugin.ProtocolNetRPC
	}
	c.pc = goplugin.NewClient(&goplugin.ClientConfig{
		HandshakeConfig: plugin.Handshake,
		Plugins:         plugin.PluginSet(),
		RunnerFunc: func(_ hclog.Logger, cmd *exec.Cmd, _ string) (runner.Runner, error) {
			env <- cmd.Env
			return &procRunner{c: c}, nil
		},
		SkipHostEnv:      true,
		StartTimeout:     t.startTimeout(),
		AllowedProtocols: []goplugin.Protocol{proto},
		Logger:           debugLogger{t.logger().Named("go-plugin")},
	})
	started := make(chan error, 1)
	c.wg.Add(1)
	go c.run(started)
	select {
	case e := <-env:
		// go-plugin's client names a directory of its own for the plugin's Unix socket, which a
		// sandboxed plugin cannot write; without it a plugin makes its socket under TMPDIR, its
		// private scratch directory.
		e = slices.DeleteFunc(e, func(kv string) bool { return strings.HasPrefix(kv, goplugin.EnvUnixSocketDir+"=") })
		cmd.Env = append(append(cmd.Env, e...), plugin.EnvTransport+"="+t.Protocol)
		return c, nil
	case err := <-started:
		// go-plugin failed before it got to the runner (its socket directory, say).
		c.Close()
		return nil, fmt.Errorf("starting go-plugin's client: %w", err)
	}
}

// result is a frame or an error, for Recv.
type result struct {
	frame supervisor.Frame
	err   error
}

// conn is the go-plugin connection to one plugin process.
type conn struct {
	t  *Transport
	pc *goplugin.Client

	devNull, childOut *os.File // the child's stdin and stdout, closed once forked
	stdout            *stdoutReader

	forked chan struct{} // closed by Forked, or by Close when the fork failed
	pid    int           // set before forked is closed; 0 when the fork failed
	pidfd  int           // the plugin's pidfd, so that signals never reach a recycled pid; -1 if none

	frames    chan result            // to Recv
	reqs      chan ipc.WorkerRequest // from Send
	quit      chan struct{}          // closed by CloseSend
	closed    chan struct{}          // closed by Close
	outputEnd chan struct{}          // closed when the plugin's stdout ends
	ended     chan struct{}          // closed by run when it has nothing more to say

	quitOnce, closeOnce, endOnce, outputOnce sync.Once
	wg                                       sync.WaitGroup // run

	mu  sync.Mutex
	net net.Conn // guarded by mu; the net/rpc connection, closed by Close to end a call in progress

	// Owned by run.
	worker  plugin.Worker
	rpcConn *plugin.RPCConn
	grpc    *grpc.ClientConn
}

// Forked implements supervisor.Conn.
func (c *conn) Forked(pid int) error {
	c.childOut.Close()
	c.devNull.Close()
	c.childOut, c.devNull = nil, nil
	c.pid = pid
	if fd, err := unix.PidfdOpen(pid, 0); err == nil {
		c.pidfd = fd
	}
	close(c.forked)
	return nil
}

// Send implements supervisor.Conn: the request waits for the handshake, then is called.
func (c *conn) Send(req ipc.WorkerRequest) error {
	select {
	case c.reqs <- req:
		return nil
	case <-c.closed:
		return os.ErrClosed
	}
}

// Recv implements supervisor.Conn: the ready frame once the plugin has shaken hands and been
// dispensed, then a reply per call, then io.EOF once its stdout has ended.
func (c *conn) Recv() (supervisor.Frame, error) {
	select {
	case r := <-c.frames:
		return r.frame, r.err
	case <-c.closed:
		return supervisor.Frame{}, os.ErrClosed
	case <-c.ended:
		select {
		case r := <-c.frames:
			return r.frame, r.err
		default:
			return supervisor.Frame{}, io.EOF
		}
	}
}

// CloseSend implements supervisor.Conn: the plugin is told to stop.
func (c *conn) CloseSend() error {
	c.quitOnce.Do(func() { close(c.quit) })
	return nil
}

// Close implements supervisor.Conn. The Host calls it once the plugin has exited (or when
// nothing more is to be read from it): it ends the connection's goroutine and go-plugin's.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		close(c.closed)
		select {
		case <-c.forked:
		default:
			close(c.forked) // The fork failed: the runner's Start gives up.
		}
		c.stdout.f.Close()
		c.mu.Lock()
		if c.net != nil {
			c.net.Close()
		}
		c.mu.Unlock()
		if c.childOut != nil {
			c.childOut.Close()
			c.devNull.Close()
		}
		c.wg.Wait()
		// The plugin's output has ended or been closed, so go-plugin sees its process gone
		// and Kill only waits for its goroutines and removes its socket directory.
		c.pc.Kill()
		if c.rpcConn != nil {
			c.rpcConn.Close()
		}
		if c.pidfd >= 0 {
			unix.Close(c.pidfd)
		}
	})
	return nil
}

// send hands Recv a result unless the connection is closed.
func (c *conn) send(r result) {
	select {
	case c.frames <- r:
	case <-c.closed:
	}
}

// signal sends sig to the plugin through its pidfd, which cannot reach another process that
// got the pid after the plugin was reaped.
func (c *conn) signal(sig unix.Signal) {
	if c.pidfd >= 0 {
		unix.PidfdSendSignal(c.pidfd, sig, nil, 0)
	}
}

// run is the connection's goroutine: go-plugin's start and handshake, the dispense, then the
// calls one at a time, and the stop when told.
func (c *conn) run(started chan<- error) {
	defer c.wg.Done()
	defer c.endOnce.Do(func() { close(c.ended) })
	addr, err := c.pc.Start()
	if err != nil {
		select {
		case <-c.forked:
		default:
			started <- err // Before the runner: Prepare is still waiting.
			return
		}
		if perr := c.handshakeError(err); perr != nil {
			c.send(result{err: perr})
		}
		c.waitEnd()
		return
	}
	if err := c.dispense(addr); err != nil {
		c.send(result{err: fmt.Errorf("connecting to the plugin: %w", err)})
		c.waitEnd()
		return
	}
	c.send(result{frame: supervisor.Frame{Ready: &ipc.Ready{Ready: true, Protocol: ipc.ProtocolVersion, PID: c.pid}}})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-c.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	quit := c.quit
	var kill <-chan time.Time
	for {
		select {
		case req := <-c.reqs:
			if !c.call(ctx, req) {
				c.waitEnd()
				return
			}
		case <-quit:
			quit = nil
			c.stop(ctx)
			kill = time.After(max(c.t.StopGrace, 100*time.Millisecond))
		case <-kill:
			// It did not stop when told: the SIGKILL the Host would send at a deadline.
			c.signal(unix.SIGKILL)
		case <-c.outputEnd:
			return
		case <-c.closed:
			return
		}
	}
}

// waitEnd waits until the plugin's output ends or the connection is closed.
func (c *conn) waitEnd() {
	select {
	case <-c.outputEnd:
	case <-c.closed:
	}
}

// handshakeError explains a failed go-plugin start, naming what the plugin printed. It returns
// nil when the plugin's output ended first: the plugin exited, and its exit says why.
func (c *conn) handshakeError(err error) error {
	line, complete := c.stdout.head()
	switch {
	case complete:
		return fmt.Errorf("bad go-plugin handshake line %q: %s", line, firstLine(err.Error()))
	case isClosed(c.outputEnd):
		return nil
	}
	return fmt.Errorf("no go-plugin handshake line within %s (stdout so far: %q)", c.t.startTimeout(), line)
}

// dispense connects to the plugin and dispenses the worker.
func (c *conn) dispense(addr net.Addr) error {
	if c.t.Protocol == plugin.TransportNetRPC {
		// go-plugin's own net/rpc client logs yamux's complaints to relayd's stderr; this one
		// logs them with the rest.
		nc, err := net.Dial(addr.Network(), addr.String())
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.net = nc
		closed := isClosed(c.closed)
		c.mu.Unlock()
		if closed {
			return os.ErrClosed
		}
		if c.rpcConn, err = plugin.NewRPCConn(nc, debugLogger{c.t.logger().Named("yamux")}); err != nil {
			return err
		}
		c.worker = c.rpcConn.Worker()
		return nil
	}
	cp, err := c.pc.Client()
	if err != nil {
		return err
	}
	raw, err := cp.Dispense(plugin.Name)
	if err != nil {
		return err
	}
	w, ok := raw.(plugin.Worker)
	if !ok {
		return fmt.Errorf("dispensed %T, want a plugin.Worker", raw)
	}
	c.worker = w
	if gc, ok := cp.(*goplugin.GRPCClient); ok {
		c.grpc = gc.Conn
	}
	return nil
}

// call makes one call and hands Recv its reply. It reports false when the call failed because
// the plugin is going away: its exit, not this call, says what happened.
func (c *conn) call(ctx context.Context, req ipc.WorkerRequest) bool {
	data, err := c.worker.Handle(ctx, req.Topic, req.Data)
	var perr *plugin.Error
	switch {
	case err == nil:
		if len(data) == 0 {
			data = []byte("null")
		}
		c.send(result{frame: supervisor.Frame{Reply: &ipc.WorkerReply{ID: req.ID, Data: data}}})
		return true
	case errors.As(err, &perr):
		c.send(result{frame: supervisor.Frame{Reply: &ipc.WorkerReply{ID: req.ID,
			Error: &ipc.WorkerError{Code: perr.Code, Message: perr.Message}}}})
		return true
	case goingAway(err):
		return false
	}
	// The plugin is alive and refused the call itself: it does not implement the service.
	c.send(result{err: fmt.Errorf("calling the plugin: %v", err)})
	return false
}

// goingAway reports whether a failed call means the connection broke, as it does when the
// plugin exits or is killed.
func goingAway(err error) bool {
	if errors.Is(err, rpc.ErrShutdown) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return true
	}
	if s, ok := status.FromError(err); ok {
		switch s.Code() {
		case codes.Unavailable, codes.Canceled:
			return true
		}
	}
	return false
}

// stop tells the plugin to stop: go-plugin's controller (Shutdown over gRPC, Control.Quit over
// net/rpc), or SIGTERM when it has none — a plugin in another language may not — so that
// relayd never waits for a plugin that did not hear it, as go-plugin's Kill does for 2 s.
func (c *conn) stop(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, max(c.t.StopGrace, 100*time.Millisecond))
	defer cancel()
	var err error
	switch {
	case c.rpcConn != nil:
		err = c.rpcConn.Quit(ctx)
	case c.grpc != nil:
		err = c.grpc.Invoke(ctx, "/plugin.GRPCController/Shutdown", &emptypb.Empty{}, &emptypb.Empty{})
		if goingAway(err) {
			err = nil // It stopped before it could answer.
		}
	default:
		err = errors.New("no connection")
	}
	if err != nil {
		c.signal(unix.SIGTERM)
	}
}

// procRunner is go-plugin's runner.Runner over the process the Host forked.
type procRunner struct {
	c *conn
}

// Start waits for the Host's fork of the plugin.
func (r *procRunner) Start(ctx context.Context) error {
	select {
	case <-r.c.forked:
		if r.c.pid == 0 {
			return errors.New("the plugin was not started")
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Wait returns once the plugin's output has ended (go-plugin calls it after reading stdout to
// its end) or the connection is closed; the Host reaps the process.
func (r *procRunner) Wait(context.Context) error {
	select {
	case <-r.c.outputEnd:
	case <-r.c.closed:
	}
	return nil
}

// Kill does nothing: the Host stops plugins (a failed handshake reaches it as a protocol error)
// and only it knows whether the pid is still its child.
func (r *procRunner) Kill(context.Context) error { return nil }

func (r *procRunner) Stdout() io.ReadCloser { return r.c.stdout }

// Stderr is empty: the Host forwards the plugin's stderr into relayd's log itself, with its
// pid and rate limit.
func (r *procRunner) Stderr() io.ReadCloser { return io.NopCloser(eofReader{}) }

func (r *procRunner) Name() string                    { return "plugin" }
func (r *procRunner) ID() string                      { return strconv.Itoa(r.c.pid) }
func (r *procRunner) Diagnose(context.Context) string { return "" }

func (r *procRunner) PluginToHost(network, addr string) (string, string, error) {
	return network, addr, nil
}

func (r *procRunner) HostToPlugin(network, addr string) (string, string, error) {
	return network, addr, nil
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// stdoutReader is the plugin's stdout as go-plugin reads it: it keeps what came before the
// first newline (the handshake line, or what stood in its place) and reports anything after it
// as a protocol error — the handshake is all a plugin may write there.
type stdoutReader struct {
	f *os.File
	c *conn

	mu       sync.Mutex
	first    []byte // guarded by mu; up to maxHead bytes of the first line
	complete bool   // guarded by mu; the first line has ended
	extra    bool   // guarded by mu; bytes after the first line were reported
}

const maxHead = 512

func (s *stdoutReader) Read(p []byte) (int, error) {
	n, err := s.f.Read(p)
	s.record(p[:n])
	if err != nil {
		if errors.Is(err, os.ErrClosed) {
			err = io.EOF
		}
		if errors.Is(err, io.EOF) {
			s.c.outputOnce.Do(func() { close(s.c.outputEnd) })
		}
	}
	return n, err
}

func (s *stdoutReader) record(b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.complete {
		i := 0
		for i < len(b) && b[i] != '\n' {
			i++
		}
		s.first = append(s.first, b[:min(i, max(maxHead-len(s.first), 0))]...)
		if i == len(b) {
			return
		}
		s.complete = true
		b = b[i+1:]
	}
	if len(b) > 0 && !s.extra {
		s.extra = true
		// Recv is read promptly and frames holds a few results, so this never drops the
		// error in practice; blocking here instead could stall go-plugin's reader.
		select {
		case s.c.frames <- result{err: fmt.Errorf("wrote %q to stdout after its handshake line", clip(b, 80))}:
		default:
		}
	}
}

// head returns the first line so far and whether it has ended.
func (s *stdoutReader) head() (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.first), s.complete
}

func (s *stdoutReader) Close() error { return nil }

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func clip(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

func firstLine(s string) string {
	for i := range len(s) {
		if s[i] == '\n' {
			return s[:i]
		}
	}
	return s
}

// readPipe makes the pipe of a plugin's stdout: the parent's end non-blocking, so that Close
// ends a Read in progress, the child's blocking.
func readPipe() (parent, child *os.File, err error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		return nil, nil, err
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil, nil, err
	}
	return os.NewFile(uintptr(fds[0]), "plugin-stdout"), os.NewFile(uintptr(fds[1]), "plugin-stdout"), nil
}

// debugLogger logs everything at debug level: go-plugin's and yamux's views of a plugin's life
// repeat what relayd's EXIT events say, and relayd's log is for those.
type debugLogger struct{ hclog.Logger }

func (l debugLogger) Trace(msg string, args ...any) { l.Logger.Trace(msg, args...) }
func (l debugLogger) Info(msg string, args ...any)  { l.Logger.Debug(msg, args...) }
func (l debugLogger) Warn(msg string, args ...any)  { l.Logger.Debug(msg, args...) }
func (l debugLogger) Error(msg string, args ...any) { l.Logger.Debug(msg, args...) }
func (l debugLogger) Log(_ hclog.Level, msg string, args ...any) {
	l.Logger.Debug(msg, args...)
}
func (l debugLogger) Named(name string) hclog.Logger { return debugLogger{l.Logger.Named(name)} }
func (l debugLogger) ResetNamed(name string) hclog.Logger {
	return debugLogger{l.Logger.ResetNamed(name)}
}
func (l debugLogger) With(args ...any) hclog.Logger { return debugLogger{l.Logger.With(args...)} }
func (l debugLogger) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(l.StandardWriter(opts), "", 0)
}
func (l debugLogger) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return l.Logger.StandardWriter(&hclog.StandardLoggerOptions{ForceLevel: hclog.Debug})
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"relayd/bench/internal/upper"
	"relayd/ipc"
)

// client sends one message at a time for one simulated user of a variant and checks the answer.
type client interface {
	do(ctx context.Context) error
	close()
}

// The message every variant echoes, and the answer it must come back as.
const (
	text      = "hello world"
	textUpper = "HELLO WORLD"
)

// opTimeout bounds one message; a variant that takes longer is broken, not slow.
const opTimeout = 30 * time.Second

// leanEnv is the whole environment of every process the bench starts per message, as relayd
// gives its workers: one P, so the runtime starts no more threads than it needs.
var leanEnv = []string{"GOMAXPROCS=1"}

// floorClient starts and waits for the empty binary.
type floorClient struct {
	bin     string
	devnull *os.File
}

func (c floorClient) do(context.Context) error {
	cmd := exec.Command(c.bin)
	cmd.Env = leanEnv
	cmd.Stdin, cmd.Stdout, cmd.Stderr = c.devnull, c.devnull, c.devnull
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("empty binary: %w", err)
	}
	return nil
}

func (floorClient) close() {}

// workerRequest is the worker-protocol request the direct variant writes.
var workerRequest = []byte(`{"id":"1","topic":"echo","data":"` + text + `"}` + "\n")

// workerClient starts the worker without relayd for every message: the request is written right
// after the start, the ready line and the reply are read, stdin is closed, and the worker is
// waited for. Its stderr goes to /dev/null; nothing else is set up.
type workerClient struct {
	bin     string
	devnull *os.File
	buf     []byte
}

func (c *workerClient) do(context.Context) (err error) {
	cmd, inW, outR, err := startWorker(c.bin, 0, c.devnull)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			cmd.Process.Kill()
		}
		inW.Close()
		if werr := cmd.Wait(); werr != nil && err == nil {
			err = fmt.Errorf("worker: %w", werr)
		}
		outR.Close()
	}()
	if _, err := inW.Write(workerRequest); err != nil {
		return fmt.Errorf("writing to worker: %w", err)
	}
	outR.SetReadDeadline(time.Now().Add(opTimeout))
	lines, err := readLines(outR, &c.buf, 2)
	if err != nil {
		return fmt.Errorf("reading worker: %w", err)
	}
	if !bytes.HasPrefix(lines[0], []byte(`{"ready":true,"protocol":1,`)) {
		return fmt.Errorf("worker ready line %q", lines[0])
	}
	if want := `{"id":"1","data":"` + textUpper + `"}`; string(lines[1]) != want {
		return fmt.Errorf("worker reply %q, want %q", lines[1], want)
	}
	// Closing stdin (deferred) ends the worker.
	return nil
}

func (c *workerClient) close() {}

// readLines reads from f until buf holds n lines and returns them, without their newlines.
func readLines(f *os.File, buf *[]byte, n int) ([][]byte, error) {
	if cap(*buf) < 4096 {
		*buf = make([]byte, 0, 4096)
	}
	b := (*buf)[:0]
	for bytes.Count(b, []byte("\n")) < n {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		m, err := f.Read(b[len(b):cap(b)])
		b = b[:len(b)+m]
		if err != nil && bytes.Count(b, []byte("\n")) < n {
			return nil, fmt.Errorf("after %q: %w", b, err)
		}
	}
	*buf = b
	lines := bytes.SplitN(b, []byte("\n"), n+1)
	return lines[:n], nil
}

// relayClient is one connection to relayd sending one message at a time.
type relayClient struct {
	conn *net.UnixConn
	r    *bufio.Reader
	id   int64
	buf  []byte
	stop func() bool
}

func dialRelay(ctx context.Context, sock string) (*relayClient, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, err
	}
	uc := c.(*net.UnixConn)
	rc := &relayClient{conn: uc, r: bufio.NewReaderSize(uc, 64<<10)}
	// A cancelled bench unblocks at once instead of after opTimeout.
	rc.stop = context.AfterFunc(ctx, func() { uc.SetDeadline(time.Unix(1, 0)) })
	return rc, nil
}

// appendRequest appends the client-protocol request with the given id.
func appendRequest(b []byte, id int64) []byte {
	b = append(b, `{"id":`...)
	b = strconv.AppendInt(b, id, 10)
	return append(b, `,"to":"relay","topic":"echo","data":"`+text+`"}`+"\n"...)
}

func (c *relayClient) do(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.id++
	c.buf = appendRequest(c.buf[:0], c.id)
	c.conn.SetDeadline(time.Now().Add(opTimeout))
	if _, err := c.conn.Write(c.buf); err != nil {
		return fmt.Errorf("writing to relayd: %w", err)
	}
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		return fmt.Errorf("reading from relayd: %w", err)
	}
	_, err = checkReply(line, map[string]bool{strconv.FormatInt(c.id, 10): true})
	return err
}

func (c *relayClient) close() {
	c.stop()
	c.conn.Close()
}

// checkReply checks one client-protocol answer: an echo_response carrying the uppercased text
// and one of the ids still waiting, which it returns.
func checkReply(line []byte, waiting map[string]bool) (string, error) {
	var r ipc.Reply
	if err := json.Unmarshal(line, &r); err != nil {
		return "", fmt.Errorf("answer %q: %w", line, err)
	}
	if r.Error != nil {
		return "", fmt.Errorf("error answer: %s: %s", r.Error.Code, r.Error.Message)
	}
	id := string(r.ID)
	if !waiting[id] {
		return "", fmt.Errorf("answer %q has an unexpected id", line)
	}
	if r.Topic != "echo_response" || string(r.Data) != `"`+textUpper+`"` {
		return "", fmt.Errorf("answer %q, want topic echo_response and data %q", line, textUpper)
	}
	return id, nil
}

// s6Client connects to s6-ipcserver for every message: it forks the per-connection program,
// which reads one request line and writes the answer.
type s6Client struct {
	sock string
	buf  []byte
}

func (c *s6Client) do(ctx context.Context) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.sock)
	if err != nil {
		return fmt.Errorf("connecting to s6-ipcserver: %w", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(opTimeout))
	c.buf = appendRequest(c.buf[:0], 1)
	if _, err := conn.Write(c.buf); err != nil {
		return fmt.Errorf("writing to s6-ipcserver: %w", err)
	}
	line, err := bufio.NewReaderSize(conn, 512).ReadSlice('\n')
	if err != nil {
		return fmt.Errorf("reading from s6-ipcserver: %w", err)
	}
	_, err = checkReply(line, map[string]bool{"1": true})
	return err
}

func (c *s6Client) close() {}

// pluginClient serves every message with a fresh go-plugin client and plugin process: start,
// handshake, dial, dispense, call, kill, as a naive reading of the design card would.
type pluginClient struct {
	bin string
}

func (c pluginClient) do(ctx context.Context) error {
	cmd := exec.Command(c.bin, "--delay=0s")
	cmd.Env = leanEnv
	pc := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  upper.Handshake,
		Plugins:          plugin.PluginSet{upper.Name: &upper.Plugin{}},
		Cmd:              cmd,
		SkipHostEnv:      true,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           hclog.NewNullLogger(),
		StartTimeout:     opTimeout,
	})
	// Kill closes the connection, waits for the plugin to exit, and reaps it.
	defer pc.Kill()
	rpc, err := pc.Client()
	if err != nil {
		return fmt.Errorf("starting plugin: %w", err)
	}
	raw, err := rpc.Dispense(upper.Name)
	if err != nil {
		return fmt.Errorf("dispensing plugin: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	got, err := raw.(upper.Upper).Upper(ctx, text)
	if err != nil {
		return fmt.Errorf("calling plugin: %w", err)
	}
	if got != textUpper {
		return fmt.Errorf("plugin answered %q, want %q", got, textUpper)
	}
	return nil
}

func (pluginClient) close() {}

// workerReusedClient is one worker started directly and kept for every message of its client:
// the request is written to its stdin and the reply read from its stdout, with nothing in
// between. It is what a parent talking to a long-lived stdio worker pays, without relayd.
type workerReusedClient struct {
	cmd     *exec.Cmd
	in, out *os.File
	r       *bufio.Reader
	closed  bool
}

func startWorkerReused(bin string, devnull *os.File) (*workerReusedClient, error) {
	cmd, inW, outR, err := startWorker(bin, 0, devnull)
	if err != nil {
		return nil, err
	}
	c := &workerReusedClient{cmd: cmd, in: inW, out: outR, r: bufio.NewReaderSize(outR, 4096)}
	outR.SetReadDeadline(time.Now().Add(opTimeout))
	line, err := c.r.ReadSlice('\n')
	if err == nil && !bytes.HasPrefix(line, []byte(`{"ready":true,"protocol":1,`)) {
		err = fmt.Errorf("ready line %q", line)
	}
	if err != nil {
		c.close()
		return nil, fmt.Errorf("reading worker: %w", err)
	}
	return c, nil
}

func (c *workerReusedClient) livePID() int { return c.cmd.Process.Pid }

func (c *workerReusedClient) do(context.Context) error {
	if _, err := c.in.Write(workerRequest); err != nil {
		return fmt.Errorf("writing to worker: %w", err)
	}
	c.out.SetReadDeadline(time.Now().Add(opTimeout))
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		return fmt.Errorf("reading worker: %w", err)
	}
	if want := `{"id":"1","data":"` + textUpper + `"}` + "\n"; string(line) != want {
		return fmt.Errorf("worker reply %q, want %q", line, want)
	}
	return nil
}

// close ends the worker by closing its stdin, and kills it if it has not exited within 5s.
func (c *workerReusedClient) close() {
	if c.closed {
		return
	}
	c.closed = true
	c.in.Close()
	t := time.AfterFunc(5*time.Second, func() { c.cmd.Process.Kill() })
	c.cmd.Wait()
	t.Stop()
	c.out.Close()
}

// pluginReusedClient is one go-plugin client and plugin process, started once and called for
// every message of its client: a long-lived go-plugin worker, whose start cost is amortized.
type pluginReusedClient struct {
	pc     *plugin.Client
	pid    int
	impl   upper.Upper
	closed bool
}

func startPluginReused(ctx context.Context, bin string) (*pluginReusedClient, error) {
	cmd := exec.Command(bin, "--delay=0s")
	cmd.Env = leanEnv
	pc := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  upper.Handshake,
		Plugins:          plugin.PluginSet{upper.Name: &upper.Plugin{}},
		Cmd:              cmd,
		SkipHostEnv:      true,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           hclog.NewNullLogger(),
		StartTimeout:     opTimeout,
	})
	c := &pluginReusedClient{pc: pc}
	rpc, err := pc.Client()
	if err != nil {
		c.close()
		return nil, fmt.Errorf("starting plugin: %w", err)
	}
	raw, err := rpc.Dispense(upper.Name)
	if err != nil {
		c.close()
		return nil, fmt.Errorf("dispensing plugin: %w", err)
	}
	c.impl, c.pid = raw.(upper.Upper), cmd.Process.Pid
	return c, nil
}

func (c *pluginReusedClient) livePID() int { return c.pid }

func (c *pluginReusedClient) do(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	got, err := c.impl.Upper(ctx, text)
	if err != nil {
		return fmt.Errorf("calling plugin: %w", err)
	}
	if got != textUpper {
		return fmt.Errorf("plugin answered %q, want %q", got, textUpper)
	}
	return nil
}

// close kills the plugin: Kill closes the connection, waits for the exit, and reaps it.
func (c *pluginReusedClient) close() {
	if c.closed {
		return
	}
	c.closed = true
	c.pc.Kill()
}

// startWorker starts the worker with --delay=delay, its stdin and stdout on pipes and its
// stderr on devnull, the way relayd would but without relayd. in and out are the parent's ends.
func startWorker(bin string, delay time.Duration, devnull *os.File) (cmd *exec.Cmd, in, out *os.File, err error) {
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, nil, nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, nil, nil, err
	}
	cmd = exec.Command(bin, "--delay="+delay.String())
	cmd.Env = leanEnv
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, devnull
	err = cmd.Start()
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, nil, nil, fmt.Errorf("starting worker: %w", err)
	}
	return cmd, inW, outR, nil
}

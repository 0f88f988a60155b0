package supervisor

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"

	"golang.org/x/sys/unix"

	"relayd/ipc"
)

// Transport carries the worker protocol between a Host and its worker processes. The Host forks
// every worker itself — process group, Pdeathsig, limits, stderr forwarding, deadlines, the
// reap and the EXIT event are the same whatever the transport — and a Transport only wires the
// protocol's channel into the command before the fork and speaks over it afterwards.
//
// A new transport (go-plugin over gRPC, say) implements Prepare and Conn and is set as
// Options.Transport; nothing else in the Host changes.
type Transport interface {
	// Name names the transport in logs and status, e.g. "stdio".
	Name() string
	// Prepare wires a new connection into cmd before it is forked: it may set cmd.Stdin,
	// cmd.Stdout, cmd.ExtraFiles and append to cmd.Env (cmd.Stderr is the Host's). After the
	// fork the Host calls Conn.Forked; if the fork failed, Conn.Close.
	Prepare(cmd *exec.Cmd) (Conn, error)
}

// Conn is the protocol channel to one worker process. Send, CloseSend and Close are called by
// the worker's own goroutine, Recv by a reader goroutine of its own, so a Conn must allow Recv
// to run concurrently with the others.
type Conn interface {
	// Forked is called once the process is forked, with its pid; the child's ends of any
	// pipes can be closed now.
	Forked(pid int) error
	// Send delivers one request. It may block until the worker takes it, and fails once the
	// worker is gone (with an error wrapping EPIPE for a pipe).
	Send(req ipc.WorkerRequest) error
	// Recv returns the next frame from the worker: its ready frame first, then one reply per
	// request. It returns io.EOF once the worker's output has ended, and an error wrapping
	// os.ErrClosed once Close was called. Any other error is a protocol error; Recv may be
	// called again after it.
	Recv() (Frame, error)
	// CloseSend tells the worker that no more requests will come: it is to exit.
	CloseSend() error
	// Close releases the connection and ends a Recv that is blocked.
	Close() error
}

// Frame is one message from a worker. A transport that carries NDJSON lines sets Line and
// leaves its decoding to the Host, which knows which frame the worker owes (decodeFrame); a
// transport that decodes its own messages sets Ready or Reply instead.
type Frame struct {
	Line  []byte
	Ready *ipc.Ready
	Reply *ipc.WorkerReply
}

// Stdio is the transport of docs/PROTOCOL.md: NDJSON requests on the worker's stdin, its ready
// line and replies on its stdout.
type Stdio struct {
	// MaxLineBytes bounds one line from the worker; a longer one is a protocol error.
	MaxLineBytes int
}

// Name implements Transport.
func (Stdio) Name() string { return "stdio" }

// Prepare implements Transport: it makes the worker's stdin and stdout pipes.
func (t Stdio) Prepare(cmd *exec.Cmd) (Conn, error) {
	max := t.MaxLineBytes
	if max <= 0 {
		max = 8 << 20
	}
	c := &stdioConn{max: max}
	var err error
	if c.stdin, c.childIn, err = pipe(false); err != nil {
		return nil, err
	}
	if c.stdout, c.childOut, err = pipe(true); err != nil {
		c.Close()
		return nil, err
	}
	cmd.Stdin, cmd.Stdout = c.childIn, c.childOut
	// Replies are small; a long one is assembled from several reads.
	c.lines = ipc.NewLineReaderSize(c.stdout, max, 4<<10)
	return c, nil
}

type stdioConn struct {
	max               int
	stdin, stdout     *os.File
	childIn, childOut *os.File // closed once forked
	lines             *ipc.LineReader
	buf               []byte // Send's encoding buffer; Send is called from one goroutine
}

func (c *stdioConn) Forked(int) error {
	closeAll(c.childIn, c.childOut)
	c.childIn, c.childOut = nil, nil
	return nil
}

func (c *stdioConn) Send(req ipc.WorkerRequest) error {
	// AppendFrame, not json.Marshal: that would write each < > & of the data as a six-byte
	// escape, making the request up to six times the client's, and relayd bounds it in bytes.
	b, err := ipc.AppendFrame(c.buf[:0], req)
	if err != nil {
		return fmt.Errorf("encoding request: %w", err)
	}
	c.buf = b
	_, err = c.stdin.Write(c.buf)
	return err
}

func (c *stdioConn) Recv() (Frame, error) {
	line, err := c.lines.ReadLine()
	switch {
	case err == nil:
		return Frame{Line: slices.Clone(line)}, nil
	case errors.Is(err, ipc.ErrTooLarge):
		return Frame{}, fmt.Errorf("line longer than %d bytes", c.max)
	case errors.Is(err, io.EOF), errors.Is(err, os.ErrClosed):
		return Frame{}, err
	default:
		// A read error on a pipe is not the worker's doing; treat it as the end of output.
		return Frame{}, fmt.Errorf("reading output: %w", errors.Join(err, io.EOF))
	}
}

func (c *stdioConn) CloseSend() error { return c.stdin.Close() }

func (c *stdioConn) Close() error {
	closeAll(c.stdin, c.stdout, c.childIn, c.childOut)
	return nil
}

// pipe makes a pipe for a worker's stdin (parentReads false) or stdout or stderr. The parent's
// end is non-blocking and served by the runtime's poller; the child's end stays blocking, as
// programs expect of their standard descriptors, and is never registered with the poller
// (os.Pipe would register both ends, and exec would then make the child's blocking again).
func pipe(parentReads bool) (parent, child *os.File, err error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		return nil, nil, err
	}
	pfd, cfd := fds[1], fds[0]
	if parentReads {
		pfd, cfd = fds[0], fds[1]
	}
	if err := unix.SetNonblock(pfd, true); err != nil {
		unix.Close(pfd)
		unix.Close(cfd)
		return nil, nil, err
	}
	return os.NewFile(uintptr(pfd), "worker-pipe"), os.NewFile(uintptr(cfd), "worker-pipe"), nil
}

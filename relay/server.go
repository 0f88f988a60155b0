package relay

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"relayd/ipc"
)

// ServerConfig configures a Server.
type ServerConfig struct {
	// Lookup resolves a request's "to" to the inbox of a registered process.
	Lookup func(name string) (chan<- *Message, bool)
	// MaxMessageBytes bounds a request line; longer ones are answered too_large.
	MaxMessageBytes int
	// MaxPerClient bounds the messages of one connection that are in flight or whose answers
	// are not yet written; further lines wait their turn.
	MaxPerClient int
	// MaxConns bounds open connections; 0 means no bound.
	MaxConns int
	// Authorize, if set, decides from the peer's credentials whether it may talk to relayd.
	Authorize func(unix.Ucred) error
	// Observer, if set, is told of every answer.
	Observer Observer
	// WriteTimeout bounds writing answers to a client that does not read them.
	WriteTimeout time.Duration
	// FrameTimeout is a deadline from a request line's first byte to its newline, however the
	// bytes trickle in. A connection with no partial line is not bound by it.
	FrameTimeout time.Duration
	// IdleTimeout, if set, closes a connection with no partial line and nothing in flight
	// after that long; 0 lets idle connections stay.
	IdleTimeout time.Duration
	Logger      hclog.Logger
}

// Server accepts client connections on a Unix socket and turns their lines into Messages.
type Server struct {
	cfg      ServerConfig
	log      hclog.Logger
	stopping chan struct{}
	accept   sync.WaitGroup // the accept loop
	readers  sync.WaitGroup // one per connection
	writers  sync.WaitGroup // one per connection
	nextID   atomic.Uint64

	mu      sync.Mutex
	ln      net.Listener       // guarded by mu
	conns   map[*conn]struct{} // guarded by mu
	stopped bool               // guarded by mu
}

// NewServer returns a server; Serve runs it on a listener.
func NewServer(cfg ServerConfig) *Server {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.MaxMessageBytes <= 0 {
		cfg.MaxMessageBytes = 1 << 20
	}
	if cfg.MaxPerClient <= 0 {
		cfg.MaxPerClient = 1
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	if cfg.FrameTimeout <= 0 {
		cfg.FrameTimeout = 10 * time.Second
	}
	return &Server{cfg: cfg, log: cfg.Logger, stopping: make(chan struct{}), conns: make(map[*conn]struct{})}
}

// Serve accepts connections until StopReading. It returns nil after StopReading.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.stopped {
		// StopReading came first; the listener is still ours to close (which also removes a
		// socket file relayd created).
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.ln = ln
	s.accept.Add(1)
	s.mu.Unlock()
	defer s.accept.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			select {
			case <-s.stopping:
				return nil
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
				s.log.Error("accepting connection", "error", err)
				time.Sleep(100 * time.Millisecond)
				continue
			}
			return fmt.Errorf("accepting connection: %w", err)
		}
		s.start(c.(*net.UnixConn))
	}
}

// StopReading closes the listener and stops reading requests. Every line already read still
// gets its answer. It returns once no connection reads any more.
func (s *Server) StopReading() {
	s.mu.Lock()
	if !s.stopped {
		s.stopped = true
		close(s.stopping)
		if s.ln != nil {
			s.ln.Close()
		}
		for c := range s.conns {
			c.c.SetReadDeadline(time.Now())
		}
	}
	s.mu.Unlock()
	s.accept.Wait()
	s.readers.Wait()
}

func (s *Server) isStopping() bool {
	select {
	case <-s.stopping:
		return true
	default:
		return false
	}
}

// Wait returns once every connection has written its answers and closed.
func (s *Server) Wait() { s.writers.Wait() }

// Conns returns the number of open connections.
func (s *Server) Conns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// conn is one client connection: a reader (this is where a message enters relayd) and a writer
// (where its answer leaves).
type conn struct {
	s    *Server
	c    *net.UnixConn
	name string
	out  chan []byte
	// slots holds a token for every message whose answer is not yet written; its capacity is
	// MaxPerClient, so out never fills and answering never blocks the relay.
	slots chan struct{}
	// pending is 1 for the reader plus one per unanswered message; whoever takes it to zero
	// closes out, which ends the writer.
	pending atomic.Int64
}

func (s *Server) start(uc *net.UnixConn) {
	id := s.nextID.Add(1)
	c := &conn{s: s, c: uc, name: fmt.Sprintf("conn-%d", id),
		out: make(chan []byte, s.cfg.MaxPerClient), slots: make(chan struct{}, s.cfg.MaxPerClient)}
	c.pending.Store(1)
	cred, credErr := peerCred(uc)
	if credErr == nil {
		c.name = fmt.Sprintf("conn-%d(pid=%d,uid=%d)", id, cred.Pid, cred.Uid)
	}

	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		uc.Close()
		return
	}
	tooMany := s.cfg.MaxConns > 0 && len(s.conns) >= s.cfg.MaxConns
	s.conns[c] = struct{}{}
	s.readers.Add(1)
	s.writers.Add(1)
	s.mu.Unlock()

	go c.writer()
	var refuse *ipc.Error
	switch {
	case credErr != nil:
		refuse = ipc.Errorf(ipc.CodeInternal, "reading peer credentials: %v", credErr)
	case s.cfg.Authorize != nil:
		if err := s.cfg.Authorize(cred); err != nil {
			s.log.Warn("connection refused", "uid", cred.Uid, "gid", cred.Gid, "pid", cred.Pid, "error", err)
			refuse = ipc.Errorf(ipc.CodeForbidden, "%v", err)
		}
	}
	if refuse == nil && tooMany {
		s.log.Warn("connection refused: too many connections", "max_conns", s.cfg.MaxConns)
		refuse = ipc.Errorf(ipc.CodeBusy, "too many connections (at most %d)", s.cfg.MaxConns)
	}
	go func() {
		defer s.readers.Done()
		if refuse != nil {
			c.refuse(refuse)
		} else {
			c.read()
		}
		c.release()
	}()
}

func peerCred(uc *net.UnixConn) (unix.Ucred, error) {
	raw, err := uc.SyscallConn()
	if err != nil {
		return unix.Ucred{}, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return unix.Ucred{}, err
	}
	if credErr != nil {
		return unix.Ucred{}, credErr
	}
	return *cred, nil
}

// refuse answers a connection that may not talk to relayd with one error and closes it. It
// reads what the client sends for a moment first, so that the client's first request is
// written without error and the client reads the refusal rather than a broken pipe.
func (c *conn) refuse(err *ipc.Error) {
	c.slots <- struct{}{}
	c.pending.Add(1)
	r := ipc.ErrorReply(nil, err)
	c.observe("", "", r, time.Now())
	c.deliver(r)
	c.c.SetReadDeadline(time.Now().Add(time.Second))
	io.Copy(io.Discard, io.LimitReader(c.c, 64<<10))
}

// read is the connection's reader: one request line at a time, decoded and routed by name.
func (c *conn) read() {
	fr := &frameReader{c: c}
	lr := ipc.NewLineReader(fr, c.s.cfg.MaxMessageBytes)
	for {
		line, err := lr.ReadLine()
		if fr.expired {
			c.answerNow(nil, "", ipc.Errorf(ipc.CodeBadRequest, "request line still incomplete after %s; closing", c.s.cfg.FrameTimeout))
			return
		}
		if fr.idle {
			c.s.log.Debug("closing idle connection", "conn", c.name, "idle_timeout", c.s.cfg.IdleTimeout)
			return
		}
		if errors.Is(err, ipc.ErrTooLarge) {
			c.answerNow(ipc.SniffID(lr.Head()), "", ipc.Errorf(ipc.CodeTooLarge, "request is longer than %d bytes", c.s.cfg.MaxMessageBytes))
			continue
		}
		if err != nil {
			return
		}
		if len(trimSpace(line)) == 0 {
			continue
		}
		req, perr := ipc.DecodeRequest(line)
		if perr != nil {
			c.answerNow(req.ID, req.Topic, perr)
			continue
		}
		select {
		case <-c.s.stopping:
			c.answerNow(req.ID, req.Topic, ipc.Errorf(ipc.CodeShuttingDown, "relay is shutting down"))
			continue
		default:
		}
		inbox, ok := c.s.cfg.Lookup(req.To)
		if !ok {
			c.answerNow(req.ID, req.Topic, ipc.Errorf(ipc.CodeUnknownName, "no process is registered as %q", req.To))
			continue
		}
		waitStart := time.Now()
		c.slots <- struct{}{}
		fr.pause(time.Since(waitStart))
		c.pending.Add(1)
		m := NewMessage(req, c.name, nil)
		m.reply = func(r ipc.Reply) { c.observe(req.To, req.Topic, r, m.Accepted); c.deliver(r) }
		inbox <- m
	}
}

func (c *conn) observe(service, topic string, r ipc.Reply, accepted time.Time) {
	if o := c.s.cfg.Observer; o != nil {
		code := ""
		if r.Error != nil {
			code = r.Error.Code
		}
		o.Answered(service, topic, code, time.Since(accepted))
	}
}

// frameReader reads from the connection under two deadlines. While a request line is half
// received, the line must be complete by FrameTimeout after its first byte was read, however
// slowly the rest trickles in: the deadline is set once per line, never pushed forward by a
// read. Between lines, with no partial line, IdleTimeout (if set) closes a connection that has
// nothing in flight either.
type frameReader struct {
	c            *conn
	partial      bool      // the last byte read was not a newline
	lineDeadline time.Time // when the partial line must be complete
	expired      bool      // a half-received line hit FrameTimeout
	idle         bool      // the connection had nothing to do for IdleTimeout
}

func (r *frameReader) Read(p []byte) (int, error) {
	for {
		var deadline time.Time
		switch {
		case r.partial:
			deadline = r.lineDeadline
		case r.c.s.cfg.IdleTimeout > 0:
			deadline = time.Now().Add(r.c.s.cfg.IdleTimeout)
		}
		r.c.c.SetReadDeadline(deadline)
		// StopReading closes stopping before it sets every deadline to now; checking after
		// setting ours means it cannot be overwritten.
		select {
		case <-r.c.s.stopping:
			r.c.c.SetReadDeadline(time.Now())
		default:
		}
		n, err := r.c.c.Read(p)
		if n > 0 {
			// A line starts in this read if the read before ended a line, or if this one
			// holds a newline and more after it.
			if !r.partial || bytes.IndexByte(p[:n-1], '\n') >= 0 {
				r.lineDeadline = time.Now().Add(r.c.s.cfg.FrameTimeout)
			}
			r.partial = p[n-1] != '\n'
		}
		if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) || r.c.s.isStopping() {
			return n, err
		}
		switch {
		case r.partial && !time.Now().Before(r.lineDeadline):
			r.expired = true
		case !r.partial && r.c.pending.Load() > 1:
			// Messages of this connection are still in flight: it is not idle. Wait again.
			if n == 0 {
				continue
			}
			return n, nil
		case !r.partial:
			r.idle = true
		}
		return n, err
	}
}

// pause moves the line deadline on by d, the time the reader spent not reading because of
// relayd's own back-pressure (its answers not yet written), which the sender cannot help.
func (r *frameReader) pause(d time.Duration) {
	if r.partial {
		r.lineDeadline = r.lineDeadline.Add(d)
	}
}

// answerNow answers a line the reader itself can answer.
func (c *conn) answerNow(id []byte, topic string, err *ipc.Error) {
	c.slots <- struct{}{}
	c.pending.Add(1)
	r := ipc.ErrorReply(id, err)
	c.observe("", topic, r, time.Now())
	c.deliver(r)
}

// deliver queues an answer for the writer. It never blocks: the caller holds a slot.
func (c *conn) deliver(r ipc.Reply) {
	b, err := ipc.AppendFrame(nil, r)
	if err != nil {
		b, _ = ipc.AppendFrame(nil, ipc.ErrorReply(r.ID, ipc.Errorf(ipc.CodeInternal, "encoding answer: %v", err)))
	}
	c.out <- b
	c.release()
}

func (c *conn) release() {
	if c.pending.Add(-1) == 0 {
		close(c.out)
	}
}

// writer writes answers as they come, batching what is queued into one write. After a write
// fails it discards the rest: a client that went away loses its answers, nothing else.
func (c *conn) writer() {
	defer c.s.writers.Done()
	defer func() {
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
		c.c.Close()
	}()
	bw := bufio.NewWriterSize(c.c, 16<<10)
	broken := false
	for b := range c.out {
		<-c.slots
		if broken {
			continue
		}
		c.c.SetWriteDeadline(time.Now().Add(c.s.cfg.WriteTimeout))
		_, err := bw.Write(b)
		if err == nil && len(c.out) == 0 {
			err = bw.Flush()
		}
		if err != nil {
			broken = true
			c.s.log.Debug("client gone; dropping its answers", "conn", c.name, "error", err)
		}
	}
	if !broken {
		bw.Flush()
	}
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t' || b[0] == '\r') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

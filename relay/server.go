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

// Fixed parts of the server's bounds.
const (
	// readBufBytes is each connection's read buffer. Longer lines are assembled in a line
	// buffer that counts against the connection's pending bytes.
	readBufBytes = 16 << 10
	// writeBufBytes batches small answers into one write; longer ones are written directly.
	writeBufBytes = 4 << 10
	// maxRefusing bounds connections being refused at once that are read for a moment, so the
	// client's first request is written without error and it reads the refusal. Further
	// refusals are written and closed at once.
	maxRefusing = 16
	// refuseLinger is how long a refused connection is read before it is closed.
	refuseLinger = 250 * time.Millisecond
	// maxUnswept bounds connections whose clients closed them but which relayd has not yet
	// cleaned up (they are not counted against --max-conns): past it relayd stops accepting
	// until cleanup catches up.
	maxUnswept = 32
	// ExtraDescriptors is how many descriptors connections may take beyond --max-conns: the
	// refusals above, connections not yet swept, and one being accepted.
	ExtraDescriptors = maxRefusing + maxUnswept + 1
	// FixedDescriptors is what relayd reserves under its open-file limit besides --max-conns
	// and its workers' pipes: ExtraDescriptors and its own (the listener, the metrics
	// endpoint, stdio, the poller, the sandbox's), with a margin.
	FixedDescriptors = ExtraDescriptors + 64
	// DescriptorsPerWorker is what one running worker costs relayd: its stdin, stdout and
	// stderr pipes and a pidfd.
	DescriptorsPerWorker = 4
)

// DefaultPendingBytes derives the pending-byte budgets from the longest request: per
// connection, one such request and a few read buffers, so a client can always send one; in
// all, four. A message is copied several times on its way to a worker and back, and Go's
// collector lets the heap grow to about twice what is live, so relayd's memory grows by
// several times its pending bytes: 4 MiB pending keeps relayd within 64 MiB of its idle size
// with the default --max-message-bytes (measured: about 30 MiB).
func DefaultPendingBytes(maxMessageBytes int) (total, perClient int64) {
	perClient = int64(maxMessageBytes) + 4*readBufBytes
	return max(4*int64(maxMessageBytes), perClient), perClient
}

// DefaultMaxAnswerBytes derives the longest answer from the longest request: twice it, for
// case mappings that lengthen text, and room for the frame around the data.
func DefaultMaxAnswerBytes(maxMessageBytes int) int { return 2*maxMessageBytes + 4<<10 }

// ServerConfig configures a Server.
type ServerConfig struct {
	// Lookup resolves a request's "to" to the inbox of a registered process.
	Lookup func(name string) (chan<- *Message, bool)
	// MaxMessageBytes bounds a request line; longer ones are answered too_large.
	MaxMessageBytes int
	// MaxAnswerBytes bounds an encoded answer; a longer one is replaced by too_large. 0 means
	// DefaultMaxAnswerBytes.
	MaxAnswerBytes int
	// MaxPerClient bounds the messages of one connection that are in flight or whose answers
	// are not yet written; further lines wait their turn.
	MaxPerClient int
	// MaxPendingBytes bounds the bytes held for all clients together: request bytes read and
	// not yet answered, and answers not yet written. MaxClientPendingBytes is the same bound
	// for one connection. Past either, connections are not read until bytes drain (the kernel's
	// socket buffer holds the rest). 0 means DefaultPendingBytes.
	MaxPendingBytes       int64
	MaxClientPendingBytes int64
	// PerClient, if set, bounds the messages of one connection in flight to one name, below
	// MaxPerClient; 0 means MaxPerClient alone.
	PerClient func(name string) int
	// MaxConns bounds open connections; 0 means no bound. MaxConnsPerUID bounds those of one
	// peer uid; 0 means no bound of its own.
	MaxConns       int
	MaxConnsPerUID int
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

// ServerStats are the server's counters, for metrics.
type ServerStats struct {
	// PendingBytes is what is held for clients now: requests read and not yet answered,
	// answers not yet written.
	PendingBytes int64
	// Refused counts connections refused: over --max-conns or the per-uid bound, or not
	// allowed by their credentials.
	Refused uint64
	// Answers counts answers handed to connections' writers; AnswersDropped those of them
	// never written: their client went away, or stop came before the client read them.
	Answers, AnswersDropped uint64
}

// Server accepts client connections on a Unix socket and turns their lines into Messages.
type Server struct {
	cfg      ServerConfig
	log      hclog.Logger
	stopping chan struct{} // closed by StopReading
	abandon  chan struct{} // closed when Shutdown gives up on unwritten answers
	accept   sync.WaitGroup
	conns    sync.WaitGroup // a reader and a writer per connection, and refusals
	nextID   atomic.Uint64

	// gate is held for reading while a reader hands a message to an inbox, and for writing
	// when StopReading closes it, so that no message enters after StopReading returns.
	gate       sync.RWMutex
	gateClosed bool // guarded by gate

	held    atomic.Int64 // pending bytes of all connections
	waiting atomic.Int32 // readers waiting for pending bytes to drain
	wakeMu  sync.Mutex
	wake    chan struct{} // guarded by wakeMu; closed and replaced when bytes drain

	refused, answers, dropped atomic.Uint64

	mu       sync.Mutex
	ln       net.Listener       // guarded by mu
	all      map[*conn]struct{} // guarded by mu; every connection not yet cleaned up
	live     int                // guarded by mu; those counted against MaxConns
	perUID   map[uint32]int     // guarded by mu; live connections per peer uid
	refusing int                // guarded by mu; refusals being read for a moment
	stopped  bool               // guarded by mu
	room     chan struct{}      // guarded by mu; closed and replaced when a connection ends
	logLimit limiter            // guarded by mu
}

// NewServer returns a server; Serve runs it.
func NewServer(cfg ServerConfig) *Server {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.MaxMessageBytes <= 0 {
		cfg.MaxMessageBytes = 1 << 20
	}
	if cfg.MaxAnswerBytes <= 0 {
		cfg.MaxAnswerBytes = DefaultMaxAnswerBytes(cfg.MaxMessageBytes)
	}
	total, perClient := DefaultPendingBytes(cfg.MaxMessageBytes)
	if cfg.MaxClientPendingBytes <= 0 {
		cfg.MaxClientPendingBytes = perClient
	}
	if cfg.MaxPendingBytes <= 0 {
		cfg.MaxPendingBytes = max(total, cfg.MaxClientPendingBytes)
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
	return &Server{cfg: cfg, log: cfg.Logger, stopping: make(chan struct{}), abandon: make(chan struct{}),
		wake: make(chan struct{}), all: make(map[*conn]struct{}), perUID: make(map[uint32]int),
		room: make(chan struct{}), logLimit: limiter{tokens: refusalBurst}}
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
		if !s.waitRoom() {
			return nil
		}
		c, err := ln.Accept()
		if err != nil {
			if s.isStopping() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
				s.log.Error("accepting connection", "error", err)
				select {
				case <-s.stopping:
					return nil
				case <-time.After(100 * time.Millisecond):
				}
				continue
			}
			return fmt.Errorf("accepting connection: %w", err)
		}
		s.admit(c.(*net.UnixConn))
	}
}

// waitRoom stops accepting while too many connections that clients closed are still being
// cleaned up, so descriptors stay bounded. It reports false once StopReading is called.
func (s *Server) waitRoom() bool {
	for {
		s.mu.Lock()
		room := s.room
		full := s.cfg.MaxConns > 0 && len(s.all) >= s.cfg.MaxConns+maxUnswept
		s.mu.Unlock()
		if !full {
			return true
		}
		select {
		case <-room:
		case <-s.stopping:
			return false
		}
	}
}

// StopReading closes the listener and stops reading requests. Every line already read still
// gets its answer. Once it returns, no message is handed to a relay any more; it does not wait
// for a reader that waits for its client's answers to be written.
func (s *Server) StopReading() {
	s.mu.Lock()
	if !s.stopped {
		s.stopped = true
		close(s.stopping)
		if s.ln != nil {
			s.ln.Close()
		}
		for c := range s.all {
			c.c.SetReadDeadline(time.Now())
		}
		if n := s.logLimit.suppressed; n > 0 {
			s.log.Warn("connection refusals not logged (rate limit)", "suppressed", n)
			s.logLimit.suppressed = 0
		}
	}
	s.mu.Unlock()
	s.accept.Wait()
	s.gate.Lock()
	s.gateClosed = true
	s.gate.Unlock()
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
func (s *Server) Wait() { s.conns.Wait() }

// Shutdown waits, after StopReading, until every connection has written its answers and
// closed, or until deadline. At the deadline it gives up on what is left: answers not yet
// written are dropped and counted, and every connection is closed. It returns how many
// answers it dropped.
func (s *Server) Shutdown(deadline time.Time) int {
	done := make(chan struct{})
	go func() { s.conns.Wait(); close(done) }()
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-done:
		return 0
	case <-t.C:
	}
	before := s.dropped.Load()
	close(s.abandon)
	s.mu.Lock()
	n := len(s.all)
	for c := range s.all {
		c.c.SetDeadline(time.Now())
	}
	s.mu.Unlock()
	// With every deadline past, writers fail at once and readers end; this is quick, but a
	// stop must end, so it is bounded too.
	select {
	case <-done:
	case <-time.After(time.Second):
		s.log.Error("connections still open after the stop deadline", "conns", n)
	}
	return int(s.dropped.Load() - before)
}

// Conns returns the number of open connections counted against --max-conns.
func (s *Server) Conns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.live
}

// Stats returns the server's counters. It is safe to call from any goroutine.
func (s *Server) Stats() ServerStats {
	return ServerStats{PendingBytes: s.held.Load(), Refused: s.refused.Load(), Answers: s.answers.Load(), AnswersDropped: s.dropped.Load()}
}

// conn is one client connection: a reader (this is where a message enters relayd) and a writer
// (where its answer leaves).
type conn struct {
	s    *Server
	c    *net.UnixConn
	fd   int // c's descriptor, valid while c is in s.all
	uid  uint32
	name string
	out  chan []byte
	// slots holds a token for every message whose answer is not yet written; its capacity is
	// MaxPerClient, so out never fills and answering never blocks the relay.
	slots chan struct{}
	// perName holds a semaphore per name with a bound of its own (PerClient); only the
	// reader touches the map.
	perName map[string]chan struct{}
	// pending is 1 for the reader plus one per unanswered message; whoever takes it to zero
	// closes out, which ends the writer.
	pending atomic.Int64
	// held is this connection's pending bytes: what its reader holds of unfinished lines,
	// requests in flight, answers not yet written.
	held    atomic.Int64
	counted bool // guarded by s.mu; counted in s.live and s.perUID
}

// admit checks a new connection's credentials and the connection bounds before anything is
// allocated for it, then starts its reader and writer, or refuses it.
func (s *Server) admit(uc *net.UnixConn) {
	fd := -1
	cred, credErr := peerCred(uc, &fd)
	if credErr != nil {
		s.refuse(uc, "reading peer credentials", ipc.Errorf(ipc.CodeInternal, "reading peer credentials: %v", credErr), nil)
		return
	}
	if s.cfg.Authorize != nil {
		if err := s.cfg.Authorize(cred); err != nil {
			s.refuse(uc, "not allowed", ipc.Errorf(ipc.CodeForbidden, "%v", err),
				[]any{"uid", cred.Uid, "gid", cred.Gid, "pid", cred.Pid, "error", err})
			return
		}
	}
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		uc.Close()
		return
	}
	overAll := s.cfg.MaxConns > 0 && s.live >= s.cfg.MaxConns
	overUID := s.cfg.MaxConnsPerUID > 0 && s.perUID[cred.Uid] >= s.cfg.MaxConnsPerUID
	if overAll || overUID {
		// Clients that closed their connections must not count: a client that connects and
		// closes in a loop, one at a time, is never refused.
		s.sweep()
		overAll = s.cfg.MaxConns > 0 && s.live >= s.cfg.MaxConns
		overUID = s.cfg.MaxConnsPerUID > 0 && s.perUID[cred.Uid] >= s.cfg.MaxConnsPerUID
	}
	if overAll || overUID {
		s.mu.Unlock()
		if overAll {
			s.refuse(uc, "too many connections", ipc.Errorf(ipc.CodeBusy, "too many connections (at most %d)", s.cfg.MaxConns),
				[]any{"max_conns", s.cfg.MaxConns, "uid", cred.Uid, "pid", cred.Pid})
		} else {
			s.refuse(uc, "too many connections of one uid", ipc.Errorf(ipc.CodeBusy, "too many connections of uid %d (at most %d)", cred.Uid, s.cfg.MaxConnsPerUID),
				[]any{"max_conns_per_uid", s.cfg.MaxConnsPerUID, "uid", cred.Uid, "pid", cred.Pid})
		}
		return
	}
	id := s.nextID.Add(1)
	c := &conn{s: s, c: uc, fd: fd, uid: cred.Uid, name: fmt.Sprintf("conn-%d(pid=%d,uid=%d)", id, cred.Pid, cred.Uid),
		out: make(chan []byte, s.cfg.MaxPerClient), slots: make(chan struct{}, s.cfg.MaxPerClient), counted: true}
	c.pending.Store(1)
	s.all[c] = struct{}{}
	s.live++
	s.perUID[cred.Uid]++
	s.conns.Add(2)
	s.mu.Unlock()

	go c.writer()
	go func() {
		defer s.conns.Done()
		c.read()
		c.release()
	}()
}

// sweep stops counting connections whose clients have closed them (POLLHUP on the socket)
// although relayd has not cleaned them up yet. One poll(2) over every connection, only when a
// bound is reached.
func (s *Server) sweep() {
	var cs []*conn
	for c := range s.all {
		if c.counted {
			cs = append(cs, c)
		}
	}
	for _, c := range hungUp(cs) {
		c.counted = false
		s.live--
		s.uncountUID(c.uid)
	}
}

func (s *Server) uncountUID(uid uint32) {
	if s.perUID[uid]--; s.perUID[uid] <= 0 {
		delete(s.perUID, uid)
	}
}

// hungUp returns the connections whose peers have closed them. The descriptors are valid: the
// caller holds s.mu, and a connection is closed only after it leaves s.all under s.mu.
func hungUp(cs []*conn) []*conn {
	fds := make([]unix.PollFd, len(cs))
	for i, c := range cs {
		fds[i] = unix.PollFd{Fd: int32(c.fd), Events: unix.POLLRDHUP}
	}
	if _, err := unix.Poll(fds, 0); err != nil {
		return nil
	}
	var out []*conn
	for i, f := range fds {
		// POLLHUP: both directions are shut, so the client closed its end. A client that
		// only shut its writing side (POLLRDHUP) still waits for answers and counts.
		if f.Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0 {
			out = append(out, cs[i])
		}
	}
	return out
}

func peerCred(uc *net.UnixConn, fd *int) (unix.Ucred, error) {
	raw, err := uc.SyscallConn()
	if err != nil {
		return unix.Ucred{}, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(f uintptr) {
		*fd = int(f)
		cred, credErr = unix.GetsockoptUcred(int(f), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return unix.Ucred{}, err
	}
	if credErr != nil {
		return unix.Ucred{}, credErr
	}
	return *cred, nil
}

// refuse answers a connection that may not talk to relayd with one error and closes it. Up to
// maxRefusing refusals at a time read what the client sends for a moment first, so that the
// client's first request is written without error and it reads the refusal rather than a
// broken pipe; beyond that, the refusal is written and the connection closed at once, so that
// a flood of connections cannot hold descriptors. Refusals are logged at a bounded rate.
func (s *Server) refuse(uc *net.UnixConn, why string, e *ipc.Error, fields []any) {
	s.refused.Add(1)
	if o := s.cfg.Observer; o != nil {
		o.Answered("", "", e.Code, 0)
	}
	s.mu.Lock()
	if n, ok := s.logLimit.allow(time.Now()); ok {
		if n > 0 {
			fields = append(fields, "suppressed", n)
		}
		s.log.Warn("connection refused: "+why, fields...)
	}
	linger := s.refusing < maxRefusing && !s.stopped
	if linger {
		s.refusing++
		s.conns.Add(1)
	}
	s.mu.Unlock()
	b, _ := ipc.AppendFrame(nil, ipc.ErrorReply(nil, e))
	// A new socket's send buffer is empty: this short write does not wait.
	uc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	uc.Write(b)
	if !linger {
		uc.Close()
		return
	}
	go func() {
		defer s.conns.Done()
		uc.SetReadDeadline(time.Now().Add(refuseLinger))
		io.Copy(io.Discard, io.LimitReader(uc, 64<<10))
		uc.Close()
		s.mu.Lock()
		s.refusing--
		s.mu.Unlock()
	}()
}

// Refusal logging: a burst, then a few lines a second, with the count of those suppressed.
const (
	refusalBurst = 10
	refusalRate  = 1
)

// limiter is a token bucket for log lines that counts what it suppresses.
type limiter struct {
	tokens     float64
	last       time.Time
	suppressed int
}

// allow reports whether a line may be logged now and, if so, how many were suppressed since
// the last one.
func (l *limiter) allow(now time.Time) (int, bool) {
	if !l.last.IsZero() {
		l.tokens = min(refusalBurst, l.tokens+now.Sub(l.last).Seconds()*refusalRate)
	}
	l.last = now
	if l.tokens < 1 {
		l.suppressed++
		return 0, false
	}
	l.tokens--
	n := l.suppressed
	l.suppressed = 0
	return n, true
}

// read is the connection's reader: one request line at a time, decoded and routed by name.
func (c *conn) read() {
	fr := &frameReader{c: c}
	lr := ipc.NewLineReaderSize(fr, c.s.cfg.MaxMessageBytes, readBufBytes)
	fr.lr = lr
	defer fr.settle(0, true)
	for {
		line, err := lr.ReadLine()
		if fr.expired {
			fr.settle(0, false)
			c.answerNow(nil, "", ipc.Errorf(ipc.CodeBadRequest, "request line still incomplete after %s; closing", c.s.cfg.FrameTimeout))
			return
		}
		if fr.idle {
			c.s.log.Debug("closing idle connection", "conn", c.name, "idle_timeout", c.s.cfg.IdleTimeout)
			return
		}
		if errors.Is(err, ipc.ErrTooLarge) {
			fr.settle(0, false)
			c.answerNow(ipc.SniffID(lr.Head()), "", ipc.Errorf(ipc.CodeTooLarge, "request is longer than %d bytes", c.s.cfg.MaxMessageBytes))
			continue
		}
		if err != nil {
			return
		}
		fr.settle(len(line), false)
		if len(trimSpace(line)) == 0 {
			fr.settle(0, false)
			continue
		}
		req, perr := ipc.DecodeRequest(line)
		if perr != nil {
			fr.settle(0, false)
			c.answerNow(req.ID, req.Topic, perr)
			continue
		}
		// The line's bytes now belong to the message until it is answered.
		charge := int64(len(line))
		fr.settle(0, false)
		c.charge(charge)
		if c.s.isStopping() {
			c.uncharge(charge)
			c.answerNow(req.ID, req.Topic, ipc.Errorf(ipc.CodeShuttingDown, "relay is shutting down"))
			continue
		}
		inbox, ok := c.s.cfg.Lookup(req.To)
		if !ok {
			c.uncharge(charge)
			c.answerNow(req.ID, req.Topic, ipc.Errorf(ipc.CodeUnknownName, "no process is registered as %q", req.To))
			continue
		}
		waitStart := time.Now()
		sem := c.nameSlots(req.To)
		if sem != nil {
			sem <- struct{}{}
		}
		c.slots <- struct{}{}
		fr.pause(time.Since(waitStart))
		c.pending.Add(1)
		m := NewMessage(req, c.name, nil)
		m.reply = func(r ipc.Reply) {
			if sem != nil {
				<-sem
			}
			c.observe(req.To, req.Topic, r, m.Accepted)
			c.deliver(r, charge)
		}
		if !c.s.enter(inbox, m) {
			m.Fail(ipc.Errorf(ipc.CodeShuttingDown, "relay is shutting down"))
		}
	}
}

// nameSlots returns the semaphore of the connection's messages in flight to name, or nil when
// only MaxPerClient bounds them. Only the reader calls it.
func (c *conn) nameSlots(name string) chan struct{} {
	if c.s.cfg.PerClient == nil {
		return nil
	}
	n := c.s.cfg.PerClient(name)
	if n <= 0 {
		return nil
	}
	sem := c.perName[name]
	if cap(sem) != n {
		if c.perName == nil {
			c.perName = make(map[string]chan struct{})
		}
		// A changed bound takes a new semaphore; answers release the old one they took.
		sem = make(chan struct{}, n)
		c.perName[name] = sem
	}
	return sem
}

// enter hands m to inbox unless StopReading has closed the gate.
func (s *Server) enter(inbox chan<- *Message, m *Message) bool {
	s.gate.RLock()
	defer s.gate.RUnlock()
	if s.gateClosed {
		return false
	}
	inbox <- m
	return true
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

// charge counts n more pending bytes for this connection and in total; uncharge counts them
// off and wakes readers waiting for bytes to drain.
func (c *conn) charge(n int64) {
	c.held.Add(n)
	c.s.held.Add(n)
}

func (c *conn) uncharge(n int64) {
	if n == 0 {
		return
	}
	c.charge(-n)
	s := c.s
	if s.waiting.Load() > 0 {
		s.wakeMu.Lock()
		close(s.wake)
		s.wake = make(chan struct{})
		s.wakeMu.Unlock()
	}
}

// overBudget reports whether this connection may not read more now.
func (c *conn) overBudget() bool {
	return c.held.Load() >= c.s.cfg.MaxClientPendingBytes || c.s.held.Load() >= c.s.cfg.MaxPendingBytes
}

// errStopped ends a read that waited for pending bytes when relayd stops.
var errStopped = errors.New("relay is stopping")

// waitBudget waits until this connection may read more: until its own pending bytes and all
// connections' together are under their bounds. That is the back-pressure: while it waits,
// the kernel's socket buffer holds what the client sends. A partial line's deadline still runs.
func (c *conn) waitBudget(fr *frameReader) error {
	if !c.overBudget() {
		return nil
	}
	s := c.s
	s.waiting.Add(1)
	defer s.waiting.Add(-1)
	for {
		s.wakeMu.Lock()
		wake := s.wake
		s.wakeMu.Unlock()
		if !c.overBudget() {
			return nil
		}
		var expire <-chan time.Time
		if fr.partial {
			t := time.NewTimer(time.Until(fr.lineDeadline))
			expire = t.C
			defer t.Stop() // At most once: the partial line cannot change while waiting.
		}
		select {
		case <-wake:
		case <-s.stopping:
			return errStopped
		case <-expire:
			fr.expired = true
			return os.ErrDeadlineExceeded
		}
	}
}

// frameReader reads from the connection under two deadlines. While a request line is half
// received, the line must be complete by FrameTimeout after its first byte was read, however
// slowly the rest trickles in: the deadline is set once per line, never pushed forward by a
// read. Between lines, with no partial line, IdleTimeout (if set) closes a connection that has
// nothing in flight either. It also counts what the reader holds against the pending bytes.
type frameReader struct {
	c            *conn
	lr           *ipc.LineReader
	held         int64     // bytes read that the line reader holds (partial lines, buffered)
	partial      bool      // the last byte read was not a newline
	lineDeadline time.Time // when the partial line must be complete
	expired      bool      // a half-received line hit FrameTimeout
	idle         bool      // the connection had nothing to do for IdleTimeout
}

// settle recounts what the reader holds after a line was read: what is buffered, plus keep
// bytes of the line still in use. With final, everything is counted off.
func (r *frameReader) settle(keep int, final bool) {
	now := int64(keep + r.lr.Buffered())
	if final {
		now = 0
	}
	if d := now - r.held; d > 0 {
		r.c.charge(d)
	} else {
		r.c.uncharge(-d)
	}
	r.held = now
}

func (r *frameReader) Read(p []byte) (int, error) {
	for {
		if err := r.c.waitBudget(r); err != nil {
			return 0, err
		}
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
		if r.c.s.isStopping() {
			r.c.c.SetReadDeadline(time.Now())
		}
		n, err := r.c.c.Read(p)
		if n > 0 {
			r.c.charge(int64(n))
			r.held += int64(n)
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
	c.deliver(r, 0)
}

// deliver queues an answer for the writer, counting its bytes instead of the request's. It
// never blocks: the caller holds a slot. An answer longer than MaxAnswerBytes is replaced by
// too_large, so no worker can make relayd hold more.
func (c *conn) deliver(r ipc.Reply, request int64) {
	b, err := ipc.AppendFrame(nil, r)
	if err != nil {
		b, _ = ipc.AppendFrame(nil, ipc.ErrorReply(r.ID, ipc.Errorf(ipc.CodeInternal, "encoding answer: %v", err)))
	}
	if len(b) > c.s.cfg.MaxAnswerBytes {
		n := len(b)
		b, _ = ipc.AppendFrame(nil, ipc.ErrorReply(r.ID, ipc.Errorf(ipc.CodeTooLarge, "answer is %d bytes, longer than the %d allowed", n, c.s.cfg.MaxAnswerBytes)))
	}
	c.charge(int64(len(b)))
	c.uncharge(request)
	c.s.answers.Add(1)
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
	s := c.s
	defer s.conns.Done()
	defer func() {
		s.mu.Lock()
		delete(s.all, c)
		if c.counted {
			s.live--
			s.uncountUID(c.uid)
		}
		close(s.room)
		s.room = make(chan struct{})
		s.mu.Unlock()
		c.closeGently()
	}()
	bw := bufio.NewWriterSize(c.c, writeBufBytes)
	broken := false
	// Answers handed to bw but not yet wholly written, by where each ends in the stream: the
	// ones counted as dropped if a write fails.
	var handed int64
	var ends []int64
	for b := range c.out {
		<-c.slots
		if broken {
			s.dropped.Add(1)
			c.uncharge(int64(len(b)))
			continue
		}
		c.c.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		// Shutdown sets every deadline to now once it gives up on unwritten answers; checking
		// after setting ours means it cannot be overwritten.
		select {
		case <-s.abandon:
			c.c.SetWriteDeadline(time.Now())
		default:
		}
		handed += int64(len(b))
		ends = append(ends, handed)
		_, err := bw.Write(b)
		if err == nil && len(c.out) == 0 {
			err = bw.Flush()
		}
		c.uncharge(int64(len(b)))
		written := handed - int64(bw.Buffered())
		for len(ends) > 0 && ends[0] <= written && err == nil {
			ends = ends[1:]
		}
		if err != nil {
			broken = true
			s.dropped.Add(uint64(len(ends)))
			s.log.Debug("client gone; dropping its answers", "conn", c.name, "error", err)
		}
	}
	if !broken && bw.Flush() != nil {
		s.dropped.Add(uint64(len(ends)))
	}
}

// closeGently closes the connection so that the client can read every answer written to it.
// Closing a Unix socket with unread bytes in it makes the kernel report ECONNRESET to the
// peer, which then loses answers still queued for it; so reading is shut first (the client's
// further writes fail, and the queue cannot grow) and what is left unread is discarded.
func (c *conn) closeGently() {
	if c.c.CloseRead() == nil {
		// A read deadline left in the past (a line's frame deadline, the stop's) would keep
		// the drain below from running at all.
		c.c.SetReadDeadline(time.Time{})
		if raw, err := c.c.SyscallConn(); err == nil {
			buf := make([]byte, 4<<10)
			// After shutting reading, a read returns what is queued and then 0 at once; it
			// never waits. The queue is bounded by the client's send buffer.
			raw.Read(func(fd uintptr) bool {
				for range 4096 {
					if n, err := unix.Read(int(fd), buf); n <= 0 || err != nil {
						break
					}
				}
				return true
			})
		}
	}
	c.c.Close()
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

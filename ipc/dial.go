package ipc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// ErrClosed reports that the connection to relayd ended before a request was answered.
var ErrClosed = errors.New("connection closed")

// MaxReplyBytes bounds one reply line read by a Client. Replies to oversized requests are
// refused by relayd long before this, and uppercasing can grow a message only a little.
const MaxReplyBytes = 16 << 20

// Answer is one reply frame as a Client received it.
type Answer struct {
	Reply
	// Raw is the frame exactly as relayd sent it, without its newline.
	Raw []byte
}

// Call is one request in flight on a Client.
type Call struct {
	// ID is the request's id on the wire.
	ID int64
	// Sent is when the request was written to the socket; client-side timeouts count from it.
	Sent time.Time
	ch   chan Answer
}

// Client is one connection to relayd. It numbers requests 1, 2, 3… and matches answers to them
// by id, so many requests can be in flight at once and a late answer to a forgotten request is
// dropped instead of being taken for the answer to a later one. Its methods are safe for
// concurrent use.
type Client struct {
	conn *net.UnixConn
	wmu  sync.Mutex // serializes writes so that frames never interleave

	mu      sync.Mutex
	pending map[string]*Call // guarded by mu; by the id's JSON text
	nextID  int64            // guarded by mu
	idless  *Error           // guarded by mu; the last error reply that named no request
	err     error            // guarded by mu; why reading stopped, set before done is closed

	done chan struct{} // closed when the reading goroutine has stopped
	wg   sync.WaitGroup
}

// Dial connects to relayd's socket at path.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	c := &Client{
		conn:    conn.(*net.UnixConn),
		pending: make(map[string]*Call),
		done:    make(chan struct{}),
	}
	c.wg.Go(c.read)
	return c, nil
}

// Send writes one request to relayd with the next id and returns the Call to wait on. data is
// encoded as JSON; a nil data is left out of the frame.
func (c *Client) Send(to, topic string, data any) (*Call, error) {
	var raw json.RawMessage
	if data != nil {
		var err error
		if raw, err = json.Marshal(data); err != nil {
			return nil, fmt.Errorf("encoding data: %w", err)
		}
	}
	c.mu.Lock()
	c.nextID++
	call := &Call{ID: c.nextID, ch: make(chan Answer, 1)}
	key := strconv.FormatInt(call.ID, 10)
	c.pending[key] = call
	c.mu.Unlock()

	line, err := AppendFrame(nil, Request{ID: json.RawMessage(key), To: to, Topic: topic, Data: raw})
	if err == nil {
		c.wmu.Lock()
		call.Sent = time.Now()
		_, err = c.conn.Write(line)
		c.wmu.Unlock()
	}
	if err != nil {
		c.Forget(call)
		return nil, err
	}
	return call, nil
}

// Wait returns the answer to call. It gives up when ctx is done, returning ctx's error and
// forgetting the call, or when the connection ends first, returning an error wrapping ErrClosed.
func (c *Client) Wait(ctx context.Context, call *Call) (Answer, error) {
	select {
	case a := <-call.ch:
		return a, nil
	case <-ctx.Done():
		c.Forget(call)
		// The answer may have arrived while ctx expired; prefer it.
		select {
		case a := <-call.ch:
			return a, nil
		default:
			return Answer{}, ctx.Err()
		}
	case <-c.done:
		// The reader delivers every answer it read before closing done.
		select {
		case a := <-call.ch:
			return a, nil
		default:
			return Answer{}, c.Err()
		}
	}
}

// Forget stops waiting for call; an answer that arrives for it later is dropped.
func (c *Client) Forget(call *Call) {
	c.mu.Lock()
	delete(c.pending, strconv.FormatInt(call.ID, 10))
	c.mu.Unlock()
}

// Done is closed when the connection has ended and no more answers will arrive.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err says why the connection ended; it wraps ErrClosed. It is nil while the connection is up.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// CloseWrite half-closes the connection after the last request; relayd still answers every
// request in flight.
func (c *Client) CloseWrite() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.conn.CloseWrite()
}

// Close closes the connection and returns once the reading goroutine has stopped.
func (c *Client) Close() error {
	err := c.conn.Close()
	c.wg.Wait()
	return err
}

// read delivers answers to their calls until the connection ends.
func (c *Client) read() {
	lr := NewLineReader(c.conn, MaxReplyBytes)
	var err error
	for {
		var line []byte
		line, err = lr.ReadLine()
		if errors.Is(err, ErrTooLarge) {
			continue // Its call, if any, times out.
		}
		if err != nil {
			break
		}
		var a Answer
		if json.Unmarshal(line, &a.Reply) != nil {
			continue
		}
		a.Raw = bytes.Clone(line)
		c.deliver(a)
	}
	c.mu.Lock()
	switch {
	case errors.Is(err, io.EOF) && c.idless != nil:
		c.err = fmt.Errorf("%w by relay after error %v", ErrClosed, c.idless)
	case errors.Is(err, io.EOF):
		c.err = fmt.Errorf("%w by relay", ErrClosed)
	default:
		c.err = fmt.Errorf("%w: %w", ErrClosed, err)
	}
	c.mu.Unlock()
	close(c.done)
}

// deliver hands a to the call it answers. An answer without an id (relayd could not read the
// request's id, e.g. for a line over its size limit) goes to the only call in flight when there
// is exactly one; otherwise it is remembered for the error that ends the connection.
func (c *Client) deliver(a Answer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	key := string(bytes.TrimSpace(a.ID))
	if key == "" || key == "null" {
		if len(c.pending) != 1 {
			if a.Error != nil {
				c.idless = a.Error
			}
			return
		}
		for k := range c.pending {
			key = k
		}
	}
	call, ok := c.pending[key]
	if !ok {
		return // A late answer to a forgotten call.
	}
	delete(c.pending, key)
	call.ch <- a
}

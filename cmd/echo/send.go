package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"relayd/ipc"
)

// window bounds the requests a pipe keeps in flight, so that a huge input neither floods relayd
// nor grows echo's memory.
const window = 64

// maxInputLine bounds one line of a pipe's input. relayd refuses much shorter lines itself
// (--max-message-bytes, 1 MiB by default) and says so; this only keeps echo's memory bounded.
const maxInputLine = 16 << 20

// exitInterrupted is the exit code when SIGINT or SIGTERM stops a one-shot or a pipe before
// every message was answered: 128 + SIGINT, as a shell reports it.
const exitInterrupted = 130

// errInterrupted is returned when a signal stops echo before every message was answered.
var errInterrupted = &exitError{code: exitInterrupted, err: errors.New("interrupted")}

// dial connects to relayd, bounding the attempt by timeout. Its error is the exit-3 message.
func dial(ctx context.Context, o options) (conn, error) {
	if o.nats.url != "" {
		return dialNATS(ctx, o)
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	c, err := ipc.Dial(ctx, o.socket)
	if err != nil {
		return nil, exitf(exitUnavailable, "relay not available at %s: %v", o.where(), reason(err))
	}
	return c, nil
}

// reason strips an error down to what went wrong, dropping the operation and address that the
// message around it already names: "no such file or directory", "connection refused".
func reason(err error) error {
	var se *os.SyscallError
	if errors.As(err, &se) {
		return se.Err
	}
	return err
}

// ask sends one message and waits for its answer, for the one-shot and --stats modes.
func ask(ctx context.Context, o options, topic string, data any) (ipc.Answer, error) {
	c, err := dial(ctx, o)
	if err != nil {
		return ipc.Answer{}, err
	}
	defer c.Close()
	// Nothing more will be sent; the half-close tells relayd so, as socat does.
	return askOn(ctx, c, o, topic, data, true)
}

// askOn sends one message on c and waits up to --timeout for its answer, turning what went
// wrong into echo's exit codes: relay not available, timeout, or interrupted.
func askOn(ctx context.Context, c conn, o options, topic string, data any, last bool) (ipc.Answer, error) {
	call, err := c.Send(o.to, topic, data)
	if err != nil {
		return ipc.Answer{}, exitf(exitUnavailable, "relay not available at %s: %v", o.where(), reason(err))
	}
	if last {
		_ = c.CloseWrite()
	}
	wctx, cancel := context.WithDeadline(ctx, call.Sent.Add(o.timeout))
	defer cancel()
	a, err := c.Wait(wctx, call)
	switch {
	case err == nil:
		return a, nil
	case ctx.Err() != nil:
		return ipc.Answer{}, errInterrupted
	case errors.Is(err, context.DeadlineExceeded):
		return ipc.Answer{}, exitf(exitTimeout, "timeout after %v", o.timeout)
	default:
		return ipc.Answer{}, exitf(exitUnavailable, "%v", err)
	}
}

// showFrame prints the answer's frame with --json, and turns an error answer into exit code 1.
// It reports whether the caller should still print the answer's data.
func showFrame(stdout io.Writer, o options, a ipc.Answer) (bool, error) {
	if o.json {
		fmt.Fprintf(stdout, "%s\n", a.Raw)
	}
	if a.Error != nil {
		return false, &exitError{code: exitReplyError, err: a.Error}
	}
	return !o.json, nil
}

// oneShot sends msg and prints the answer's data, or with --json the whole frame.
func oneShot(ctx context.Context, o options, msg string, stdout io.Writer) error {
	a, err := ask(ctx, o, o.topic, msg)
	if err != nil {
		return err
	}
	if show, err := showFrame(stdout, o, a); !show {
		return err
	}
	fmt.Fprintln(stdout, dataText(a.Data))
	return nil
}

// stats asks the relay for its counters and prints them.
func stats(ctx context.Context, o options, stdout io.Writer) error {
	if o.nats.url != "" {
		return gather(ctx, o, false, stdout)
	}
	return askAndShow(ctx, o, "stats", stdout, writeStats)
}

// askAndShow sends a request on topic without data and shows its answer: the reply frame with
// --json, else the data as show writes it. An error reply is exit code 1.
func askAndShow(ctx context.Context, o options, topic string, stdout io.Writer, show func(io.Writer, json.RawMessage) error) error {
	a, err := ask(ctx, o, topic, nil)
	if err != nil {
		return err
	}
	if data, err := showFrame(stdout, o, a); !data {
		return err
	}
	return show(stdout, a.Data)
}

// sent is one input line of a pipe on its way to relayd.
type sent struct {
	n    int       // line number, from 1
	call *ipc.Call // nil if err is set
	err  error     // the line could not be sent
	lost bool      // err is a broken connection, not a bad line
}

// pipe sends each line of stdin as a message on one connection without waiting for answers, and
// prints the answers in input order: one goroutine sends, the caller waits for the oldest
// request and prints. The queue between them bounds the requests in flight.
func pipe(ctx context.Context, o options, stdin io.Reader, stdout, stderr io.Writer) error {
	c, err := dial(ctx, o)
	if err != nil {
		return err
	}
	defer c.Close()

	queue := make(chan sent, window-1) // Plus the one the printer waits for.
	stop := make(chan struct{})
	sendErr := make(chan error, 1)
	go func() { sendErr <- sendLines(c, o, stdin, queue, stop) }()
	// On an abort the sender may be blocked reading stdin, which cannot be interrupted; it is
	// left behind, and the process exits right after. Otherwise it has finished when queue is
	// closed, and its error is read below.
	defer close(stop)

	out := bufio.NewWriter(stdout)
	defer out.Flush()
	code := exitOK
	for {
		var s sent
		var ok bool
		select {
		case s, ok = <-queue:
		case <-ctx.Done():
			return errInterrupted
		}
		if !ok {
			break
		}
		lineCode, abort := answerLine(ctx, c, o, s, out, stderr)
		code = worse(code, lineCode)
		if abort {
			if ctx.Err() != nil {
				return errInterrupted
			}
			return &exitError{code: code}
		}
		if len(queue) == 0 {
			if err := out.Flush(); err != nil {
				return fmt.Errorf("writing output: %w", err)
			}
		}
	}
	if err := <-sendErr; err != nil {
		return err
	}
	if code != exitOK {
		return &exitError{code: code}
	}
	return nil
}

// sendLines reads stdin and sends each line, queueing the calls in input order. It closes queue
// when it is done.
func sendLines(c conn, o options, stdin io.Reader, queue chan<- sent, stop <-chan struct{}) error {
	defer close(queue)
	lr := ipc.NewLineReader(stdin, maxInputLine)
	for n := 1; ; n++ {
		line, err := lr.ReadLine()
		s := sent{n: n}
		switch {
		case errors.Is(err, io.EOF):
			// Tell relayd nothing more comes; it still answers everything in flight.
			_ = c.CloseWrite()
			return nil
		case errors.Is(err, ipc.ErrTooLarge):
			s.err = fmt.Errorf("line is longer than %d bytes; not sent", maxInputLine)
		case err != nil:
			return fmt.Errorf("reading input: %w", err)
		default:
			msg := strings.TrimSuffix(string(line), "\r")
			if s.call, err = c.Send(o.to, o.topic, msg); err != nil {
				s.err = fmt.Errorf("relay not available at %s: %v", o.where(), reason(err))
				s.lost = true
			}
		}
		select {
		case queue <- s:
		case <-stop:
			return nil
		}
		if s.lost {
			return nil
		}
	}
}

// answerLine waits for the answer to line s and prints it: its data (or frame) on out, or an
// empty line there and the reason on stderr. It returns the line's exit code and whether the
// pipe must stop.
func answerLine(ctx context.Context, c conn, o options, s sent, out *bufio.Writer, stderr io.Writer) (code int, abort bool) {
	fail := func(code int, format string, args ...any) int {
		out.Flush() // Keep stdout and stderr in step when both go to one terminal.
		fmt.Fprintf(stderr, "%s: line %d: %s\n", progName, s.n, fmt.Sprintf(format, args...))
		return code
	}
	if s.err != nil {
		out.WriteString("\n")
		if s.lost {
			return fail(exitUnavailable, "%v", s.err), true
		}
		return fail(exitReplyError, "%v", s.err), false
	}
	wctx, cancel := context.WithDeadline(ctx, s.call.Sent.Add(o.timeout))
	defer cancel()
	a, err := c.Wait(wctx, s.call)
	switch {
	case err == nil && a.Error != nil:
		if o.json {
			fmt.Fprintf(out, "%s\n", a.Raw)
		} else {
			out.WriteString("\n")
		}
		return fail(exitReplyError, "%v", a.Error), false
	case err == nil && o.json:
		fmt.Fprintf(out, "%s\n", a.Raw)
		return exitOK, false
	case err == nil:
		// A multi-line answer would break the line-for-line output; its newlines are escaped.
		out.WriteString(strings.ReplaceAll(dataText(a.Data), "\n", `\n`) + "\n")
		return exitOK, false
	case ctx.Err() != nil:
		return exitInterrupted, true
	case errors.Is(err, context.DeadlineExceeded):
		out.WriteString("\n")
		return fail(exitTimeout, "timeout after %v", o.timeout), false
	default:
		out.WriteString("\n")
		return fail(exitUnavailable, "%v", err), true
	}
}

// worse returns the exit code that wins when lines end differently: relay not available, then
// timeout, then an error reply. An unanswered message's fate is unknown; an error reply's is not.
func worse(a, b int) int {
	rank := func(code int) int {
		switch code {
		case exitUnavailable:
			return 3
		case exitTimeout:
			return 2
		case exitReplyError:
			return 1
		}
		return 0
	}
	if rank(b) > rank(a) {
		return b
	}
	return a
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"

	"relayd/ipc"
)

// repl is the tutorial's CLI process: it reads a line, sends it to the relay, and prints the
// answer, a timeout or an error, until an empty line, EOF (Ctrl+D) or Ctrl+C. It keeps one
// connection and dials again when that breaks, so the relay may come and go while it runs.
func repl(ctx context.Context, o options, in, out *os.File, color paint) error {
	t := term.NewTerminal(struct {
		io.Reader
		io.Writer
	}{in, out}, color.yellow("> "))
	lateCtx, cancelLate := context.WithCancel(ctx)
	r := &session{o: o, out: out, late: t, lateCtx: lateCtx, color: color}
	defer func() {
		cancelLate()
		r.close()
	}()

	fmt.Fprintln(out, color.cyan("Echo Client"))
	fmt.Fprintln(out, color.dim("Type messages to echo. Ctrl+C to exit.\n"))

	var err error
	for {
		var line string
		line, err = readLine(ctx, t, in)
		if err != nil || line == "" {
			break
		}
		r.ask(ctx, line)
	}
	fmt.Fprint(out, "\nGoodbye!\n")
	if errors.Is(err, io.EOF) || ctx.Err() != nil {
		return nil // Ctrl+D, Ctrl+C, SIGINT and SIGTERM all end the REPL cleanly.
	}
	return err
}

// readLine reads one edited line from the terminal. The terminal is raw only while the line is
// read, so that Ctrl+C while an answer is awaited is an ordinary SIGINT.
func readLine(ctx context.Context, t *term.Terminal, in *os.File) (string, error) {
	fd := int(in.Fd())
	state, err := term.MakeRaw(fd)
	if err != nil {
		return "", fmt.Errorf("setting up the terminal: %w", err)
	}
	defer term.Restore(fd, state)
	// A terminal that reports no size (0x0, as some pseudo-terminals do) keeps the default 80x24;
	// a width of 0 would wrap after every character.
	if w, h, err := term.GetSize(fd); err == nil && w > 0 && h > 0 {
		t.SetSize(w, h)
	}

	type result struct {
		line string
		err  error
	}
	done := make(chan result, 1)
	// The reader cannot be interrupted: a signal leaves it blocked in read(2) on the terminal,
	// and the process exits right after.
	go func() {
		line, err := t.ReadLine()
		if errors.Is(err, term.ErrPasteIndicator) {
			err = nil
		}
		done <- result{line, err}
	}()
	select {
	case r := <-done:
		return r.line, r.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// session is the REPL's connection to the relay.
type session struct {
	o     options
	out   io.Writer
	color paint
	c     conn // nil until the first message and after the connection broke

	// late is where an answer that comes after its timeout is printed: the terminal, which
	// clears and redraws the prompt and the line being typed around it. lateCtx ends the
	// waits for such answers when the REPL ends; lateWG counts them.
	late    io.Writer
	lateCtx context.Context
	lateWG  sync.WaitGroup
}

// close ends the waits for late answers and the connection.
func (r *session) close() {
	if r.c != nil {
		r.c.Close()
	}
	r.lateWG.Wait()
}

// waited is what came of waiting for an answer.
type waited struct {
	a   ipc.Answer
	err error
}

// ask sends msg and prints what came of it, as the tutorial's CLI does. After --timeout it
// prints "timeout", as the tutorial does, but says that relayd may still be at it: relayd gives
// a message up to its own --message-timeout and retries a failed worker, so the answer, or the
// error that ends it, often comes later. It is then printed as a late answer, naming the
// message, never as the answer to the next one.
func (r *session) ask(ctx context.Context, msg string) {
	call, err := r.send(ctx, msg)
	if err != nil {
		r.println(r.color.dim("  error: relay not available"))
		return
	}
	c := r.c
	wctx, cancel := context.WithCancel(r.lateCtx)
	done := make(chan waited, 1)
	go func() {
		a, err := c.Wait(wctx, call)
		done <- waited{a, err}
	}()
	timer := time.NewTimer(time.Until(call.Sent.Add(r.o.timeout)))
	defer timer.Stop()
	select {
	case w := <-done:
		cancel()
		r.print(w, "  ")
	case <-ctx.Done():
		// Interrupted; the caller says goodbye.
		cancel()
		<-done
	case <-timer.C:
		r.println(r.color.dim(fmt.Sprintf("  timeout (no answer within %v; relayd may still be working on it: its answer will show here)", r.o.timeout)))
		r.lateWG.Go(func() {
			defer cancel()
			w := <-done
			if w.err != nil {
				return // The REPL ended or the connection broke: nothing more will come.
			}
			var b strings.Builder
			p := &session{o: r.o, out: &b, color: r.color}
			p.print(w, fmt.Sprintf("  late answer to %q: ", msg))
			io.WriteString(r.late, b.String())
		})
	}
}

// print prints an answer, an error reply or why there is none, the first line after prefix.
func (r *session) print(w waited, prefix string) {
	a, err := w.a, w.err
	switch {
	case err == nil && a.Error != nil:
		r.println(r.color.dim(prefix + "error: " + a.Error.Error()))
	case err == nil:
		text := dataText(a.Data)
		if r.o.json {
			text = string(a.Raw)
		}
		r.println(r.color.green(prefix + strings.ReplaceAll(text, "\n", "\n  ")))
		if w := a.Worker; w != nil && !r.o.json {
			from := fmt.Sprintf("  from worker: {%s|%d}", w.Host, w.PID)
			if w.Node != "" {
				from += " on node " + w.Node
			}
			if r.o.usage {
				from += usageText(w)
			}
			r.println(r.color.dim(from))
		}
	default:
		// The connection broke before the answer came; the next message dials again.
		r.println(r.color.dim("  error: relay not available"))
	}
}

// send writes msg on the session's connection, dialing first when there is none or it has
// ended. A write that fails on an old connection is tried once more on a new one.
func (r *session) send(ctx context.Context, msg string) (*ipc.Call, error) {
	var err error
	for range 2 {
		if r.c != nil {
			select {
			case <-r.c.Done():
				r.c.Close()
				r.c = nil
			default:
			}
		}
		if r.c == nil {
			if r.c, err = dial(ctx, r.o); err != nil {
				return nil, err
			}
		}
		var call *ipc.Call
		if call, err = r.c.Send(r.o.to, r.o.topic, msg); err == nil {
			return call, nil
		}
		r.c.Close()
		r.c = nil
	}
	return nil, err
}

func (r *session) println(s string) { fmt.Fprintln(r.out, s) }

// usageText is what --usage adds to the "from worker" line: the attempt and what the message
// cost the worker, as a Lambda REPORT line gives it.
func usageText(w *ipc.WorkerRef) string {
	var b strings.Builder
	if w.Attempt > 0 {
		fmt.Fprintf(&b, " attempt %d", w.Attempt)
	}
	if u := w.Usage; u != nil {
		us := func(n int64) string {
			return (time.Duration(n) * time.Microsecond).Round(10 * time.Microsecond).String()
		}
		fmt.Fprintf(&b, ", wall %s, cpu %s, max rss %.1f MiB", us(u.WallUS), us(u.CPUUS), float64(u.MaxRSSKiB)/1024)
	}
	return b.String()
}

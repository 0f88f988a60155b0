package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"relayd/ipc"
)

// topInterval is how often --top refreshes.
const topInterval = time.Second

// Terminal control sequences of the live view.
const (
	ansiHome       = "\x1b[H"
	ansiClear      = "\x1b[2J"
	ansiClearLine  = "\x1b[K"
	ansiClearBelow = "\x1b[J"
	ansiHideCursor = "\x1b[?25l"
	ansiShowCursor = "\x1b[?25h"
)

// top shows the relay's stats and workers once a second: a live view on a terminal, snapshots
// otherwise.
func top(ctx context.Context, o options, stdin io.Reader, stdout io.Writer) error {
	if o.json || !isTerminal(stdout) {
		return topSnapshots(ctx, o, stdout)
	}
	var keys *os.File
	if isTerminal(stdin) {
		keys = stdin.(*os.File)
	}
	return topLive(ctx, o, keys, stdout.(*os.File))
}

// topSnapshots prints o.count snapshots (0: until interrupted) a second apart, separated by an
// empty line; with --json, one status frame a line. An interruption ends it cleanly; a failure
// ends it with its exit code.
func topSnapshots(ctx context.Context, o options, stdout io.Writer) error {
	p := &poller{o: o}
	defer p.close()
	tick := time.NewTicker(topInterval)
	defer tick.Stop()
	for n := 1; ; n++ {
		answers, err := p.statuses(ctx)
		if errors.Is(err, errInterrupted) {
			return nil
		}
		if err != nil {
			return err
		}
		var sts []ipc.Status
		for _, a := range answers {
			show, err := showFrame(stdout, o, a)
			if err != nil {
				return err
			}
			if show {
				st, err := parseStatus(a.Data)
				if err != nil {
					return err
				}
				sts = append(sts, st)
			}
		}
		if len(sts) > 0 {
			if n > 1 {
				fmt.Fprintln(stdout)
			}
			if err := writeTop(stdout, o.where(), time.Now(), sts...); err != nil {
				return fmt.Errorf("writing output: %w", err)
			}
		}
		if o.count > 0 && n >= o.count {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// topLive redraws the view in place once a second, like top, until q, Ctrl+C, SIGINT or
// SIGTERM, or after o.count refreshes when --count is given. keys, the terminal it reads q
// from, may be nil. The relay may come and go meanwhile: the view says so and tries again. The
// last frame stays on the screen.
func topLive(ctx context.Context, o options, keys, out *os.File) error {
	ctx, quit := context.WithCancel(ctx)
	defer quit()
	if keys != nil {
		fd := int(keys.Fd())
		state, err := term.MakeRaw(fd)
		if err != nil {
			return fmt.Errorf("setting up the terminal: %w", err)
		}
		defer term.Restore(fd, state)
		stop, err := readKeys(fd, quit)
		if err != nil {
			return err
		}
		defer stop()
	}
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	defer signal.Stop(winch)

	fmt.Fprint(out, ansiHideCursor+ansiHome+ansiClear)
	defer fmt.Fprint(out, ansiShowCursor+"\r\n")

	p := &poller{o: o}
	defer p.close()
	tick := time.NewTicker(topInterval)
	defer tick.Stop()
	for n := 1; ; n++ {
		var frame bytes.Buffer
		answers, err := p.statuses(ctx)
		var a ipc.Answer
		if len(answers) > 0 {
			a = answers[0]
		}
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			fmt.Fprintf(&frame, "relayd %s  %s\n\n%v\n(trying again every second; q quits)\n",
				clean(o.where()), time.Now().Format(time.TimeOnly), errText(err))
		case a.Error != nil:
			fmt.Fprintf(&frame, "relayd %s  %s\n\nerror: %v\n", clean(o.where()), time.Now().Format(time.TimeOnly), a.Error)
		default:
			var sts []ipc.Status
			for _, a := range answers {
				st, err := parseStatus(a.Data)
				if a.Error != nil || err != nil {
					continue
				}
				sts = append(sts, st)
			}
			if len(sts) == 0 {
				fmt.Fprintf(&frame, "status reply is not a status\n")
				break
			}
			writeTop(&frame, o.where(), time.Now(), sts...)
		}
		w, h := 80, 24
		if fw, fh, err := term.GetSize(int(out.Fd())); err == nil && fw > 0 && fh > 0 {
			w, h = fw, fh
		}
		if _, err := io.WriteString(out, fitScreen(frame.String(), w, h)); err != nil {
			return fmt.Errorf("writing output: %w", err)
		}
		if o.count > 0 && n >= o.count {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-winch:
		}
	}
}

func errText(err error) string {
	var ee *exitError
	if errors.As(err, &ee) && ee.err != nil {
		return ee.err.Error()
	}
	return err.Error()
}

// fitScreen turns frame into what redraws the screen in place: from the top-left corner, each
// line cut to width columns and cleared to its end, at most height-1 lines (the last says how
// many were left out), and the rest of the screen cleared. Lines end in \r\n, since a terminal
// in raw mode does not return the carriage by itself.
func fitScreen(frame string, width, height int) string {
	lines := strings.Split(strings.TrimSuffix(frame, "\n"), "\n")
	if max := height - 1; max > 0 && len(lines) > max {
		left := len(lines) - (max - 1)
		lines = append(lines[:max-1], fmt.Sprintf("… %d more lines", left))
	}
	var b strings.Builder
	b.WriteString(ansiHome)
	for i, l := range lines {
		if i > 0 {
			b.WriteString("\r\n")
		}
		if utf8.RuneCountInString(l) > width {
			l = string([]rune(l)[:max(width-1, 0)]) + "…"
		}
		b.WriteString(l + ansiClearLine)
	}
	b.WriteString(ansiClearBelow)
	return b.String()
}

// readKeys reads keys from the terminal fd, in raw mode, and calls quit on q, Ctrl+C, Ctrl+D or
// when the terminal goes away. The returned stop ends the reader and waits for it: the reader
// polls the terminal together with a pipe that stop closes, so it never stays blocked in read.
func readKeys(fd int, quit func()) (stop func(), err error) {
	wakeR, wakeW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("reading keys: %w", err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		defer wakeR.Close()
		buf := make([]byte, 64)
		for {
			fds := []unix.PollFd{
				{Fd: int32(fd), Events: unix.POLLIN},
				{Fd: int32(wakeR.Fd()), Events: unix.POLLIN},
			}
			if _, err := unix.Poll(fds, -1); err != nil {
				if errors.Is(err, unix.EINTR) {
					continue
				}
				quit()
				return
			}
			if fds[1].Revents != 0 {
				return
			}
			if fds[0].Revents == 0 {
				continue
			}
			n, err := unix.Read(fd, buf)
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				continue
			}
			if err != nil || n == 0 {
				quit()
				return
			}
			if bytes.ContainsAny(buf[:n], "qQ\x03\x04") {
				quit()
				return
			}
		}
	})
	return func() {
		wakeW.Close()
		wg.Wait()
	}, nil
}

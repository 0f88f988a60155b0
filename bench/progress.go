package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/term"
)

// progress draws a progress bar on stderr when it is a terminal, and otherwise prints one line
// per phase.
type progress struct {
	w    io.Writer
	tty  bool
	done atomic.Int64

	mu    sync.Mutex
	phase string // guarded by mu
	total int64  // guarded by mu
	began time.Time

	stop    chan struct{}
	drawer  sync.WaitGroup
	stopped sync.Once
}

func newProgress(w io.Writer) *progress {
	p := &progress{w: w, began: time.Now(), stop: make(chan struct{})}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty = true
		p.drawer.Go(func() {
			t := time.NewTicker(150 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					p.draw()
				case <-p.stop:
					return
				}
			}
		})
	}
	return p
}

// note starts a phase without a count.
func (p *progress) note(phase string) { p.start(phase, 0) }

// start begins a phase of total messages.
func (p *progress) start(phase string, total int64) {
	p.mu.Lock()
	p.phase, p.total = phase, total
	p.mu.Unlock()
	p.done.Store(0)
	if !p.tty {
		if total > 0 {
			fmt.Fprintf(p.w, "relay-bench: %s (%d messages)\n", phase, total)
		} else {
			fmt.Fprintf(p.w, "relay-bench: %s\n", phase)
		}
	}
}

// add counts n messages done in the current phase.
func (p *progress) add(n int) { p.done.Add(int64(n)) }

func (p *progress) draw() {
	p.mu.Lock()
	phase, total := p.phase, p.total
	p.mu.Unlock()
	done := p.done.Load()
	const width = 30
	bar := strings.Repeat(" ", width)
	pct := ""
	if total > 0 {
		frac := min(float64(done)/float64(total), 1)
		n := int(frac * width)
		bar = strings.Repeat("#", n) + strings.Repeat(".", width-n)
		pct = fmt.Sprintf(" %3.0f%% %d/%d", frac*100, done, total)
	}
	el := time.Since(p.began).Round(time.Second)
	fmt.Fprintf(p.w, "\r\x1b[K[%s]%s %s (%v)", bar, pct, phase, el)
}

// close stops the drawing and clears the bar's line. It may be called more than once.
func (p *progress) close() {
	p.stopped.Do(func() {
		close(p.stop)
		p.drawer.Wait()
		if p.tty {
			fmt.Fprint(p.w, "\r\x1b[K")
		}
	})
}

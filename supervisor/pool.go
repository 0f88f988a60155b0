package supervisor

import (
	"slices"
	"sync"
)

// pool holds the idle workers — ready and without a job — that Spawn takes from, and keeps
// Options.Spares of them started. It learns of every worker's moves through observe, and
// derives from them alone when to fork a spare.
//
// A spare that cannot get to its ready line on its own (the executable is missing, it exits or
// breaks the protocol before its ready line) stalls the pool: no spare is forked again until a
// worker gets to its ready line (one forked for a message, which the relay's own backoff
// spaces) or the worker's settings change. So a broken worker costs Spares forks, not a loop.
type pool struct {
	h       *Host
	spares  int
	refillc chan struct{}

	mu       sync.Mutex
	cap      int       // how many idle workers it holds at most
	idle     []*worker // guarded by mu; the most recently idle last
	starting int       // guarded by mu; spares forked and not yet ready (or gone)
	stalled  bool      // guarded by mu; a spare could not start: fork none until a worker does
}

// putIdle offers a ready worker without a job to Spawn, and reports whether there was room.
func (pl *pool) putIdle(w *worker) bool {
	if pl.h.closed.Load() {
		return false
	}
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if len(pl.idle) >= pl.cap {
		return false
	}
	pl.idle = append(pl.idle, w)
	return true
}

// take returns the most recently idle worker, whose pages are the likeliest to be warm.
func (pl *pool) take() *worker {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	n := len(pl.idle)
	if n == 0 {
		return nil
	}
	w := pl.idle[n-1]
	pl.idle[n-1] = nil
	pl.idle = pl.idle[:n-1]
	return w
}

func (pl *pool) remove(w *worker) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if i := slices.Index(pl.idle, w); i >= 0 {
		pl.idle = slices.Delete(pl.idle, i, i+1)
	}
}

func (pl *pool) len() int {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	return len(pl.idle)
}

// observe is told of every move of every worker, by the worker's own goroutine.
func (pl *pool) observe(w *worker, from, to State) {
	if from == StateStarting {
		pl.mu.Lock()
		if w.unready {
			w.unready = false
			pl.starting--
		}
		pl.mu.Unlock()
		switch {
		case w.ex.Ready:
			pl.resume() // A worker that starts proves workers can start.
		case w.spare && w.p.stoppedFor() == nil:
			w.spare = false
			pl.stall(w.p.pid)
		}
	}
	switch {
	case from == StateBusy && w.spare:
		// A spare that was taken is replaced after its reply (or its end), not when taken:
		// on a small machine the fork would compete with the message for the CPU.
		w.spare = false
		pl.refill()
	case from == StateIdle && to == StateDraining:
		pl.remove(w)
		if w.spare {
			w.spare = false
			pl.refill() // A spare died waiting: replace it.
		}
	}
}

// spawnFailed is told that a worker could not be forked.
func (pl *pool) spawnFailed(spare bool) {
	if !spare {
		return
	}
	pl.mu.Lock()
	pl.starting--
	pl.mu.Unlock()
	pl.stall(0)
}

func (pl *pool) stall(pid int) {
	pl.mu.Lock()
	was := pl.stalled
	pl.stalled = true
	pl.mu.Unlock()
	if !was {
		pl.h.log.Warn("spare workers paused: a spare could not start; they resume once a worker starts", "pid", pid)
	}
}

// resume ends a stall and tops the spares up.
func (pl *pool) resume() {
	if pl.spares == 0 {
		return
	}
	pl.mu.Lock()
	was := pl.stalled
	pl.stalled = false
	pl.mu.Unlock()
	if was {
		pl.h.log.Info("spare workers resumed")
	}
	pl.refill()
}

// refill asks the refiller to top up the spares.
func (pl *pool) refill() {
	if pl.spares == 0 {
		return
	}
	select {
	case pl.refillc <- struct{}{}:
	default:
	}
}

// refiller keeps Spares workers ready, forking the missing ones concurrently (the spawner
// threads bound how many fork at once).
func (pl *pool) refiller() {
	h := pl.h
	defer h.bg.Done()
	for {
		select {
		case <-h.done:
			return
		case <-pl.refillc:
		}
		// h.mu orders these forks before Close's wait for every worker.
		h.mu.Lock()
		pl.mu.Lock()
		missing := pl.spares - len(pl.idle) - pl.starting
		if pl.stalled || h.closed.Load() || h.stopping.Load() != nil {
			missing = 0
		}
		pl.starting += max(missing, 0)
		pl.mu.Unlock()
		for range missing {
			h.workers.Add(1)
			go h.life(nil, true)
		}
		h.mu.Unlock()
	}
}

package relay

import (
	"maps"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"relayd/ipc"
	"relayd/supervisor"
)

// Stats are the relay's counters, as logged by the stats reporter and returned by the stats topic.
type Stats = ipc.Stats

type counters struct {
	start              time.Time
	messages, restarts atomic.Uint64
	inFlight, queued   atomic.Int64

	mu    sync.Mutex
	exits map[string]uint64 // guarded by mu
}

func newCounters() *counters {
	return &counters{start: time.Now(), exits: make(map[string]uint64)}
}

func (c *counters) exit(reason string) {
	c.mu.Lock()
	c.exits[reason]++
	c.mu.Unlock()
}

func (c *counters) setLoad(running, queued int) {
	c.inFlight.Store(int64(running))
	c.queued.Store(int64(queued))
}

// Stats returns a snapshot of the counters. It is safe to call from any goroutine.
func (r *Relay) Stats() Stats {
	c := r.stats
	c.mu.Lock()
	exits := maps.Clone(c.exits)
	c.mu.Unlock()
	return Stats{
		Messages:       c.messages.Load(),
		WorkersSpawned: r.cfg.Host.Spawned(),
		InFlight:       c.inFlight.Load(),
		Queued:         c.queued.Load(),
		SparesReady:    r.cfg.Host.Idle(),
		Restarts:       c.restarts.Load(),
		Exits:          exits,
		UptimeSeconds:  time.Since(c.start).Round(time.Millisecond).Seconds(),
		Goroutines:     runtime.NumGoroutine(),
	}
}

// statsReporter is the tutorial's stats coroutine: it logs the counters every StatsInterval.
func (r *Relay) statsReporter(stop <-chan struct{}) {
	t := time.NewTicker(r.cfg.StatsInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		s := r.Stats()
		r.log.Info("stats", "messages", s.Messages, "workers_spawned", s.WorkersSpawned,
			"in_flight", s.InFlight, "queued", s.Queued, "restarts", s.Restarts)
		if r.cfg.OnStats != nil {
			r.cfg.OnStats(s)
		}
	}
}

// Status is the answer to the status topic.
type Status = ipc.Status

// Status lists the registered names and the live workers. It is safe from any goroutine.
func (r *Relay) Status() Status {
	st := Status{Service: r.cfg.Name, Names: []string{r.cfg.Name}, Workers: []ipc.WorkerStatus{}, Stats: r.Stats(), Sandbox: r.cfg.Sandbox}
	if r.cfg.Names != nil {
		st.Names = r.cfg.Names()
	}
	now := time.Now()
	for _, w := range r.cfg.Host.Workers() {
		// The worker's own state, except that one forked for a message is busy with it from
		// the start (its request is written before its ready line).
		ws := ipc.WorkerStatus{PID: w.PID, AgeSeconds: now.Sub(w.Started).Round(time.Millisecond).Seconds(), State: w.State.String()}
		if w.Job != nil {
			if w.State == supervisor.StateStarting {
				ws.State = supervisor.StateBusy.String()
			}
			ws.Attempt = w.Job.Attempt
			if m, ok := w.Job.Tag.(*Message); ok {
				ws.Sender, ws.MessageID = m.Sender, m.Req.ID
			}
		}
		st.Workers = append(st.Workers, ws)
	}
	return st
}

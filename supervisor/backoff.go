package supervisor

import (
	"math"
	"time"
)

// Backoff is a capped exponential delay with jitter: attempt n waits Initial·Multiplier^(n-1),
// at most Max, less a random part of up to Jitter of it (so retries of many senders spread out).
type Backoff struct {
	Initial    time.Duration
	Max        time.Duration
	Multiplier float64
	Jitter     float64 // 0 to 1
}

// Delay returns the wait before attempt n (counted from 1). rnd returns a number in [0, 1).
func (b Backoff) Delay(n int, rnd func() float64) time.Duration {
	if n < 1 {
		n = 1
	}
	mult := b.Multiplier
	if mult < 1 {
		mult = 2
	}
	d := float64(b.Initial) * math.Pow(mult, float64(n-1))
	if limit := float64(b.Max); b.Max > 0 && d > limit {
		d = limit
	}
	if b.Jitter > 0 && rnd != nil {
		d -= d * b.Jitter * rnd()
	}
	return time.Duration(d)
}

package relay

import "sync"

// RetryBudget throttles retries the way gRPC's retry throttling does: every failure spends a
// token, every success earns back Ratio of one, and retries are allowed only while more than
// half of Max tokens remain. A crash storm therefore turns retries off instead of multiplying
// forks, while first attempts still run. It is safe for concurrent use, so that metrics can read
// Tokens while the relay loop spends and earns them. The zero value is not usable; use
// NewRetryBudget.
type RetryBudget struct {
	max, ratio float64

	mu     sync.Mutex
	tokens float64 // guarded by mu
}

// NewRetryBudget returns a full budget of max tokens that earns back ratio per success.
func NewRetryBudget(max, ratio float64) *RetryBudget {
	return &RetryBudget{max: max, ratio: ratio, tokens: max}
}

// Failure records a failed attempt.
func (b *RetryBudget) Failure() {
	b.mu.Lock()
	b.tokens = max(0, b.tokens-1)
	b.mu.Unlock()
}

// Success records a successful attempt.
func (b *RetryBudget) Success() {
	b.mu.Lock()
	b.tokens = min(b.max, b.tokens+b.ratio)
	b.mu.Unlock()
}

// Allow reports whether a retry may run now.
func (b *RetryBudget) Allow() bool { return b.Tokens() > b.max/2 }

// Tokens returns what is left of the budget.
func (b *RetryBudget) Tokens() float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.tokens
}

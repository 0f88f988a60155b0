package relay

import "testing"

func TestRetryBudget(t *testing.T) {
	b := NewRetryBudget(10, 0.1)
	for i := range 5 {
		if !b.Allow() {
			t.Fatalf("retries refused after %d failures, want allowed while tokens > 5", i)
		}
		b.Failure()
	}
	if b.Allow() {
		t.Fatalf("retries allowed with %v tokens, want refused at half the budget", b.Tokens())
	}
	for range 10 {
		b.Success()
	}
	if !b.Allow() {
		t.Errorf("retries still refused after 10 successes (%v tokens)", b.Tokens())
	}
}

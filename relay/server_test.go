package relay

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestStopBeforeServe stops a server before its Serve runs, as a SIGTERM right after start can:
// Serve must still close the listener, which removes the socket file.
func TestStopBeforeServe(t *testing.T) {
	dir, err := os.MkdirTemp("", "rl")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(ServerConfig{Lookup: func(string) (chan<- *Message, bool) { return nil, false }})
	srv.StopReading()
	if err := srv.Serve(ln); err != nil {
		t.Errorf("Serve after StopReading: %v, want nil", err)
	}
	srv.Wait()
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file after Serve returned: %v, want it removed", err)
	}
}

// TestRefusalLimiter: a burst is logged, then about refusalRate lines a second, and the first
// line after a gap says how many were suppressed.
func TestRefusalLimiter(t *testing.T) {
	l := limiter{tokens: refusalBurst}
	now := time.Unix(1000, 0)
	logged := 0
	for range 100 {
		if _, ok := l.allow(now); ok {
			logged++
		}
	}
	if logged != refusalBurst {
		t.Errorf("logged %d of 100 refusals at once, want the burst of %d", logged, refusalBurst)
	}
	n, ok := l.allow(now.Add(time.Second / refusalRate))
	if !ok || n != 100-refusalBurst {
		t.Errorf("a second later: allowed %v with %d suppressed, want allowed with %d", ok, n, 100-refusalBurst)
	}
	if n, ok := l.allow(now.Add(time.Second / refusalRate)); ok || n != 0 {
		t.Errorf("right after: allowed %v, want suppressed", ok)
	}
}

// TestDefaultBounds: a connection can always hold one request of the longest size and a read
// buffer, and the total is at least one connection's.
func TestDefaultBounds(t *testing.T) {
	for _, max := range []int{1, 1 << 10, 256 << 10, 1 << 20, 64 << 20} {
		total, perClient := DefaultPendingBytes(max)
		if perClient < int64(max)+1+readBufBytes || total < perClient {
			t.Errorf("--max-message-bytes %d: pending %d per client, %d in all", max, perClient, total)
		}
		if a := DefaultMaxAnswerBytes(max); a < max {
			t.Errorf("--max-message-bytes %d: answers of %d", max, a)
		}
	}
}

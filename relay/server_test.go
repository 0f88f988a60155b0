package relay

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
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

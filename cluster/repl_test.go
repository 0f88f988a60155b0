package cluster_test

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
)

// The echo REPL through NATS names the node that answered each message.
func TestREPLThroughNATS(t *testing.T) {
	nc := startCluster(t, 1)
	for _, name := range []string{"node1", "node2"} {
		startNode(t, name, nc.urls(), "--worker-arg=--delay=0s")
	}
	waitNodes(t, dial(t, nc.urls(), false), "relay", 2)

	cmd := exec.Command(filepath.Join(binDir, "echo"), "--nats", nc.urls())
	cmd.Env = []string{"TERM=xterm", "NO_COLOR=1"}
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 24, Cols: 100})
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu  sync.Mutex
		out strings.Builder
	)
	more := make(chan struct{}, 1)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		buf := make([]byte, 4096)
		for {
			n, err := ptmx.Read(buf)
			mu.Lock()
			out.Write(buf[:n])
			mu.Unlock()
			select {
			case more <- struct{}{}:
			default:
			}
			if err != nil {
				return
			}
		}
	}()
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
		ptmx.Close()
		<-readDone
	})
	expect := func(re string) {
		t.Helper()
		rx := regexp.MustCompile(re)
		deadline := time.After(20 * time.Second)
		for {
			mu.Lock()
			s := out.String()
			mu.Unlock()
			if rx.MatchString(s) {
				return
			}
			select {
			case <-more:
			case <-deadline:
				t.Fatalf("REPL output: no /%s/ within 20s; got:\n%s", re, s)
			}
		}
	}
	expect(`> `)
	ptmx.WriteString("hello\r")
	expect(`HELLO\s+from worker: \{processes\|\d+\} on node node[12]`)
	ptmx.WriteString("\r")
	expect(`Goodbye!`)
	select {
	case <-exited:
		if waitErr != nil {
			t.Errorf("echo REPL exit: %v, want 0", waitErr)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("echo REPL did not exit after an empty line")
	}
}

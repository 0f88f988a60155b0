package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"relayd/cluster"
	"relayd/internal/testbin"
)

// binDir holds relayd and the worker, built once by TestMain.
var binDir string

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "relayd-cluster")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	// relayd is built without the race detector: these tests are about processes and NATS, and
	// the race-built relayd is covered by the integration tests.
	if err := testbin.Build(dir+string(os.PathSeparator), nil, nil, "relayd/cmd/relayd", "relayd/cmd/worker", "relayd/cmd/echo"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			return 1
		}
	}
	return code
}

// natsCluster is an embedded NATS cluster: in-process servers on random loopback ports.
type natsCluster struct {
	servers []*server.Server
}

// urls lists the client URLs of every server, comma-separated, as --nats takes them.
func (c *natsCluster) urls() string {
	var u []string
	for _, s := range c.servers {
		u = append(u, s.ClientURL())
	}
	return strings.Join(u, ",")
}

func serverOptions(t *testing.T, name string, js bool) *server.Options {
	return &server.Options{
		ServerName: name, Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		JetStream: js, StoreDir: t.TempDir(), JetStreamMaxMemory: 64 << 20, JetStreamMaxStore: 256 << 20,
	}
}

// runServer starts one embedded server and waits until it takes clients.
func runServer(t *testing.T, opts *server.Options) *server.Server {
	t.Helper()
	s := newServer(t, opts)
	if !s.ReadyForConnections(20 * time.Second) {
		s.Shutdown()
		t.Fatalf("NATS server %s not ready within 20s", opts.ServerName)
	}
	return s
}

func newServer(t *testing.T, opts *server.Options) *server.Server {
	t.Helper()
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("configuring NATS server: %v", err)
	}
	go s.Start()
	return s
}

// startCluster starts n servers routed to each other, with JetStream, and waits until
// JetStream answers (its meta leader is elected). The servers stop at the end of the test.
func startCluster(t *testing.T, n int) *natsCluster {
	t.Helper()
	c := &natsCluster{}
	// A clustered JetStream server finishes starting only once it sees its peers, so every
	// route port is chosen first and the servers start together.
	routes := make([]string, n)
	ports := make([]int, n)
	for i := range n {
		ports[i] = freePort(t)
		routes[i] = fmt.Sprintf("nats://127.0.0.1:%d", ports[i])
	}
	// The options come first: serverOptions takes the store directories from t.TempDir, whose
	// removal must run after the servers' shutdown (cleanups run last registered first), or
	// it races a server still writing its JetStream store.
	opts := make([]*server.Options, n)
	for i := range n {
		opts[i] = serverOptions(t, fmt.Sprintf("s%d", i+1), true)
		if n > 1 {
			opts[i].Cluster = server.ClusterOpts{Name: "relayd-test", Host: "127.0.0.1", Port: ports[i]}
			opts[i].Routes = server.RoutesFromStr(strings.Join(routes, ","))
		}
	}
	t.Cleanup(func() {
		for _, s := range c.servers {
			s.Shutdown()
			s.WaitForShutdown()
		}
	})
	for i := range n {
		c.servers = append(c.servers, newServer(t, opts[i]))
	}
	for _, s := range c.servers {
		if !s.ReadyForConnections(30 * time.Second) {
			t.Fatalf("NATS server %s not ready within 30s", s.Name())
		}
	}
	nc := connectTest(t, c.urls())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "JetStream ready on the cluster", func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		_, err := js.AccountInfo(ctx)
		return err
	})
	return c
}

func connectTest(t *testing.T, urls string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(urls, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatalf("connecting to NATS: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// waitFor retries check until it returns nil, failing the test with what it said last once
// limit has passed. The checks themselves are bounded round trips, not sleeps.
func waitFor(t *testing.T, limit time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, limit, err)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("%s: %v", what, t.Context().Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// node is a relayd process serving on NATS.
type node struct {
	name   string
	cmd    *exec.Cmd
	log    *testbin.SyncBuffer
	exited chan error
	once   sync.Once
	err    error
}

// startNode starts relayd with a private socket on NATS at urls and waits until it serves there.
func startNode(t *testing.T, name, urls string, args ...string) *node {
	t.Helper()
	dir := shortDir(t)
	n := &node{name: name, log: new(testbin.SyncBuffer), exited: make(chan error, 1)}
	all := append([]string{
		"--socket", filepath.Join(dir, "s"), "--worker", filepath.Join(binDir, "worker"),
		"--nats", urls, "--nats-node", name, "--stats-interval", "0", "--log-level", "debug",
	}, args...)
	n.cmd = exec.Command(filepath.Join(binDir, "relayd"), all...)
	n.cmd.Stdout, n.cmd.Stderr = n.log, n.log
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { n.exited <- n.cmd.Wait() }()
	t.Cleanup(func() { n.stop(t) })
	waitFor(t, 20*time.Second, name+" serving on NATS", func() error {
		select {
		case err := <-n.exited:
			n.exited <- err
			return fmt.Errorf("relayd exited: %v; log:\n%s", err, n.log)
		default:
		}
		if !strings.Contains(n.log.String(), "serving on NATS") {
			return errors.New("no \"serving on NATS\" in its log yet")
		}
		return nil
	})
	return n
}

// stop sends SIGTERM and waits for the exit, which must be clean.
func (n *node) stop(t *testing.T) {
	t.Helper()
	n.once.Do(func() {
		n.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case n.err = <-n.exited:
			if n.err != nil {
				t.Errorf("%s after SIGTERM: %v, want exit status 0; log:\n%s", n.name, n.err, n.log)
			}
		case <-time.After(30 * time.Second):
			n.cmd.Process.Kill()
			<-n.exited
			t.Errorf("%s did not exit within 30s of SIGTERM; log:\n%s", n.name, n.log)
		}
	})
}

// kill sends SIGKILL and reaps the process.
func (n *node) kill() {
	n.once.Do(func() {
		n.cmd.Process.Kill()
		<-n.exited
	})
}

// dial returns a client on urls, closed at the end of the test.
func dial(t *testing.T, urls string, durable bool) *cluster.Client {
	t.Helper()
	c, err := cluster.Dial(t.Context(), cluster.ClientOptions{ConnOptions: cluster.ConnOptions{URL: urls}, Durable: durable})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitNodes waits until discovery lists want nodes serving name.
func waitNodes(t *testing.T, c *cluster.Client, name string, want int) {
	t.Helper()
	waitFor(t, 20*time.Second, fmt.Sprintf("%d nodes in discovery", want), func() error {
		st, err := c.Gather(t.Context(), name, 2*time.Second)
		if err != nil {
			return err
		}
		if len(st) != want {
			return fmt.Errorf("%d nodes answered $SRV.STATS", len(st))
		}
		return nil
	})
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// shortDir returns a new directory for sockets, removed at the end of the test: t.TempDir is
// too deep for the 108-byte limit of Unix socket paths.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "rc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

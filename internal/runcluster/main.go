// Command runcluster is make run-cluster: an embedded NATS server with JetStream, three relayd
// nodes on it, and the echo REPL through NATS, all on one machine and gone when the REPL ends.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "run-cluster: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	bin := flag.String("bin", "bin", "`directory` with relayd and echo")
	nodes := flag.Int("nodes", 3, "relayd nodes to start")
	durable := flag.Bool("durable", true, "start the nodes with --nats-durable and the REPL with --nats-durable")
	relaydArgs := flag.String("relayd-args", "", "more arguments for every relayd, separated by spaces")
	flag.Parse()

	dir, err := os.MkdirTemp("", "relayd-cluster.")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	ns, err := server.NewServer(&server.Options{
		ServerName: "run-cluster", Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		JetStream: true, StoreDir: filepath.Join(dir, "jetstream"),
		JetStreamMaxMemory: 64 << 20, JetStreamMaxStore: 1 << 30,
	})
	if err != nil {
		return fmt.Errorf("configuring the NATS server: %w", err)
	}
	go ns.Start()
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if !ns.ReadyForConnections(10 * time.Second) {
		return errors.New("the embedded NATS server did not start within 10s")
	}
	url := ns.ClientURL()

	// Ctrl+C belongs to the REPL; the nodes run in their own process groups and are stopped
	// with SIGTERM once it ends.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)

	type proc struct {
		cmd    *exec.Cmd
		exited chan error // gets Wait's result
	}
	var procs []proc
	defer func() {
		for _, p := range procs {
			p.cmd.Process.Signal(syscall.SIGTERM)
		}
		for _, p := range procs {
			<-p.exited
		}
	}()
	var logs []string
	for i := range *nodes {
		name := fmt.Sprintf("node%d", i+1)
		logPath := filepath.Join(dir, name+".log")
		logFile, err := os.Create(logPath)
		if err != nil {
			return err
		}
		defer logFile.Close()
		args := []string{"--socket", filepath.Join(dir, name+".sock"), "--nats", url, "--nats-node", name, "--max-workers", "4"}
		if *durable {
			args = append(args, "--nats-durable")
		}
		args = append(args, strings.Fields(*relaydArgs)...)
		cmd := exec.Command(filepath.Join(*bin, "relayd"), args...)
		cmd.Stdout, cmd.Stderr = logFile, logFile
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("starting %s: %w", name, err)
		}
		p := proc{cmd: cmd, exited: make(chan error, 1)}
		go func() { p.exited <- cmd.Wait() }()
		procs = append(procs, p)
		logs = append(logs, logPath)
	}
	for i, path := range logs {
		if err := waitServing(path, procs[i].exited, sigs); err != nil {
			return fmt.Errorf("node%d: %w", i+1, err)
		}
	}
	fmt.Printf("NATS at %s (JetStream store in %s); %d relayd nodes (logs %s)\n", url, filepath.Join(dir, "jetstream"), *nodes, filepath.Join(dir, "node*.log"))
	fmt.Printf("try from another terminal: nats --server %s req relayd.relay.echo '\"hello\"'\n\n", url)

	echoArgs := []string{"--nats", url}
	if *durable {
		echoArgs = append(echoArgs, "--nats-durable")
	}
	echo := exec.Command(filepath.Join(*bin, "echo"), echoArgs...)
	echo.Stdin, echo.Stdout, echo.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := echo.Start(); err != nil {
		return fmt.Errorf("starting echo: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- echo.Wait() }()
	for {
		select {
		case err := <-done:
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				return fmt.Errorf("echo: %v", ee)
			}
			return err
		case sig := <-sigs:
			// The REPL gets Ctrl+C from the terminal itself; a SIGTERM sent to run-cluster
			// alone is passed on.
			if sig == syscall.SIGTERM {
				echo.Process.Signal(sig)
			}
		}
	}
}

// waitServing waits until a node's log says it serves on NATS.
func waitServing(path string, exited chan error, sigs <-chan os.Signal) error {
	deadline := time.After(20 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), "serving on NATS") {
			return nil
		}
		select {
		case err := <-exited:
			exited <- err // For the cleanup, which waits for it too.
			return fmt.Errorf("exited (%v); its log:\n%s", err, b)
		case <-deadline:
			return fmt.Errorf("not serving on NATS within 20s; its log:\n%s", b)
		case <-sigs:
			return context.Canceled
		case <-tick.C:
		}
	}
}

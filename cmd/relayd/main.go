// Command relayd is the relay daemon: it listens on a Unix socket and answers every message with
// the reply of a worker process it forks and monitors for that message.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv); err != nil {
		fmt.Fprintf(os.Stderr, "relayd: %v\n", err)
		stop()
		os.Exit(1)
	}
}

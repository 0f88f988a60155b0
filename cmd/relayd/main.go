// Command relayd is the relay daemon: it listens on a Unix socket and answers every message with
// the reply of a worker process it forks and monitors for that message.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"relayd/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv); err != nil {
		stop()
		if cli.IsUsage(err) {
			fmt.Fprintf(os.Stderr, "relayd: %v\n%s\n", err, cli.Hint("relayd"))
			os.Exit(cli.ExitUsage)
		}
		fmt.Fprintf(os.Stderr, "relayd: %v\n", err)
		os.Exit(1)
	}
}

// Package relay is relayd's relay process: it takes messages by name from clients on a Unix socket, runs a monitored worker process for each, and answers each message exactly once.
package relay

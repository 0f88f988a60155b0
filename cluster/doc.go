// Package cluster serves relayd's registered names on NATS, so that several relayd nodes answer
// one name: core request-reply through micro services in a queue group, and durable requests
// through a JetStream work-queue stream that survives a node's crash.
package cluster

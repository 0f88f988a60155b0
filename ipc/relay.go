package ipc

import "encoding/json"

// Stats is the data of a stats reply: the relay's counters.
type Stats struct {
	Messages       uint64            `json:"messages"`
	WorkersSpawned uint64            `json:"workers_spawned"`
	InFlight       int64             `json:"in_flight"`
	Queued         int64             `json:"queued"`
	SparesReady    int               `json:"spares_ready"`
	Restarts       uint64            `json:"restarts"`
	Exits          map[string]uint64 `json:"exits"`
	UptimeSeconds  float64           `json:"uptime_seconds"`
	// Goroutines is relayd's goroutine count, so that leaks show from outside.
	Goroutines int `json:"goroutines"`
}

// Status is the data of a status reply: what is registered and which workers are alive.
// Readers ignore fields they do not know, so an older echo still reads a newer relay.
type Status struct {
	// Service is the name the status is of; every service answers status for itself.
	Service string         `json:"service,omitempty"`
	Names   []string       `json:"names"`
	Workers []WorkerStatus `json:"workers"`
	Stats   Stats          `json:"stats"`
	// Sandbox says how the service's workers are confined; absent from a relayd without one.
	Sandbox *SandboxStatus `json:"sandbox,omitempty"`
}

// SandboxStatus is the worker sandbox in a Status: its mode (auto, strict or off), the
// mechanisms the kernel enforces, and those it lacks with the reason.
type SandboxStatus struct {
	Mode     string           `json:"mode"`
	Enforced []string         `json:"enforced"`
	Missing  []SandboxMissing `json:"missing,omitempty"`
}

// SandboxMissing is a sandbox mechanism the kernel does not enforce, and why.
type SandboxMissing struct {
	Mechanism string `json:"mechanism"`
	Reason    string `json:"reason"`
}

// WorkerStatus is one live worker in a Status.
type WorkerStatus struct {
	PID        int             `json:"pid"`
	AgeSeconds float64         `json:"age_seconds"`
	State      string          `json:"state"` // "busy", "idle" (ready, no message), "starting" (no ready line yet) or "draining" (exiting)
	Attempt    int             `json:"attempt,omitempty"`
	Sender     string          `json:"sender,omitempty"`
	MessageID  json.RawMessage `json:"message_id,omitempty"`
}

//go:build goplugin

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"

	"relayd/sdk"
	"relayd/sdk/plugin"
)

// servePlugin serves the worker as a go-plugin plugin (relayd's transports "grpc" and
// "netrpc"). It is built into worker-plugin only (build tag goplugin): go-plugin and gRPC would
// more than double the start time of every stdio worker, which relayd forks per message. The
// stdio worker execs worker-plugin when it finds go-plugin's magic cookie in its environment.
//
// Each call goes through the stdio worker's own answer, fault directives included.
func servePlugin(w *worker, _ []string) error {
	plugin.Serve(&pluginWorker{w: w})
	return nil
}

// pluginWorker adapts the stdio worker to plugin.Worker.
type pluginWorker struct {
	mu sync.Mutex // one call at a time, as the stdio worker takes one request at a time
	w  *worker
}

// Handle answers one call as the stdio worker answers one request. A directive that ends the
// worker ends the process here, with the same status; output that is not a reply (!garbage)
// goes to the real stdout, where relayd sees it break the protocol.
func (p *pluginWorker) Handle(_ context.Context, topic string, data []byte) ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !json.Valid(data) {
		return nil, &plugin.Error{Code: sdk.CodeBadRequest, Message: "data is not one JSON value"}
	}
	out, err := p.w.answer(&sdk.Request{ID: "1", Topic: topic, Data: data, Attempt: p.w.attempt})
	if err == nil {
		return out, nil
	}
	var e *sdk.Error
	if errors.As(err, &e) {
		return nil, &plugin.Error{Code: e.Code, Message: e.Message}
	}
	var status exitStatus
	if errors.As(err, &status) {
		os.Exit(int(status))
	}
	fmt.Fprintf(p.w.stderr, "worker: %v\n", err)
	os.Exit(1)
	return nil, err
}

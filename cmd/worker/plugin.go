//go:build goplugin

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"relayd/ipc"
	"relayd/sdk/plugin"
)

// servePlugin serves the worker as a go-plugin plugin (relayd's transports "grpc" and
// "netrpc"). It is built into worker-plugin only (build tag goplugin): go-plugin and gRPC would
// more than double the start time of every stdio worker, which relayd forks per message. The
// stdio worker execs worker-plugin when it finds go-plugin's magic cookie in its environment.
//
// Each call goes through the stdio worker's own request handling, fault directives included,
// with its reply line captured instead of written to stdout.
func servePlugin(w *worker, _ []string) error {
	p := &pluginWorker{w: w}
	w.out = bufio.NewWriter(&p.buf)
	plugin.Serve(p)
	return nil
}

// pluginWorker adapts the stdio worker to plugin.Worker.
type pluginWorker struct {
	mu  sync.Mutex
	w   *worker
	buf bytes.Buffer // guarded by mu; the worker's output for the current call
}

// Handle answers one call as the stdio worker answers one request line. A directive that ends
// the worker ends the process here, with the same status; output that is not a reply line
// (!garbage) goes to the real stdout, where relayd sees it break the protocol.
func (p *pluginWorker) Handle(_ context.Context, topic string, data []byte) ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf.Reset()
	req, err := json.Marshal(ipc.WorkerRequest{ID: "1", Topic: topic, Data: json.RawMessage(data)})
	if err != nil {
		return nil, &plugin.Error{Code: "bad_request", Message: "data is not one JSON value"}
	}
	err = p.w.handle(req)
	out := bytes.TrimSpace(p.buf.Bytes())
	var reply struct {
		ID    string          `json:"id"`
		Data  json.RawMessage `json:"data"`
		Error json.RawMessage `json:"error"`
	}
	isReply := json.Unmarshal(out, &reply) == nil && reply.ID == "1"
	if err != nil || !isReply {
		if !isReply && len(out) > 0 {
			if f, ok := p.w.stdout.(*os.File); ok {
				f.Write(append(out, '\n'))
			}
		}
		var status exitStatus
		if errors.As(err, &status) {
			os.Exit(int(status))
		}
		if err != nil {
			fmt.Fprintf(p.w.stderr, "worker: %v\n", err)
		}
		os.Exit(1)
	}
	if len(reply.Error) > 0 {
		return nil, replyError(reply.Error)
	}
	return reply.Data, nil
}

// replyError turns a reply line's error, a string or {"code":…,"message":…}, into a plugin
// error.
func replyError(raw json.RawMessage) error {
	var text string
	if json.Unmarshal(raw, &text) == nil {
		return &plugin.Error{Message: text}
	}
	var e struct{ Code, Message string }
	if json.Unmarshal(raw, &e) == nil {
		return &plugin.Error{Code: e.Code, Message: e.Message}
	}
	return &plugin.Error{Message: strings.TrimSpace(string(raw))}
}

// Command s6echo is relay-bench's per-connection program for s6-ipcserver: with the connection
// as stdin and stdout, it reads one client request line, answers it with the data uppercased as
// relayd would, and exits. It does the worker's work with the client protocol on both ends.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"

	"relayd/internal/casemap"
	"relayd/ipc"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "s6echo: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	line, err := bufio.NewReader(os.Stdin).ReadSlice('\n')
	if err != nil {
		return fmt.Errorf("reading request: %w", err)
	}
	req, rerr := ipc.DecodeRequest(line)
	reply := ipc.Reply{ID: req.ID, Topic: ipc.ResponseTopic(req.Topic)}
	var text string
	switch {
	case rerr != nil:
		reply = ipc.ErrorReply(req.ID, rerr)
	case json.Unmarshal(req.Data, &text) != nil:
		reply = ipc.ErrorReply(req.ID, ipc.Errorf(ipc.CodeBadRequest, "data of topic echo must be a JSON string"))
	default:
		reply.Data, _ = json.Marshal(casemap.Upper(text))
	}
	b, err := ipc.AppendFrame(nil, reply)
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(b)
	return err
}

package sdk_test

import (
	"encoding/json"
	"os"
	"strings"

	"relayd/sdk"
)

// A worker with two topics. relayd writes request lines to its standard input; here they come
// from a string, and the pid on the ready line is fixed, so that the output is always the same.
func Example() {
	handle := func(req *sdk.Request) (json.RawMessage, error) {
		switch req.Topic {
		case "greet":
			var name string
			if err := req.Decode(&name); err != nil {
				return nil, err
			}
			return sdk.JSON("hello, " + name)
		case "add":
			var nums []float64
			if err := req.Decode(&nums); err != nil {
				return nil, err
			}
			sum := 0.0
			for _, n := range nums {
				sum += n
			}
			return sdk.JSON(sum)
		}
		return nil, sdk.Errorf(sdk.CodeUnknownTopic, "no topic %q (topics: greet, add)", req.Topic)
	}
	w := &sdk.Worker{
		Handler: handle,
		In: strings.NewReader(`{"id":"1","topic":"greet","data":"world"}
{"id":"2","topic":"add","data":[1,2,3.5]}
{"id":"3","topic":"greet","data":42}
{"id":"4","topic":"dance","data":null}
`),
		Out: os.Stdout,
		PID: 4242,
	}
	if err := w.Serve(); err != nil {
		panic(err)
	}
	// Output:
	// {"ready":true,"protocol":1,"pid":4242}
	// {"id":"1","data":"hello, world"}
	// {"id":"2","data":6.5}
	// {"id":"3","error":{"code":"bad_request","message":"data of topic greet must be a string, not number"}}
	// {"id":"4","error":{"code":"unknown_topic","message":"no topic \"dance\" (topics: greet, add)"}}
}

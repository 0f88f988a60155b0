// Command go-worker is an example relayd worker in Go, written with the worker SDK
// (relayd/sdk). Its topic count answers a string with its number of words and characters:
//
//	{"id":1,"to":"count-go","topic":"count","data":"hello wide world"}
//	{"id":1,"topic":"count_response","data":{"words":3,"chars":16},"worker":{…}}
//
// With RELAY_FAULTS=1 in its environment (a service with allow-fault-injection = true) it also
// has the topics crash, which exits 3 without an answer, and sleep, which sleeps data seconds
// before it answers: the end-to-end tests use them to see relayd supervise it.
package main

import (
	"encoding/json"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"relayd/sdk"
)

func main() {
	faults := os.Getenv("RELAY_FAULTS") == "1"
	sdk.Run(func(req *sdk.Request) (json.RawMessage, error) {
		switch {
		case req.Topic == "count":
			var text string
			if err := req.Decode(&text); err != nil {
				return nil, err
			}
			return sdk.JSON(map[string]int{"words": len(strings.Fields(text)), "chars": utf8.RuneCountInString(text)})
		case faults && req.Topic == "crash":
			os.Exit(3)
		case faults && req.Topic == "sleep":
			var seconds float64
			if err := req.Decode(&seconds); err != nil {
				return nil, err
			}
			time.Sleep(time.Duration(seconds * float64(time.Second)))
			return sdk.JSON("slept")
		}
		return nil, sdk.Errorf(sdk.CodeUnknownTopic, "unknown topic %q (topics: count)", req.Topic)
	})
}

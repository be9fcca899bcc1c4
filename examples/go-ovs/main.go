// The ovs plugin of core0's seed image. The only change from core0 is the import path
// (github.com/zero-os/0-core/base/plugin before): plugrpc runs this binary as a persistent
// JSON-RPC server, and core0, or anyone, can still run it once per call:
//
//	go build -o ovs-plugin .
//	./ovs-plugin version                        # prints 20:::"1.0alpha" and a line :::
//	plugrpc run --root IMAGE                    # with ovs-plugin at IMAGE/var/lib/corex/plugins/
//	plugrpc call ovs.version                    # "1.0alpha"
package main

import (
	"encoding/json"
	"errors"
	"time"

	"github.com/plugrpc/plugrpc/go/plugin"
)

func version(args json.RawMessage) (interface{}, error) {
	return "1.0alpha", nil
}

// fail shows how an error reaches the caller: code -32000, its text as the message.
func fail(args json.RawMessage) (interface{}, error) {
	return nil, errors.New("this command always fails")
}

// sleep waits {"seconds": S} and returns S: a slow call, to see others pass it.
func sleep(args json.RawMessage) (interface{}, error) {
	var p struct {
		Seconds float64 `json:"seconds"`
	}
	if err := json.Unmarshal(args, &p); err != nil {
		return nil, err
	}
	time.Sleep(time.Duration(p.Seconds * float64(time.Second)))
	return p.Seconds, nil
}

func main() {
	plugin.Plugin(plugin.Commands{
		"version": version,
		"fail":    fail,
		"sleep":   sleep,
	})
}

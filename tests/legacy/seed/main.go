// The ovs plugin of core0's seed, built with core0's plugin library: `container.raw("ovs.version", {})`
// answers "1.0alpha". The tests run it unchanged (exec mode, detected), and with its import path
// changed to plugrpc's Go package and nothing else (a persistent plugin).
package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/zero-os/0-core/base/plugin"
)

func version(args json.RawMessage) (interface{}, error) {
	return "1.0alpha", nil
}

func echo(args json.RawMessage) (interface{}, error) {
	var v interface{}
	if err := json.Unmarshal(args, &v); err != nil {
		return nil, err
	}
	return v, nil
}

func bridgeAdd(args json.RawMessage) (interface{}, error) {
	var bridge struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(args, &bridge); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("bridge %s does not exist", bridge.Name)
}

func slow(args json.RawMessage) (interface{}, error) {
	time.Sleep(200 * time.Millisecond)
	return time.Now().UnixNano(), nil
}

func main() {
	plugin.Plugin(plugin.Commands{
		"version":    version,
		"echo":       echo,
		"bridge.add": bridgeAdd,
		"slow":       slow,
	})
}

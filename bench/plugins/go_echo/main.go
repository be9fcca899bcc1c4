// The bench's Go echo plugin, built on the go/ package: `echo` returns its args as they came.
//
// The bench builds it at the start of a run and runs the same binary two ways behind the router:
// as a persistent server (the go_router row) and, declared mode = "exec", once per call as core0
// ran its plugins (the go_exec row).
package main

import (
	"encoding/json"

	"github.com/plugrpc/plugrpc/go/plugin"
)

func echo(args json.RawMessage) (interface{}, error) {
	return args, nil
}

func main() {
	plugin.Plugin(plugin.Commands{"echo": echo})
}

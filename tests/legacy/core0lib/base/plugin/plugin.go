// Package plugin stands in for core0's base/plugin library in plugrpc's tests, written from what
// that library did: run as `<binary> <command> [<args-json>]`, it frames the command's result on
// stdout as `20:::` + JSON + `:::`, and on any failure frames the error text the same way and exits
// 1. The tests build the seed's example against it to get a binary that behaves as core0's did.
package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
)

// Runnable is one command: its args as the caller sent them, its result or an error.
type Runnable func(args json.RawMessage) (interface{}, error)

// Commands maps command names to their functions.
type Commands map[string]Runnable

func frame(v interface{}) {
	os.Stdout.WriteString("20:::")
	json.NewEncoder(os.Stdout).Encode(v) // the JSON text and a newline
	os.Stdout.WriteString(":::")
}

func fail(err error) {
	frame(err.Error())
	os.Exit(1)
}

// Plugin runs the command named on the command line, once, and exits.
func Plugin(commands Commands) {
	defer func() {
		if r := recover(); r != nil {
			fail(fmt.Errorf("paniced with error: %v", r))
		}
	}()
	if len(os.Args) < 2 {
		fail(errors.New("missing command"))
	}
	var input json.RawMessage
	if len(os.Args) == 3 {
		input = json.RawMessage(os.Args[2])
	}
	run, ok := commands[os.Args[1]]
	if !ok {
		fail(fmt.Errorf("unknown command: %s", os.Args[1]))
	}
	out, err := run(input)
	if err != nil {
		fail(err)
	}
	frame(out)
	os.Exit(0)
}

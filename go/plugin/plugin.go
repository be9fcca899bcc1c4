package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
)

// Runnable is a core0 command: it gets the call's params (the args JSON) and returns any
// value that encodes as JSON, or an error.
type Runnable func(args json.RawMessage) (interface{}, error)

// Commands maps command names to core0 commands.
type Commands map[string]Runnable

// ContextRunnable is a command that also gets a context: cancelled when its caller goes away
// (the router's rpc.cancel, or its connection closing) or at a second SIGTERM/SIGINT. The
// context also carries the call for Progress.
type ContextRunnable func(ctx context.Context, args json.RawMessage) (interface{}, error)

// ContextCommands maps command names to context-taking commands.
type ContextCommands map[string]ContextRunnable

// Plugin runs commands: as a persistent server when plugrpc started the process (a listening
// socket on fd 3), else once, as core0 did, from the command line. It does not return: the
// process exits 0 after a graceful shutdown or a command that succeeded, 1 otherwise.
func Plugin(commands Commands) {
	Serve(adapt(commands))
}

// Serve is Plugin for context-taking commands.
func Serve(commands ContextCommands) {
	ln, err := listener()
	if err != nil {
		fmt.Fprintln(os.Stderr, "plugin:", err)
		os.Exit(1)
	}
	if ln == nil {
		runOnce(commands, os.Args[1:], os.Stdout) // exits
	}
	os.Exit(serve(ln, commands, shutdownSignals()))
}

func adapt(commands Commands) ContextCommands {
	out := make(ContextCommands, len(commands))
	for name, fn := range commands {
		fn := fn
		out[name] = func(_ context.Context, args json.RawMessage) (interface{}, error) { return fn(args) }
	}
	return out
}

var (
	listenOnce sync.Once
	listenFile *os.File
)

// activated says whether plugrpc (or systemd) handed this process a listening socket: the
// systemd socket-activation convention, LISTEN_FDS set and LISTEN_PID, where set, ours. The
// variables are unset so that the plugin's own children do not take the socket for theirs.
func activated() *os.File {
	listenOnce.Do(func() {
		n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
		if err != nil || n < 1 {
			return
		}
		if pid := os.Getenv("LISTEN_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
			return
		}
		name := os.Getenv("LISTEN_FDNAMES")
		if name == "" {
			name = "plugrpc"
		}
		listenFile = os.NewFile(3, name)
		for _, key := range []string{"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"} {
			os.Unsetenv(key)
		}
	})
	return listenFile
}

// listener is the socket on fd 3 as a net.Listener, or nil when the process was run by hand.
func listener() (net.Listener, error) {
	f := activated()
	if f == nil {
		return nil, nil
	}
	ln, err := net.FileListener(f) // a close-on-exec duplicate: fd 3 itself is closed below
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("LISTEN_FDS is set but fd 3 is not a listening socket: %v", err)
	}
	return ln, nil
}

// exit is os.Exit, replaced in tests.
var exit = os.Exit

// runOnce is core0's Plugin, byte for byte: `prog <command> [<args-json>]`, the result framed
// on stdout as `20:::` + JSON + "\n" + `:::`, exit 0; any failure is the same frame holding the
// error text as a JSON string, exit 1. Nothing goes to stderr.
func runOnce(commands ContextCommands, args []string, stdout io.Writer) {
	defer func() {
		if err := recover(); err != nil {
			exitError(stdout, fmt.Errorf("paniced with error: %v", err))
		}
	}()
	if len(args) == 0 {
		exitError(stdout, fmt.Errorf("missing command"))
		return
	}
	cmd := args[0]
	var input json.RawMessage
	if len(args) == 2 {
		input = json.RawMessage(args[1])
	}
	handler, ok := commands[cmd]
	if !ok {
		exitError(stdout, fmt.Errorf("unknown command: %s", cmd))
		return
	}
	out, err := handler(context.Background(), input)
	if err != nil {
		exitError(stdout, err)
		return
	}
	output(stdout, out)
	exit(0)
}

func output(stdout io.Writer, o interface{}) {
	io.WriteString(stdout, "20:::")
	json.NewEncoder(stdout).Encode(o) // the JSON text and "\n"; nothing when o cannot be encoded, as in core0
	io.WriteString(stdout, ":::")
}

func exitError(stdout io.Writer, e error) {
	output(stdout, e.Error())
	exit(1)
}

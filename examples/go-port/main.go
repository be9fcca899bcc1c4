// The ovs plugin of core0, ported from plugin.Plugin (run once per call) to a persistent
// plugrpc server: the command functions are unchanged; main() calls Serve() instead of
// plugin.Plugin(). Serve() needs only the standard library; copy it into your plugin.
// See docs/migration-core0.md.
//
//	go build -o ovs-plugin . && plugrpc run --root IMAGE    (with ovs-plugin in IMAGE)
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// Commands is core0's plugin.Commands: the same functions serve unchanged.
type Commands map[string]func(args json.RawMessage) (interface{}, error)

func version(args json.RawMessage) (interface{}, error) {
	return "1.0alpha", nil
}

func fail(args json.RawMessage) (interface{}, error) {
	return nil, errors.New("this command always fails")
}

func main() {
	// core0: plugin.Plugin(plugin.Commands{"version": version})
	Serve(Commands{"version": version, "fail": fail})
}

type request struct {
	ID     json.RawMessage `json:"id"` // empty: a notification, which gets no response
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
}

type rpcError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

type response struct {
	JSONRPC string          `json:"jsonrpc"`
	Result  interface{}     `json:"result,omitempty"`
	Error   *rpcError       `json:"error,omitempty"`
	ID      json.RawMessage `json:"id"`
}

// server counts calls in flight so that SIGTERM can let them finish.
type server struct {
	commands Commands
	mu       sync.Mutex
	stopping bool
	calls    sync.WaitGroup
}

// Serve answers JSON-RPC 2.0 calls on the socket plugrpc hands over as fd 3 until SIGTERM.
func Serve(commands Commands) {
	ln, err := net.FileListener(os.NewFile(3, ""))
	if err != nil {
		fmt.Fprintln(os.Stderr, "no listening socket on fd 3 (start me with plugrpc run):", err)
		os.Exit(1)
	}
	s := &server{commands: commands}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return // closed at SIGTERM
			}
			go s.serveConn(conn)
		}
	}()
	<-stop
	ln.Close()
	s.mu.Lock()
	s.stopping = true // no new calls from here on
	s.mu.Unlock()
	s.calls.Wait() // the ones in flight finish and are answered
}

// serveConn reads one request per line; each runs in its own goroutine and is answered
// when done, in any order (the router matches responses by id).
func (s *server) serveConn(conn net.Conn) {
	var write sync.Mutex         // one response line at a time
	out := json.NewEncoder(conn) // Encode writes the JSON text and "\n"
	send := func(r response) {
		write.Lock()
		defer write.Unlock()
		out.Encode(r)
	}
	lines := bufio.NewScanner(conn)
	lines.Buffer(make([]byte, 0, 64*1024), 64<<20) // requests up to 64 MiB
	var mine sync.WaitGroup
	for lines.Scan() {
		var req request
		if err := json.Unmarshal(lines.Bytes(), &req); err != nil {
			send(response{JSONRPC: "2.0", Error: &rpcError{-32700, "Parse error"}, ID: json.RawMessage("null")})
			continue
		}
		if !s.begin() {
			break
		}
		mine.Add(1)
		go func() {
			defer s.calls.Done()
			defer mine.Done()
			r := s.call(req)
			if len(req.ID) > 0 {
				send(r)
			}
		}()
	}
	mine.Wait()
	conn.Close()
}

func (s *server) begin() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return false
	}
	s.calls.Add(1)
	return true
}

func (s *server) call(req request) (r response) {
	r = response{JSONRPC: "2.0", ID: req.ID}
	defer func() {
		if p := recover(); p != nil {
			fmt.Fprintf(os.Stderr, "%s panicked: %v\n", req.Method, p) // to the router's log
			r.Result, r.Error = nil, &rpcError{-32603, "Internal error"}
		}
	}()
	fn, ok := s.commands[req.Method]
	if !ok {
		r.Error = &rpcError{-32601, "Method not found"}
		return r
	}
	result, err := fn(req.Params)
	if err != nil {
		r.Error = &rpcError{-32000, err.Error()} // the code an exec-mode failure gets, too
		return r
	}
	if result == nil {
		result = json.RawMessage("null") // "result" must be present, even when null
	}
	r.Result = result
	return r
}

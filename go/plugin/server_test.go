package plugin

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// wait bounds every wait of a test: nothing can hang the suite.
const wait = 5 * time.Second

type testServer struct {
	path    string
	sig     chan os.Signal
	done    chan int
	stopped bool
}

// startServer runs a server on a real unix listener in a private directory.
func startServer(t *testing.T, commands ContextCommands, setup ...func(*server)) *testServer {
	t.Helper()
	dir, err := os.MkdirTemp("", "gp") // short: unix socket paths are bounded
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "s.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(commands)
	for _, f := range setup {
		f(s)
	}
	ts := &testServer{path: path, sig: make(chan os.Signal, 2), done: make(chan int, 1)}
	go func() { ts.done <- s.run(ln, ts.sig) }()
	t.Cleanup(func() {
		if !ts.stopped {
			ts.sig <- syscall.SIGTERM
			select {
			case <-ts.done:
			case <-time.After(wait):
				t.Error("the server did not stop")
			}
		}
		os.RemoveAll(dir)
	})
	return ts
}

// stop sends SIGTERM and returns the exit status.
func (ts *testServer) stop(t *testing.T) int {
	t.Helper()
	ts.sig <- syscall.SIGTERM
	ts.stopped = true
	select {
	case code := <-ts.done:
		return code
	case <-time.After(wait):
		t.Fatal("the server did not stop")
		return -1
	}
}

type client struct {
	t  *testing.T
	nc net.Conn
	r  *bufio.Reader
}

func (ts *testServer) dial(t *testing.T) *client {
	t.Helper()
	nc, err := net.Dial("unix", ts.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &client{t: t, nc: nc, r: bufio.NewReader(nc)}
}

func (c *client) send(lines ...string) {
	c.t.Helper()
	for _, line := range lines {
		if _, err := c.nc.Write([]byte(line + "\n")); err != nil {
			c.t.Fatal(err)
		}
	}
}

// recv is the next line, without its newline.
func (c *client) recv() string {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(wait))
	line, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("no line: %v (got %q)", err, line)
	}
	return strings.TrimSuffix(line, "\n")
}

// expectEOF: the server closed the connection.
func (c *client) expectEOF() {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(wait))
	if line, err := c.r.ReadString('\n'); err == nil {
		c.t.Fatalf("expected the connection closed, got %q", line)
	}
}

func (c *client) call(line string) string {
	c.t.Helper()
	c.send(line)
	return c.recv()
}

func echo(_ context.Context, args json.RawMessage) (interface{}, error) { return args, nil }

func TestPipelinedCallsAreAnsweredAsTheyFinish(t *testing.T) {
	release := make(chan struct{})
	ts := startServer(t, ContextCommands{
		"echo": echo,
		"slow": func(context.Context, json.RawMessage) (interface{}, error) { <-release; return "slow", nil },
	})
	c := ts.dial(t)
	c.send(`{"jsonrpc":"2.0","method":"slow","id":1}`,
		`{"jsonrpc":"2.0","method":"echo","params":{"x":[1,2]},"id":"a"}`,
		`{"jsonrpc":"2.0","method":"echo","params":[3],"id":2.50}`,
		`{"jsonrpc":"2.0","method":"echo","params":[4]}`,
		`{"jsonrpc":"2.0","method":"echo","id":null}`)
	got := map[string]bool{c.recv(): true, c.recv(): true, c.recv(): true}
	for _, want := range []string{
		`{"jsonrpc":"2.0","result":{"x":[1,2]},"id":"a"}`,
		`{"jsonrpc":"2.0","result":[3],"id":2.50}`, // the id exactly as sent
		`{"jsonrpc":"2.0","result":{},"id":null}`,  // no params: {} as core0 passed
	} {
		if !got[want] {
			t.Errorf("missing %s in %v", want, got)
		}
	}
	close(release)
	if line := c.recv(); line != `{"jsonrpc":"2.0","result":"slow","id":1}` {
		t.Fatalf("slow call: %s", line)
	}
	// The notification got no answer: the next line is the next request's.
	if line := c.call(`{"jsonrpc":"2.0","method":"rpc.ping","id":9}`); line != `{"jsonrpc":"2.0","result":{"direct":{"connections":0,"calls":0,"errors":0}},"id":9}` {
		t.Fatalf("ping: %s", line)
	}
}

func TestManyConcurrentCallsOnOneConnection(t *testing.T) {
	var inFlight, most int64
	ts := startServer(t, ContextCommands{"work": func(_ context.Context, args json.RawMessage) (interface{}, error) {
		n := atomic.AddInt64(&inFlight, 1)
		for {
			m := atomic.LoadInt64(&most)
			if n <= m || atomic.CompareAndSwapInt64(&most, m, n) {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
		atomic.AddInt64(&inFlight, -1)
		return args, nil
	}})
	c := ts.dial(t)
	var out strings.Builder
	for i := 0; i < 200; i++ {
		fmt.Fprintf(&out, `{"jsonrpc":"2.0","method":"work","params":[%d],"id":%d}`+"\n", i, i)
	}
	c.send(strings.TrimSuffix(out.String(), "\n"))
	seen := map[int]bool{}
	for i := 0; i < 200; i++ {
		var resp struct {
			Result []int
			ID     int
		}
		if err := json.Unmarshal([]byte(c.recv()), &resp); err != nil || resp.Result[0] != resp.ID {
			t.Fatalf("bad answer %v %v", resp, err)
		}
		seen[resp.ID] = true
	}
	if len(seen) != 200 {
		t.Fatalf("%d distinct answers", len(seen))
	}
	if atomic.LoadInt64(&most) < 10 {
		t.Fatalf("calls did not run concurrently (at most %d at once)", most)
	}
}

func TestBatches(t *testing.T) {
	ts := startServer(t, ContextCommands{"echo": echo})
	c := ts.dial(t)
	line := c.call(`[{"jsonrpc":"2.0","method":"echo","params":[1],"id":1},` +
		`{"jsonrpc":"2.0","method":"echo","params":[2]},5,` +
		`{"jsonrpc":"2.0","method":"nope","id":"x"}]`)
	var answers []map[string]interface{}
	if err := json.Unmarshal([]byte(line), &answers); err != nil || len(answers) != 3 {
		t.Fatalf("batch answer: %s", line)
	}
	if fmt.Sprint(answers[0]["result"]) != "[1]" || answers[0]["id"] != 1.0 {
		t.Errorf("first: %v", answers[0])
	}
	if code(answers[1]) != InvalidRequest || answers[1]["id"] != nil {
		t.Errorf("5: %v", answers[1])
	}
	if code(answers[2]) != MethodNotFound || answers[2]["id"] != "x" {
		t.Errorf("nope: %v", answers[2])
	}
	if line := c.call(`[]`); line != `{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request","data":"an empty batch"},"id":null}` {
		t.Errorf("empty batch: %s", line)
	}
	// A batch of notifications gets nothing back: the next line answers the next request.
	c.send(`[{"jsonrpc":"2.0","method":"echo"},{"jsonrpc":"2.0","method":"nope"}]`)
	if line := c.call(`{"jsonrpc":"2.0","method":"echo","params":[7],"id":7}`); line != `{"jsonrpc":"2.0","result":[7],"id":7}` {
		t.Errorf("after notifications: %s", line)
	}
}

func code(answer map[string]interface{}) int {
	e, _ := answer["error"].(map[string]interface{})
	f, _ := e["code"].(float64)
	return int(f)
}

func TestErrorsAndBadInput(t *testing.T) {
	ts := startServer(t, ContextCommands{
		"echo": echo,
		"fail": func(context.Context, json.RawMessage) (interface{}, error) { return nil, errors.New("it broke") },
		"own": func(context.Context, json.RawMessage) (interface{}, error) {
			return nil, fmt.Errorf("wrapped: %w", &Error{Code: 4001, Message: "no such port", Data: map[string]string{"port": "eth9"}})
		},
		"panic": func(context.Context, json.RawMessage) (interface{}, error) { panic("boom") },
		"nil":   func(context.Context, json.RawMessage) (interface{}, error) { return nil, nil },
		"chan":  func(context.Context, json.RawMessage) (interface{}, error) { return make(chan int), nil },
	})
	c := ts.dial(t)
	for _, tc := range []struct{ send, want string }{
		{`{bad`, `{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error","data":"the line is not valid JSON"},"id":null}`},
		{`{"jsonrpc":"1.0","method":"echo","id":1}`, `{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request","data":"jsonrpc must be \"2.0\""},"id":1}`},
		{`{"method":"echo","id":1}`, `{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request","data":"jsonrpc must be \"2.0\""},"id":1}`},
		{`{"jsonrpc":"2.0","method":"echo","id":{"a":1}}`, `{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request","data":"id must be a string, a number or null"},"id":null}`},
		{`{"jsonrpc":"2.0","method":"echo","id":[1]}`, `{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request","data":"id must be a string, a number or null"},"id":null}`},
		{`{"jsonrpc":"2.0","method":"echo","id":true}`, `{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request","data":"id must be a string, a number or null"},"id":null}`},
		{`{"jsonrpc":"2.0","method":5,"id":3}`, `{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request","data":"method must be a string"},"id":3}`},
		{`{"jsonrpc":"2.0","method":5}`, `{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request","data":"method must be a string"},"id":null}`},
		{`"2.0"`, `{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request","data":"a request is a JSON object"},"id":null}`},
		{`{"jsonrpc":"2.0","method":"nope","id":"n"}`, `{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found","data":"nope"},"id":"n"}`},
		{`{"jsonrpc":"2.0","method":"fail","id":4}`, `{"jsonrpc":"2.0","error":{"code":-32000,"message":"it broke"},"id":4}`},
		{`{"jsonrpc":"2.0","method":"own","id":5}`, `{"jsonrpc":"2.0","error":{"code":4001,"message":"no such port","data":{"port":"eth9"}},"id":5}`},
		{`{"jsonrpc":"2.0","method":"panic","id":6}`, `{"jsonrpc":"2.0","error":{"code":-32603,"message":"Internal error","data":"paniced with error: boom"},"id":6}`},
		{`{"jsonrpc":"2.0","method":"nil","id":7}`, `{"jsonrpc":"2.0","result":null,"id":7}`},
		{`{"jsonrpc":"2.0","method":"chan","id":8}`, `{"jsonrpc":"2.0","error":{"code":-32603,"message":"Internal error","data":"the result cannot be encoded as JSON: json: unsupported type: chan int"},"id":8}`},
		{` { "id" : -1e3 , "method" : "echo", "jsonrpc" : "2.0", "params" : [ 1 ] } `, `{"jsonrpc":"2.0","result":[1],"id":-1e3}`},
		{`{"jsonrpc":"2.0","method":"echo","params":"text","id":9}`, `{"jsonrpc":"2.0","result":"text","id":9}`},
		{`{"jsonrpc":"2.0","method":"rpc.cancel","params":{"id":"none"},"id":10}`, `{"jsonrpc":"2.0","result":false,"id":10}`},
	} {
		if got := c.call(tc.send); got != tc.want {
			t.Errorf("%s\n got %s\nwant %s", tc.send, got, tc.want)
		}
	}
	// A bad notification of a known shape is still answered (an invalid request always is),
	// but an unknown method as a notification, or a blank line, is not.
	c.send(``, `   `, `{"jsonrpc":"2.0","method":"nope"}`, `{"jsonrpc":"2.0","method":"panic"}`)
	if line := c.call(`{"jsonrpc":"2.0","method":"nil","id":11}`); line != `{"jsonrpc":"2.0","result":null,"id":11}` {
		t.Errorf("after notifications: %s", line)
	}
}

func TestLineBound(t *testing.T) {
	ts := startServer(t, ContextCommands{"echo": echo}, func(s *server) { s.maxLine = 4096 })
	c := ts.dial(t)
	fits := `{"jsonrpc":"2.0","method":"echo","params":["` + strings.Repeat("x", 4096-54) + `"],"id":1}`
	if len(fits) != 4096 {
		t.Fatalf("test line is %d bytes", len(fits))
	}
	if got := c.call(fits); !strings.HasPrefix(got, `{"jsonrpc":"2.0","result":["xx`) {
		t.Fatalf("a line of exactly the bound: %.80s", got)
	}
	c.send(`{"jsonrpc":"2.0","method":"echo","params":["` + strings.Repeat("x", 100000) + `"],"id":2}`)
	if got := c.recv(); got != `{"jsonrpc":"2.0","error":{"code":-32004,"message":"Message too large","data":"a line exceeded the maximum of 4096 bytes"},"id":null}` {
		t.Fatalf("too long: %s", got)
	}
	c.expectEOF()
	other := ts.dial(t) // nothing else is affected
	if got := other.call(`{"jsonrpc":"2.0","method":"echo","id":3}`); got != `{"jsonrpc":"2.0","result":{},"id":3}` {
		t.Fatalf("other connection: %s", got)
	}
}

// waitCommand blocks until its context ends, telling started and ended.
func waitCommand(started, ended chan string) ContextRunnable {
	return func(ctx context.Context, args json.RawMessage) (interface{}, error) {
		started <- string(args)
		<-ctx.Done()
		ended <- string(args)
		return nil, ctx.Err()
	}
}

func recvWithin(t *testing.T, ch chan string) string {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(wait):
		t.Fatal("timed out")
		return ""
	}
}

func TestCancel(t *testing.T) {
	started, ended := make(chan string, 4), make(chan string, 4)
	ts := startServer(t, ContextCommands{"wait": waitCommand(started, ended), "echo": echo})
	c := ts.dial(t)
	c.send(`{"jsonrpc":"2.0","method":"wait","params":["a"],"id":7}`, `{"jsonrpc":"2.0","method":"wait","params":["b"],"id":8}`)
	recvWithin(t, started)
	recvWithin(t, started)
	c.send(`{"jsonrpc":"2.0","method":"rpc.cancel","params":{"id":7}}`)
	if got := recvWithin(t, ended); got != `["a"]` {
		t.Fatalf("cancelled %s", got)
	}
	if got := c.recv(); got != `{"jsonrpc":"2.0","error":{"code":-32000,"message":"context canceled"},"id":7}` {
		t.Fatalf("answer: %s", got)
	}
	// The peer going away cancels the rest.
	c.nc.Close()
	if got := recvWithin(t, ended); got != `["b"]` {
		t.Fatalf("cancelled %s", got)
	}
}

func TestShutdownFinishesCallsInFlight(t *testing.T) {
	started, release := make(chan string, 1), make(chan struct{})
	ts := startServer(t, ContextCommands{"slow": func(ctx context.Context, _ json.RawMessage) (interface{}, error) {
		started <- ""
		<-release
		return "done", ctx.Err()
	}})
	c := ts.dial(t)
	c.send(`{"jsonrpc":"2.0","method":"slow","id":1}`)
	recvWithin(t, started)
	ts.sig <- syscall.SIGTERM
	ts.stopped = true
	deadline := time.Now().Add(wait)
	for { // the listener closes: no new connection
		nc, err := net.Dial("unix", ts.path)
		if err != nil {
			break
		}
		nc.Close()
		if time.Now().After(deadline) {
			t.Fatal("still accepting after SIGTERM")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-ts.done:
		t.Fatal("exited with a call in flight")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if got := c.recv(); got != `{"jsonrpc":"2.0","result":"done","id":1}` {
		t.Fatalf("answer: %s", got)
	}
	select {
	case code := <-ts.done:
		if code != 0 {
			t.Fatalf("exit status %d", code)
		}
	case <-time.After(wait):
		t.Fatal("did not exit")
	}
	c.expectEOF()
}

func TestSecondSignalCancelsCallsInFlight(t *testing.T) {
	started, ended := make(chan string, 1), make(chan string, 1)
	ts := startServer(t, ContextCommands{"wait": waitCommand(started, ended)})
	c := ts.dial(t)
	c.send(`{"jsonrpc":"2.0","method":"wait","id":1}`)
	recvWithin(t, started)
	ts.sig <- syscall.SIGTERM
	ts.sig <- syscall.SIGINT
	recvWithin(t, ended)
	if got := c.recv(); got != `{"jsonrpc":"2.0","error":{"code":-32000,"message":"context canceled"},"id":1}` {
		t.Fatalf("answer: %s", got)
	}
	if code := ts.stop(t); code != 0 {
		t.Fatalf("exit status %d", code)
	}
}

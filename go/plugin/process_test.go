package plugin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The test binary, run with PLUGIN_TEST_HELPER=1, is a core0 plugin: the tests run it by hand
// (core0's exec contract) and as plugrpc does (a listening socket on fd 3, then SIGTERM).
func TestMain(m *testing.M) {
	if os.Getenv("PLUGIN_TEST_HELPER") == "1" {
		Plugin(Commands{
			"version": func(json.RawMessage) (interface{}, error) { return "1.0alpha", nil },
			"echo":    func(args json.RawMessage) (interface{}, error) { return args, nil },
			"html":    func(json.RawMessage) (interface{}, error) { return map[string]string{"a": "<&>"}, nil },
			"fail":    func(json.RawMessage) (interface{}, error) { return nil, errors.New("this command always fails") },
			"panic":   func(json.RawMessage) (interface{}, error) { panic("boom") },
			"sleep": func(args json.RawMessage) (interface{}, error) {
				var seconds float64
				json.Unmarshal(args, &seconds)
				time.Sleep(time.Duration(seconds * float64(time.Second)))
				return seconds, nil
			},
		})
		return // not reached: Plugin exits
	}
	flag.Parse()
	if !testing.Verbose() {
		logw = io.Discard
	}
	os.Exit(m.Run())
}

func helper(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Env = append(os.Environ(), "PLUGIN_TEST_HELPER=1")
	return cmd
}

func TestRunByHandIsCore0ByteForByte(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		stdout string
		status int
	}{
		{[]string{"version"}, "20:::\"1.0alpha\"\n:::", 0},
		{[]string{"version", "{}"}, "20:::\"1.0alpha\"\n:::", 0},
		{[]string{}, "20:::\"missing command\"\n:::", 1},
		{[]string{"nope", "{}"}, "20:::\"unknown command: nope\"\n:::", 1},
		{[]string{"fail", "{}"}, "20:::\"this command always fails\"\n:::", 1},
		{[]string{"panic"}, "20:::\"paniced with error: boom\"\n:::", 1},
		{[]string{"echo", `{"a": [1, 2]}`}, "20:::{\"a\":[1,2]}\n:::", 0}, // json.Encoder compacts raw JSON
		{[]string{"echo"}, "20:::null\n:::", 0},                           // no args JSON: nil input
		{[]string{"echo", "{}", "extra"}, "20:::null\n:::", 0},            // only exactly one args JSON is input
		{[]string{"html"}, "20:::{\"a\":\"\\u003c\\u0026\\u003e\"}\n:::", 0},
		{[]string{"echo", "not json"}, "20::::::", 0}, // what json.Encoder wrote: nothing
	} {
		cmd := helper(t, tc.args...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		status := 0
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			status = exit.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if stdout.String() != tc.stdout || status != tc.status || stderr.Len() != 0 {
			t.Errorf("%q: stdout %q status %d stderr %q; want %q status %d", tc.args, stdout.String(), status,
				stderr.String(), tc.stdout, tc.status)
		}
	}
}

// activate runs the helper as plugrpc does: a listening socket as fd 3, LISTEN_FDS=1.
func activate(t *testing.T, env ...string) (*exec.Cmd, string, *bytes.Buffer) {
	t.Helper()
	dir, err := os.MkdirTemp("", "gp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "p.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	f, err := ln.(*net.UnixListener).File()
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	cmd := helper(t)
	cmd.ExtraFiles = []*os.File{f} // fd 3
	cmd.Env = append(cmd.Env, append([]string{"LISTEN_FDS=1", "LISTEN_FDNAMES=ovs"}, env...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd, path, &stderr
}

func TestActivatedProcessServesAndFinishesOnSIGTERM(t *testing.T) {
	cmd, path, stderr := activate(t)
	nc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := &client{t: t, nc: nc, r: bufio.NewReader(nc)}
	c.send(`{"jsonrpc":"2.0","method":"sleep","params":0.3,"id":"slow"}`)
	if got := c.call(`{"jsonrpc":"2.0","method":"version","params":{},"id":1}`); got != `{"jsonrpc":"2.0","result":"1.0alpha","id":1}` {
		t.Fatalf("version: %s", got)
	}
	if got := c.call(`{"jsonrpc":"2.0","method":"fail","id":2}`); got != `{"jsonrpc":"2.0","error":{"code":-32000,"message":"this command always fails"},"id":2}` {
		t.Fatalf("fail: %s", got)
	}
	cmd.Process.Signal(syscall.SIGTERM) // the slow call is still in flight
	if got := c.recv(); got != `{"jsonrpc":"2.0","result":0.3,"id":"slow"}` {
		t.Fatalf("in flight at SIGTERM: %s", got)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v; stderr %s", err, stderr)
	}
	if !strings.Contains(stderr.String(), "SIGTERM: finishing the calls in flight") {
		t.Fatalf("stderr: %s", stderr)
	}
}

func TestSomeoneElsesListenPIDMeansRunByHand(t *testing.T) {
	cmd, _, _ := activate(t, "LISTEN_PID=1")
	err := cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 { // "missing command", as core0
		t.Fatalf("exit: %v", err)
	}
}

func TestEmitAndProgress(t *testing.T) {
	ts := startServer(t, ContextCommands{
		"scan": func(ctx context.Context, _ json.RawMessage) (interface{}, error) {
			for i := 1; i <= 2; i++ {
				if err := Progress(ctx, map[string]int{"done": i, "of": 2}); err != nil {
					return nil, err
				}
			}
			return "scanned", Emit("port.added", map[string]string{"port": "eth9"})
		},
	})
	first := ts.dial(t) // the router's connection, opened first: events go out on it
	first.call(`{"jsonrpc":"2.0","method":"rpc.ping","id":0}`)
	second := ts.dial(t)
	second.send(`{"jsonrpc":"2.0","method":"scan","id":"s1"}`)
	for i, want := range []string{
		`{"jsonrpc":"2.0","method":"rpc.progress","params":{"id":"s1","value":{"done":1,"of":2}}}`,
		`{"jsonrpc":"2.0","method":"rpc.progress","params":{"id":"s1","value":{"done":2,"of":2}}}`,
		`{"jsonrpc":"2.0","result":"scanned","id":"s1"}`,
	} {
		if got := second.recv(); got != want {
			t.Fatalf("line %d: %s", i, got)
		}
	}
	if got := first.recv(); got != `{"jsonrpc":"2.0","method":"rpc.event","params":{"name":"port.added","data":{"port":"eth9"}}}` {
		t.Fatalf("event: %s", got)
	}
	first.nc.Close() // events move to the next connection
	time.Sleep(50 * time.Millisecond)
	second.send(`{"jsonrpc":"2.0","method":"scan"}`) // a notification: no progress, no answer
	if got := second.recv(); !strings.Contains(got, `"rpc.event"`) {
		t.Fatalf("event on the second connection: %s", got)
	}
	if err := Emit("bad name!", nil); err == nil {
		t.Fatal("a bad event name was accepted")
	}
	if err := Progress(context.Background(), 1); err != nil { // not activated: a no-op
		t.Fatal(err)
	}
}

// fakeRouter answers Call's requests as the router would, and records what it read.
func fakeRouter(t *testing.T) (path string, got func() []string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "gp")
	if err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(dir, "r.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var lines []string
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer nc.Close()
				r := bufio.NewReader(nc)
				for {
					line, err := r.ReadBytes('\n')
					if err != nil {
						return
					}
					mu.Lock()
					lines = append(lines, strings.TrimSpace(string(line)))
					mu.Unlock()
					var req struct {
						Method string
						Params json.RawMessage
						ID     json.RawMessage
					}
					json.Unmarshal(line, &req)
					switch req.Method {
					case "other.echo":
						nc.Write([]byte(`{"jsonrpc":"2.0","method":"rpc.event","params":{}}` + "\n"))
						nc.Write([]byte(`{"jsonrpc":"2.0","result":` + string(req.Params) + `,"id":` + string(req.ID) + "}\n"))
					case "other.missing":
						nc.Write([]byte(`{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found","data":{"plugin":"other"}},"id":` + string(req.ID) + "}\n"))
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		os.RemoveAll(dir)
		linkMu.Lock()
		if link != nil {
			link.nc.Close()
			link = nil
		}
		linkMu.Unlock()
	})
	return path, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), lines...)
	}
}

func TestCallThroughTheRouter(t *testing.T) {
	path, got := fakeRouter(t)
	t.Setenv("PLUGRPC_ROUTER", path)
	ctx := context.Background()
	result, err := Call(ctx, "other.echo", map[string]int{"a": 1})
	if err != nil || string(result) != `{"a":1}` {
		t.Fatalf("echo: %s %v", result, err)
	}
	_, err = Call(ctx, "other.missing", nil)
	var rpcErr *Error
	if !errors.As(err, &rpcErr) || rpcErr.Code != MethodNotFound || rpcErr.Message != "Method not found" {
		t.Fatalf("missing: %v", err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := Call(short, "other.silent", nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("silent: %v", err)
	}
	deadline := time.Now().Add(wait)
	for !strings.Contains(strings.Join(got(), "\n"), `{"jsonrpc":"2.0","method":"rpc.cancel","params":{"id":3}}`) {
		if time.Now().After(deadline) {
			t.Fatalf("no rpc.cancel: %q", got())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if lines := got(); lines[0] != `{"jsonrpc":"2.0","method":"other.echo","params":{"a":1},"id":1}` ||
		lines[1] != `{"jsonrpc":"2.0","method":"other.missing","id":2}` {
		t.Fatalf("requests: %q", lines)
	}
}

func TestCallWithoutARouter(t *testing.T) {
	t.Setenv("PLUGRPC_ROUTER", "")
	if _, err := Call(context.Background(), "a.b", nil); err == nil || !strings.Contains(err.Error(), "PLUGRPC_ROUTER") {
		t.Fatalf("err: %v", err)
	}
}

func TestReadyAndStatus(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if err := Ready(); err != nil { // not asked for: nothing to do
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "gp")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	for _, addr := range []string{filepath.Join(dir, "n.sock"), "@plugrpc-go-test-" + filepath.Base(dir)} {
		pc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv("NOTIFY_SOCKET", addr)
		if err := Ready(); err != nil {
			t.Fatal(err)
		}
		if err := Status("scanning\nports"); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 256)
		for _, want := range []string{"READY=1", "STATUS=scanning ports"} {
			pc.SetReadDeadline(time.Now().Add(wait))
			n, err := pc.Read(buf)
			if err != nil || string(buf[:n]) != want {
				t.Fatalf("%s: %q %v", addr, buf[:n], err)
			}
		}
		pc.Close()
	}
}

package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const directTrue = `{"jsonrpc":"2.0","result":true,"id":"d"}`

func secret(context.Context, json.RawMessage) (interface{}, error) { return "not exported", nil }

// goDirect makes c a direct connection with these terms.
func goDirect(t *testing.T, c *client, terms string) {
	t.Helper()
	if line := c.call(`{"jsonrpc":"2.0","method":"rpc.direct","params":` + terms + `,"id":"d"}`); line != directTrue {
		t.Fatalf("rpc.direct: %s", line)
	}
}

func answerOf(t *testing.T, line string) map[string]interface{} {
	t.Helper()
	var m map[string]interface{}
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		t.Fatalf("not JSON: %s", line)
	}
	return m
}

func TestDirectConnectionCallsOnlyItsExports(t *testing.T) {
	ts := startServer(t, ContextCommands{"echo": echo, "secret": secret})
	d, other := ts.dial(t), ts.dial(t)
	goDirect(t, d, `{"exports":["echo","nope"],"max_inflight":0}`)
	if line := d.call(`{"jsonrpc":"2.0","method":"echo","params":[1],"id":1}`); line != `{"jsonrpc":"2.0","result":[1],"id":1}` {
		t.Errorf("echo: %s", line)
	}
	for _, method := range []string{"secret", "nope"} {
		if got := code(answerOf(t, d.call(`{"jsonrpc":"2.0","method":"`+method+`","id":2}`))); got != MethodNotFound {
			t.Errorf("%s: %d", method, got)
		}
	}
	var batch []map[string]interface{}
	line := d.call(`[{"jsonrpc":"2.0","method":"echo","params":[1],"id":1},{"jsonrpc":"2.0","method":"secret","id":2}]`)
	if json.Unmarshal([]byte(line), &batch) != nil || len(batch) != 2 || batch[0]["id"] != 1.0 || code(batch[1]) != MethodNotFound {
		t.Errorf("batch: %s", line)
	}
	// The built-ins a caller needs stay.
	if line := d.call(`{"jsonrpc":"2.0","method":"rpc.cancel","params":{"id":1},"id":3}`); line != `{"jsonrpc":"2.0","result":false,"id":3}` {
		t.Errorf("cancel: %s", line)
	}
	if line := d.call(`{"jsonrpc":"2.0","method":"rpc.ping","id":4}`); !strings.Contains(line, `"direct"`) {
		t.Errorf("ping: %s", line)
	}
	// Its terms are given once.
	if got := code(answerOf(t, d.call(`{"jsonrpc":"2.0","method":"rpc.direct","params":{"exports":["secret"]},"id":5}`))); got != InvalidRequest {
		t.Errorf("second rpc.direct: %d", got)
	}
	if got := code(answerOf(t, d.call(`{"jsonrpc":"2.0","method":"secret","id":6}`))); got != MethodNotFound {
		t.Errorf("secret after a second rpc.direct: %d", got)
	}
	if line := other.call(`{"jsonrpc":"2.0","method":"secret","id":7}`); line != `{"jsonrpc":"2.0","result":"not exported","id":7}` {
		t.Errorf("another connection: %s", line)
	}
}

func TestDirectParamsAreChecked(t *testing.T) {
	ts := startServer(t, ContextCommands{"secret": secret})
	c := ts.dial(t)
	for _, params := range []string{
		`null`, `[["secret"],0]`, `{}`, `{"exports":"secret"}`, `{"exports":[1]}`, `{"exports":null}`,
		`{"exports":["secret"],"max_inflight":-1}`, `{"exports":["secret"],"max_inflight":"2"}`,
		`{"exports":["secret"],"max_inflight":true}`, `{"exports":["secret"],"max_inflight":1.5}`,
	} {
		line := c.call(`{"jsonrpc":"2.0","method":"rpc.direct","params":` + params + `,"id":1}`)
		if got := code(answerOf(t, line)); got != InvalidParams {
			t.Errorf("%s: %s", params, line)
		}
	}
	if line := c.call(`{"jsonrpc":"2.0","method":"secret","id":2}`); !strings.Contains(line, `"result"`) {
		t.Fatalf("a refused rpc.direct bound the connection: %s", line)
	}
	// Members a later router may add are ignored.
	goDirect(t, c, `{"exports":[],"max_inflight":3,"later":{}}`)
}

func TestDirectMaxInflightBoundsTheCallsRunningAtOnce(t *testing.T) {
	var running, most int64
	ts := startServer(t, ContextCommands{"echo": echo,
		"slow": func(context.Context, json.RawMessage) (interface{}, error) {
			n := atomic.AddInt64(&running, 1)
			for m := atomic.LoadInt64(&most); n > m && !atomic.CompareAndSwapInt64(&most, m, n); m = atomic.LoadInt64(&most) {
			}
			time.Sleep(150 * time.Millisecond)
			atomic.AddInt64(&running, -1)
			return "slow", nil
		}})
	d := ts.dial(t)
	goDirect(t, d, `{"exports":["slow","echo"],"max_inflight":2}`)
	var out strings.Builder
	for i := 0; i < 5; i++ {
		fmt.Fprintf(&out, `{"jsonrpc":"2.0","method":"slow","id":%d}`+"\n", i)
	}
	d.send(strings.TrimSuffix(out.String(), "\n"))
	time.Sleep(50 * time.Millisecond) // two run; the connection is not read now, so this waits
	d.send(`{"jsonrpc":"2.0","method":"echo","params":["late"],"id":"late"}`)
	late := -1
	for i := 0; i < 6; i++ {
		if strings.Contains(d.recv(), `"late"`) {
			late = i
		}
	}
	if most != 2 {
		t.Errorf("%d calls ran at once, with max_inflight 2", most)
	}
	if late < 2 {
		t.Errorf("the call sent while two ran was answered %d-th", late+1)
	}
}

func TestNoEventIsWrittenOnADirectConnection(t *testing.T) {
	ts := startServer(t, ContextCommands{"echo": echo,
		"tell": func(context.Context, json.RawMessage) (interface{}, error) { return true, Emit("told", 1) }})
	d := ts.dial(t) // opened first: events go out on it, until it turns direct
	d.call(`{"jsonrpc":"2.0","method":"echo","id":0}`)
	other := ts.dial(t)
	other.call(`{"jsonrpc":"2.0","method":"echo","id":0}`)
	goDirect(t, d, `{"exports":["tell","echo"]}`)
	for id := 1; id <= 2; id++ {
		if line := d.call(fmt.Sprintf(`{"jsonrpc":"2.0","method":"tell","id":%d}`, id)); line != fmt.Sprintf(`{"jsonrpc":"2.0","result":true,"id":%d}`, id) {
			t.Fatalf("tell: %s", line)
		}
		if line := other.recv(); line != `{"jsonrpc":"2.0","method":"rpc.event","params":{"name":"told","data":1}}` {
			t.Fatalf("event: %s", line)
		}
	}
	if line := d.call(`{"jsonrpc":"2.0","method":"echo","params":[3],"id":3}`); line != `{"jsonrpc":"2.0","result":[3],"id":3}` {
		t.Fatalf("a line in between on the direct connection: %s", line)
	}
}

func TestPingCountsDirectCalls(t *testing.T) {
	ts := startServer(t, ContextCommands{"echo": echo, "secret": secret,
		"fail": func(context.Context, json.RawMessage) (interface{}, error) { return nil, fmt.Errorf("broke") }})
	router := ts.dial(t)
	ping := func(want string) {
		t.Helper()
		line := router.call(`{"jsonrpc":"2.0","method":"rpc.ping","id":"p"}`)
		if line != `{"jsonrpc":"2.0","result":{"direct":`+want+`},"id":"p"}` {
			t.Fatalf("ping: %s, want %s", line, want)
		}
	}
	ping(`{"connections":0,"calls":0,"errors":0}`)
	d := ts.dial(t)
	goDirect(t, d, `{"exports":["echo","fail"],"max_inflight":1}`)
	d.call(`{"jsonrpc":"2.0","method":"echo","id":1}`)
	d.call(`{"jsonrpc":"2.0","method":"fail","id":2}`)
	d.call(`{"jsonrpc":"2.0","method":"secret","id":3}`)
	d.call(`[{"jsonrpc":"2.0","method":"echo","id":4},{"jsonrpc":"2.0","method":"secret","id":5}]`)
	d.send(`{"jsonrpc":"2.0","method":"echo"}`)
	d.call(`{"jsonrpc":"2.0","method":"echo","id":6}`)
	router.call(`{"jsonrpc":"2.0","method":"echo","id":7}`) // calls through the router are its own to count
	ping(`{"connections":1,"calls":7,"errors":3}`)
	d.nc.Close()
	deadline := time.Now().Add(wait)
	for !strings.Contains(router.call(`{"jsonrpc":"2.0","method":"rpc.ping","id":"p"}`), `"connections":0`) {
		if time.Now().After(deadline) {
			t.Fatal("the closed direct connection is still counted")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ping(`{"connections":0,"calls":7,"errors":3}`)
}

package plugin

import (
	"bytes"
	"encoding/json"
	"sync"
	"sync/atomic"
)

// Direct connections: a caller's own connection to the plugin, which the router brokered and
// left. Before handing a fresh connection over, the router asks on it
// rpc.direct {"exports": [...], "max_inflight": N}. Answering true binds that connection from
// then on, because the router no longer stands in the way: only those exports (and the rpc.
// built-ins) are callable, anything else -32601; at most N calls run at once (0: no bound), and
// beyond that the connection is not read until one finishes (backpressure, not an error); no
// event is written on it, since nobody who reads it subscribed. A second rpc.direct is -32600.
// The router does no work per direct call, so the plugin counts them, and its answer to
// rpc.ping (which the router sends anyway) carries the figures.

// direct is what rpc.direct made of a connection.
type direct struct {
	exports map[string]bool
	slots   chan struct{} // one token per call running; nil: no bound
	state   *directState  // where its calls are counted
}

// directState is the server's side of direct connections.
type directState struct {
	// events is held (shared) by emit from choosing a connection until its event is written,
	// and exclusively while a connection turns direct: no event is written on it after its
	// answer to rpc.direct.
	events sync.RWMutex

	connections, calls, errors int64 // atomic: direct connections open; calls and errors answered on them
}

// directFigures is the rpc.ping answer's "direct" member.
type directFigures struct {
	Connections int64 `json:"connections"`
	Calls       int64 `json:"calls"`
	Errors      int64 `json:"errors"`
}

// pingResult is the answer to rpc.ping: any answer proves the plugin alive; this one carries
// the figures of its direct connections.
func (d *directState) pingResult() interface{} {
	return struct {
		Direct directFigures `json:"direct"`
	}{directFigures{
		Connections: atomic.LoadInt64(&d.connections),
		Calls:       atomic.LoadInt64(&d.calls),
		Errors:      atomic.LoadInt64(&d.errors),
	}}
}

// outlet is the connection events go out on: the oldest that is not direct; s.mu is held.
func (s *server) outlet() *conn {
	for _, c := range s.conns {
		if c.direct == nil {
			return c
		}
	}
	return nil
}

// rpcDirect answers rpc.direct, on the reader's goroutine: it binds the connection, then the
// answer is written.
func (c *conn) rpcDirect(req *request) []byte {
	id := req.id
	if id == nil {
		id = nullID
	}
	if c.direct != nil {
		return answerTo(req, errorLine(id, &Error{Code: InvalidRequest, Message: "Invalid Request",
			Data: "this connection is direct already"}))
	}
	d, problem := parseDirect(req.params)
	if problem != "" {
		return answerTo(req, errorLine(id, &Error{Code: InvalidParams, Message: "Invalid params", Data: problem}))
	}
	s := c.srv
	d.state = &s.direct
	s.direct.events.Lock()
	c.direct = d
	s.direct.events.Unlock()
	atomic.AddInt64(&s.direct.connections, 1)
	return answerTo(req, resultLine(id, true))
}

// answerTo is answer, or nothing for a notification.
func answerTo(req *request, answer []byte) []byte {
	if req.id == nil {
		return nil
	}
	return answer
}

// parseDirect reads rpc.direct's params, or says what is wrong with them. Members a later
// router may add are ignored.
func parseDirect(params json.RawMessage) (*direct, string) {
	var p struct {
		Exports     json.RawMessage `json:"exports"`
		MaxInflight json.RawMessage `json:"max_inflight"`
	}
	var exports []string
	if json.Unmarshal(params, &p) != nil || len(p.Exports) == 0 || p.Exports[0] != '[' ||
		json.Unmarshal(p.Exports, &exports) != nil {
		return nil, "exports must be a list of method names"
	}
	var max int
	if len(p.MaxInflight) > 0 && (json.Unmarshal(p.MaxInflight, &max) != nil || max < 0) {
		return nil, "max_inflight must be an integer >= 0 (0: no bound)"
	}
	d := &direct{exports: make(map[string]bool, len(exports))}
	for _, name := range exports {
		d.exports[name] = true
	}
	if max > 0 {
		d.slots = make(chan struct{}, max)
	}
	return d, ""
}

// admit lets a call on a direct connection run, or refuses it (-32601, written) when it is not
// exported. At the bound it waits for a slot, on the reader's goroutine: the connection is not
// read meanwhile.
func (c *conn) admit(req *request) bool {
	refusal, ok := c.admitItem(req)
	if refusal != nil {
		c.write(refusal)
	}
	return ok
}

// admitItem is admit for an element of a batch: the refusal is returned, not written.
func (c *conn) admitItem(req *request) (refusal []byte, ok bool) {
	d := c.direct
	if !d.exports[req.method] {
		atomic.AddInt64(&c.srv.direct.calls, 1)
		atomic.AddInt64(&c.srv.direct.errors, 1)
		if req.id == nil {
			return nil, false
		}
		return errorLine(req.id, &Error{Code: MethodNotFound, Message: "Method not found", Data: req.method}), false
	}
	if d.slots != nil {
		d.slots <- struct{}{}
	}
	return nil, true
}

var errorHead = []byte(`{"jsonrpc":"2.0","error":`)

// finished counts a call admitted under d and frees its slot (on the call's goroutine).
func (d *direct) finished(answer [][]byte) {
	atomic.AddInt64(&d.state.calls, 1)
	if len(answer) > 0 && bytes.HasPrefix(answer[0], errorHead) {
		atomic.AddInt64(&d.state.errors, 1)
	}
	if d.slots != nil {
		<-d.slots
	}
}

// closedDirect: a direct connection closed.
func (c *conn) closedDirect() {
	if c.direct != nil {
		atomic.AddInt64(&c.srv.direct.connections, -1)
	}
}

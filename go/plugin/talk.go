package plugin

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
)

// Emit sends event name (dotted tokens, such as "port.added") with data (any JSON value) to
// every client that subscribed to it; subscribers see it as "<plugin>.<name>". The manifest's
// `events` must declare it, else the router drops it. It returns at once when no connection
// from the router is open yet: up to 1000 events wait for the first one. When the process was
// run by hand (no router) it does nothing.
func Emit(name string, data interface{}) error {
	if err := checkEventName(name); err != nil {
		return err
	}
	line, err := notificationLine("rpc.event", struct {
		Name string      `json:"name"`
		Data interface{} `json:"data"`
	}{name, data})
	if err != nil {
		return err
	}
	activeMu.Lock()
	s := active
	if s == nil {
		if activated() == nil {
			activeMu.Unlock()
			return nil // run by hand: nobody to tell
		}
		s = newServer(nil) // before Serve: its events wait for the first connection
		active = s
	}
	activeMu.Unlock()
	s.emit(line)
	return nil
}

// checkEventName: tokens of letters, digits, '_' and '-', joined by dots.
func checkEventName(name string) error {
	if name == "" {
		return errors.New("plugin: an event name is dotted tokens, such as \"port.added\": got \"\"")
	}
	for _, token := range strings.Split(name, ".") {
		if token == "" {
			return fmt.Errorf("plugin: event name %q has an empty token", name)
		}
		for _, r := range token {
			if !(r == '_' || r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
				return fmt.Errorf("plugin: event name %q: %q is not allowed (letters, digits, '_', '-', dots)", name, r)
			}
		}
	}
	return nil
}

// ErrNoCall is what Progress returns given a context that is not a call's (under the server).
var ErrNoCall = errors.New("plugin: Progress needs the context of the call a command serves")

// Progress reports value (any JSON) as the progress of the call whose context ctx is (the one
// a ContextRunnable got, or one derived from it). It is written on the call's connection before
// its answer; the router passes it on to a caller that asked for progress, and drops it
// otherwise. A notification's progress, and any when run by hand, goes nowhere.
func Progress(ctx context.Context, value interface{}) error {
	call, _ := ctx.Value(callKey{}).(*callInfo)
	if call == nil {
		if activated() == nil {
			return nil
		}
		return ErrNoCall
	}
	if call.id == nil {
		return nil
	}
	line, err := notificationLine("rpc.progress", struct {
		ID    json.RawMessage `json:"id"`
		Value interface{}     `json:"value"`
	}{call.id, value})
	if err != nil {
		return err
	}
	call.conn.write(line)
	return nil
}

// Call calls method ("plugin.method") of any plugin through the router, as a client does, and
// returns its result. One connection to the router ($PLUGRPC_ROUTER, which plugrpc sets) is
// shared by the process, opened on the first call. The callee's exports, limits and timeout
// apply; a JSON-RPC error comes back as an *Error. When ctx ends first, the router is told to
// give up on the call (rpc.cancel) and ctx.Err() is returned.
func Call(ctx context.Context, method string, params interface{}) (json.RawMessage, error) {
	var rawParams json.RawMessage
	if params != nil {
		text, err := json.Marshal(params)
		if err != nil {
			return nil, err
		}
		rawParams = text
	}
	link, err := routerLink()
	if err != nil {
		return nil, err
	}
	return link.call(ctx, method, rawParams)
}

var (
	linkMu sync.Mutex
	link   *routerConn
)

func routerLink() (*routerConn, error) {
	linkMu.Lock()
	defer linkMu.Unlock()
	if link != nil {
		return link, nil
	}
	path := os.Getenv("PLUGRPC_ROUTER")
	if path == "" {
		return nil, errors.New("plugin: PLUGRPC_ROUTER is not set: Call needs plugrpc's router")
	}
	nc, err := net.Dial("unix", path)
	if err != nil {
		return nil, fmt.Errorf("plugin: cannot reach the router: %w", err)
	}
	link = &routerConn{nc: nc, waiting: map[uint64]chan reply{}}
	go link.read()
	return link, nil
}

type reply struct {
	result json.RawMessage
	err    error
}

// routerConn is the process's connection to the router: requests pipelined, answers matched by id.
type routerConn struct {
	nc      net.Conn
	wmu     sync.Mutex
	mu      sync.Mutex
	next    uint64
	waiting map[uint64]chan reply
	lost    error
}

func (r *routerConn) call(ctx context.Context, method string, params json.RawMessage) (json.RawMessage, error) {
	ch := make(chan reply, 1)
	r.mu.Lock()
	if r.lost != nil {
		r.mu.Unlock()
		return nil, r.lost
	}
	r.next++
	id := r.next
	r.waiting[id] = ch
	r.mu.Unlock()
	line, err := json.Marshal(struct {
		JSONRPC string          `json:"jsonrpc"`
		Method  string          `json:"method"`
		Params  json.RawMessage `json:"params,omitempty"`
		ID      uint64          `json:"id"`
	}{"2.0", method, params, id})
	if err != nil {
		r.forget(id)
		return nil, err
	}
	if err := r.write(append(line, '\n')); err != nil {
		r.forget(id)
		return nil, err
	}
	select {
	case rep := <-ch:
		return rep.result, rep.err
	case <-ctx.Done():
		if r.forget(id) {
			cancel, _ := notificationLine("rpc.cancel", map[string]uint64{"id": id})
			r.write(cancel)
		}
		return nil, ctx.Err()
	}
}

func (r *routerConn) write(line []byte) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if _, err := r.nc.Write(line); err != nil {
		return fmt.Errorf("plugin: writing to the router: %w", err)
	}
	return nil
}

// forget drops a call nobody waits for any more; false if its answer already came.
func (r *routerConn) forget(id uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.waiting[id]
	delete(r.waiting, id)
	return ok
}

func (r *routerConn) read() {
	in := bufio.NewReaderSize(r.nc, 64<<10)
	var err error
	for {
		var line []byte
		line, _, err = readLine(in, DefaultMaxLine)
		if len(line) > 0 {
			r.answer(line)
		}
		if err != nil {
			break
		}
	}
	lost := fmt.Errorf("plugin: the connection to the router was lost: %v", err)
	r.mu.Lock()
	r.lost = lost
	waiting := r.waiting
	r.waiting = map[uint64]chan reply{}
	r.mu.Unlock()
	for _, ch := range waiting {
		ch <- reply{err: lost}
	}
	r.nc.Close()
	linkMu.Lock()
	if link == r {
		link = nil // the next Call connects again
	}
	linkMu.Unlock()
}

func (r *routerConn) answer(line []byte) {
	var msg struct {
		ID     *uint64         `json:"id"`
		Result json.RawMessage `json:"result"`
		Error  *Error          `json:"error"`
	}
	if json.Unmarshal(line, &msg) != nil || msg.ID == nil {
		return // a notification (none without a subscription), or not ours
	}
	r.mu.Lock()
	ch, ok := r.waiting[*msg.ID]
	delete(r.waiting, *msg.ID)
	r.mu.Unlock()
	if !ok {
		return
	}
	if msg.Error != nil {
		ch <- reply{err: msg.Error}
		return
	}
	if msg.Result == nil {
		msg.Result = json.RawMessage("null")
	}
	ch <- reply{result: msg.Result}
}

// Ready tells the router the plugin is ready (sd_notify READY=1): with `ready = "notify"` in
// the manifest its calls wait until then. It does nothing where NOTIFY_SOCKET is not set.
func Ready() error { return notify("READY=1") }

// Status sets the status text `plugrpc status` shows (sd_notify STATUS=...); a no-op where
// NOTIFY_SOCKET is not set.
func Status(text string) error {
	return notify("STATUS=" + strings.ReplaceAll(text, "\n", " "))
}

// notify sends one sd_notify datagram; an address starting with '@' is in the abstract namespace.
func notify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	// Go's net package maps a leading '@' to the abstract namespace's NUL byte.
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("plugin: sd_notify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("plugin: sd_notify: %w", err)
	}
	return nil
}

package plugin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultMaxLine is the longest request line read (the router's default too); a longer one is
// answered with an error and its connection closed.
const DefaultMaxLine = 64 << 20

// messageTooLarge is the code plugrpc uses for a line over the bound.
const messageTooLarge = -32004

// logw is where the plugin logs (stderr: the router's log, tagged with the plugin's name).
var logw io.Writer = os.Stderr

func signalName(sig os.Signal) string {
	switch sig {
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGINT:
		return "SIGINT"
	}
	return sig.String()
}

func shutdownSignals() <-chan os.Signal {
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	return sig
}

// server owns the listener, the open connections and graceful shutdown.
type server struct {
	commands ContextCommands
	maxLine  int
	ctx      context.Context // cancelled at the second signal: every call's context derives from it
	cancel   context.CancelFunc

	mu      sync.Mutex
	closing bool
	conns   []*conn // in the order they were opened: the first carries events
	pending [][]byte
	dropped int
	wg      sync.WaitGroup // connection goroutines, each waiting for its own calls
	direct  directState    // direct connections: their figures, and no events on them (direct.go)
}

// active is the serving server, for Emit; nil before Serve (and in tests, the latest one).
var (
	activeMu sync.Mutex
	active   *server
)

func newServer(commands ContextCommands) *server {
	s := &server{commands: commands, maxLine: DefaultMaxLine}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// serve runs the server on ln until the first value on sig, then finishes: no new connection
// or request is read, the calls in flight are answered, connections close; a second value on
// sig cancels the calls' contexts. It returns the exit status, 0.
func serve(ln net.Listener, commands ContextCommands, sig <-chan os.Signal) int {
	return newServer(commands).run(ln, sig)
}

func (s *server) run(ln net.Listener, sig <-chan os.Signal) int {
	activeMu.Lock()
	if active != nil { // events emitted before Serve
		s.pending, s.dropped = active.pending, active.dropped
	}
	active = s
	activeMu.Unlock()
	go s.accept(ln)
	got := <-sig
	fmt.Fprintf(logw, "plugin: %s: finishing the calls in flight, then exiting\n", signalName(got))
	ln.Close()
	s.mu.Lock()
	s.closing = true
	conns := append([]*conn(nil), s.conns...)
	s.mu.Unlock()
	for _, c := range conns {
		c.nc.SetReadDeadline(time.Now()) // wakes the reader: what it already read is still served
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	for {
		select {
		case <-done:
			s.cancel()
			return 0
		case got = <-sig:
			fmt.Fprintf(logw, "plugin: %s again: cancelling the calls in flight\n", signalName(got))
			s.cancel()
		}
	}
}

func (s *server) accept(ln net.Listener) {
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors, say: wait a little and go on, as net/http does.
			if delay == 0 {
				delay = 5 * time.Millisecond
			} else if delay *= 2; delay > time.Second {
				delay = time.Second
			}
			fmt.Fprintf(logw, "plugin: accept: %v; retrying in %v\n", err, delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		c := newConn(s, nc)
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			nc.Close()
			continue
		}
		s.conns = append(s.conns, c)
		s.wg.Add(1)
		if len(s.conns) == 1 && len(s.pending) > 0 {
			// Events that waited for a connection leave first: no new one can pass them.
			early := s.pending
			s.pending = nil
			c.wmu.Lock()
			s.mu.Unlock()
			for _, line := range early {
				c.queue = append(c.queue, line)
				c.queued += len(line)
			}
			c.flushLocked()
			c.wmu.Unlock()
		} else {
			s.mu.Unlock()
		}
		go c.serve()
	}
}

// emit writes an event line on the oldest open connection that is not direct (the router keeps
// one open); before there is any, a bounded number wait for the first.
func (s *server) emit(line []byte) {
	s.direct.events.RLock()
	defer s.direct.events.RUnlock()
	s.mu.Lock()
	c := s.outlet()
	if c == nil {
		keep(s, line)
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	c.write(line)
}

const pendingLimit = 1000

func keep(s *server, line []byte) {
	if len(s.pending) >= pendingLimit {
		s.pending = s.pending[1:]
		s.dropped++
		if s.dropped == 1 {
			fmt.Fprintf(logw, "plugin: no connection from the router yet: dropping the oldest events "+
				"(more than %d waiting)\n", pendingLimit)
		}
	}
	s.pending = append(s.pending, line)
}

func (s *server) remove(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, other := range s.conns {
		if other == c {
			s.conns = append(s.conns[:i], s.conns[i+1:]...)
			return
		}
	}
}

// conn is one peer (usually the router): pipelined requests in, answers out as calls finish.
type conn struct {
	srv    *server
	nc     net.Conn
	ctx    context.Context // cancelled when the peer goes away
	cancel context.CancelFunc

	// Lines go out whole, in the order write was called. The first writer to find nobody
	// writing writes, and goes on writing what others queued meanwhile, all of it in one
	// writev, until nothing is left: one system call carries many answers when calls finish
	// together, and a lone answer goes out at once.
	wmu      sync.Mutex
	wdone    sync.Cond   // on wmu: a flush ended, or the queue was taken
	queue    net.Buffers // lines waiting for the writer
	queued   int         // their bytes
	spare    net.Buffers
	flushing bool
	busy     int32 // calls running (atomic)
	broken   bool  // a write failed, or the connection closed: nothing more is sent

	mu      sync.Mutex
	running map[string][]*running // calls in flight by id (compacted), for rpc.cancel
	direct  *direct               // set by rpc.direct, on the reader's goroutine (direct.go)
	calls   sync.WaitGroup
}

type running struct{ cancel context.CancelFunc }

func newConn(s *server, nc net.Conn) *conn {
	c := &conn{srv: s, nc: nc, running: map[string][]*running{}}
	c.ctx, c.cancel = context.WithCancel(s.ctx)
	c.wdone.L = &c.wmu
	return c
}

// maxQueued bounds the bytes queued behind a write in progress: past it, writers wait (as
// they would in a blocking write) for the peer to read.
const maxQueued = 4 << 20

// write sends one whole line; after a failed write (the peer is gone) nothing more is sent
// and the connection's calls are cancelled. The line must not change afterwards.
func (c *conn) write(line []byte) {
	c.writeParts(line)
}

// writeParts writes the parts of one line, together.
func (c *conn) writeParts(parts ...[]byte) {
	c.wmu.Lock()
	for c.flushing && c.queued >= maxQueued && !c.broken {
		c.wdone.Wait()
	}
	if c.broken {
		c.wmu.Unlock()
		return
	}
	for _, part := range parts {
		c.queue = append(c.queue, part)
		c.queued += len(part)
	}
	if !c.flushing {
		c.flushLocked()
	}
	c.wmu.Unlock()
}

// flushLocked writes the queue until it is empty; wmu is held, and released while writing.
func (c *conn) flushLocked() {
	c.flushing = true
	for len(c.queue) > 0 && !c.broken {
		if atomic.LoadInt32(&c.busy) > 0 {
			// Calls are running: let those about to answer queue their answers first, to go
			// out in the same write.
			c.wmu.Unlock()
			runtime.Gosched()
			c.wmu.Lock()
			if c.broken {
				break
			}
		}
		out := c.queue
		c.queue, c.spare = c.spare[:0], nil
		c.queued = 0
		c.wdone.Broadcast()
		c.wmu.Unlock()
		bufs := out
		_, err := bufs.WriteTo(c.nc) // writev; it consumes bufs, not out
		c.wmu.Lock()
		for i := range out {
			out[i] = nil
		}
		c.spare = out[:0]
		if err != nil {
			c.broken = true
			c.queue, c.queued = nil, 0
			c.cancel()
		}
	}
	c.flushing = false
	c.wdone.Broadcast()
}

// closeWriter waits for a write in progress to end, then lets nothing more be sent.
func (c *conn) closeWriter() {
	c.wmu.Lock()
	for c.flushing {
		c.wdone.Wait()
	}
	c.broken = true
	c.queue, c.queued = nil, 0
	c.wmu.Unlock()
}

func (c *conn) serve() {
	defer c.srv.wg.Done()
	r := bufio.NewReaderSize(c.nc, 64<<10)
	for {
		line, owned, err := readLine(r, c.srv.maxLine)
		if err == errTooLong {
			c.write(errorLine(nullID, &Error{Code: messageTooLarge, Message: "Message too large",
				Data: fmt.Sprintf("a line exceeded the maximum of %d bytes", c.srv.maxLine)}))
			break
		}
		if len(line) > 0 {
			c.handle(line, owned)
		}
		if err != nil {
			break
		}
	}
	c.srv.mu.Lock()
	graceful := c.srv.closing
	c.srv.mu.Unlock()
	if !graceful {
		// The peer closed (EOF looks the same as a peer gone): nobody is left to read the answers.
		c.cancel()
	}
	c.calls.Wait()
	c.closedDirect()
	c.srv.remove(c)
	c.closeWriter()
	c.nc.Close()
	c.cancel()
}

var errTooLong = errors.New("line too long")

// readLine reads one line without its "\n", growing up to max bytes; a longer one is
// errTooLong. At the end of the stream the last, unterminated, line comes with the error.
// Unless owned, the line shares the reader's buffer: it is valid until the next read. A line
// longer than the buffer is gathered in pieces, then copied once into memory of its own.
func readLine(r *bufio.Reader, max int) (line []byte, owned bool, err error) {
	var pieces []*[]byte
	total := 0
	for {
		frag, err := r.ReadSlice('\n')
		n := len(frag)
		if err == nil {
			n-- // the newline is not part of the line
		}
		if total+n > max {
			releasePieces(pieces)
			return nil, false, errTooLong
		}
		if err == bufio.ErrBufferFull {
			p := piecePool.Get().(*[]byte)
			*p = append(*p, frag...)
			pieces = append(pieces, p)
			total += n
			continue
		}
		if pieces == nil {
			if err == io.EOF && n == 0 {
				return nil, false, err
			}
			return frag[:n], false, err
		}
		line = make([]byte, 0, total+n)
		for _, p := range pieces {
			line = append(line, *p...)
		}
		releasePieces(pieces)
		return append(line, frag[:n]...), true, err
	}
}

func releasePieces(pieces []*[]byte) {
	for _, p := range pieces {
		*p = (*p)[:0]
		piecePool.Put(p)
	}
}

// piecePool holds the pieces of long lines while they are read.
var piecePool = sync.Pool{New: func() interface{} { b := make([]byte, 0, 64<<10); return &b }}

// handle answers one line: a request, a notification or a batch. Unless owned, the line is
// the reader's and is only valid until handle returns.
func (c *conn) handle(line []byte, owned bool) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return
	}
	if line[0] == '{' {
		// The common case, one request: checked and taken apart in one pass.
		if !owned { // the request (its id and params) keeps the line
			line = append([]byte(nil), line...)
		}
		if m, ok := scanRequest(line); ok {
			c.handleRequest(checkRequest(&m))
			return
		}
	}
	if !json.Valid(line) {
		c.write(errorLine(nullID, &Error{Code: ParseError, Message: "Parse error", Data: "the line is not valid JSON"}))
		return
	}
	if line[0] != '[' {
		c.handleRequest(parseRequest(line))
		return
	}
	var items []json.RawMessage
	if err := json.Unmarshal(line, &items); err != nil || len(items) == 0 {
		c.write(errorLine(nullID, &Error{Code: InvalidRequest, Message: "Invalid Request", Data: "an empty batch"}))
		return
	}
	answers := make([][]byte, len(items))
	var batch sync.WaitGroup
	for i, item := range items {
		req, bad := parseRequest(item)
		if bad != nil {
			answers[i] = bad
			continue
		}
		if answer, inline := c.builtin(req); inline {
			answers[i] = answer
			continue
		}
		d := c.direct
		if d != nil {
			if refusal, ok := c.admitItem(req); !ok {
				answers[i] = refusal
				continue
			}
		}
		batch.Add(1)
		go func(i int, req *request) {
			defer batch.Done()
			answer := c.run(req)
			if d != nil {
				d.finished(answer)
			}
			if answer != nil {
				answers[i] = bytes.Join(answer, nil)
			}
		}(i, req)
	}
	c.calls.Add(1)
	go func() {
		defer c.calls.Done()
		batch.Wait()
		var out bytes.Buffer
		for _, a := range answers {
			if a == nil {
				continue
			}
			if out.Len() == 0 {
				out.WriteByte('[')
			} else {
				out.WriteByte(',')
			}
			out.Write(a[:len(a)-1])
		}
		if out.Len() > 0 { // a batch of notifications only gets nothing back
			out.WriteString("]\n")
			c.write(out.Bytes())
		}
	}()
}

// handleRequest answers a bad request at once, and runs a good one in its own goroutine
// (rpc.cancel and rpc.ping on this one).
func (c *conn) handleRequest(req *request, bad []byte) {
	if bad != nil {
		c.write(bad)
		return
	}
	if answer, inline := c.builtin(req); inline {
		if answer != nil {
			c.write(answer)
		}
		return
	}
	if c.direct != nil && !c.admit(req) {
		return
	}
	c.calls.Add(1)
	atomic.AddInt32(&c.busy, 1)
	go c.answer(req, c.direct)
}

// answer runs a call and writes its answer; d is the connection's direct terms it was admitted
// under (nil: none).
func (c *conn) answer(req *request, d *direct) {
	defer c.calls.Done()
	answer := c.run(req)
	atomic.AddInt32(&c.busy, -1)
	if d != nil {
		d.finished(answer)
	}
	if answer != nil {
		c.writeParts(answer...)
	}
}

// builtin answers rpc.cancel, rpc.direct and rpc.ping (unless the plugin has its own) at once,
// on the reader's goroutine, so that a cancel is seen in order with the requests around it.
func (c *conn) builtin(req *request) (answer []byte, inline bool) {
	switch req.method {
	case "rpc.cancel":
		var p struct {
			ID json.RawMessage `json:"id"`
		}
		if err := json.Unmarshal(req.params, &p); err != nil || !validID(p.ID) {
			if req.id == nil {
				return nil, true
			}
			return errorLine(req.id, &Error{Code: InvalidParams, Message: "Invalid params",
				Data: "rpc.cancel takes {\"id\": <the id of the request to give up on>}"}), true
		}
		found := c.cancelCall(p.ID)
		if req.id == nil {
			return nil, true
		}
		return resultLine(req.id, found), true
	case "rpc.ping":
		if _, own := c.srv.commands[req.method]; own {
			return nil, false
		}
		if req.id == nil {
			return nil, true
		}
		return resultLine(req.id, c.srv.direct.pingResult()), true
	case "rpc.direct":
		return c.rpcDirect(req), true
	}
	return nil, false
}

func idKey(id json.RawMessage) string {
	if len(id) > 0 && (id[0] == '"' || id[0] == '-' || id[0] >= '0' && id[0] <= '9') && !bytes.ContainsAny(id, " \t\r\n") {
		return string(id) // a scalar without whitespace: compact already
	}
	var b bytes.Buffer
	if json.Compact(&b, id) != nil {
		return string(id)
	}
	return b.String()
}

func (c *conn) cancelCall(id json.RawMessage) bool {
	c.mu.Lock()
	calls := c.running[idKey(id)]
	c.mu.Unlock()
	for _, r := range calls {
		r.cancel()
	}
	return len(calls) > 0
}

// callKey is the context key of the call a command serves (for Progress).
type callKey struct{}

type callInfo struct {
	conn *conn
	id   json.RawMessage // nil for a notification
}

// callState is what run keeps of a call, in one allocation.
type callState struct {
	running
	info callInfo
}

// run calls the command and returns its answer line, in parts (nil for a notification).
func (c *conn) run(req *request) (answer [][]byte) {
	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	st := &callState{running: running{cancel: cancel}, info: callInfo{conn: c, id: req.id}}
	var key string
	if req.id != nil {
		key = idKey(req.id)
		r := &st.running
		c.mu.Lock()
		c.running[key] = append(c.running[key], r)
		c.mu.Unlock()
		defer func() {
			c.mu.Lock()
			list := c.running[key]
			for i, other := range list {
				if other == r {
					list = append(list[:i], list[i+1:]...)
					break
				}
			}
			if len(list) == 0 {
				delete(c.running, key)
			} else {
				c.running[key] = list
			}
			c.mu.Unlock()
		}()
	}
	id := req.id
	if id == nil {
		id = nullID
	}
	defer func() {
		if p := recover(); p != nil {
			fmt.Fprintf(logw, "plugin: command %q panicked: %v\n%s", req.method, p, debug.Stack())
			answer = [][]byte{errorLine(id, &Error{Code: InternalError, Message: "Internal error",
				Data: fmt.Sprintf("paniced with error: %v", p)})}
		}
		if req.id == nil {
			answer = nil
		}
	}()
	fn, ok := c.srv.commands[req.method]
	if !ok {
		return [][]byte{errorLine(id, &Error{Code: MethodNotFound, Message: "Method not found", Data: req.method})}
	}
	ctx = context.WithValue(ctx, callKey{}, &st.info)
	result, err := fn(ctx, req.params)
	if err != nil {
		var rpcErr *Error
		if errors.As(err, &rpcErr) {
			return [][]byte{errorLine(id, rpcErr)}
		}
		return [][]byte{errorLine(id, &Error{Code: CommandFailed, Message: err.Error()})}
	}
	return resultParts(id, result, req.params)
}

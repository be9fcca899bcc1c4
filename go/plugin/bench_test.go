package plugin

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// benchConn runs a server with an echo command on a real unix socket and returns one
// connection to it, as the router holds.
func benchConn(b *testing.B) net.Conn {
	b.Helper()
	dir, err := os.MkdirTemp("", "gpb")
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(dir, "b.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	sig, done := make(chan os.Signal, 1), make(chan int, 1)
	s := newServer(ContextCommands{"echo": func(_ context.Context, args json.RawMessage) (interface{}, error) { return args, nil }})
	go func() { done <- s.run(ln, sig) }()
	nc, err := net.Dial("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		nc.Close()
		sig <- syscall.SIGTERM
		select {
		case <-done:
		case <-time.After(wait):
			b.Error("the server did not stop")
		}
		os.RemoveAll(dir)
	})
	return nc
}

// benchRequest is the request the router forwards for the bench's echo of size bytes of params.
func benchRequest(id int, size int) []byte {
	data := strings.Repeat("x", size-len(`{"data":""}`))
	return []byte(`{"jsonrpc":"2.0","method":"echo","params":{"data":"` + data + `"},"id":` + strconv.Itoa(id) + "}\n")
}

// pipelined drives b.N calls with inFlight requests written back to back on one connection
// (as the router pipelines its callers' calls), reading the answers as they come.
func pipelined(b *testing.B, inFlight, size int) {
	nc := benchConn(b)
	tokens := make(chan struct{}, inFlight)
	for i := 0; i < inFlight; i++ {
		tokens <- struct{}{}
	}
	reqs := make([][]byte, inFlight)
	for i := range reqs {
		reqs[i] = benchRequest(i, size)
	}
	b.SetBytes(int64(size) * 2)
	b.ResetTimer()
	writeErr := make(chan error, 1)
	go func() {
		w := bufio.NewWriterSize(nc, 64<<10)
		for i := 0; i < b.N; i++ {
			select {
			case <-tokens:
			default: // the window is full: send what is queued, then wait for an answer
				if err := w.Flush(); err != nil {
					writeErr <- err
					return
				}
				<-tokens
			}
			if _, err := w.Write(reqs[i%inFlight]); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- w.Flush()
	}()
	r := bufio.NewReaderSize(nc, 2*size+64<<10) // an answer fits: the client costs little
	nc.SetReadDeadline(time.Now().Add(time.Minute))
	want := `{"jsonrpc":"2.0","result":{"data":"`
	for i := 0; i < b.N; i++ {
		line, err := r.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			long := append([]byte(nil), line...)
			for err == bufio.ErrBufferFull {
				line, err = r.ReadSlice('\n')
				long = append(long, line...)
			}
			line = long
		}
		if err != nil {
			b.Fatalf("answer %d: %v", i, err)
		}
		if !strings.HasPrefix(string(line[:len(want)]), want) {
			b.Fatalf("answer %d: %.100s", i, line)
		}
		tokens <- struct{}{}
	}
	b.StopTimer()
	if err := <-writeErr; err != nil {
		b.Fatal(err)
	}
}

// BenchmarkPipelined64 is the router's load: 64 callers' calls in flight on one connection.
func BenchmarkPipelined64(b *testing.B) {
	for _, size := range []int{100, 10 << 10} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) { pipelined(b, 64, size) })
	}
}

// BenchmarkSequential is one caller: a call, its answer, the next call (p50 at one caller).
func BenchmarkSequential(b *testing.B) {
	for _, size := range []int{100, 10 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) { pipelined(b, 1, size) })
	}
}

package plugin

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// The scanner is only right if it never disagrees with encoding/json: whatever it accepts,
// json.Valid accepts; whatever compactJSON passes, json.Marshal copies unchanged; whatever
// scanRequest takes apart, parseRequest takes apart the same way.
func checkAgainstEncodingJSON(t *testing.T, text []byte) {
	t.Helper()
	valid := json.Valid(text)
	s := scanner{b: text}
	if s.value(0) && s.i == len(text) && !valid {
		t.Fatalf("scanner accepts %q, json.Valid does not", text)
	}
	if compactJSON(text) {
		out, err := json.Marshal(json.RawMessage(text))
		if err != nil || !bytes.Equal(out, text) {
			t.Fatalf("compactJSON(%q) but json.Marshal makes %q, %v", text, out, err)
		}
	}
	if m, ok := scanRequest(text); ok {
		if !valid {
			t.Fatalf("scanRequest accepts %q, json.Valid does not", text)
		}
		fast, fastBad := checkRequest(&m)
		slow, slowBad := parseRequest(text)
		if !reflect.DeepEqual(fast, slow) || !bytes.Equal(fastBad, slowBad) {
			t.Fatalf("%q: scanned %+v %s, parsed %+v %s", text, fast, fastBad, slow, slowBad)
		}
	}
}

var scanCorpus = []string{
	`{"jsonrpc":"2.0","method":"echo","params":{"data":"xx"},"id":1}`,
	` { "id" : -1e3 , "method" : "echo", "jsonrpc" : "2.0", "params" : [ 1 ] } `,
	`{"jsonrpc":"2.0","method":"echo","id":1,"id":"two","params":null}`,
	`{"jsonrpc":"2.0","method":"ech\u006f","id":1}`,
	`{"jsonrpc":"2.0","\u006dethod":"x","method":"echo","id":1}`,
	`{"jsonrpc":"2.0","method":"é","id":1}`,
	"{\"jsonrpc\":\"2.0\",\"method\":\"\xff\",\"id\":1}",
	`{"jsonrpc":"2.0","method":5,"id":[1]}`,
	`{"jsonrpc":"2.0","method":"m","id":true}`,
	`{"jsonrpc":"2.0","method":"m","id":{"a":1}}`,
	`{"jsonrpc":"2.0 ","method":"m"}`,
	`{"jsonrpc":"2.0","method":"m","params":"<&>"}`,
	`{}`, `{ }`, `[]`, `[ ]`, `null`, `{"a":}`, `{"a" 1}`, `{"a":1,}`, `[1,]`, `{,}`, `{"a":1}}`, `{"a":1} x`,
	`"\u2028"`, "\"\u2028\"", "\"\u2029\"", "\"\xe2\"", `"\ud800"`, `"\u00e9"`, `"\U0041"`, `"\x"`, `"\u12"`, `"\u12G4"`,
	`0`, `-0`, `01`, `-`, `1.`, `.5`, `1e`, `1e+`, `1E-2`, `2.50`, `-1.5e+300`, `1.0e0`, `00`, `-01`, `+1`,
	`true`, `false`, `null`, `tru`, `nul`, `truex`, `[true,false,null]`, `"\t"`, "\"\t\"", "\"\x7f\"", "\"\x00\"",
	`[[[[]]]]`, `{"a":{"b":{"c":[1,{"d":"e"}]}}}`, `[1 ,2]`, "[1,\n2]", "\r\n[1]\t", `"a\"b\\c\/d\b\f\n\r\t"`,
	strings.Repeat("[", maxScanDepth+1) + strings.Repeat("]", maxScanDepth+1),
	strings.Repeat("[", maxScanDepth) + strings.Repeat("]", maxScanDepth),
}

// randomJSON makes a JSON value with the oddities the scanner must get right.
func randomJSON(r *rand.Rand, depth int) string {
	ws := func() string { return []string{"", "", "", " ", "\n", "\t ", "\r"}[r.Intn(7)] }
	switch k := r.Intn(10); {
	case k < 2 && depth < 5:
		var parts []string
		for i := r.Intn(4); i > 0; i-- {
			parts = append(parts, ws()+randomJSON(r, depth+1)+ws())
		}
		return "[" + strings.Join(parts, ",") + "]"
	case k < 4 && depth < 5:
		var parts []string
		for i := r.Intn(4); i > 0; i-- {
			key := []string{`"id"`, `"method"`, `"params"`, `"jsonrpc"`, `"i\u0064"`, `"x"`, `""`}[r.Intn(7)]
			parts = append(parts, ws()+key+ws()+":"+ws()+randomJSON(r, depth+1)+ws())
		}
		return "{" + strings.Join(parts, ",") + "}"
	case k < 6:
		pieces := []string{"a", " ", "<", ">", "&", "é", "\u2028", "\u2029", `\"`, `\\`, `\/`, `\n`, `\u0041`,
			`\ud83d\ude00`, `\ud800`, "\xff", "\xe2\x80", "\x7f", "2.0", "echo"}
		var b strings.Builder
		b.WriteByte('"')
		for i := r.Intn(5) + r.Intn(2)*r.Intn(30); i > 0; i-- {
			b.WriteString(pieces[r.Intn(len(pieces))])
		}
		b.WriteByte('"')
		return b.String()
	case k < 8:
		return []string{"0", "-0", "12", "-3.25", "1e10", "1E-2", "2.50", "-1.5e+3", "0.0"}[r.Intn(9)]
	default:
		return []string{"true", "false", "null", `"2.0"`, `"echo"`}[r.Intn(5)]
	}
}

func mutate(r *rand.Rand, text []byte) []byte {
	out := append([]byte(nil), text...)
	for n := r.Intn(3) + 1; n > 0 && len(out) > 0; n-- {
		i := r.Intn(len(out))
		switch r.Intn(4) {
		case 0:
			const bytesToPut = "{}[]\",:\\ \x00\x1fa0-.eE+tn<\xe2\xff"
			out[i] = bytesToPut[r.Intn(len(bytesToPut))]
		case 1:
			out = append(out[:i], out[i+1:]...)
		case 2:
			out = out[:i]
		default:
			const bytesToAdd = "{}[]\",:\\ 0"
			out = append(out[:i], append([]byte{bytesToAdd[r.Intn(len(bytesToAdd))]}, out[i:]...)...)
		}
	}
	return out
}

func TestScannerAgreesWithEncodingJSON(t *testing.T) {
	for _, text := range scanCorpus {
		checkAgainstEncodingJSON(t, []byte(text))
	}
	// Strings scanned eight bytes at a time: every byte that matters, at every offset.
	for c := 0; c < 256; c++ {
		for at := 0; at < 20; at++ {
			for _, n := range []int{at + 1, at + 9, 24} {
				text := []byte(`"` + strings.Repeat("a", n) + `"`)
				text[1+at] = byte(c)
				checkAgainstEncodingJSON(t, text)
				checkAgainstEncodingJSON(t, text[:len(text)-1])
			}
		}
	}
	r := rand.New(rand.NewSource(1))
	accepted := 0
	for i := 0; i < 30000; i++ {
		var text string
		if r.Intn(2) == 0 {
			text = `{"jsonrpc":"2.0","method":` + randomJSON(r, 1) + `,"params":` + randomJSON(r, 1) + `,"id":` + randomJSON(r, 4) + "}"
		} else {
			text = randomJSON(r, 0)
		}
		checkAgainstEncodingJSON(t, []byte(text))
		if _, ok := scanRequest([]byte(text)); ok {
			accepted++
		}
		for j := 0; j < 3; j++ {
			checkAgainstEncodingJSON(t, mutate(r, []byte(text)))
		}
	}
	if accepted < 5000 {
		t.Fatalf("the fast path took only %d of the requests", accepted)
	}
}

func FuzzScanner(f *testing.F) {
	for _, text := range scanCorpus {
		f.Add([]byte(text))
	}
	f.Fuzz(func(t *testing.T, text []byte) { checkAgainstEncodingJSON(t, text) })
}

// The fast path's answers are encoding/json's, byte for byte.
func TestResultLineIsEncodingJSONs(t *testing.T) {
	id := json.RawMessage(`7`)
	for _, result := range []interface{}{
		json.RawMessage(`{"data":"xxx"}`), json.RawMessage(`[ 1 ]`), json.RawMessage(`"<&>"`), json.RawMessage("\"\u2028\""),
		json.RawMessage(`{bad`), json.RawMessage(``), json.RawMessage(nil), json.RawMessage(` 1`), "text", nil,
	} {
		want := []byte(nil)
		if text, err := json.Marshal(result); err == nil {
			want = []byte(`{"jsonrpc":"2.0","result":` + string(text) + `,"id":7}` + "\n")
		} else {
			want = errorLine(id, &Error{Code: InternalError, Message: "Internal error",
				Data: "the result cannot be encoded as JSON: " + err.Error()})
		}
		if got := resultLine(id, result); !bytes.Equal(got, want) {
			t.Errorf("%#v: %s, want %s", result, got, want)
		}
	}
}

func TestLongEchoIsWrittenWithoutACopy(t *testing.T) {
	args := json.RawMessage(`{"data":"` + strings.Repeat("x", 40<<10) + `"}`)
	parts := resultParts(json.RawMessage(`"a"`), args, args)
	if len(parts) != 3 || &parts[1][0] != &args[0] {
		t.Fatalf("%d parts", len(parts))
	}
	if got, want := bytes.Join(parts, nil), resultLine(json.RawMessage(`"a"`), append(json.RawMessage(nil), args...)); !bytes.Equal(got, want) {
		t.Fatalf("%.60s", got)
	}
	if other := resultParts(json.RawMessage(`1`), append(json.RawMessage(nil), args...), args); len(other) != 1 {
		t.Fatal("a result that is not the call's args was not copied")
	}
}

func TestReadLineLongerThanTheBuffer(t *testing.T) {
	long := strings.Repeat("y", 100)
	input := "short\n" + long + "\n" + strings.Repeat("z", 16) + "\n\nlast"
	r := bufio.NewReaderSize(strings.NewReader(input), 16)
	for _, want := range []struct {
		line  string
		owned bool
		err   error
	}{{"short", false, nil}, {long, true, nil}, {strings.Repeat("z", 16), true, nil}, {"", false, nil}, {"last", false, io.EOF}, {"", false, io.EOF}} {
		line, owned, err := readLine(r, 100)
		if string(line) != want.line || owned != want.owned || err != want.err {
			t.Fatalf("got %q %v %v, want %q %v %v", line, owned, err, want.line, want.owned, want.err)
		}
	}
	r = bufio.NewReaderSize(strings.NewReader(long+"x\n"), 16)
	if _, _, err := readLine(r, 100); err != errTooLong {
		t.Fatalf("101 bytes: %v", err)
	}
}

// Lines written at once from many goroutines arrive whole, each goroutine's in its order,
// also when the peer reads slowly and writes queue up behind one in progress.
func TestWritesFromManyGoroutinesArriveWhole(t *testing.T) {
	a, b := net.Pipe() // unbuffered: every write waits for the reader
	s := newServer(nil)
	c := newConn(s, a)
	const writers, lines = 8, 200
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < lines; i++ {
				c.write([]byte(fmt.Sprintf("%d %d %s\n", w, i, strings.Repeat("p", (w*lines+i)%3000))))
			}
		}(w)
	}
	go func() { wg.Wait(); c.closeWriter(); a.Close() }()
	next := make([]int, writers)
	r := bufio.NewReader(b)
	for n := 0; n < writers*lines; n++ {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("after %d lines: %v", n, err)
		}
		var w, i int
		var pad string
		fmt.Sscanf(line, "%d %d %s", &w, &i, &pad)
		if i != next[w] || len(line) != len(fmt.Sprintf("%d %d %s\n", w, i, strings.Repeat("p", (w*lines+i)%3000))) {
			t.Fatalf("line %d: %.40q, want writer %d's line %d", n, line, w, next[w])
		}
		next[w]++
	}
	b.Close()
	c.write([]byte("after close\n")) // dropped, not blocking
}

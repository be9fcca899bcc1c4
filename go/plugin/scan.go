package plugin

import "encoding/binary"

// A JSON scanner for the hot path: it checks a request line and finds its members in one pass,
// without allocating, and tells whether a json.RawMessage result is already what json.Marshal
// would make of it. It is deliberately conservative: it never accepts what json.Valid rejects,
// and whenever it is unsure (escaped member names, very deep nesting, anything malformed) it
// says so and the caller takes the encoding/json path, which decides (and words the error).

// byteClass: what a byte inside a string is to the scanner.
const (
	plain   = iota // copied as is
	special        // '"', '\\' or a control character: the string loop stops there
	rewrite        // '<', '>', '&', or 0xE2 (the lead byte of U+2028 and U+2029): json.Marshal escapes them
)

var stringClass = func() (t [256]uint8) {
	for c := 0; c < 0x20; c++ {
		t[c] = special
	}
	t['"'], t['\\'] = special, special
	t['<'], t['>'], t['&'], t[0xE2] = rewrite, rewrite, rewrite, rewrite
	return t
}()

// maxScanDepth bounds nesting on the fast path (encoding/json allows 10000; deeper input than
// this goes the slow way).
const maxScanDepth = 1000

type scanner struct {
	b []byte
	i int
	// dirty: json.Marshal would not copy the scanned text as is: it has whitespace between
	// tokens, or a character it escapes.
	dirty bool
	// escaped: the last string scanned had a backslash escape.
	escaped bool
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.dirty = true
			s.i++
		default:
			return
		}
	}
}

// value scans one JSON value starting at s.i (no leading whitespace).
func (s *scanner) value(depth int) bool {
	if s.i >= len(s.b) {
		return false
	}
	switch c := s.b[s.i]; {
	case c == '"':
		return s.str()
	case c == '{':
		if depth >= maxScanDepth {
			return false
		}
		s.i++
		s.ws()
		if s.i < len(s.b) && s.b[s.i] == '}' {
			s.i++
			return true
		}
		for {
			if s.i >= len(s.b) || s.b[s.i] != '"' || !s.str() {
				return false
			}
			s.ws()
			if s.i >= len(s.b) || s.b[s.i] != ':' {
				return false
			}
			s.i++
			s.ws()
			if !s.value(depth + 1) {
				return false
			}
			if more, ok := s.separator('}'); !more {
				return ok
			}
		}
	case c == '[':
		if depth >= maxScanDepth {
			return false
		}
		s.i++
		s.ws()
		if s.i < len(s.b) && s.b[s.i] == ']' {
			s.i++
			return true
		}
		for {
			if !s.value(depth + 1) {
				return false
			}
			if more, ok := s.separator(']'); !more {
				return ok
			}
		}
	case c == '-' || c >= '0' && c <= '9':
		return s.number()
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	}
	return false
}

// separator reads what follows a member or an element: ',' (more follows) or `end` (the container is
// complete, ok); anything else is malformed.
func (s *scanner) separator(end byte) (more, ok bool) {
	s.ws()
	if s.i >= len(s.b) {
		return false, false
	}
	switch s.b[s.i] {
	case ',':
		s.i++
		s.ws()
		return true, true
	case end:
		s.i++
		return false, true
	}
	return false, false
}

func (s *scanner) literal(word string) bool {
	if len(s.b)-s.i < len(word) || string(s.b[s.i:s.i+len(word)]) != word {
		return false
	}
	s.i += len(word)
	return true
}

// Eight bytes at a time: whether any byte of x is zero, is less than n (n <= 128), is c.
const ones, highs = 0x0101010101010101, 0x8080808080808080

func hasZero(x uint64) uint64         { return (x - ones) &^ x & highs }
func hasLess(x uint64, n byte) uint64 { return (x - ones*uint64(n)) &^ x & highs }
func hasByte(x uint64, c byte) uint64 { return hasZero(x ^ ones*uint64(c)) }

// str scans a string starting at its opening quote.
func (s *scanner) str() bool {
	s.escaped = false
	b := s.b
	i := s.i + 1
	for {
		// Long runs of plain text eight bytes at a time, then byte by byte.
		for ; i+8 <= len(b); i += 8 {
			x := binary.LittleEndian.Uint64(b[i:])
			if hasLess(x, 0x20)|hasByte(x, '"')|hasByte(x, '\\') != 0 {
				break
			}
			if !s.dirty && hasByte(x, '<')|hasByte(x, '>')|hasByte(x, '&')|hasByte(x, 0xE2) != 0 {
				s.dirty = true
			}
		}
		for i < len(b) && stringClass[b[i]] != special {
			if stringClass[b[i]] == rewrite {
				s.dirty = true
			}
			i++
		}
		if i >= len(b) {
			return false
		}
		switch b[i] {
		case '"':
			s.i = i + 1
			return true
		case '\\':
			s.escaped = true
			if i+1 >= len(b) {
				return false
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) {
					return false
				}
				for _, h := range b[i+2 : i+6] {
					if !(h >= '0' && h <= '9' || h >= 'a' && h <= 'f' || h >= 'A' && h <= 'F') {
						return false
					}
				}
				i += 6
			default:
				return false
			}
		default: // a control character
			return false
		}
	}
}

// number scans -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *scanner) number() bool {
	b, i := s.b, s.i
	if b[i] == '-' {
		i++
	}
	digits := func() bool {
		start := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		return i > start
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case !digits():
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if !digits() {
			return false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if !digits() {
			return false
		}
	}
	s.i = i
	return true
}

// compactJSON says whether raw is valid JSON that json.Marshal(json.RawMessage(raw)) would
// copy unchanged: no whitespace between tokens, no character it escapes. False means "not
// known": let json.Marshal decide.
func compactJSON(raw []byte) bool {
	s := scanner{b: raw}
	return s.value(0) && s.i == len(raw) && !s.dirty
}

// members are a request object's members, raw as sent (slices of the line).
type members struct {
	id, jsonrpc, method, params             []byte
	hasID, hasJSONRPC, hasMethod, hasParams bool
}

// scanRequest checks that line is one JSON object and finds the members a request has, as
// json.Unmarshal into a map would (the last of a duplicated name wins). ok false: not known,
// take the encoding/json path.
func scanRequest(line []byte) (m members, ok bool) {
	s := scanner{b: line}
	s.ws()
	if s.i >= len(line) || line[s.i] != '{' {
		return m, false
	}
	s.i++
	s.ws()
	if s.i < len(line) && line[s.i] == '}' {
		s.i++
	} else {
		for {
			if s.i >= len(line) || line[s.i] != '"' {
				return m, false
			}
			start := s.i
			if !s.str() || s.escaped {
				return m, false
			}
			name := line[start+1 : s.i-1]
			s.ws()
			if s.i >= len(line) || line[s.i] != ':' {
				return m, false
			}
			s.i++
			s.ws()
			start = s.i
			if !s.value(1) {
				return m, false
			}
			v := line[start:s.i:s.i]
			switch string(name) {
			case "id":
				m.id, m.hasID = v, true
			case "jsonrpc":
				m.jsonrpc, m.hasJSONRPC = v, true
			case "method":
				m.method, m.hasMethod = v, true
			case "params":
				m.params, m.hasParams = v, true
			}
			s.ws()
			if s.i >= len(line) {
				return m, false
			}
			if line[s.i] == '}' {
				s.i++
				break
			}
			if line[s.i] != ',' {
				return m, false
			}
			s.i++
			s.ws()
		}
	}
	s.ws()
	return m, s.i == len(line)
}

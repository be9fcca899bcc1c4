package plugin

import (
	"bytes"
	"encoding/json"
	"strconv"
)

// JSON-RPC 2.0 error codes, and the one a plain command error gets.
const (
	ParseError     = -32700
	InvalidRequest = -32600
	MethodNotFound = -32601
	InvalidParams  = -32602
	InternalError  = -32603
	// CommandFailed is the code of an error a command returns that is not an *Error: the code
	// plugrpc gives a core0 plugin's failure when it runs one per call, so callers see the same
	// error from both.
	CommandFailed = -32000
)

// Error is a JSON-RPC error. A command returns one to choose its code (and data); Call returns
// one when the callee answered with an error.
type Error struct {
	Code    int         `json:"code"`
	Message string      `json:"message"`
	Data    interface{} `json:"data,omitempty"`
}

// Error is the message alone, as core0 printed a command's error when run by hand.
func (e *Error) Error() string {
	if e.Message == "" {
		return "JSON-RPC error " + strconv.Itoa(e.Code)
	}
	return e.Message
}

var (
	nullID    = json.RawMessage("null")
	emptyArgs = json.RawMessage("{}")
	jsonrpc20 = []byte(`"2.0"`)
)

// request is one parsed JSON-RPC request: its id raw, exactly as sent (nil: a notification).
type request struct {
	id     json.RawMessage
	method string
	params json.RawMessage
}

// parseRequest checks one request object; on failure it returns the error response to send
// (always sent: an invalid request is answered even without an id, with the id null).
func parseRequest(raw []byte) (*request, []byte) {
	var all map[string]json.RawMessage
	if err := json.Unmarshal(raw, &all); err != nil || all == nil {
		return nil, errorLine(nullID, &Error{Code: InvalidRequest, Message: "Invalid Request",
			Data: "a request is a JSON object"})
	}
	var m members
	m.id, m.hasID = all["id"]
	m.jsonrpc, m.hasJSONRPC = all["jsonrpc"]
	m.method, m.hasMethod = all["method"]
	m.params, m.hasParams = all["params"]
	return checkRequest(&m)
}

// checkRequest makes a request of an object's members, or the error response to send.
func checkRequest(m *members) (*request, []byte) {
	req := &request{}
	if m.hasID {
		if !validID(m.id) {
			return nil, errorLine(nullID, &Error{Code: InvalidRequest, Message: "Invalid Request",
				Data: "id must be a string, a number or null"})
		}
		req.id = m.id
	}
	answerID := req.id
	if answerID == nil {
		answerID = nullID
	}
	if !m.hasJSONRPC || !bytes.Equal(m.jsonrpc, jsonrpc20) {
		return nil, errorLine(answerID, &Error{Code: InvalidRequest, Message: "Invalid Request",
			Data: `jsonrpc must be "2.0"`})
	}
	if method, ok := plainString(m.method); ok {
		req.method = method
	} else if !m.hasMethod || len(m.method) == 0 || m.method[0] != '"' || json.Unmarshal(m.method, &req.method) != nil {
		return nil, errorLine(answerID, &Error{Code: InvalidRequest, Message: "Invalid Request",
			Data: "method must be a string"})
	}
	// Params go to the command untouched, as core0 passed its args JSON whatever it held.
	if m.hasParams && !bytes.Equal(m.params, nullID) {
		req.params = m.params
	} else {
		req.params = emptyArgs // core0 always passed the args JSON, {} when there were none
	}
	return req, nil
}

// plainString is the text of a JSON string (raw, known valid) without escapes and in ASCII,
// which decoding would leave as it is.
func plainString(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return "", false
	}
	text := raw[1 : len(raw)-1]
	for _, c := range text {
		if c == '\\' || c == '"' || c < 0x20 || c >= 0x80 {
			return "", false
		}
	}
	return string(text), true
}

// validID: a string, a number or null, as JSON-RPC 2.0 allows (never an object, array or bool).
func validID(id json.RawMessage) bool {
	if len(id) == 0 {
		return false
	}
	switch c := id[0]; {
	case c == '"', c == '-', c >= '0' && c <= '9':
		return true
	default:
		return bytes.Equal(id, nullID)
	}
}

// resultLine is a response line, or an internal error's when the result cannot be encoded.
func resultLine(id json.RawMessage, result interface{}) []byte {
	return bytes.Join(resultParts(id, result, nil), nil)
}

// resultParts is resultLine in pieces to write one after the other: a long result that is
// the call's own params (args), as an echo or a pass-through returns them, is not copied.
func resultParts(id json.RawMessage, result interface{}, args []byte) [][]byte {
	var text []byte
	if raw, ok := result.(json.RawMessage); ok && compactJSON(raw) {
		text = raw // what json.Marshal would make of it, without its copies
	} else {
		var err error
		if text, err = json.Marshal(result); err != nil {
			return [][]byte{errorLine(id, &Error{Code: InternalError, Message: "Internal error",
				Data: "the result cannot be encoded as JSON: " + err.Error()})}
		}
	}
	const head, tail = `{"jsonrpc":"2.0","result":`, `,"id":`
	if len(text) >= 32<<10 && len(text) == len(args) && &text[0] == &args[0] {
		end := make([]byte, 0, len(tail)+len(id)+2)
		end = append(append(append(end, tail...), id...), "}\n"...)
		return [][]byte{resultHead, text, end}
	}
	b := make([]byte, 0, len(head)+len(text)+len(tail)+len(id)+2)
	b = append(b, head...)
	b = append(b, text...)
	b = append(b, tail...)
	b = append(b, id...)
	return [][]byte{append(b, "}\n"...)}
}

var resultHead = []byte(`{"jsonrpc":"2.0","result":`)

// errorLine is an error response line; data that cannot be encoded is left out.
func errorLine(id json.RawMessage, e *Error) []byte {
	text, err := json.Marshal(e)
	if err != nil {
		text, _ = json.Marshal(&Error{Code: e.Code, Message: e.Message})
	}
	var b bytes.Buffer
	b.WriteString(`{"jsonrpc":"2.0","error":`)
	b.Write(text)
	b.WriteString(`,"id":`)
	b.Write(id)
	b.WriteString("}\n")
	return b.Bytes()
}

// notificationLine is a notification the plugin sends (rpc.event, rpc.progress).
func notificationLine(method string, params interface{}) ([]byte, error) {
	text, err := json.Marshal(struct {
		JSONRPC string      `json:"jsonrpc"`
		Method  string      `json:"method"`
		Params  interface{} `json:"params"`
	}{"2.0", method, params})
	if err != nil {
		return nil, err
	}
	return append(text, '\n'), nil
}

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
	var members map[string]json.RawMessage
	if err := json.Unmarshal(raw, &members); err != nil || members == nil {
		return nil, errorLine(nullID, &Error{Code: InvalidRequest, Message: "Invalid Request",
			Data: "a request is a JSON object"})
	}
	req := &request{}
	if id, ok := members["id"]; ok {
		if !validID(id) {
			return nil, errorLine(nullID, &Error{Code: InvalidRequest, Message: "Invalid Request",
				Data: "id must be a string, a number or null"})
		}
		req.id = id
	}
	answerID := req.id
	if answerID == nil {
		answerID = nullID
	}
	if v, ok := members["jsonrpc"]; !ok || !bytes.Equal(v, jsonrpc20) {
		return nil, errorLine(answerID, &Error{Code: InvalidRequest, Message: "Invalid Request",
			Data: `jsonrpc must be "2.0"`})
	}
	m, ok := members["method"]
	if !ok || len(m) == 0 || m[0] != '"' || json.Unmarshal(m, &req.method) != nil {
		return nil, errorLine(answerID, &Error{Code: InvalidRequest, Message: "Invalid Request",
			Data: "method must be a string"})
	}
	// Params go to the command untouched, as core0 passed its args JSON whatever it held.
	if p, ok := members["params"]; ok && !bytes.Equal(p, nullID) {
		req.params = p
	} else {
		req.params = emptyArgs // core0 always passed the args JSON, {} when there were none
	}
	return req, nil
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
	text, err := json.Marshal(result)
	if err != nil {
		return errorLine(id, &Error{Code: InternalError, Message: "Internal error",
			Data: "the result cannot be encoded as JSON: " + err.Error()})
	}
	var b bytes.Buffer
	b.Grow(len(text) + len(id) + 32)
	b.WriteString(`{"jsonrpc":"2.0","result":`)
	b.Write(text)
	b.WriteString(`,"id":`)
	b.Write(id)
	b.WriteString("}\n")
	return b.Bytes()
}

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

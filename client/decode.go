package client

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/imbridge/imbridge/protocol"
)

// The server's answers and messages are decoded piece by piece, so that one
// message the client cannot decode (data nested beyond encoding/json's
// 10,000 levels, a field of the wrong type) spoils only itself: the page
// around it, the other messages in it and the id that routes a reply still
// decode. The splitting below checks structure only (strings, escapes,
// brackets) and has no nesting limit; each piece is then decoded by
// encoding/json.

// valueEnd returns the index just past the JSON value that starts at or
// after b[i] (after white space).
func valueEnd(b []byte, i int) (int, error) {
	i = skipSpace(b, i)
	if i >= len(b) {
		return 0, errors.New("unexpected end of JSON")
	}
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				end, err := stringEnd(b, i)
				if err != nil {
					return 0, err
				}
				i = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1, nil
				}
			}
		}
		return 0, errors.New("unterminated JSON object or array")
	}
	start := i // a number, true, false or null
	for i < len(b) && !isDelim(b[i]) {
		i++
	}
	if i == start {
		return 0, fmt.Errorf("invalid character %q in JSON", b[i])
	}
	return i, nil
}

// stringEnd returns the index just past the JSON string starting at b[i].
func stringEnd(b []byte, i int) (int, error) {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1, nil
		}
	}
	return 0, errors.New("unterminated JSON string")
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

func isDelim(c byte) bool {
	switch c {
	case ',', '}', ']', ' ', '\t', '\r', '\n', ':', '"', '{', '[':
		return true
	}
	return false
}

// members splits a JSON object into its members' raw values, by name.
func members(b []byte) (map[string][]byte, error) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return nil, errors.New("not a JSON object")
	}
	out := map[string][]byte{}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return out, nil
	}
	for i < len(b) {
		i = skipSpace(b, i)
		if i >= len(b) || b[i] != '"' {
			return nil, errors.New("object member name expected")
		}
		end, err := stringEnd(b, i)
		if err != nil {
			return nil, err
		}
		var name string
		if err := json.Unmarshal(b[i:end], &name); err != nil {
			return nil, err
		}
		i = skipSpace(b, end)
		if i >= len(b) || b[i] != ':' {
			return nil, errors.New("':' expected after an object member name")
		}
		start := skipSpace(b, i+1)
		if i, err = valueEnd(b, start); err != nil {
			return nil, err
		}
		out[name] = b[start:i]
		i = skipSpace(b, i)
		if i < len(b) && b[i] == '}' {
			return out, nil
		}
		if i >= len(b) || b[i] != ',' {
			return nil, errors.New("',' or '}' expected in an object")
		}
		i++
	}
	return nil, errors.New("unterminated JSON object")
}

// elements splits a JSON array into its elements' raw values.
func elements(b []byte) ([][]byte, error) {
	i := skipSpace(b, 0)
	if i < len(b) && b[i] == 'n' && string(b[i:]) == "null" {
		return nil, nil
	}
	if i >= len(b) || b[i] != '[' {
		return nil, errors.New("not a JSON array")
	}
	var out [][]byte
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == ']' {
		return out, nil
	}
	for i < len(b) {
		start := skipSpace(b, i)
		end, err := valueEnd(b, start)
		if err != nil {
			return nil, err
		}
		out = append(out, b[start:end])
		i = skipSpace(b, end)
		if i < len(b) && b[i] == ']' {
			return out, nil
		}
		if i >= len(b) || b[i] != ',' {
			return nil, errors.New("',' or ']' expected in an array")
		}
		i++
	}
	return nil, errors.New("unterminated JSON array")
}

// field decodes the member name of m into v, if present.
func field(m map[string][]byte, name string, v any) error {
	raw, ok := m[name]
	if !ok {
		return nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// replyID returns the "id" of an answer on the reply topic, or "".
func replyID(payload []byte) string {
	m, err := members(payload)
	if err != nil {
		return ""
	}
	var id string
	if field(m, "id", &id) != nil {
		return ""
	}
	return id
}

// decodeMessage decodes a delivered or stored message. When it cannot, it
// returns a *DecodeError with whatever of id, seq and inboxSeq could be read.
func decodeMessage(topic string, b []byte) (protocol.Message, *DecodeError) {
	var msg protocol.Message
	err := json.Unmarshal(b, &msg)
	if err == nil {
		return msg, nil
	}
	e := &DecodeError{Topic: topic, Err: err}
	if m, merr := members(b); merr == nil {
		_ = field(m, "id", &e.MsgID)
		_ = field(m, "seq", &e.Seq)
		_ = field(m, "inboxSeq", &e.InboxSeq)
		_ = field(m, "onlineUserOnly", &e.OnlineUserOnly)
	}
	return msg, e
}

// decodePage decodes a history or sync answer. Messages it cannot decode are
// left out of the page and returned as bad, in page order; err is set only
// if the page itself cannot be read.
func decodePage(topic string, b []byte) (p protocol.Page, bad []*DecodeError, err error) {
	m, err := members(b)
	if err != nil {
		return p, nil, err
	}
	for _, f := range []struct {
		name string
		v    any
	}{
		{"type", &p.Type}, {"id", &p.ID}, {"epoch", &p.Epoch}, {"more", &p.More},
		{"nextBefore", &p.NextBefore}, {"nextAfter", &p.NextAfter}, {"error", &p.Error},
	} {
		if err := field(m, f.name, f.v); err != nil {
			return p, nil, err
		}
	}
	msgs, err := elements(m["messages"])
	if _, ok := m["messages"]; ok && err != nil {
		return p, nil, fmt.Errorf("messages: %w", err)
	}
	for _, raw := range msgs {
		msg, derr := decodeMessage(topic, raw)
		if derr != nil {
			bad = append(bad, derr)
			continue
		}
		p.Messages = append(p.Messages, msg)
	}
	return p, bad, nil
}

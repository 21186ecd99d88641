package bridge

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/imbridge/imbridge/auth"
	"github.com/imbridge/imbridge/protocol"
)

// Handler returns the HTTP API:
//
//	GET  /v1/history?with=PEER&limit=N&before=SEQ|after=SEQ   (user token)
//	GET  /v1/sync?after=INBOXSEQ&limit=N                      (user token)
//	POST /v1/messages                                         (user or admin token)
//
// Every request carries "Authorization: Bearer TOKEN". Answers are JSON; an
// error is {"error":{"code":...,"message":...}} with a matching status.
func (b *Bridge) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/history", b.serveHistory)
	mux.HandleFunc("GET /v1/sync", b.serveSync)
	mux.HandleFunc("POST /v1/messages", b.serveSend)
	for path, allow := range map[string]string{"/v1/history": "GET", "/v1/sync": "GET", "/v1/messages": "POST"} {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			writeJSON(w, http.StatusMethodNotAllowed, errorBody{&protocol.Error{Code: protocol.CodeMethodNotAllowed, Message: r.Method + " is not allowed here; use " + allow}})
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, errorBody{&protocol.Error{Code: protocol.CodeNotFound, Message: "no such endpoint: " + r.URL.Path}})
	})
	return mux
}

// errorBody is the JSON of an HTTP error answer.
type errorBody struct {
	Error *protocol.Error `json:"error"`
}

// authorize returns the verified claims of the request's bearer token, or
// writes a 401 and returns false.
func (b *Bridge) authorize(w http.ResponseWriter, r *http.Request) (auth.Claims, bool) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	reason := "no bearer token in the Authorization header"
	if ok {
		c, err := b.verifier.Verify(strings.TrimSpace(token))
		if err == nil {
			return c, true
		}
		reason = auth.Reason(err)
	}
	b.stats.authFailures.Add(1)
	w.Header().Set("WWW-Authenticate", `Bearer realm="imbridge"`)
	writeError(w, &protocol.Error{Code: protocol.CodeUnauthorized, Message: "a valid bearer token is required: " + reason})
	return auth.Claims{}, false
}

// userOnly authorizes a request that acts as one user; admin tokens get 403.
func (b *Bridge) userOnly(w http.ResponseWriter, r *http.Request) (string, bool) {
	c, ok := b.authorize(w, r)
	if !ok {
		return "", false
	}
	if c.Admin {
		writeError(w, &protocol.Error{Code: protocol.CodeForbidden, Message: "history is read with the user's own token"})
		return "", false
	}
	return c.Subject, true
}

func (b *Bridge) serveHistory(w http.ResponseWriter, r *http.Request) {
	req := protocol.HistoryRequest{With: r.URL.Query().Get("with")}
	if user, ok := b.pageQuery(w, r, map[string]*uint64{"before": &req.Before, "after": &req.After}, &req.Limit, req.Check); ok {
		writePage(w, b.History(user, req))
	}
}

func (b *Bridge) serveSync(w http.ResponseWriter, r *http.Request) {
	var req protocol.SyncRequest
	if user, ok := b.pageQuery(w, r, map[string]*uint64{"after": &req.After}, &req.Limit, req.Check); ok {
		writePage(w, b.Sync(user, req))
	}
}

// pageQuery authorizes a history or sync request and parses its cursors and
// limit into the request, then runs the request's check. It answers the
// request itself and returns false on any error.
func (b *Bridge) pageQuery(w http.ResponseWriter, r *http.Request, cursors map[string]*uint64, limit *int, check func() *protocol.Error) (string, bool) {
	user, ok := b.userOnly(w, r)
	if !ok {
		return "", false
	}
	q := r.URL.Query()
	perr := parseUints(q, cursors)
	if perr == nil {
		perr = parseLimit(q, limit)
	}
	if perr == nil {
		perr = check()
	}
	if perr == nil && !b.allowQuery(user) {
		perr = errQueryRate
	}
	if perr != nil {
		writeError(w, perr)
		return "", false
	}
	return user, true
}

// serveSend sends the JSON body. With a user token the sender is the token's
// user ("from", if given, must match); with an admin token "from" is required.
func (b *Bridge) serveSend(w http.ResponseWriter, r *http.Request) {
	c, ok := b.authorize(w, r)
	if !ok {
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(b.cfg.MaxPayload)))
	if err != nil {
		perr := &protocol.Error{Code: protocol.CodeBadJSON, Message: "reading body: " + err.Error()}
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			perr = &protocol.Error{Code: protocol.CodeTooLarge, Message: "body is larger than the limit of " + strconv.Itoa(b.cfg.MaxPayload) + " bytes"}
		}
		b.reject(perr.Code)
		writeJSON(w, statusOf(perr), protocol.ErrorReceipt("", perr))
		return
	}
	req, perr := protocol.DecodeSendRequest(body)
	if perr != nil {
		b.reject(perr.Code)
		writeJSON(w, statusOf(perr), protocol.ErrorReceipt(peekRequestID(body), perr))
		return
	}
	from := c.Subject
	switch {
	case c.Admin && !protocol.ValidUserID(req.From):
		perr = &protocol.Error{Code: protocol.CodeInvalidFrom, Message: "an admin send needs from: a user ID"}
	case !c.Admin && req.From != "" && req.From != c.Subject:
		perr = &protocol.Error{Code: protocol.CodeForbidden, Message: "a user token can only send as its own user"}
	case c.Admin:
		from = req.From
	}
	if perr != nil {
		writeJSON(w, statusOf(perr), protocol.ErrorReceipt(req.ID, perr))
		return
	}
	receipt := b.send(r.Context(), from, req, !c.Admin)
	status := http.StatusOK
	if receipt.Error != nil {
		status = statusOf(receipt.Error)
	}
	writeJSON(w, status, receipt)
}

func parseUints(q map[string][]string, into map[string]*uint64) *protocol.Error {
	for name, dst := range into {
		v := ""
		if vs := q[name]; len(vs) > 0 {
			v = vs[0]
		}
		if v == "" {
			continue
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return &protocol.Error{Code: protocol.CodeInvalidQuery, Message: name + " must be a non-negative integer"}
		}
		*dst = n
	}
	return nil
}

func parseLimit(q map[string][]string, limit *int) *protocol.Error {
	vs := q["limit"]
	if len(vs) == 0 || vs[0] == "" {
		return nil
	}
	n, err := strconv.Atoi(vs[0])
	if err != nil || n < 1 || n > protocol.MaxPageLimit {
		return &protocol.Error{Code: protocol.CodeInvalidQuery, Message: "limit must be 1 to " + strconv.Itoa(protocol.MaxPageLimit)}
	}
	*limit = n
	return nil
}

// statusOf maps an error code to its HTTP status.
func statusOf(e *protocol.Error) int {
	switch e.Code {
	case protocol.CodeUnauthorized:
		return http.StatusUnauthorized
	case protocol.CodeNotFound:
		return http.StatusNotFound
	case protocol.CodeMethodNotAllowed:
		return http.StatusMethodNotAllowed
	case protocol.CodeForbidden, protocol.CodeQuota:
		return http.StatusForbidden
	case protocol.CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case protocol.CodeRateLimited:
		return http.StatusTooManyRequests
	case protocol.CodeStoreFailed, protocol.CodeUnavailable:
		return http.StatusServiceUnavailable
	case protocol.CodeInternal:
		return http.StatusInternalServerError
	}
	return http.StatusBadRequest
}

func writePage(w http.ResponseWriter, p protocol.Page) {
	if p.Error != nil {
		writeError(w, p.Error)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

func writeError(w http.ResponseWriter, e *protocol.Error) {
	writeJSON(w, statusOf(e), errorBody{e})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

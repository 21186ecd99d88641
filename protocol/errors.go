package protocol

// ErrorCode is the machine-readable reason in an [Error]. New codes may be
// added; clients should treat an unknown code like "internal".
type ErrorCode string

// Errors in a request's content. The request changed nothing.
const (
	CodeBadJSON         ErrorCode = "bad_json"         // not valid JSON, or a field of the wrong type
	CodeNotObject       ErrorCode = "not_object"       // valid JSON, but not an object
	CodeInvalidTo       ErrorCode = "invalid_to"       // "to" missing or not a user ID
	CodeInvalidFrom     ErrorCode = "invalid_from"     // "from" missing or not a user ID (HTTP admin sends)
	CodeInvalidID       ErrorCode = "invalid_id"       // "id" not a valid client message id
	CodeInvalidPriority ErrorCode = "invalid_priority" // "priority" not default, high, normal or low
	CodeMissingData     ErrorCode = "missing_data"     // "data" absent or null
	CodeInvalidData     ErrorCode = "invalid_data"     // "data" not UTF-8, or nested deeper than MaxDataDepth
	CodeTooLarge        ErrorCode = "too_large"        // payload over the server's limit
	CodeInvalidQuery    ErrorCode = "invalid_query"    // history or sync parameters out of range
	CodeInvalidTopic    ErrorCode = "invalid_topic"    // MQTT 5 response topic outside the user's reply topics
)

// Errors of permission.
const (
	CodeUnauthorized ErrorCode = "unauthorized" // missing, bad or expired token (HTTP)
	CodeForbidden    ErrorCode = "forbidden"    // the credential may not do this
)

// Errors of the HTTP API's routing.
const (
	CodeNotFound         ErrorCode = "not_found"          // no such endpoint (HTTP 404)
	CodeMethodNotAllowed ErrorCode = "method_not_allowed" // the endpoint takes another method (HTTP 405)
)

// Errors of the server. The request may be retried with the same id.
const (
	CodeStoreFailed ErrorCode = "store_failed"   // the history could not be written or read
	CodeUnavailable ErrorCode = "unavailable"    // the server is shutting down, or cannot reach the history or the other nodes now: retry
	CodeRateLimited ErrorCode = "rate_limited"   // over the user's send or query rate; lower priorities are refused first
	CodeQuota       ErrorCode = "quota_exceeded" // the sender's stored messages reached the per-user storage quota
	CodeInternal    ErrorCode = "internal"       // anything else
)

// Error is the error object of a receipt, a page or an HTTP error response.
type Error struct {
	Code    ErrorCode `json:"code"`
	Message string    `json:"message"`
}

// Error returns "protocol: CODE: MESSAGE".
func (e *Error) Error() string { return "protocol: " + string(e.Code) + ": " + e.Message }

func errorf(code ErrorCode, msg string) *Error { return &Error{Code: code, Message: msg} }

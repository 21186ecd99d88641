package protocol

// MaxUserIDLen is the longest user ID, in bytes.
const MaxUserIDLen = 64

// MaxClientMsgIDLen is the longest client-chosen message id, in bytes.
const MaxClientMsgIDLen = 128

// ValidUserID reports whether s is a user ID: 1 to 64 characters of
// A-Z a-z 0-9 . _ @ -.
func ValidUserID(s string) bool {
	if len(s) == 0 || len(s) > MaxUserIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !userIDByte(s[i]) {
			return false
		}
	}
	return true
}

func userIDByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '.' || c == '_' || c == '@' || c == '-'
}

// ValidClientMsgID reports whether s may be used as the client-chosen id of a
// request: 1 to 128 characters of A-Z a-z 0-9 . _ @ - : (UUIDs, ULIDs and
// counters all fit).
func ValidClientMsgID(s string) bool {
	if len(s) == 0 || len(s) > MaxClientMsgIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !userIDByte(s[i]) && s[i] != ':' {
			return false
		}
	}
	return true
}

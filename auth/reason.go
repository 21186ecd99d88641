package auth

import (
	"errors"

	"github.com/golang-jwt/jwt/v5"
)

// Reason returns a short reason for a Verify error that is safe to tell the
// client: it names what is wrong with the token and never anything of the
// secret. It returns "invalid token" for errors it does not recognise.
func Reason(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, jwt.ErrTokenExpired):
		return "token expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "token not valid yet"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "token signature invalid (signed with another secret?)"
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "token malformed"
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return "token unverifiable (only HS256 is accepted)"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "token lacks a required claim (exp)"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "token audience not accepted"
	}
	return "invalid token"
}

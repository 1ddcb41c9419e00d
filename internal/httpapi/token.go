package httpapi

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
)

// TokenPrefix starts every API token, so a leaked one is easy to recognise.
const TokenPrefix = "baton_"

// Scopes of API tokens.
const (
	ScopeRead    = "read"    // GET endpoints
	ScopeOperate = "operate" // also every mutating endpoint
)

// NewToken returns a fresh random token and its SHA-256, the only form stored.
func NewToken() (string, []byte, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", nil, fmt.Errorf("new token: %w", err)
	}
	tok := TokenPrefix + base64.RawURLEncoding.EncodeToString(b)
	return tok, HashToken(tok), nil
}

// HashToken is the stored form of a token.
func HashToken(tok string) []byte {
	h := sha256.Sum256([]byte(tok))
	return h[:]
}

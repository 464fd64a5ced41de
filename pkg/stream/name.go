// Package stream owns the identity of a live stream: its validated "app/stream"
// name and the publish key that authorises a publisher. Names are checked here,
// once, before they reach a NATS subject, a Redis key or a log line; this package
// never touches the network.
package stream

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// MaxPart is the longest app or stream name accepted.
const MaxPart = 64

// ErrBadName reports an app or stream name outside [A-Za-z0-9_-]{1,64}.
var ErrBadName = errors.New("stream: name must be 1-64 characters of A-Z a-z 0-9 _ -")

// Name is a validated "app/stream" pair.
type Name string

// NewName validates app and stream and joins them.
func NewName(app, name string) (Name, error) {
	if err := checkPart(app); err != nil {
		return "", fmt.Errorf("app %q: %w", clip(app), err)
	}
	if err := checkPart(name); err != nil {
		return "", fmt.Errorf("stream %q: %w", clip(name), err)
	}
	return Name(app + "/" + name), nil
}

// ParseName validates an "app/stream" string.
func ParseName(s string) (Name, error) {
	app, name, ok := strings.Cut(s, "/")
	if !ok {
		return "", fmt.Errorf("%q: want app/stream: %w", clip(s), ErrBadName)
	}
	return NewName(app, name)
}

// App returns the application part.
func (n Name) App() string { a, _, _ := strings.Cut(string(n), "/"); return a }

// Stream returns the stream part.
func (n Name) Stream() string { _, s, _ := strings.Cut(string(n), "/"); return s }

func (n Name) String() string { return string(n) }

func checkPart(s string) error {
	if len(s) == 0 || len(s) > MaxPart {
		return ErrBadName
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return ErrBadName
		}
	}
	return nil
}

// clip keeps hostile names short in errors and logs.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// PublishKey returns the key a publisher of name must present when the origin has a
// publish secret: lowercase hex of HMAC-SHA256(secret, "app/stream"). The same key
// comes from: printf %s app/stream | openssl dgst -sha256 -hmac SECRET
func PublishKey(secret string, name Name) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(name))
	return hex.EncodeToString(m.Sum(nil))
}

// CheckPublishKey compares key with the expected one in constant time.
func CheckPublishKey(secret string, name Name, key string) bool {
	return hmac.Equal([]byte(PublishKey(secret, name)), []byte(key))
}

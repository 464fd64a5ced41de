package stream

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/url"
	"strconv"
	"time"
)

// Errors of play-URL verification; each maps to 403.
var (
	ErrNoSignature  = errors.New("playback URL is not signed")
	ErrBadSignature = errors.New("playback URL signature is wrong")
	ErrExpired      = errors.New("playback URL has expired")
)

// SignPlay returns the signature of a playback URL path valid until expires (unix
// seconds): lowercase hex HMAC-SHA256(secret, path + "?expires=" + expires). The
// signed URL is path?expires=E&sig=S. The same signature comes from:
//
//	printf %s "/live/demo.flv?expires=$E" | openssl dgst -sha256 -hmac "$SECRET"
func SignPlay(secret, path string, expires int64) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(path + "?expires=" + strconv.FormatInt(expires, 10)))
	return hex.EncodeToString(m.Sum(nil))
}

// VerifyPlay checks the expires and sig query parameters of a request for path.
func VerifyPlay(secret, path string, q url.Values, now time.Time) error {
	exp, sig := q.Get("expires"), q.Get("sig")
	if exp == "" || sig == "" {
		return ErrNoSignature
	}
	e, err := strconv.ParseInt(exp, 10, 64)
	if err != nil || e < 0 {
		return ErrBadSignature
	}
	// Compare before checking expiry, so a forged URL never learns more than "wrong".
	want := SignPlay(secret, path, e)
	if !hmac.Equal([]byte(want), []byte(sig)) {
		return ErrBadSignature
	}
	if now.Unix() > e {
		return ErrExpired
	}
	return nil
}

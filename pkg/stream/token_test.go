package stream

import (
	"errors"
	"net/url"
	"strconv"
	"testing"
	"time"
)

func TestPlaySignature(t *testing.T) {
	// The documented command, run by hand:
	// printf %s "/live/demo.flv?expires=1800000000" | openssl dgst -sha256 -hmac s3cret
	const opensslSig = "683c623b2e5dc6afdccbf14613c6956aa656661354530d57cb8194362907108f"
	if got := SignPlay("s3cret", "/live/demo.flv", 1800000000); got != opensslSig {
		t.Fatalf("signature %s, want the openssl value %s", got, opensslSig)
	}
	now := time.Unix(1700000000, 0)
	q := func(exp int64, sig string) url.Values {
		return url.Values{"expires": {strconv.FormatInt(exp, 10)}, "sig": {sig}}
	}
	good := SignPlay("k", "/live/a.flv", now.Unix()+60)
	cases := []struct {
		name string
		path string
		q    url.Values
		want error
	}{
		{"valid", "/live/a.flv", q(now.Unix()+60, good), nil},
		{"missing", "/live/a.flv", url.Values{}, ErrNoSignature},
		{"forged", "/live/a.flv", q(now.Unix()+60, good[:63]+"0"), ErrBadSignature},
		{"other path", "/live/b.flv", q(now.Unix()+60, good), ErrBadSignature},
		{"expiry moved", "/live/a.flv", q(now.Unix()+3600, good), ErrBadSignature},
		{"not a number", "/live/a.flv", url.Values{"expires": {"soon"}, "sig": {good}}, ErrBadSignature},
		{"expired", "/live/a.flv", q(now.Unix()-1, SignPlay("k", "/live/a.flv", now.Unix()-1)), ErrExpired},
	}
	for _, c := range cases {
		if err := VerifyPlay("k", c.path, c.q, now); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
}

func FuzzVerifyPlay(f *testing.F) {
	f.Add("/live/a.flv", "expires=1&sig=00")
	f.Add("/x/y.flv", "expires=99999999999&sig="+SignPlay("k", "/x/y.flv", 99999999999))
	f.Fuzz(func(t *testing.T, path, rawQuery string) {
		q, err := url.ParseQuery(rawQuery)
		if err != nil {
			return
		}
		err = VerifyPlay("k", path, q, time.Unix(1, 0))
		if err == nil && q.Get("sig") != SignPlay("k", path, mustInt(q.Get("expires"))) {
			t.Fatal("accepted a signature that is not ours")
		}
	})
}

func mustInt(s string) int64 { v, _ := strconv.ParseInt(s, 10, 64); return v }

package stream

import (
	"errors"
	"strings"
	"testing"
)

func TestNames(t *testing.T) {
	ok := []string{"live/demo", "a/b", "LIVE_1/cam-2", strings.Repeat("a", 64) + "/" + strings.Repeat("b", 64)}
	bad := []string{"", "live", "live/", "/demo", "live/bad.name", "live/a b", "live/a/b", "li ve/x",
		"live/" + strings.Repeat("b", 65), "live/ü", "live/x\x00", "../etc/passwd", "live/*", "live/>"}
	for _, s := range ok {
		n, err := ParseName(s)
		if err != nil || n.String() != s {
			t.Errorf("%q: %v", s, err)
		}
	}
	for _, s := range bad {
		if _, err := ParseName(s); !errors.Is(err, ErrBadName) {
			t.Errorf("%q accepted (%v)", s, err)
		}
	}
	n, _ := NewName("live", "demo")
	if n.App() != "live" || n.Stream() != "demo" {
		t.Fatal(n.App(), n.Stream())
	}
}

func TestPublishKey(t *testing.T) {
	n, _ := ParseName("live/demo")
	// printf %s live/demo | openssl dgst -sha256 -hmac s3cret
	// (the documented command; this value was computed with it, not with this code)
	const want = "08a76d58d5b189cc0b89f46d8771ccb798284a970f1db29dd53d5b6160103c22"
	got := PublishKey("s3cret", n)
	if got != want {
		t.Fatalf("key %q, want the openssl value %q", got, want)
	}
	if !CheckPublishKey("s3cret", n, got) || CheckPublishKey("other", n, got) || CheckPublishKey("s3cret", n, "") {
		t.Fatal("CheckPublishKey")
	}
	other, _ := ParseName("live/demo2")
	if CheckPublishKey("s3cret", other, got) {
		t.Fatal("a key must be bound to its stream")
	}
}

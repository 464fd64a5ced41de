// Package web owns the edge's pages: a small HTML player for /{app}/{stream}.flv at /,
// the operators' console at /console (live streams and nodes across the cluster, from
// the cluster API, with a player), a wall at /wall that plays up to 16 streams at once
// over HTTP-FLV or WebSocket-FLV, and the mpegts.js library they run on, all embedded
// in the binary so that an edge needs no files on disk to show a stream in a browser.
//
// The page takes the stream from ?stream=app/name (default live/demo), plays it muted
// with mpegts.js, retries when the stream ends or fails, and exposes window.flvcdnStats()
// for automated browser tests.
//
// assets/mpegts.js is the unmodified minified build (dist/mpegts.js) of the npm package
// mpegts.js 1.8.2, licensed under the Apache License 2.0; its licence text is
// assets/LICENSE.mpegts.txt and the notice of the code it bundles is
// assets/mpegts.js.LICENSE.txt. Everything else here is flvcdn's own.
//
// This package serves only its own documents; it never touches streams.
package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"net/http"
	"time"
)

//go:embed assets/index.html assets/console.html assets/wall.html assets/mpegts.js
var assets embed.FS

// asset is one embedded document with the headers it is served with.
type asset struct {
	body        []byte
	contentType string
	etag        string
}

func load(name, contentType string) asset {
	b, err := assets.ReadFile(name)
	if err != nil {
		panic("web: missing embedded " + name + ": " + err.Error()) // a build defect, not a runtime condition
	}
	sum := sha256.Sum256(b)
	return asset{body: b, contentType: contentType, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
}

var (
	indexPage   = load("assets/index.html", "text/html; charset=utf-8")
	consolePage = load("assets/console.html", "text/html; charset=utf-8")
	wallPage    = load("assets/wall.html", "text/html; charset=utf-8")
	mpegtsJS    = load("assets/mpegts.js", "text/javascript; charset=utf-8")
)

// Handler serves GET and HEAD for "/" (the player page), "/console", "/wall" and "/mpegts.js". Any other path
// is 404 and any other method 405, so it can be mounted as the fallback of a mux that
// routes the stream URLs elsewhere.
func Handler() http.Handler {
	return http.HandlerFunc(serve)
}

func serve(w http.ResponseWriter, r *http.Request) {
	var a *asset
	switch r.URL.Path {
	case "/", "/index.html":
		a = &indexPage
	case "/console", "/console/":
		a = &consolePage
	case "/wall", "/wall/":
		a = &wallPage
	case "/mpegts.js":
		a = &mpegtsJS
	default:
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	h := w.Header()
	h.Set("Content-Type", a.contentType)
	h.Set("ETag", a.etag)
	// The page is tiny and may change with the binary: make browsers revalidate it.
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Content-Type-Options", "nosniff")
	// ServeContent answers HEAD, conditional and range requests.
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
}

package cluster

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/flvcdn/flvcdn/pkg/bus"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

// API answers the cluster API from a View:
//
//	GET    /api/v1/streams                  {"streams":[Stream...]}
//	GET    /api/v1/streams/{app}/{stream}   Stream, 404 when not live
//	DELETE /api/v1/streams/{app}/{stream}   disconnects the publisher, wherever it is
//	GET    /api/v1/nodes                    {"nodes":[Node...]}
//
// With Token set, every call needs "Authorization: Bearer <Token>"; without one,
// DELETE is refused (403), so that an open API can never kick a publisher.
type API struct {
	View *View
	// Kick disconnects the publisher of a stream ("app/stream"); bus.ErrNoOwner
	// (wrapped) when no origin has it. bus.Cluster.Kick does this.
	Kick  func(ctx context.Context, name string) error
	Token string
	Log   *slog.Logger
}

// Register adds the API's routes to mux.
func (a *API) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/streams", a.auth(a.streams))
	mux.HandleFunc("GET /api/v1/streams/{app}/{stream}", a.auth(a.stream))
	mux.HandleFunc("DELETE /api/v1/streams/{app}/{stream}", a.auth(a.kick))
	mux.HandleFunc("GET /api/v1/nodes", a.auth(a.nodes))
	mux.HandleFunc("/api/", a.auth(func(w http.ResponseWriter, r *http.Request) {
		apiError(w, http.StatusNotFound, "no such API: see /api/v1/streams and /api/v1/nodes")
	}))
}

func (a *API) auth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		if a.Token == "" {
			h(w, r)
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(a.Token)) != 1 {
			apiRefused.Inc()
			w.Header().Set("WWW-Authenticate", `Bearer realm="flvcdn"`)
			apiError(w, http.StatusUnauthorized, "missing or wrong bearer token")
			return
		}
		h(w, r)
	}
}

func (a *API) streams(w http.ResponseWriter, _ *http.Request) {
	list := a.View.Streams()
	writeJSON(w, http.StatusOK, struct {
		Streams []Stream `json:"streams"`
	}{list})
}

// name validates the {app}/{stream} of a request's path.
func name(w http.ResponseWriter, r *http.Request) (stream.Name, bool) {
	n, err := stream.NewName(r.PathValue("app"), r.PathValue("stream"))
	if err != nil {
		apiError(w, http.StatusBadRequest, err.Error())
		return "", false
	}
	return n, true
}

func (a *API) stream(w http.ResponseWriter, r *http.Request) {
	n, ok := name(w, r)
	if !ok {
		return
	}
	s, ok := a.View.Stream(string(n))
	if !ok {
		apiError(w, http.StatusNotFound, string(n)+" is not live")
		return
	}
	writeJSON(w, http.StatusOK, s)
}

func (a *API) kick(w http.ResponseWriter, r *http.Request) {
	if a.Token == "" {
		apiError(w, http.StatusForbidden, "DELETE needs an API token: start the node with --api-token")
		return
	}
	n, ok := name(w, r)
	if !ok {
		return
	}
	if _, live := a.View.Stream(string(n)); !live {
		apiError(w, http.StatusNotFound, string(n)+" is not live")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	err := a.Kick(ctx, string(n))
	switch {
	case errors.Is(err, bus.ErrNoOwner):
		apiError(w, http.StatusNotFound, string(n)+" is not live")
	case err != nil:
		a.Log.Warn("api: kick failed", "stream", n, "err", err)
		apiError(w, http.StatusBadGateway, err.Error())
	default:
		a.Log.Info("api: publisher kicked", "stream", n, "remote", r.RemoteAddr)
		w.WriteHeader(http.StatusNoContent)
	}
}

func (a *API) nodes(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, struct {
		Nodes []Node `json:"nodes"`
	}{a.View.Nodes()})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func apiError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, struct {
		Error string `json:"error"`
	}{msg})
}

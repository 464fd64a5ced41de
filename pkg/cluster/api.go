package cluster

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
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

	mu    sync.Mutex
	cache map[string]cached // encoded answers of the list calls, by path
}

// cacheFor is how long an encoded list answer is reused. Reports arrive once a
// second, so this keeps answers under 2 s old while many pollers (console tabs,
// monitoring) share one encoding: at 1,000 streams and 20 edges one costs ~9 ms.
const cacheFor = 250 * time.Millisecond

type cached struct {
	body []byte
	at   time.Time
}

// list answers a list call from an encoding at most cacheFor old.
func (a *API) list(w http.ResponseWriter, r *http.Request, build func() any) {
	a.mu.Lock()
	c, ok := a.cache[r.URL.Path]
	if !ok || time.Since(c.at) > cacheFor {
		body, err := json.Marshal(build())
		if err != nil {
			a.mu.Unlock()
			apiError(w, http.StatusInternalServerError, err.Error())
			return
		}
		c = cached{body: append(body, '\n'), at: time.Now()}
		if a.cache == nil {
			a.cache = map[string]cached{}
		}
		a.cache[r.URL.Path] = c
	}
	a.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(c.body)
}

// Register adds the API's routes to mux.
func (a *API) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/streams", a.auth(a.streams))
	mux.HandleFunc("GET /api/v1/streams/{app}/{stream}", a.auth(a.stream))
	mux.HandleFunc("DELETE /api/v1/streams/{app}/{stream}", a.auth(a.kick))
	mux.HandleFunc("GET /api/v1/nodes", a.auth(a.nodes))
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

func (a *API) streams(w http.ResponseWriter, r *http.Request) {
	a.list(w, r, func() any {
		return struct {
			Streams []Stream `json:"streams"`
		}{a.View.Streams()}
	})
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

func (a *API) nodes(w http.ResponseWriter, r *http.Request) {
	a.list(w, r, func() any {
		return struct {
			Nodes []Node `json:"nodes"`
		}{a.View.Nodes()}
	})
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

package httpflv

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// Over TLS a taken-over HTTP/1.1 viewer cannot use writev: crypto/tls writes each
// slice it is given as at least one record and one write(2), so a window of tags and
// chunk framing would cost a record (and its 29 bytes of overhead) per slice. Such a
// viewer's window is gathered into one pooled buffer first (viewerConn.gather): one
// copy per viewer, after which TLS encrypts it in records of up to 16 KiB.

// CertReloader serves a certificate and key from files and picks up new files without
// a restart, as cert-manager and kubelet rotate a mounted Secret in place. It polls
// with stat, no file watcher: on a TLS handshake, when CheckEvery has passed since the
// last look, it compares the size and modification time of both files (through
// symlinks, so a Secret volume's swapped ..data link counts) and loads them again if
// either changed. A pair that does not load (a half-written rotation, a key that does
// not match) is logged and the previous certificate stays in use until the next look.
type CertReloader struct {
	CertFile, KeyFile string
	// CheckEvery is the least time between two looks at the files. 0 means 1s; a
	// negative value looks on every handshake.
	CheckEvery time.Duration
	Log        *slog.Logger

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   [2]fileStamp
	checked time.Time
}

// fileStamp is what a look compares.
type fileStamp struct {
	size int64
	mod  time.Time
}

// NewCertReloader loads the pair once; an error names the file that is wrong.
func NewCertReloader(certFile, keyFile string, log *slog.Logger) (*CertReloader, error) {
	r := &CertReloader{CertFile: certFile, KeyFile: keyFile, Log: log}
	st, err := r.look()
	if err != nil {
		return nil, err
	}
	if err := r.load(st); err != nil {
		return nil, err
	}
	r.checked = time.Now()
	return r, nil
}

func (r *CertReloader) look() ([2]fileStamp, error) {
	var st [2]fileStamp
	for i, f := range []string{r.CertFile, r.KeyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return st, fmt.Errorf("tls: %w", err)
		}
		st[i] = fileStamp{fi.Size(), fi.ModTime()}
	}
	return st, nil
}

func (r *CertReloader) load(st [2]fileStamp) error {
	c, err := tls.LoadX509KeyPair(r.CertFile, r.KeyFile)
	if err != nil {
		return fmt.Errorf("tls: load %s and %s: %w", r.CertFile, r.KeyFile, err)
	}
	r.cert, r.stamp = &c, st
	return nil
}

// GetCertificate is for tls.Config.GetCertificate.
func (r *CertReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	every := r.CheckEvery
	if every == 0 {
		every = time.Second
	}
	if now := time.Now(); now.Sub(r.checked) >= every {
		r.checked = now
		st, err := r.look()
		switch {
		case err != nil:
			r.Log.Warn("tls: certificate files unreadable; serving the loaded one", "err", err)
		case st != r.stamp:
			if err := r.load(st); err != nil {
				r.Log.Warn("tls: new certificate files do not load; serving the loaded one", "err", err)
			} else {
				r.Log.Info("tls: certificate reloaded", "cert", r.CertFile, "not_after", r.cert.Leaf.NotAfter)
			}
		}
	}
	return r.cert, nil
}

// TLSConfig returns a server configuration that takes its certificate from r and
// offers HTTP/2 and HTTP/1.1 by ALPN (net/http adds "h2" when it serves TLS).
func (r *CertReloader) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: r.GetCertificate,
		NextProtos:     []string{"h2", "http/1.1"},
	}
}

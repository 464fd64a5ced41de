package e2e

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/flvcdn/flvcdn/test/harness"
)

// An operator rotates the edge's certificate in place (as cert-manager does with a
// mounted Secret): the running edge serves the new one on the next connections, with
// no restart, over HTTP/2.
func TestEdgeReloadsRotatedCertificate(t *testing.T) {
	ctx := scenario(t, 60*time.Second)
	dir := t.TempDir()
	first, err := harness.SelfSigned(dir, "edge", 1)
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(ctx, t)
	tlsAddr := hostPort(freePort(t))
	e := c.startEdge("--tls-cert", first.CertFile, "--tls-key", first.KeyFile, "--https-addr", tlsAddr)
	// What a browser sees: the serial of the certificate, on a fresh HTTP/2 connection.
	serial := func() (int64, string, error) {
		tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true} // the serial is what is checked
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://" + tlsAddr + "/healthz")
		if err != nil {
			return 0, "", err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return 0, "", fmt.Errorf("/healthz: %s", resp.Status)
		}
		return resp.TLS.PeerCertificates[0].SerialNumber.Int64(), resp.Proto, nil
	}
	s, proto, err := serial()
	if err != nil || s != 1 || proto != "HTTP/2.0" {
		t.Fatalf("before the rotation: serial %d over %s, %v; want 1 over HTTP/2.0", s, proto, err)
	}
	if _, err := harness.SelfSigned(dir, "edge", 2); err != nil { // the same files, a new pair
		t.Fatal(err)
	}
	rotated := time.Now()
	waitFor(within(ctx, t, 10*time.Second), t, "the rotated certificate", func() error {
		if err := e.running(); err != nil {
			return err
		}
		s, _, err := serial()
		if err == nil && s != 2 {
			err = fmt.Errorf("still serial %d", s)
		}
		return err
	})
	t.Logf("new certificate served %v after the files were replaced", time.Since(rotated).Round(time.Millisecond))
}

package main

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestBuildPushPull builds an image into a layout and pushes it to a registry
// on loopback (go-containerregistry's in-memory one), then pulls it back and
// checks the config, the files (owner, mode) and that layout and registry hold
// the same digest, which a second build reproduces.
func TestBuildPushPull(t *testing.T) {
	reg := httptest.NewServer(registry.New())
	defer reg.Close()
	dir := t.TempDir()
	prog := filepath.Join(dir, "prog")
	if err := os.WriteFile(prog, []byte("#!/bin/true\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	ref := strings.TrimPrefix(reg.URL, "http://") + "/flvcdn/flvcdn-edge:test"
	args := func(layoutDir string) []string {
		return []string{"--ref", ref, "--layout", layoutDir, "--push",
			"--file", prog + "=/flvcdn-edge:0755", "--dir", "/data:0700",
			"--account", "nonroot:65532", "--user", "65532:65532", "--entrypoint", "/flvcdn-edge",
			"--env", "PATH=/", "--port", "8080", "--label", "a=b"}
	}
	s, err := parseFlags(args(filepath.Join(dir, "oci")))
	if err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), s); err != nil {
		t.Fatal(err)
	}

	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	pulled, err := remote.Image(r)
	if err != nil {
		t.Fatalf("pull: %v", err)
	}
	cf, err := pulled.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.User != "65532:65532" || len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != "/flvcdn-edge" ||
		cf.OS != "linux" || cf.Architecture != "amd64" || cf.Config.Labels["a"] != "b" {
		t.Fatalf("config: %+v (os %s arch %s)", cf.Config, cf.OS, cf.Architecture)
	}
	if _, ok := cf.Config.ExposedPorts["8080/tcp"]; !ok {
		t.Fatalf("exposed ports %v", cf.Config.ExposedPorts)
	}
	files := layerFiles(t, pulled)
	for path, want := range map[string]int64{"flvcdn-edge": 0o755, "data/": 0o700, "etc/": 0o755, "etc/passwd": 0o644, "etc/group": 0o644} {
		h, ok := files[path]
		if !ok {
			t.Fatalf("%s missing from the layer (have %v)", path, keys(files))
		}
		if h.Mode != want || h.Uid != 0 || h.Gid != 0 {
			t.Fatalf("%s: mode %o uid %d gid %d, want mode %o owned by root", path, h.Mode, h.Uid, h.Gid, want)
		}
	}

	// The layout holds the same image under its full name.
	p, err := layout.FromPath(filepath.Join(dir, "oci"))
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	pushed, _ := pulled.Digest()
	if len(m.Manifests) != 1 || m.Manifests[0].Digest != pushed || m.Manifests[0].Annotations[annotationContainerName] != ref {
		t.Fatalf("layout index %+v, want one manifest %s named %s", m.Manifests, pushed, ref)
	}

	// Same inputs, same digest.
	s2, err := parseFlags(args(filepath.Join(dir, "oci2")))
	if err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), s2); err != nil {
		t.Fatal(err)
	}
	p2, _ := layout.FromPath(filepath.Join(dir, "oci2"))
	idx2, _ := p2.ImageIndex()
	m2, _ := idx2.IndexManifest()
	if m2.Manifests[0].Digest != pushed {
		t.Fatalf("second build %s, first %s", m2.Manifests[0].Digest, pushed)
	}
}

// TestRequireStatic refuses a dynamically linked program.
func TestRequireStatic(t *testing.T) {
	sh, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Fatalf("no /bin/sh to try: %v", err)
	}
	s, err := parseFlags([]string{"--ref", "example.com/flvcdn/x:1", "--layout", t.TempDir(), "--require-static", "--file", sh + "=/sh:0755"})
	if err != nil {
		t.Fatal(err)
	}
	err = run(context.Background(), s)
	if err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Fatalf("err = %v, want a refusal of the dynamically linked %s", err, sh)
	}
}

func layerFiles(t *testing.T, img v1.Image) map[string]*tar.Header {
	t.Helper()
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	out := map[string]*tar.Header{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = h
	}
}

func keys(m map[string]*tar.Header) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	return k
}

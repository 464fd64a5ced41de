// Command image assembles a single-platform OCI image from files on this
// machine, without a container engine, using go-containerregistry: one layer
// (the given files, the parent directories they need, and an /etc/passwd and
// /etc/group naming the accounts), an image config (user, entrypoint, env,
// ports, labels), stored in an OCI image layout under its reference, and
// optionally pushed to a registry.
//
//	go run . --ref ghcr.io/flvcdn/flvcdn-edge:0.1.0 --layout ../../dist/images/oci \
//	  --file ../../bin/linux_amd64/flvcdn-edge=/flvcdn-edge:0755 \
//	  --account nonroot:65532 --user 65532:65532 --entrypoint /flvcdn-edge --port 8080
//
// --with-libs also copies the shared libraries that ldd lists for every
// executable given, so a dynamically linked program (an apt package's binary)
// runs in the image as it runs on the host. Every entry is owned by root, so
// the non-root user of the image cannot change it, and every timestamp is
// SOURCE_DATE_EPOCH (default 0): the same inputs give the same digest.
package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Annotations under which an image is named in the layout's index.json:
// the OCI one, and the one containerd's importer reads the full name from.
const (
	annotationRefName       = "org.opencontainers.image.ref.name"
	annotationContainerName = "io.containerd.image.name"
)

// list is a repeatable string flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

// spec is what one run builds.
type spec struct {
	ref        string
	layoutDir  string
	push       bool
	platform   v1.Platform
	files      list // SRC=DST[:MODE]
	dirs       list // DST[:MODE], empty directories
	accounts   list // NAME:UID
	withLibs   bool
	static     bool
	user       string
	entrypoint list
	cmd        list
	env        list
	ports      list
	labels     list
	workdir    string
	epoch      time.Time
}

// entry is one file of the layer.
type entry struct {
	dst  string // absolute path in the image
	mode int64
	dir  bool
	data []byte
}

func main() {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	s, err := parseFlags(os.Args[1:])
	if err == nil {
		err = run(ctx, s)
	}
	if err != nil {
		slog.Error("image", "err", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (*spec, error) {
	s := &spec{}
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	fs.StringVar(&s.ref, "ref", "", "image reference, e.g. ghcr.io/flvcdn/flvcdn-edge:0.1.0 (required)")
	fs.StringVar(&s.layoutDir, "layout", "", "OCI image layout directory to add the image to (replaces an image of the same reference)")
	fs.BoolVar(&s.push, "push", false, "also push the image to its reference's registry (credentials: ~/.docker/config.json)")
	platform := fs.String("platform", "linux/amd64", "os/arch of the files")
	fs.Var(&s.files, "file", "SRC=DST[:MODE] (octal): a file of the host copied to DST (repeatable)")
	fs.Var(&s.dirs, "dir", "DST[:MODE]: an empty directory (repeatable)")
	fs.Var(&s.accounts, "account", "NAME:UID: a user and its group in /etc/passwd and /etc/group, besides root (repeatable)")
	fs.BoolVar(&s.withLibs, "with-libs", false, "also copy the shared libraries ldd lists for each executable --file")
	fs.BoolVar(&s.static, "require-static", false, "fail unless every executable --file is a static ELF program (no interpreter)")
	fs.StringVar(&s.user, "user", "", "user the process runs as (UID:GID)")
	fs.Var(&s.entrypoint, "entrypoint", "entrypoint, one argument per flag (repeatable)")
	fs.Var(&s.cmd, "cmd", "default arguments, one per flag (repeatable)")
	fs.Var(&s.env, "env", "KEY=VALUE (repeatable)")
	fs.Var(&s.ports, "port", "exposed port, e.g. 8080 or 1935/tcp (repeatable)")
	fs.Var(&s.labels, "label", "KEY=VALUE config label (repeatable)")
	fs.StringVar(&s.workdir, "workdir", "/", "working directory")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if s.ref == "" {
		return nil, errors.New("--ref is required")
	}
	if s.layoutDir == "" && !s.push {
		return nil, errors.New("nothing to do: give --layout, --push or both")
	}
	os_, arch, ok := strings.Cut(*platform, "/")
	if !ok || os_ == "" || arch == "" {
		return nil, fmt.Errorf("--platform %q: want os/arch", *platform)
	}
	s.platform = v1.Platform{OS: os_, Architecture: arch}
	s.epoch = time.Unix(0, 0).UTC()
	if v := os.Getenv("SOURCE_DATE_EPOCH"); v != "" {
		sec, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("SOURCE_DATE_EPOCH %q: %w", v, err)
		}
		s.epoch = time.Unix(sec, 0).UTC()
	}
	return s, nil
}

func run(ctx context.Context, s *spec) error {
	ref, err := name.ParseReference(s.ref)
	if err != nil {
		return fmt.Errorf("reference %q: %w", s.ref, err)
	}
	entries, err := collect(s)
	if err != nil {
		return err
	}
	img, err := assemble(s, entries)
	if err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return fmt.Errorf("digest of %s: %w", s.ref, err)
	}
	size, err := imageSize(img)
	if err != nil {
		return err
	}
	if s.layoutDir != "" {
		if err := writeLayout(s, ref, img); err != nil {
			return err
		}
	}
	if s.push {
		if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
			return fmt.Errorf("push %s: %w", ref, err)
		}
	}
	// stdout: the reference and digest, for scripts.
	fmt.Printf("%s@%s %d\n", containerdName(ref), digest, size)
	slog.Info("image built", "ref", containerdName(ref), "digest", digest, "files", len(entries),
		"layer_bytes", size, "layout", s.layoutDir, "pushed", s.push)
	return nil
}

// collect reads every file the image holds and adds the parent directories.
func collect(s *spec) ([]entry, error) {
	byPath := map[string]*entry{}
	add := func(e entry) error {
		e.dst = path.Clean("/" + e.dst)
		if e.dst == "/" {
			return errors.New("cannot replace /")
		}
		if old, ok := byPath[e.dst]; ok && (old.dir != e.dir || !bytes.Equal(old.data, e.data)) {
			return fmt.Errorf("%s given twice with different contents", e.dst)
		}
		byPath[e.dst] = &e
		return nil
	}
	var executables []string
	for _, f := range s.files {
		src, dst, ok := strings.Cut(f, "=")
		if !ok || src == "" || dst == "" {
			return nil, fmt.Errorf("--file %q: want SRC=DST[:MODE]", f)
		}
		dst, mode, err := splitMode(dst, -1)
		if err != nil {
			return nil, fmt.Errorf("--file %q: %w", f, err)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return nil, fmt.Errorf("--file %q: %w", f, err)
		}
		if mode < 0 {
			fi, err := os.Stat(src)
			if err != nil {
				return nil, fmt.Errorf("--file %q: %w", f, err)
			}
			mode = int64(fi.Mode().Perm())
		}
		if mode&0o111 != 0 {
			executables = append(executables, src)
		}
		if err := add(entry{dst: dst, mode: mode, data: data}); err != nil {
			return nil, err
		}
	}
	if s.static {
		for _, p := range executables {
			if err := checkStatic(p); err != nil {
				return nil, err
			}
		}
	}
	if s.withLibs {
		libs, err := sharedLibs(executables)
		if err != nil {
			return nil, err
		}
		for _, lib := range libs {
			data, err := os.ReadFile(lib)
			if err != nil {
				return nil, fmt.Errorf("shared library: %w", err)
			}
			if err := add(entry{dst: lib, mode: 0o755, data: data}); err != nil {
				return nil, err
			}
		}
	}
	for _, d := range s.dirs {
		dst, mode, err := splitMode(d, 0o755)
		if err != nil {
			return nil, fmt.Errorf("--dir %q: %w", d, err)
		}
		if err := add(entry{dst: dst, mode: mode, dir: true}); err != nil {
			return nil, err
		}
	}
	passwd, group, err := accounts(s.accounts)
	if err != nil {
		return nil, err
	}
	for dst, data := range map[string][]byte{"/etc/passwd": passwd, "/etc/group": group} {
		if err := add(entry{dst: dst, mode: 0o644, data: data}); err != nil {
			return nil, err
		}
	}
	// Parent directories, root-owned and 0755 unless given.
	for p := range byPath {
		for dir := path.Dir(p); dir != "/"; dir = path.Dir(dir) {
			if _, ok := byPath[dir]; !ok {
				byPath[dir] = &entry{dst: dir, mode: 0o755, dir: true}
			}
		}
	}
	paths := make([]string, 0, len(byPath))
	for p := range byPath {
		paths = append(paths, p)
	}
	sort.Strings(paths) // parents sort before their children
	out := make([]entry, 0, len(paths))
	for _, p := range paths {
		out = append(out, *byPath[p])
	}
	return out, nil
}

// splitMode splits "PATH:MODE" (octal MODE) into its parts; def when absent.
func splitMode(s string, def int64) (string, int64, error) {
	i := strings.LastIndex(s, ":")
	if i < 0 {
		return s, def, nil
	}
	m, err := strconv.ParseInt(s[i+1:], 8, 32)
	if err != nil {
		return "", 0, fmt.Errorf("mode %q: %w", s[i+1:], err)
	}
	return s[:i], m, nil
}

// checkStatic fails when the ELF program needs a dynamic loader.
func checkStatic(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("--require-static: %w", err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("--require-static: %s is dynamically linked", p)
		}
	}
	return nil
}

var lddPath = regexp.MustCompile(`(?:=>\s*)?(/\S+)\s+\(0x`)

// sharedLibs returns the libraries (and the dynamic loader) that ldd lists
// for the given programs; none for static ones.
func sharedLibs(programs []string) ([]string, error) {
	seen := map[string]bool{}
	var libs []string
	for _, p := range programs {
		out, err := exec.Command("ldd", p).CombinedOutput()
		if err != nil {
			if bytes.Contains(out, []byte("not a dynamic executable")) {
				continue
			}
			return nil, fmt.Errorf("ldd %s: %w: %s", p, err, bytes.TrimSpace(out))
		}
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			line := sc.Text()
			if strings.Contains(line, "not found") {
				return nil, fmt.Errorf("ldd %s: %s", p, strings.TrimSpace(line))
			}
			if m := lddPath.FindStringSubmatch(line); m != nil && !seen[m[1]] {
				seen[m[1]] = true
				libs = append(libs, m[1])
			}
		}
	}
	sort.Strings(libs)
	return libs, nil
}

// accounts renders /etc/passwd and /etc/group: root, then NAME:UID entries
// (each with a group of the same name and id, home /, no shell).
func accounts(specs []string) (passwd, group []byte, err error) {
	var p, g bytes.Buffer
	p.WriteString("root:x:0:0:root:/root:/sbin/nologin\n")
	g.WriteString("root:x:0:\n")
	for _, a := range specs {
		n, id, ok := strings.Cut(a, ":")
		uid, perr := strconv.Atoi(id)
		if !ok || n == "" || perr != nil || uid <= 0 {
			return nil, nil, fmt.Errorf("--account %q: want NAME:UID with UID > 0", a)
		}
		fmt.Fprintf(&p, "%s:x:%d:%d:%s:/:/sbin/nologin\n", n, uid, uid, n)
		fmt.Fprintf(&g, "%s:x:%d:\n", n, uid)
	}
	return p.Bytes(), g.Bytes(), nil
}

// assemble builds the layer with archive/tar and the image with
// go-containerregistry.
func assemble(s *spec, entries []entry) (v1.Image, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{
			Name:    strings.TrimPrefix(e.dst, "/"),
			Mode:    e.mode,
			ModTime: s.epoch,
			Format:  tar.FormatPAX,
		}
		if e.dir {
			h.Typeflag = tar.TypeDir
			h.Name += "/"
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("layer entry %s: %w", e.dst, err)
		}
		if !e.dir {
			if _, err := tw.Write(e.data); err != nil {
				return nil, fmt.Errorf("layer entry %s: %w", e.dst, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	layerTar := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}

	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:     layer,
		History:   v1.History{Created: v1.Time{Time: s.epoch}, CreatedBy: "flvcdn tools/image", Comment: s.ref},
		MediaType: types.OCILayer,
	})
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = s.platform.OS, s.platform.Architecture
	cf.Created = v1.Time{Time: s.epoch}
	cf.Config.User = s.user
	cf.Config.Entrypoint = s.entrypoint
	cf.Config.Cmd = s.cmd
	cf.Config.Env = s.env
	cf.Config.WorkingDir = s.workdir
	if len(s.ports) > 0 {
		cf.Config.ExposedPorts = map[string]struct{}{}
		for _, p := range s.ports {
			if !strings.Contains(p, "/") {
				p += "/tcp"
			}
			cf.Config.ExposedPorts[p] = struct{}{}
		}
	}
	if len(s.labels) > 0 {
		cf.Config.Labels = map[string]string{}
		for _, l := range s.labels {
			k, v, ok := strings.Cut(l, "=")
			if !ok || k == "" {
				return nil, fmt.Errorf("--label %q: want KEY=VALUE", l)
			}
			cf.Config.Labels[k] = v
		}
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return img, nil
}

func imageSize(img v1.Image) (int64, error) {
	layers, err := img.Layers()
	if err != nil {
		return 0, fmt.Errorf("layers: %w", err)
	}
	var n int64
	for _, l := range layers {
		sz, err := l.Size()
		if err != nil {
			return 0, fmt.Errorf("layer size: %w", err)
		}
		n += sz
	}
	return n, nil
}

// containerdName is the name containerd's CRI resolves an image reference to:
// Docker Hub as "docker.io/...", not go-containerregistry's "index.docker.io".
func containerdName(ref name.Reference) string {
	n := ref.Name()
	if rest, ok := strings.CutPrefix(n, name.DefaultRegistry+"/"); ok {
		return "docker.io/" + rest
	}
	return n
}

// writeLayout adds the image to the OCI layout (creating it), replacing an
// image stored under the same name.
func writeLayout(s *spec, ref name.Reference, img v1.Image) error {
	p, err := layout.FromPath(s.layoutDir)
	if err != nil {
		if p, err = layout.Write(s.layoutDir, empty.Index); err != nil {
			return fmt.Errorf("create OCI layout %s: %w", s.layoutDir, err)
		}
	}
	full := containerdName(ref)
	if err := p.RemoveDescriptors(match.Annotation(annotationContainerName, full)); err != nil {
		return fmt.Errorf("OCI layout %s: %w", s.layoutDir, err)
	}
	err = p.AppendImage(img,
		layout.WithPlatform(s.platform),
		layout.WithAnnotations(map[string]string{
			annotationRefName:       full,
			annotationContainerName: full,
		}))
	if err != nil {
		return fmt.Errorf("OCI layout %s: %w", filepath.Clean(s.layoutDir), err)
	}
	return nil
}

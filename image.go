package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
)

// The image is checked at plan time the way smolvm 1.9.3 will read it, so
// that a wrong file fails here, with a hint, and not minutes later at
// machine creation. Facts from smolvm v1.9.3:
//
//   - An existing directory is used as the root filesystem as is; any other
//     local path is read as an archive (src/data/image_source.rs:56-71).
//   - An archive is a `docker save` / `podman save` tar, optionally gzip- or
//     zstd-compressed, recognised by its magic bytes, not its name
//     (src/data/image_source.rs:30-32; crates/smolvm-agent/src/storage.rs:1331-1337).
//   - It is flattened by `crane export - -` and its config found through
//     manifest.json's first entry's "Config" member
//     (crates/smolvm-agent/src/storage.rs:1183-1191, 1297-1306).
//   - crane reads a docker save tarball with go-containerregistry's
//     pkg/v1/tarball (image.go @ 01ccdb622dfd, not the exact version smolvm
//     bundles): without a tag, manifest.json must hold exactly one image
//     (findDescriptor), with at least one layer (areLayersCompressed: "0
//     layers found"); members are matched by path.Clean'd name, and a
//     symlink or hard link entry is followed (followLinks).
//   - A directory is a root filesystem when it has a bin, usr, etc or sbin
//     directory (crates/smolvm-agent/src/storage.rs:2962-2965); otherwise
//     smolvm reads its subdirectories as layers, which a user's directory
//     is not.
//
// Reading is bounded: tar headers are walked (the uncompressed archive is
// seeked over, never read whole), only manifest.json is read, at most
// maxManifestBytes, and at most maxArchiveEntries headers whose names are at
// most maxMemberName bytes (docker save writes names like
// blobs/sha256/<64 hex>; a long name is refused, so the names kept stay
// under maxArchiveEntries*maxMemberName bytes). A gzip archive is
// decompressed at most maxArchiveBytes, smolvm's own default limit on an
// archive (src/data/image_source.rs:150 @ v1.9.3). Nothing is ever
// extracted.

const (
	maxManifestBytes  = 1 << 20
	maxArchiveEntries = 1 << 16
	maxMemberName     = 256
	maxArchiveBytes   = 8 << 30
)

// hintBuildImage says how to make an image run takes.
const hintBuildImage = "make one from a Dockerfile: docker build -t smolbottle-agent examples/agent-image && docker save smolbottle-agent -o agent.tar, then -image agent.tar"

// checkImageContent checks that abs is what smolvm reads as an image: a
// root filesystem directory, or a docker save archive whose manifest.json
// names a config and layers that are in it.
func checkImageContent(abs string, fi os.FileInfo) error {
	if fi.IsDir() {
		for _, d := range []string{"bin", "usr", "etc", "sbin"} {
			if st, err := os.Stat(filepath.Join(abs, d)); err == nil && st.IsDir() {
				return nil
			}
		}
		return withHint(fmt.Errorf("image %q is a directory but not a root filesystem: it has no bin, usr, etc or sbin directory", abs),
			"pass an unpacked root filesystem, or "+hintBuildImage)
	}
	f, err := os.OpenFile(abs, os.O_RDONLY|syscall.O_NONBLOCK, 0) // a FIFO in its place does not hang
	if err != nil {
		return fmt.Errorf("image %q: %w", abs, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("image %q is not a regular file", abs)
	}
	if err := checkArchive(f); err != nil {
		return withHint(fmt.Errorf("image %q is not a docker save archive: %w", abs, err), hintBuildImage)
	}
	return nil
}

// checkArchive reads r as smolvm does: gzip by magic, zstd refused (the
// standard library cannot read it, and an unchecked image is not passed
// on), then tar.
func checkArchive(f *os.File) error {
	br := bufio.NewReader(f)
	magic, _ := br.Peek(4)
	var r io.Reader = f
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("gzip: %w", err)
		}
		defer zr.Close()
		r = &capReader{r: zr, left: maxArchiveBytes}
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return errors.New("it is zstd-compressed, which smolbottle cannot check; decompress it (zstd -d) or save it uncompressed")
	default:
		// A plain tar: read from the start, unbuffered, so that tar.Reader
		// seeks over the layers instead of reading them.
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
	}
	return checkDockerSave(r)
}

// dockerManifest is one entry of a docker save archive's manifest.json.
type dockerManifest struct {
	Config string
	Layers []string
}

// checkDockerSave walks a tar stream's headers, reads manifest.json and
// checks that it lists one image naming a config and at least one layer,
// each a file (or a link) in the archive.
func checkDockerSave(r io.Reader) error {
	tr := tar.NewReader(r)
	members := map[string]bool{}
	var manifest []byte
	for n := 0; ; n++ {
		if n == maxArchiveEntries {
			return fmt.Errorf("more than %d entries", maxArchiveEntries)
		}
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if n == 0 {
				return errors.New("not a tar archive")
			}
			return fmt.Errorf("tar: %w", err)
		}
		if len(h.Name) > maxMemberName {
			return fmt.Errorf("an entry's name is %d bytes long, over %d: docker save writes short names", len(h.Name), maxMemberName)
		}
		name := path.Clean(h.Name)
		switch h.Typeflag {
		case tar.TypeReg, tar.TypeSymlink, tar.TypeLink:
			members[name] = true
		}
		if name == "manifest.json" {
			if h.Size > maxManifestBytes {
				return fmt.Errorf("manifest.json is larger than %d bytes", maxManifestBytes)
			}
			if manifest, err = io.ReadAll(io.LimitReader(tr, maxManifestBytes)); err != nil {
				return fmt.Errorf("manifest.json: %w", err)
			}
		}
	}
	if manifest == nil {
		return errors.New("it has no manifest.json")
	}
	var m []dockerManifest
	if err := json.Unmarshal(manifest, &m); err != nil {
		return fmt.Errorf("manifest.json: %w", err)
	}
	if len(m) != 1 {
		return fmt.Errorf("manifest.json lists %d images; save exactly one (docker save IMAGE)", len(m))
	}
	if m[0].Config == "" {
		return errors.New("manifest.json names no config")
	}
	if len(m[0].Layers) == 0 {
		return errors.New("manifest.json names no layers")
	}
	for _, want := range append([]string{m[0].Config}, m[0].Layers...) {
		if !members[path.Clean(want)] {
			return fmt.Errorf("manifest.json names %q, which is not in the archive", want)
		}
	}
	return nil
}

// capReader fails once more than left bytes have been read through it.
type capReader struct {
	r    io.Reader
	left int64
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		if n, err := c.r.Read(make([]byte, 1)); n == 0 && err == io.EOF {
			return 0, io.EOF
		}
		return 0, fmt.Errorf("it decompresses to more than %d GiB", maxArchiveBytes>>30)
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}

// looksLikeRegistryRef reports whether s reads as an image reference such
// as alpine:3, docker.io/library/node or ghcr.io/x/y@sha256:....
func looksLikeRegistryRef(s string) bool {
	if strings.HasPrefix(s, "/") || strings.HasPrefix(s, ".") || strings.HasPrefix(s, "~") {
		return false
	}
	if strings.Contains(s, "://") || strings.Contains(s, "@sha256:") {
		return true
	}
	name := s
	if i := strings.LastIndex(s, ":"); i > 0 && !strings.Contains(s[i:], "/") {
		return true // name:tag
	}
	first, _, hasSlash := strings.Cut(name, "/")
	return hasSlash && (strings.Contains(first, ".") || first == "localhost")
}

// registryRefError says how to turn a registry reference given as -image
// into the local archive a bottle needs.
func registryRefError(p string) error {
	return withHint(fmt.Errorf("image %q is a registry reference; a bottle needs a local image", p),
		"smolvm cannot pull into a machine without network; make a local archive first:",
		"docker pull "+p+" && docker save "+p+" -o image.tar   (or: skopeo copy docker://"+p+" docker-archive:image.tar)",
		"then pass -image image.tar")
}

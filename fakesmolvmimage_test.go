package main

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// The fake smolvm's images, secrets and volumes, each as smolvm v1.9.3's
// source has it (citations are `path:line @ v1.9.3`).

// fakeSecretEnv reads --secret-env GUEST=HOST references.
func fakeSecretEnv(flags []string) map[string]string {
	refs := map[string]string{}
	for _, s := range flags {
		g, h, _ := strings.Cut(s, "=")
		refs[g] = h
	}
	return refs
}

// fakeResolveSecrets resolves from_env references from the fake's own
// environment, in name order (a BTreeMap), failing on the first unset one
// as src/secrets.rs:411-414,452 does: std::env::var, so an empty value is
// a value.
func fakeResolveSecrets(refs map[string]string) *fakeExit {
	for _, g := range sortedKeys(refs) {
		if _, ok := os.LookupEnv(refs[g]); !ok {
			e := smolError("config operation failed: resolve secret '%s': env_unset", g)
			return &e
		}
	}
	return nil
}

// fakeLooksLocal is src/data/image_source.rs:75-83: a path prefix or an
// archive suffix.
func fakeLooksLocal(image string) bool {
	for _, p := range []string{"/", "./", "../"} {
		if strings.HasPrefix(image, p) {
			return true
		}
	}
	for _, s := range []string{".tar", ".tar.gz", ".tgz"} {
		if strings.HasSuffix(image, s) {
			return true
		}
	}
	return false
}

// fakeResolveImage is create's --image (src/cli/machine.rs:3163-3176,
// src/data/image_source.rs:56-69,169-247): a directory is used in place, a
// file is staged by content hash, anything else is a registry reference.
// It returns the record's image and, for a local one, the staged layers.
func fakeResolveImage(dir, image string) (string, string, *fakeExit) {
	fail := func(format string, args ...any) (string, string, *fakeExit) {
		e := smolError(format, args...)
		return "", "", &e
	}
	var b []byte
	switch {
	case image == "-": // src/data/image_source.rs:57-59,250-279 @ v1.9.3: stdin, copied into the cache
		var err error
		if b, err = io.ReadAll(os.Stdin); err != nil {
			return fail("storage operation failed: stage stdin archive: %v", err)
		}
		return fakeStageArchive(dir, b)
	case !fakeLooksLocal(image):
		return image, "", nil
	}
	if fi, err := os.Stat(image); err == nil && fi.IsDir() {
		real, err := filepath.EvalSymlinks(image)
		if err != nil {
			return fail("config operation failed: --image: cannot use rootfs directory %s: %v", image, err)
		}
		abs, _ := filepath.Abs(real)
		return "local-dir:" + abs, abs, nil
	}
	fi, err := os.Stat(image)
	if err != nil {
		return fail("config operation failed: --image: cannot read archive %s: %v", image, err)
	}
	if !fi.Mode().IsRegular() {
		return fail("config operation failed: --image: %s is not a file", image)
	}
	b, err = os.ReadFile(image)
	if err != nil {
		return fail("config operation failed: --image: cannot read archive %s: %v", image, err)
	}
	return fakeStageArchive(dir, b)
}

// fakeStageArchive puts an archive in the cache under its hash
// (image_source.rs:236-243,268-279 @ v1.9.3; the fake copies where smolvm
// hard-links a file given by path).
func fakeStageArchive(dir string, b []byte) (string, string, *fakeExit) {
	sum := sha256.Sum256(b)
	hash := hex.EncodeToString(sum[:])
	staged := filepath.Join(dir, "cache", hash, "archive.tar")
	if err := os.MkdirAll(filepath.Dir(staged), 0o700); err != nil {
		fakeFatal(err)
	}
	if err := os.WriteFile(staged, b, 0o600); err != nil {
		fakeFatal(err)
	}
	return "local:" + hash, staged, nil
}

// fakeImageFetchable is create's check that a registry image can be pulled
// (src/config.rs:841-884, called at src/cli/vm_common.rs:710): a machine
// without network cannot pull. A path named only in the Smolfile looks
// local, so it passes here and fails at the first start.
func fakeImageFetchable(m *fakeMachine) *fakeExit {
	if m.Image == "" || m.Layers != "" || fakeLooksLocal(m.Image) || m.Network {
		return nil
	}
	e := smolError("config operation failed: create machine: image '%s' must be pulled from a registry, but this machine has no network, so the pull can never succeed. Add --net (or publish a port with -p, or set an egress policy with --allow-cidr/--allow-host). To keep the machine network-isolated, supply the image locally instead: `docker save %s | smolvm machine create --image - ...`", m.Image, m.Image)
	return &e
}

// fakeFirstStart puts the image in place at the first start and reads its
// User. A record image that is not a resolved local one goes to the
// registry puller (src/cli/vm_common.rs:1503-1519), which refuses a path
// (crates/smolvm-agent/src/oci.rs:758-759); a staged archive must be a
// `docker save` archive: crane flattens it and manifest.json names the
// config (crates/smolvm-agent/src/storage.rs:1180-1191,1293-1302); a
// directory's config.json, when present, gives the User
// (crates/smolvm-agent/src/storage.rs:1343-1382).
func fakeFirstStart(m *fakeMachine) *fakeExit {
	if m.Init || m.Image == "" {
		return nil
	}
	if m.Layers == "" {
		fmt.Fprintf(os.Stderr, "Pulling %s...\n", m.Image)
		if c := m.Image[0]; !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			e := smolError("fake: pull %s: image reference must start with alphanumeric character", m.Image)
			return &e
		}
		e := smolError("fake: pull %s: no registry is reachable from the fake", m.Image)
		return &e
	}
	var cfg []byte
	var err error
	if strings.HasPrefix(m.Image, "local-dir:") {
		cfg, err = os.ReadFile(filepath.Join(m.Layers, "config.json"))
		if errors.Is(err, os.ErrNotExist) {
			return nil // no config: the image's defaults (root)
		}
	} else {
		cfg, err = fakeArchiveConfig(m.Layers)
	}
	if err != nil {
		e := smolError("fake: flatten image archive: %v", err)
		return &e
	}
	var c struct {
		Config struct {
			User string `json:"User"`
		} `json:"config"`
	}
	if err := json.Unmarshal(cfg, &c); err != nil {
		e := smolError("fake: image config: %v", err)
		return &e
	}
	m.User = c.Config.User
	return nil
}

// fakeArchiveConfig reads a docker save archive's manifest.json and the
// config blob its first entry names. An OCI layout (oci-layout, index.json)
// has no manifest.json and fails, as crane does for it.
func fakeArchiveConfig(archive string) ([]byte, error) {
	member := func(name string) ([]byte, error) {
		f, err := os.Open(archive)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		var r io.Reader = f
		if gz, err := gzip.NewReader(f); err == nil {
			r = gz
		} else if _, err := f.Seek(0, io.SeekStart); err != nil {
			return nil, err
		}
		tr := tar.NewReader(r)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				return nil, fmt.Errorf("file %s not found in tar", name)
			}
			if err != nil {
				return nil, err
			}
			if strings.TrimPrefix(h.Name, "./") == name {
				return io.ReadAll(io.LimitReader(tr, 1<<20))
			}
		}
	}
	mb, err := member("manifest.json")
	if err != nil {
		return nil, err
	}
	var manifest []struct {
		Config string `json:"Config"`
	}
	if err := json.Unmarshal(mb, &manifest); err != nil || len(manifest) == 0 || manifest[0].Config == "" {
		return nil, errors.New("archive manifest.json has no Config entry")
	}
	return member(manifest[0].Config)
}

// fakeProtectedSources is src/data/storage.rs:52-68 (Linux): refused
// as themselves, or with everything below them when the flag is set.
var fakeProtectedSources = []struct {
	path    string
	subtree bool
}{
	{"/", false}, {"/var", false}, {"/var/run", true}, {"/var/log", true}, {"/etc", true},
	{"/boot", true}, {"/usr", true}, {"/bin", true}, {"/sbin", true}, {"/lib", true},
	{"/proc", true}, {"/sys", true}, {"/dev", true}, {"/run", true},
}

// fakeCheckVolume is HostMount::new and validate (src/data/storage.rs:81-
// 172,173-204): the source must exist and be a directory; it is
// canonicalized, then checked against the protected list; the guest path
// must be absolute.
func fakeCheckVolume(spec string) *fakeExit {
	fail := func(format string, args ...any) *fakeExit { e := smolError(format, args...); return &e }
	rest := spec
	if h, mode, ok := rsplit(spec); ok && (mode == "ro" || mode == "rw") {
		rest = h
	}
	src, guest, ok := rsplit(rest)
	if !ok {
		return fail("invalid mount path: %s", spec)
	}
	fi, err := os.Stat(src)
	if err != nil {
		return fail("mount source not found: %s", src)
	}
	if !fi.IsDir() {
		return fail("mount operation failed: validate host path: source path on host must be a directory (virtiofs limitation): %s", src)
	}
	real, err := filepath.EvalSymlinks(src)
	if err != nil {
		return fail("mount operation failed: canonicalize host path: '%s': %v", src, err)
	}
	for _, p := range fakeProtectedSources {
		if real == p.path || p.subtree && strings.HasPrefix(real, strings.TrimSuffix(p.path, "/")+"/") {
			return fail("mount operation failed: validate host path: source path on host is a protected system path and cannot be mounted: %s", real)
		}
	}
	if !strings.HasPrefix(guest, "/") {
		return fail("mount operation failed: validate guest path: target path on guest should be an absolute directory: %s", guest)
	}
	return nil
}

// rsplit is Rust's rsplit_once(':').
func rsplit(s string) (string, string, bool) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+1:], true
}

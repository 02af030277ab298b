package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tarMember is one file of a test archive.
type tarMember struct {
	name string
	data []byte
	link string // a symlink to link instead of a file
}

// writeTar writes members as a tar archive, gzipped when gz is set.
func writeTar(t testing.TB, path string, gz bool, members ...tarMember) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range members {
		h := &tar.Header{Name: m.name, Mode: 0o644, Size: int64(len(m.data)), Typeflag: tar.TypeReg}
		if m.link != "" {
			h = &tar.Header{Name: m.name, Mode: 0o777, Linkname: m.link, Typeflag: tar.TypeSymlink}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(m.data)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	if gz {
		var zb bytes.Buffer
		zw := gzip.NewWriter(&zb)
		zw.Write(data)
		zw.Close()
		data = zb.Bytes()
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// dockerSaveMembers is the shape of a `docker save` archive (Docker 25+:
// OCI blobs plus the legacy manifest.json smolvm reads): a config, one
// layer and the manifest naming both.
func dockerSaveMembers(manifest string) []tarMember {
	layer := bytes.Repeat([]byte{0}, 1024) // an empty tar is two zero blocks
	return []tarMember{
		{name: "blobs/sha256/c0ffee", data: imageConfig("root")},
		{name: "blobs/sha256/1a7e2", data: layer},
		{name: "index.json", data: []byte(`{"schemaVersion":2,"manifests":[]}`)},
		{name: "manifest.json", data: []byte(manifest)},
	}
}

const goodManifest = `[{"Config":"blobs/sha256/c0ffee","RepoTags":["smolbottle-agent:latest"],"Layers":["blobs/sha256/1a7e2"]}]`

// imageConfig is an image config whose USER is user ("" runs as root).
func imageConfig(user string) []byte {
	cfg, _ := json.Marshal(map[string]any{"architecture": "amd64", "os": "linux",
		"config": map[string]any{"User": user, "Cmd": []string{"/bin/sh"}}})
	return cfg
}

// writeTestImage writes a minimal archive in the shape docker save makes,
// whose image runs as user ("" for the default, root).
func writeTestImage(t testing.TB, path, user string) {
	t.Helper()
	m := dockerSaveMembers(goodManifest)
	m[0].data = imageConfig(user)
	writeTar(t, path, false, m...)
}

// TestImageCheck holds the plan-time image check to smolvm 1.9.3's
// reading of an image (image.go cites the source lines).
func TestImageCheck(t *testing.T) {
	dir := t.TempDir()
	at := func(name string) string { return filepath.Join(dir, name) }
	random := make([]byte, 10<<10)
	rand.Read(random)
	os.WriteFile(at("random.tar"), random, 0o600)
	writeTestImage(t, at("good.tar"), "root")
	writeTar(t, at("good.tar.gz"), true, dockerSaveMembers(goodManifest)...)
	writeTar(t, at("noman.tar"), false, dockerSaveMembers(goodManifest)[:3]...)
	writeTar(t, at("badjson.tar"), false, dockerSaveMembers(`{"Config":`)...)
	writeTar(t, at("noconfig.tar"), false, dockerSaveMembers(`[{"Layers":["blobs/sha256/1a7e2"]}]`)...)
	writeTar(t, at("nolayers.tar"), false, dockerSaveMembers(`[{"Config":"blobs/sha256/c0ffee","Layers":[]}]`)...)
	writeTar(t, at("two.tar"), false, dockerSaveMembers("["+goodManifest[1:len(goodManifest)-1]+","+goodManifest[1:])...)
	writeTar(t, at("missing.tar"), false, dockerSaveMembers(`[{"Config":"blobs/sha256/c0ffee","Layers":["blobs/sha256/gone"]}]`)...)
	writeTar(t, at("oci.tar"), false, tarMember{name: "oci-layout", data: []byte(`{"imageLayoutVersion":"1.0.0"}`)}, tarMember{name: "index.json", data: []byte(`{}`)})
	// A layer shared with another image is a link in older docker saves;
	// go-containerregistry follows it (followLinks).
	linked := append(dockerSaveMembers(`[{"Config":"blobs/sha256/c0ffee","Layers":["./l2/layer.tar"]}]`),
		tarMember{name: "l2/layer.tar", link: "../blobs/sha256/1a7e2"})
	writeTar(t, at("linked.tar"), false, linked...)
	big := dockerSaveMembers(strings.Repeat(" ", maxManifestBytes+1))
	writeTar(t, at("bigman.tar"), false, big...)
	// A long member name is refused before it is kept: names are the only
	// thing the check holds per entry (400 such entries once cost 1.25 GiB).
	writeTar(t, at("longname.tgz"), true, append(dockerSaveMembers(goodManifest), tarMember{name: strings.Repeat("n", maxMemberName+1)})...)
	os.WriteFile(at("zstd.tar"), []byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0}, 0o600)
	os.WriteFile(at("badgz.tgz"), []byte{0x1f, 0x8b, 0, 0}, 0o600)
	os.MkdirAll(at("empty"), 0o700)
	os.MkdirAll(at("rootfs/usr/bin"), 0o700)
	os.MkdirAll(at("rootfs/etc"), 0o700)
	os.MkdirAll(at("src/lib"), 0o700)

	tests := []struct{ name, want string }{
		{"good.tar", ""},
		{"good.tar.gz", ""},
		{"linked.tar", ""},
		{"rootfs", ""},
		{"random.tar", "not a tar archive"},
		{"noman.tar", "has no manifest.json"},
		{"badjson.tar", "manifest.json: "},
		{"noconfig.tar", "names no config"},
		{"nolayers.tar", "names no layers"},
		{"two.tar", "lists 2 images"},
		{"missing.tar", `names "blobs/sha256/gone", which is not in the archive`},
		{"oci.tar", "has no manifest.json"},
		{"bigman.tar", "manifest.json is larger than"},
		{"longname.tgz", "name is 257 bytes long, over 256"},
		{"zstd.tar", "zstd-compressed"},
		{"badgz.tgz", "gzip: "},
		{"empty", "not a root filesystem"},
		{"src", "not a root filesystem"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			abs, err := checkImage(at(tt.name))
			if tt.want == "" {
				if err != nil || abs != at(tt.name) {
					t.Fatalf("checkImage = %q, %v; want it accepted", abs, err)
				}
				return
			}
			var stderr bytes.Buffer
			code := exitCode(&stderr, err)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("checkImage = %v, want %q", err, tt.want)
			}
			if code != 1 || !strings.Contains(stderr.String(), "hint: ") || !strings.Contains(stderr.String(), "docker build -t smolbottle-agent examples/agent-image") {
				t.Errorf("exit %d, stderr %q: want exit 1 and the build hint", code, stderr.String())
			}
		})
	}
}

// TestImageExampleCommands keeps the hint's commands true to the example
// they name.
func TestImageExampleCommands(t *testing.T) {
	df, err := os.ReadFile(filepath.Join("examples", "agent-image", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"FROM node:22-slim", "@anthropic-ai/claude-code@2.1.332", "USER root"} {
		if !bytes.Contains(df, []byte(want)) {
			t.Errorf("examples/agent-image/Dockerfile lacks %q", want)
		}
	}
	if !strings.Contains(hintBuildImage, "docker build -t smolbottle-agent examples/agent-image && docker save smolbottle-agent -o agent.tar") {
		t.Errorf("hintBuildImage = %q", hintBuildImage)
	}
	if strings.Contains(usage, "docker save node:") {
		t.Errorf("the usage suggests a bare node image as an agent image")
	}
	var m []dockerManifest
	if err := json.Unmarshal([]byte(goodManifest), &m); err != nil || m[0].Config == "" {
		t.Fatalf("test manifest does not parse: %v", err)
	}
}

// BenchmarkImageCheck measures plan's image check on a 256 MiB layer: a
// plain archive is seeked over, a gzipped one must be decompressed.
func BenchmarkImageCheck(b *testing.B) {
	dir := b.TempDir()
	members := dockerSaveMembers(goodManifest)
	members[1].data = make([]byte, 256<<20)
	for _, gz := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "gzip"}[gz]
		path := filepath.Join(dir, name+".tar")
		writeTar(b, path, gz, members...)
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if _, err := checkImage(path); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestCapReader: a gzip archive is decompressed at most maxArchiveBytes.
func TestCapReader(t *testing.T) {
	_, err := io.ReadAll(&capReader{r: strings.NewReader("abcdef"), left: 3})
	if err == nil || !strings.Contains(err.Error(), "decompresses to more than") {
		t.Fatalf("got %v, want the size refusal", err)
	}
	got, err := io.ReadAll(&capReader{r: strings.NewReader("abc"), left: 3})
	if err != nil || string(got) != "abc" {
		t.Fatalf("exactly the limit: got %q, %v", got, err)
	}
}

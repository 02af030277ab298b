package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits on user values, checked before anything is rendered or written.
const (
	maxSlug       = 32      // keeps the machine name and every stage socket path short
	maxPath       = 4096    // PATH_MAX on Linux
	maxHostName   = 253     // RFC 1035 §2.3.4, in text form without the final dot
	maxLabel      = 63      // RFC 1035 §2.3.4
	maxAllow      = 64      // a longer allow-list is a policy nobody reviews
	maxMachine    = 128     // smolvm src/data/mod.rs:55 @ v1.9.3
	minCPUs       = 1       // a machine needs one
	maxCPUs       = 64      // smolvm takes a u8; more than this is a typo
	minMemMiB     = 256     // below this no agent image boots
	maxMemMiB     = 1 << 20 // 1 TiB
	machinePrefix = "smolbottle-"
	defaultAllow  = "api.anthropic.com" // the allow-list without -allow
	// maxSocketPath is the smaller sun_path of Linux (108 bytes) and
	// macOS (104), including the terminating NUL: a stage that works on
	// one works on the other, although only Linux confines a bottle yet.
	maxSocketPath = 103
)

// checkText refuses values that hold bytes no path, name or list entry of
// ours may contain: invalid UTF-8, NUL, control characters (C0, DEL and
// C1, such as a newline, NEL or CSI) and the Unicode line and paragraph
// separators, which could start a new line or a terminal escape in a log,
// and the characters that make a printed plan read differently than it is
// (errors.go's hidden: bidi controls, zero-width space, word joiner, BOM,
// soft hyphen and other invisible format characters). Zero-width joiners
// and tag characters pass: real names (Persian, Indic, emoji) hold them.
func checkText(field, v string) error {
	if !utf8.ValidString(v) {
		return fmt.Errorf("%s %q is not valid UTF-8", field, v)
	}
	for _, r := range v {
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
			return fmt.Errorf("%s %q contains a control character", field, v)
		}
		if hidden(r) {
			return fmt.Errorf("%s %q contains an invisible formatting character %U", field, v, r)
		}
	}
	return nil
}

// checkSlug validates a bottle slug: lowercase letters, digits and '-', at
// most maxSlug long, and a machine name smolvm accepts.
func checkSlug(slug string) error {
	if err := checkText("slug", slug); err != nil {
		return err
	}
	if slug == "" {
		return errors.New("empty slug")
	}
	if len(slug) > maxSlug {
		return fmt.Errorf("slug %q is longer than %d characters", slug, maxSlug)
	}
	for _, r := range slug {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return fmt.Errorf("slug %q may hold only lowercase letters, digits and '-'", slug)
		}
	}
	if err := checkMachineName(machineName(slug)); err != nil {
		return fmt.Errorf("slug %q: %w", slug, err)
	}
	return nil
}

// machineName is the smolvm machine a bottle runs in.
func machineName(slug string) string { return machinePrefix + slug }

// checkMachineName applies smolvm's own rule for machine names
// (src/data/mod.rs:55-103 @ v1.9.3): 1-128 characters from [A-Za-z0-9_-],
// starting with a letter or digit, no trailing '-' and no "--".
func checkMachineName(name string) error {
	if name == "" || len(name) > maxMachine {
		return fmt.Errorf("machine name %q must be 1-%d characters", name, maxMachine)
	}
	alnum := func(c byte) bool { return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }
	if !alnum(name[0]) {
		return fmt.Errorf("smolvm refuses machine name %q: it must start with a letter or digit", name)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !alnum(c) && c != '_' && c != '-' {
			return fmt.Errorf("smolvm refuses machine name %q: only letters, digits, '_' and '-'", name)
		}
	}
	if strings.HasSuffix(name, "-") || strings.Contains(name, "--") {
		return fmt.Errorf("smolvm refuses machine name %q: no trailing '-' and no \"--\"", name)
	}
	return nil
}

// checkAllow validates one egress allow-list entry and returns it in
// canonical (lowercase) form: a DNS host name of at least two labels, or
// "*." followed by one. IP literals, ports, schemes and paths are refused:
// pipelock matches host names, and an address would bypass that intent.
func checkAllow(entry string) (string, error) {
	if err := checkText("allow-list entry", entry); err != nil {
		return "", err
	}
	h := strings.ToLower(entry)
	name := strings.TrimPrefix(h, "*.")
	if err := checkHostName(name); err != nil {
		return "", withHint(fmt.Errorf("allow-list entry %q is not a host name or *.domain: %v", entry, err),
			"write a name such as api.anthropic.com or *.githubusercontent.com, without scheme, port or path")
	}
	return h, nil
}

// checkAllowList validates and de-duplicates the allow-list, keeping order.
// An empty entry is refused here, by name: pipelock's strict mode refuses
// an empty allow-list (internal/config/validate.go:250-252 @ v2.3.0), so
// "allow nothing" cannot be expressed and must not reach up.
func checkAllowList(entries []string) ([]string, error) {
	if len(entries) == 0 {
		entries = []string{defaultAllow}
	}
	if slices.Contains(entries, "") {
		return nil, withHint(usageError("empty -allow: the egress allow-list cannot be empty (pipelock's strict mode refuses it)"),
			"name each host the agent may reach, e.g. -allow api.anthropic.com; without -allow the list is "+defaultAllow)
	}
	if len(entries) > maxAllow {
		return nil, usageError("%d -allow entries; at most %d", len(entries), maxAllow)
	}
	var out []string
	for _, e := range entries {
		h, err := checkAllow(e)
		if err != nil {
			return nil, inputError(err) // a malformed value, like a bad -cpus: exit 2
		}
		if !slices.Contains(out, h) {
			out = append(out, h)
		}
	}
	return out, nil
}

// checkEgressProxy validates -egress-proxy: a loopback HOST:PORT, since the
// relay dials 127.0.0.1 on the host and the guest sees the same port.
func checkEgressProxy(v string) (int, error) {
	if err := checkText("-egress-proxy", v); err != nil {
		return 0, err
	}
	ap, err := netip.ParseAddrPort(strings.Replace(v, "localhost:", "127.0.0.1:", 1))
	if err != nil || ap.Port() == 0 {
		return 0, usageError("-egress-proxy %q is not HOST:PORT", v)
	}
	if ap.Addr() != netip.AddrFrom4([4]byte{127, 0, 0, 1}) {
		return 0, usageError("-egress-proxy %q must be on 127.0.0.1: the confined network reaches only host loopback ports", v)
	}
	return int(ap.Port()), nil
}

// checkHostName checks an RFC 1123 host name with at least one dot and a
// non-numeric top-level label (so that 10.0.0.1 is not a name).
func checkHostName(name string) error {
	if name == "" {
		return errors.New("empty")
	}
	if len(name) > maxHostName {
		return fmt.Errorf("longer than %d characters", maxHostName)
	}
	labels := strings.Split(name, ".")
	if len(labels) < 2 {
		return errors.New("needs at least two labels")
	}
	for _, l := range labels {
		if l == "" || len(l) > maxLabel {
			return fmt.Errorf("label %q must be 1-%d characters", l, maxLabel)
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with '-'", l)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("label %q has %q", l, string(rune(c)))
			}
		}
	}
	tld := labels[len(labels)-1]
	if strings.Trim(tld, "0123456789") == "" {
		return errors.New("looks like an IP address")
	}
	return nil
}

// checkHostPath validates a host path given by the user and returns it
// absolute and clean. Paths go into smolvm argv and Smolfile values that
// smolvm splits at ':' (volumes, --mount-socket, cp), so ':' and ',' are
// refused rather than trusted to a parser we do not control.
func checkHostPath(field, p string) (string, error) {
	if err := checkText(field, p); err != nil {
		return "", err
	}
	if p == "" {
		return "", fmt.Errorf("empty %s", field)
	}
	if len(p) > maxPath {
		return "", fmt.Errorf("%s is longer than %d bytes", field, maxPath)
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("%s %q: %w", field, p, err)
	}
	if strings.ContainsAny(abs, ":,") {
		return "", fmt.Errorf("%s %q contains ':' or ',', which smolvm would misread", field, abs)
	}
	return abs, nil
}

// smolvmProtectedSources are the host paths smolvm refuses as volume
// sources on Linux, after resolving symlinks: with everything below them
// when Tree is set, else only as themselves (src/data/storage.rs:52-68,
// 173-187 @ v1.9.3).
var smolvmProtectedSources = []struct {
	Path string
	Tree bool
}{
	{"/", false}, {"/var", false}, {"/var/run", true}, {"/var/log", true}, {"/etc", true},
	{"/boot", true}, {"/usr", true}, {"/bin", true}, {"/sbin", true}, {"/lib", true},
	{"/proc", true}, {"/sys", true}, {"/dev", true}, {"/run", true},
}

// checkVolumeSource refuses a volume source (resolved, absolute) that
// smolvm would refuse at create, naming the rule; what names the volume.
func checkVolumeSource(what, real string) error {
	if rule, ok := protectedSource(real); ok {
		return fmt.Errorf("%s %q %s: smolvm refuses to mount /, /var, or anything under /var/run, /var/log, /etc, /boot, /usr, /bin, /sbin, /lib, /proc, /sys, /dev or /run", what, real, rule)
	}
	return nil
}

// protectedSource returns the rule of smolvmProtectedSources that real
// (resolved, absolute) breaks, such as "is under /etc".
func protectedSource(real string) (string, bool) {
	for _, p := range smolvmProtectedSources {
		if real == p.Path {
			return "is " + p.Path, true
		}
		if p.Tree && within(real, p.Path) {
			return "is under " + p.Path, true
		}
	}
	return "", false
}

// Host directories no agent should be given as its workspace or a directory
// image, refused only as themselves, beyond smolvmProtectedSources.
var protectedDirs = []string{"/lib64", "/home", "/root", "/tmp"}

// checkWorkspace validates the workspace directory and resolves symlinks,
// so that the path smolvm mounts is the one we checked.
func checkWorkspace(p string) (string, error) {
	abs, err := checkHostPath("workspace", p)
	if err != nil {
		return "", err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("workspace %q does not exist", abs)
		}
		return "", fmt.Errorf("workspace %q: %w", abs, err)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("workspace %q: %w", abs, err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("workspace %q is not a directory", abs)
	}
	if strings.ContainsAny(real, ":,") {
		return "", fmt.Errorf("workspace %q resolves to %q, which contains ':' or ','", abs, real)
	}
	if err := checkVolumeSource("workspace", real); err != nil {
		return "", withHint(err, "give the agent a project directory outside those")
	}
	if slices.Contains(protectedDirs, real) {
		return "", fmt.Errorf("workspace %q is a system directory; give the agent a project directory", real)
	}
	return real, nil
}

// checkImage validates -image: a local docker save archive or an unpacked
// root filesystem directory, each checked as smolvm reads it (image.go); a
// directory is returned resolved (checkImageDir).
// smolvm reads any file at an absolute path as an archive, by its magic
// bytes; smolbottle also asks for one of the names smolvm itself takes as
// an archive (.tar, .tar.gz, .tgz, src/data/image_source.rs:49 @ v1.9.3) so
// that a stray file is not mistaken for an image. smolvm refuses registry
// images on a machine without network (src/config.rs:841-884 @ v1.9.3), and
// a bottle never has smolvm networking, so a registry reference gets a hint
// instead.
func checkImage(p string) (string, error) {
	if err := checkText("image", p); err != nil {
		return "", err
	}
	if p == "" {
		return "", withHint(errors.New("no -image given"), "pass a docker save archive of an image that holds the agent; "+hintBuildImage)
	}
	if _, err := os.Stat(p); err != nil && looksLikeRegistryRef(p) {
		return "", registryRefError(p)
	}
	abs, err := checkHostPath("image", p)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("image %q does not exist", abs)
		}
		return "", fmt.Errorf("image %q: %w", abs, err)
	}
	archive := isArchiveName(abs)
	switch {
	case fi.IsDir() && archive: // a guest may have swapped its archive for a link
		return "", fmt.Errorf("image %q is named as an archive but is a directory", abs)
	case fi.IsDir():
		if abs, err = checkImageDir(abs); err != nil {
			return "", err
		}
	case fi.Mode().IsRegular() && archive:
	default:
		return "", withHint(fmt.Errorf("image %q is neither a .tar, .tar.gz or .tgz archive nor a directory", abs), hintBuildImage)
	}
	if err := checkImageContent(abs, fi); err != nil {
		return "", err
	}
	return abs, nil
}

// checkImageDir resolves a directory image as smolvm does (it shares the
// canonical path, src/data/image_source.rs:177-194 @ v1.9.3) and refuses
// what a workspace may not be either: smolvm's protected volume sources
// and protectedDirs. checkGuestReach then refuses one that holds what the
// host trusts or the home directory.
func checkImageDir(abs string) (string, error) {
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", fmt.Errorf("image %q: %w", abs, err)
	}
	if strings.ContainsAny(real, ":,") {
		return "", fmt.Errorf("image %q resolves to %q, which contains ':' or ','", abs, real)
	}
	rule, ok := protectedSource(real)
	if !ok && slices.Contains(protectedDirs, real) {
		rule, ok = "is a system directory", true
	}
	if ok {
		return "", withHint(fmt.Errorf("image %q %s, which smolbottle refuses as a volume source: the guest is given all of a directory image", real, rule),
			"pass -image a root filesystem directory made for the bottle, or "+hintBuildImage)
	}
	return real, nil
}

// within reports whether path is dir or below it.
func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// What the guest must never reach. The workspace is mounted read-write into
// the guest. A directory image is given to the guest whole: smolvm shares
// it, resolved, by virtiofs as the lower layer of the guest's root
// filesystem (src/data/image_source.rs:177-194, src/agent/launcher.rs:
// 1706-1710, crates/smolvm-agent/src/storage.rs:2903-2905 @ v1.9.3), and
// mounts that share in the VM without MS_RDONLY (storage.rs:364-371). So
// neither may hold what the host trusts (hostOwnedPaths): the state root
// (stage pointers, the preflight cache, default stages), any bottle's
// stage (_supervise executes its plan.json, whose tools and sidecar
// commands run on the host), smolbottle (whose supervisor holds the
// credentials) and its directory, every directory on PATH (where the
// programs are looked up: a file planted early in PATH would be run
// instead), every program smolbottle runs on the host and every absolute
// argument of a sidecar command, and your home directory. Nor may the
// workspace or directory image of any other bottle the state root records
// hold any of these (its own stage aside): its guest may have written there
// already. This is checked before the preflight runs any program. A path
// counts as held when any place its resolution looks up is (resolution): a
// symlink or a directory inside the workspace redirects what is run.

// hostOwned is one host path the guest must not reach.
type hostOwned struct {
	what    string   // what it is, for the error
	path    string   // as given, absolute
	lookups []string // every place its resolution looks up, the resolved path last
	inside  bool     // a directory the workspace may not lie inside either
	fix     string   // how else to get it out of the way, for the hint
}

// recordedBottle is a bottle the state root records (stagelink.go), with
// the workspace and image its plan names ("" when it cannot be read).
type recordedBottle struct {
	Slug, Stage, Workspace, Image string
	Programs                      []string // what its plan runs or reads on the host: exec, cp and down run its smolvm
	Down                          string   // the command that takes it down
}

// guestReach is what checkGuestReach compares: what the guest is given
// against what the host trusts.
type guestReach struct {
	Workspace, Image, Stage string
	Root, Home              string           // the state root and $HOME; "" for none
	Self, ExeDir            string           // the smolbottle binary and its directory
	Path                    string           // $PATH, where programs are looked up
	Programs                [][2]string      // what and path of every program or argument used on the host
	Recorded                []recordedBottle // every bottle the state root records
}

// hostOwnedPaths lists what the guest must not reach, in a stable order.
func hostOwnedPaths(r guestReach) []hostOwned {
	var out []hostOwned
	add := func(what, path string, inside bool, fix string) {
		if abs, err := filepath.Abs(path); path != "" && err == nil {
			out = append(out, hostOwned{what, abs, resolution(abs), inside, fix})
		}
	}
	const install = "or install smolbottle and its tools outside it (make install puts them in ~/.local/bin)"
	add("the state root", r.Root, true, "or set SMOLBOTTLE_STATE to a directory outside it")
	add("this bottle's stage", r.Stage, true, "or pass -stage DIR outside it")
	for _, b := range r.Recorded {
		add(fmt.Sprintf("bottle %q's stage", b.Slug), b.Stage, true, "or remove that bottle first: "+b.Down)
		for _, p := range b.Programs {
			add(fmt.Sprintf("bottle %q's program", b.Slug), p, false, "or remove that bottle first: "+b.Down)
		}
	}
	add("smolbottle's directory", r.ExeDir, false, install)
	add("smolbottle", r.Self, false, install)
	for _, d := range filepath.SplitList(r.Path) {
		if filepath.IsAbs(d) { // findProgram skips the others
			add("the PATH directory", d, false, "or run smolbottle with that directory off PATH")
		}
	}
	for _, prog := range r.Programs {
		add(prog[0], prog[1], false, "or move it outside")
	}
	add("your home directory", r.Home, false, "")
	return out
}

// checkGuestReach refuses a workspace or a directory image that holds a
// host-owned path (or lies inside the state root or a stage), and a stage
// inside the workspace or directory image of a bottle the state root
// records.
func checkGuestReach(r guestReach) error {
	if r.Root != "" {
		var err error
		if r.Root, err = filepath.Abs(r.Root); err != nil {
			return fmt.Errorf("state root %q: %w", r.Root, err)
		}
	}
	owned := hostOwnedPaths(r)
	if err := reaches("workspace", r.Workspace, "the guest writes the workspace",
		"pass -workspace DIR: a project directory that holds none of smolbottle's files", owned); err != nil {
		return err
	}
	if isDir(r.Image) {
		if err := reaches("image", r.Image, "the guest is given all of a directory image",
			"pass -image a root filesystem directory made for the bottle, or a docker save archive", owned); err != nil {
			return err
		}
	}
	// Another bottle's guest may have written its workspace or image
	// already, and may still: neither may hold what this bottle runs or
	// trusts either (but for that bottle's own stage). Nor may either lie
	// strictly inside this bottle's, or this bottle's inside it: the guest
	// that writes the outer one could replace the inner one with a link (to
	// your home, say) before smolvm mounts it.
	mine := givenDirs(r.Workspace, r.Image)
	for _, b := range r.Recorded {
		if b.Stage == r.Stage {
			continue
		}
		others := slices.DeleteFunc(slices.Clone(owned), func(o hostOwned) bool { return o.path == b.Stage })
		for _, g := range givenDirs(b.Workspace, b.Image) {
			field, dir := g[0], g[1]
			what := fmt.Sprintf("bottle %q's %s", b.Slug, field)
			if err := reaches(what, dir, "that bottle's guest may have written anything in it",
				"keep it clear of what smolbottle runs and trusts: take that directory off PATH, or pass another -stage; do not run anything from it on the host before you have checked it", others); err != nil {
				return err
			}
			for _, m := range mine {
				if nested(m[1], dir) || nested(dir, m[1]) {
					return withHint(fmt.Errorf("%s %q and %s %q lie one inside the other: the guest given the outer one could replace the inner one with a link before smolvm mounts it", m[0], m[1], what, dir),
						"pass a directory beside it, not inside it or around it; or remove that bottle first: "+b.Down)
				}
			}
			if isArchiveName(r.Image) && nested(r.Image, dir) {
				return withHint(fmt.Errorf("image %q is inside %s %q: that bottle's guest could rewrite it, and so choose what this bottle boots", r.Image, what, dir),
					"keep the archive outside every other bottle's workspace; or remove that bottle first: "+b.Down)
			}
		}
	}
	return nil
}

// isArchiveName reports whether an image path names an archive; checkImage
// holds such a path to a regular file, and any other to a directory.
func isArchiveName(p string) bool {
	return strings.HasSuffix(p, ".tar") || strings.HasSuffix(p, ".tar.gz") || strings.HasSuffix(p, ".tgz")
}

// givenDirs are the directories a bottle's guest is given: its workspace
// and a directory image (an archive goes on smolvm's standard input).
func givenDirs(workspace, image string) [][2]string {
	var out [][2]string
	if workspace != "" {
		out = append(out, [2]string{"workspace", workspace})
	}
	if isDir(image) {
		out = append(out, [2]string{"image", image})
	}
	return out
}

// nested reports whether inner resolves strictly inside outer.
func nested(inner, outer string) bool {
	ri, err1 := resolveExisting(inner)
	ro, err2 := resolveExisting(outer)
	return err1 == nil && err2 == nil && strings.HasPrefix(ri, ro+string(filepath.Separator))
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// reaches returns an error naming dir (field's value, resolved) and the
// first host-owned path it holds or lies inside; why says how the guest
// reaches dir, hint what to pass instead.
func reaches(field, dir, why, hint string, owned []hostOwned) error {
	for _, o := range owned {
		// Held: resolved into dir, or looked up below it on the way (dir
		// itself is only entered: the guest cannot replace it).
		real := o.lookups[len(o.lookups)-1]
		below := func(q string) bool { return q != dir && within(q, dir) }
		var rel, via string
		if i := slices.IndexFunc(o.lookups, below); i >= 0 || within(real, dir) {
			rel = "holds"
			switch {
			case i >= 0 && !within(o.path, o.lookups[i]) && o.lookups[i] != real:
				via = fmt.Sprintf(" (its resolution looks up %q)", o.lookups[i])
			case real != o.path && !within(o.path, dir):
				via = fmt.Sprintf(" (it resolves to %q)", real)
			}
		} else if o.inside && (within(dir, o.path) || within(dir, real)) {
			rel = "is inside"
		} else {
			continue
		}
		hints := []string{hint}
		if o.fix != "" {
			hints = append(hints, o.fix)
		}
		return withHint(fmt.Errorf("%s %q %s %s %q%s, which the guest must not reach: %s", field, dir, rel, o.what, o.path, via, why), hints...)
	}
	return nil
}

// resolution walks path (absolute) as the kernel resolves it and returns
// every place it looks up on the way, each symlink followed where it is
// met (a ".." after a link goes up from the link's target, not lexically),
// ending with the resolved path. A missing component is kept as it is and
// the walk goes on lexically, as resolveExisting does; the walk stops
// after 40 links (Linux's MAXSYMLINKS).
func resolution(path string) []string {
	var looked []string
	todo, dir, links := strings.Split(path, "/"), "/", 0
	for len(todo) > 0 {
		part := todo[0]
		todo = todo[1:]
		switch part {
		case "", ".":
			continue
		case "..":
			dir = filepath.Dir(dir) // dir holds no symlink: its parent is lexical
			continue
		}
		q := filepath.Join(dir, part)
		looked = append(looked, q)
		fi, err := os.Lstat(q)
		if err != nil || fi.Mode()&os.ModeSymlink == 0 {
			dir = q
			continue
		}
		target, err := os.Readlink(q)
		if links++; err != nil || links > 40 {
			dir = q
			continue
		}
		if filepath.IsAbs(target) {
			dir = "/"
		}
		todo = append(strings.Split(target, "/"), todo...)
	}
	return append(looked, dir)
}

// resolveExisting resolves the symlinks of the deepest existing ancestor
// of path (path itself if it exists) and appends the rest unchanged.
func resolveExisting(path string) (string, error) {
	rest := ""
	for p := path; ; p = filepath.Dir(p) {
		real, err := filepath.EvalSymlinks(p)
		if err == nil {
			return filepath.Join(real, rest), nil
		}
		if !errors.Is(err, os.ErrNotExist) || p == filepath.Dir(p) {
			return "", err
		}
		rest = filepath.Join(filepath.Base(p), rest)
	}
}

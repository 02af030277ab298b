package main

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// A bottle planned with -stage lives outside the state root. So that ls
// lists it and down, exec and cp find it by its slug alone, the state root
// keeps one pointer per such slug: <root>/SLUG.stage, a 0600 file holding
// the stage's absolute path. A slug never holds a '.', so a pointer never
// collides with a default stage directory. A pointer is trusted only after
// it is checked: a regular file (not a symlink) owned by the user, private,
// small, naming an absolute path whose plan.json is that slug's and was
// written for that very stage (readPlan).

const (
	stageLinkSuffix = ".stage"
	maxStageLink    = 4 << 10
)

// stageLinkPath is where slug's pointer lives under root.
func stageLinkPath(root, slug string) string { return filepath.Join(root, slug+stageLinkSuffix) }

// checkStageLink refuses to plan slug in a new stage while another stage,
// the one its pointer names or its default stage, still holds the slug's
// bottle: the two would share one machine name, and overwriting or
// removing the pointer would hide that bottle from ls and down. (A pointer
// that is unusable is replaced by recordStage.)
func checkStageLink(p *plan) error {
	root, err := stateRoot(os.Getenv)
	if err != nil {
		return nil
	}
	var others []string
	if old, err := readStageLink(root, p.Slug); err == nil {
		others = append(others, old)
	}
	if def, err := resolveExisting(filepath.Join(root, p.Slug)); err == nil {
		others = append(others, def)
	}
	for _, old := range others {
		if q, err := readPlan(old); err == nil && q.Slug == p.Slug && old != p.Stage {
			return withHint(fmt.Errorf("bottle %q is already staged in %q", p.Slug, old),
				"remove it first with: "+downCommand(p.Slug, old)+"; or choose another slug")
		}
	}
	return nil
}

// lockBottle takes the lock of p's stage and, when that is not its slug's
// default stage, the default stage's lock too: a slug has one machine
// name and one pointer, so two stages must not build or remove its bottle
// at once.
func lockBottle(p *plan) (func(), error) {
	unlockStage, err := lockStage(p.Stage)
	if err != nil {
		return nil, err
	}
	root, err := stateRoot(os.Getenv)
	if err != nil {
		return unlockStage, nil
	}
	def, err := resolveExisting(filepath.Join(root, p.Slug))
	if err != nil || def == p.Stage {
		return unlockStage, nil
	}
	unlockSlug, err := lockStage(def)
	if err != nil {
		unlockStage()
		return nil, err
	}
	return func() { unlockSlug(); unlockStage() }, nil
}

// recordStage writes slug's pointer when its stage is not the default one,
// and removes a pointer left by an earlier -stage when it is.
func recordStage(p *plan) error {
	root, err := stateRoot(os.Getenv)
	if err != nil {
		return nil // no state root: nothing to list from, nothing to record
	}
	link := stageLinkPath(root, p.Slug)
	if isDefaultStage(root, p.Slug, p.Stage) {
		if err := os.Remove(link); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return err
	}
	return writeFileAtomic(link, []byte(p.Stage+"\n"), 0o600)
}

// isDefaultStage reports whether stage is where slug alone puts it,
// compared as stageFor resolves it (through symlinks).
func isDefaultStage(root, slug, stage string) bool {
	def, err := resolveExisting(filepath.Join(root, slug))
	return err == nil && def == stage
}

// forgetStage removes slug's pointer if it names stage.
func forgetStage(slug, stage string) {
	root, err := stateRoot(os.Getenv)
	if err != nil {
		return
	}
	if s, err := readStageLink(root, slug); err == nil && s == stage {
		os.Remove(stageLinkPath(root, slug))
	}
}

// readStageLink reads and checks slug's pointer; fs.ErrNotExist when there
// is none.
func readStageLink(root, slug string) (string, error) {
	link := stageLinkPath(root, slug)
	b, err := readPrivateFile(link, "stage pointer", maxStageLink)
	if err != nil {
		return "", err
	}
	stage := strings.TrimSuffix(string(b), "\n")
	if !filepath.IsAbs(stage) || filepath.Clean(stage) != stage {
		return "", fmt.Errorf("stage pointer %q does not hold an absolute path", link)
	}
	if _, err := checkHostPath("stage", stage); err != nil {
		return "", fmt.Errorf("stage pointer %q: %w", link, err)
	}
	return stage, nil
}

// linkedStages returns the slugs and stages of every pointer under root
// whose stage holds that slug's plan.
func linkedStages(root string) map[string]string {
	out := map[string]string{}
	entries, err := os.ReadDir(root)
	if err != nil {
		return out
	}
	for _, e := range entries {
		slug, ok := strings.CutSuffix(e.Name(), stageLinkSuffix)
		if !ok || checkSlug(slug) != nil {
			continue
		}
		if stage, err := readStageLink(root, slug); err == nil {
			out[slug] = stage
		}
	}
	return out
}

// upCommand is the command that brings p's bottle up again as planned:
// up does not read an earlier plan, so every choice is on the line.
func upCommand(p *plan) string {
	argv := []string{"smolbottle", "up", "-image", p.Image, "-workspace", p.Workspace}
	if len(p.Allow) != 1 || p.Allow[0] != defaultAllow {
		for _, a := range p.Allow {
			argv = append(argv, "-allow", a)
		}
	}
	for _, s := range p.Sidecars {
		switch {
		case s.External:
			argv = append(argv, "-egress-proxy", "127.0.0.1:"+strconv.Itoa(s.Port))
		case s.Name == "git-gate" || s.Name == "supervise":
			argv = append(argv, "-"+s.Name, "-"+s.Name+"-cmd", strings.Join(s.Command, " "))
		}
	}
	if p.CPUs != defaultCPUs {
		argv = append(argv, "-cpus", strconv.Itoa(p.CPUs))
	}
	if p.MemMiB != defaultMemMiB {
		argv = append(argv, "-mem", strconv.Itoa(p.MemMiB))
	}
	if p.Backend != defaultBackend {
		argv = append(argv, "-backend", p.Backend)
	}
	return shellQuote(append(append(argv, stageArg(p.Slug, p.Stage)...), p.Slug))
}

// downCommand is the command that takes down slug's bottle in stage.
func downCommand(slug, stage string) string {
	return shellQuote(append(append([]string{"smolbottle", "down"}, stageArg(slug, stage)...), slug))
}

// stageArg is the -stage a command needs to find slug's bottle in stage:
// none for its default stage.
func stageArg(slug, stage string) []string {
	if root, err := stateRoot(os.Getenv); err == nil && isDefaultStage(root, slug, stage) {
		return nil
	}
	return []string{"-stage", stage}
}

// recordedBottles returns every bottle the state root records, in a
// stable order: the default stage directories under root and the stages
// its pointers name, each with the workspace and image its plan names
// ("" when the plan cannot be read). root is resolved first, as stageFor
// resolves a stage, so that the paths compare with those in plans.
func recordedBottles(root string) []recordedBottle {
	real, err := resolveExisting(root)
	if err != nil {
		return nil
	}
	entries, err := os.ReadDir(real)
	if err != nil {
		return nil
	}
	var out []recordedBottle
	for _, e := range entries {
		// A default stage may be a symlink to a directory: stageFor
		// resolves it, and so does this.
		stage, err := resolveExisting(filepath.Join(real, e.Name()))
		if err == nil && isDir(stage) && checkSlug(e.Name()) == nil {
			out = append(out, recordedBottle{Slug: e.Name(), Stage: stage})
		}
	}
	links := linkedStages(real)
	for _, slug := range slices.Sorted(maps.Keys(links)) {
		out = append(out, recordedBottle{Slug: slug, Stage: links[slug]})
	}
	for i, b := range out {
		out[i].Down = downCommand(b.Slug, b.Stage)
		if q, err := readPlan(b.Stage); err == nil {
			out[i].Workspace, out[i].Image = q.Workspace, q.Image
			out[i].Programs = q.Tools.paths()
			for _, s := range q.Sidecars {
				out[i].Programs = append(out[i].Programs, hostArgs(s.Command)...)
			}
		}
	}
	return out
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"text/tabwriter"
)

// bottleInfo is one line of smolbottle ls.
type bottleInfo struct {
	Slug    string `json:"slug"`
	State   string `json:"state"` // planned, running, stale
	Machine string `json:"machine"`
	Subnet  string `json:"subnet"`
	Stage   string `json:"stage"`
}

// listBottles reads every stage under root. A stage with a state file whose
// supervisor is alive is running; one whose supervisor is gone is stale and
// needs down; one with only a plan is planned.
func listBottles(root string) ([]bottleInfo, error) {
	entries, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []bottleInfo
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		stage := filepath.Join(root, e.Name())
		p, err := readPlan(stage)
		if err != nil {
			continue // not a stage: ls reports bottles, not every directory
		}
		b := bottleInfo{Slug: p.Slug, State: "planned", Machine: p.Machine, Subnet: p.Net.Subnet.String(), Stage: stage}
		if st, ok, err := readState(stage); err == nil && ok {
			b.State = "stale"
			if st.Supervisor.alive() {
				b.State = "running"
			}
		}
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Slug < out[j].Slug })
	return out, nil
}

// readPlan reads the plan a stage was written from.
func readPlan(stage string) (*plan, error) {
	b, err := os.ReadFile(filepath.Join(stage, planFile))
	if err != nil {
		return nil, err
	}
	var p plan
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(stage, planFile), err)
	}
	if p.Stage != stage {
		return nil, fmt.Errorf("%s was written for stage %q", filepath.Join(stage, planFile), p.Stage)
	}
	return &p, nil
}

// cmdLs implements smolbottle ls.
func cmdLs(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("ls", stderr)
	asJSON := fs.Bool("json", false, "")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError("%v", err)
	}
	if len(pos) > 0 {
		return usageError("ls takes no arguments")
	}
	root, err := stateRoot(os.Getenv)
	if err != nil {
		return err
	}
	bottles, err := listBottles(root)
	if err != nil {
		return err
	}
	if *asJSON {
		if bottles == nil {
			bottles = []bottleInfo{}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(bottles)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SLUG\tSTATE\tMACHINE\tSUBNET\tSTAGE")
	for _, b := range bottles {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", b.Slug, b.State, b.Machine, b.Subnet, b.Stage)
	}
	return tw.Flush()
}

package main

import (
	"go/ast"
	"go/build"
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"testing"
)

// TestCoreNeverStartsStockGvproxy proves from the source, not by grep, that
// no code path of up, run, exec, cp, down, _supervise or the internal
// commands a bottle starts (_confine, _dropexec, _guestnet, _probe) can
// reach startStockGvproxy, the selftest's unconfined negative control.
//
// The call graph is an over-approximation: every top-level function, method
// and package variable is a node named by its bare identifier (methods of
// every type share their name), and a node reaches every identifier its
// body or initializer mentions, called or not (function values, method
// expressions and interface calls included). Anything reachable in the real
// program is reachable here; only reflection could escape it, and the
// package uses none.
func TestCoreNeverStartsStockGvproxy(t *testing.T) {
	g := packageGraph(t)
	roots := []string{"cmdUp", "cmdRun", "cmdExec", "cmdCp", "cmdDown", "cmdLs", "cmdPlan", "cmdDoctor",
		"runSupervise", "runConfine", "runDropExec", "runGuestNet", "runProbeCmd"}
	for _, r := range roots {
		if _, ok := g[r]; !ok {
			t.Fatalf("root %s is not a function of the package: the test is out of date", r)
		}
	}
	core := reachable(g, roots...)
	// The analysis must be able to see a path: the core does reach the
	// confined start, and the selftest does reach the stock one.
	if !core["startConfined"] {
		t.Fatal("startConfined is not reachable from the core: the graph is broken")
	}
	if !reachable(g, "runSelftestHost")["startStockGvproxy"] {
		t.Fatal("startStockGvproxy is not reachable from the selftest: the graph is broken")
	}
	for _, harness := range []string{"startStockGvproxy", "startSelftestNet", "runSelftest", "runSelftestHost"} {
		if core[harness] {
			t.Errorf("%s is reachable from the core (%s)", harness, pathTo(g, roots, harness))
		}
	}
}

// packageGraph parses the package's non-test files for this platform and
// returns, per top-level name, the identifiers it mentions.
func packageGraph(t *testing.T) map[string]map[string]bool {
	t.Helper()
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	g := map[string]map[string]bool{}
	add := func(name string, n ast.Node) {
		if g[name] == nil {
			g[name] = map[string]bool{}
		}
		ast.Inspect(n, func(n ast.Node) bool {
			if id, ok := n.(*ast.Ident); ok {
				g[name][id.Name] = true
			}
			return true
		})
	}
	for _, name := range pkg.GoFiles {
		f, err := parser.ParseFile(fset, filepath.Join(pkg.Dir, name), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				if d.Body != nil {
					add(d.Name.Name, d.Body)
				}
			case *ast.GenDecl:
				for _, s := range d.Specs {
					if vs, ok := s.(*ast.ValueSpec); ok {
						for _, n := range vs.Names {
							add(n.Name, vs)
						}
					}
				}
			}
		}
	}
	return g
}

// reachable returns every node reachable from roots.
func reachable(g map[string]map[string]bool, roots ...string) map[string]bool {
	seen := map[string]bool{}
	todo := slices.Clone(roots)
	for len(todo) > 0 {
		n := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		if seen[n] {
			continue
		}
		seen[n] = true
		for m := range g[n] {
			if _, ok := g[m]; ok && !seen[m] {
				todo = append(todo, m)
			}
		}
	}
	return seen
}

// pathTo names one chain of references from a root to target, for the
// failure message.
func pathTo(g map[string]map[string]bool, roots []string, target string) []string {
	prev := map[string]string{}
	queue := slices.Clone(roots)
	for _, r := range roots {
		prev[r] = ""
	}
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		if n == target {
			var path []string
			for ; n != ""; n = prev[n] {
				path = append([]string{n}, path...)
			}
			return path
		}
		for m := range g[n] {
			if _, seen := prev[m]; !seen {
				if _, ok := g[m]; ok {
					prev[m] = n
					queue = append(queue, m)
				}
			}
		}
	}
	return nil
}

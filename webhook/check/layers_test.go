package check

import (
	"go/token"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"golang.org/x/tools/go/packages"
)

// layers are this package's files, each built only on those before it: a
// file may use what an earlier file declares, never what a later one does.
// A check goes down the list and back up once (handlers → check → index and
// tokenstate → handlers), and the index knows nothing of checks, answers or
// metrics.
var layers = []string{
	"identity.go",                        // who a ServiceUser is to Kubernetes
	"clientaddr.go",                      // where a request comes from
	"index.go",                           // hash → entry
	"quota.go",                           // a quota's decision
	"lastused.go",                        // uses and quota counts, written to status
	"check.go",                           // one presented token → one Verdict
	"leak.go",                            // leak reports → a queue, by ApiToken
	"leakstatus.go",                      // the queue → status.leakReports
	"ratelimit.go", "ratelimit_redis.go", // budgets and quotas charged
	"leaklimit.go",   // leak reporters' addresses and budgets
	"metrics.go",     // answers counted
	"leakmetrics.go", // leak reports counted
	"handlers.go",    // HTTP: parse, Check, charge, write, record
	"sharedtoken.go", // GitLab's token, from a file
	"leakhttp.go",    // HTTP: leak reports, GitHub's and GitLab's shapes
	"feedwatch.go",   // an ApiToken watch, decoded to what the index keeps
	"feed.go",        // informers → index
	"server.go",      // TLS serving
	"setup.go",       // wiring into the manager
}

// TestFilesUseOnlyTheLayersBelow type-checks the package and fails for a
// use, in one file, of a name (type, function, method, field, constant or
// variable) that a later file declares.
func TestFilesUseOnlyTheLayersBelow(t *testing.T) {
	pkgs, err := packages.Load(&packages.Config{
		Mode: packages.NeedName | packages.NeedFiles | packages.NeedSyntax | packages.NeedTypes | packages.NeedTypesInfo,
		Dir:  ".",
	}, ".")
	if err != nil || len(pkgs) != 1 || len(pkgs[0].Errors) > 0 {
		t.Fatalf("loading the package: %v %v", err, pkgs)
	}
	pkg := pkgs[0]
	rank := map[string]int{}
	for i, f := range layers {
		rank[f] = i
	}
	fileOf := func(p token.Pos) string { return filepath.Base(pkg.Fset.Position(p).Filename) }
	for _, f := range pkg.GoFiles {
		if _, ok := rank[filepath.Base(f)]; !ok {
			t.Errorf("%s has no place in layers: add it where it belongs", filepath.Base(f))
		}
	}
	uses := map[string]map[string][]string{} // file → later file → names
	for id, obj := range pkg.TypesInfo.Uses {
		if obj.Pkg() != pkg.Types || !obj.Pos().IsValid() {
			continue
		}
		from, to := fileOf(id.Pos()), fileOf(obj.Pos())
		if rank[to] <= rank[from] {
			continue
		}
		if uses[from] == nil {
			uses[from] = map[string][]string{}
		}
		if !slices.Contains(uses[from][to], obj.Name()) {
			uses[from][to] = append(uses[from][to], obj.Name())
		}
	}
	for from, tos := range uses {
		for to, names := range tos {
			sort.Strings(names)
			t.Errorf("%s uses %s, declared in %s, a file built on it", from, strings.Join(names, ", "), to)
		}
	}
}

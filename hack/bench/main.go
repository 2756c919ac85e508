// Command bench is `make bench`: it measures every figure of
// docs/performance.md against a baseline run in the same process, on the same
// machine, interleaved where the two sides could drift apart, and rewrites
// the generated blocks of that document in place.
//
// A generated block sits between two markers, so the prose around it (what a
// profile showed, why a target is missed) stays hand-written:
//
//	<!-- bench:NAME -->
//	…replaced on every run…
//	<!-- /bench:NAME -->
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keymint/keymint/internal/testenv"
)

// A section measures one group of figures and returns its Markdown block.
type section struct {
	name  string
	about string
	run   func(ctx context.Context, env *env) (string, error)
	// optIn sections run only when -only names them, and print their
	// block rather than write it: tools to look closer, not figures.
	optIn bool
}

// sections run in this order; -only picks some of them.
var sections = []section{
	{"run", "machine, date, Go version, commit", runInfo, false},
	{"micro", "go test benchmarks: token format, verdict, in-process check and /check", runMicro, false},
	{"http", "loopback TLS load (vegeta): /check and TokenReview against a bare Go server", runHTTP, false},
	{"cluster", "against a local control plane: issuance, revocation reach, memory and etcd size per token, restart", runCluster, false},
	{"scale", "a million tokens simulated: index memory and build time, relist", runScale, false},
	{"restart", "opt-in: CPU profiles of a leader's and a follower's restart at the largest -memory-tokens count (keep the tokens with -etcd-data)", runRestart, true},
}

// env is what every section may use.
type env struct {
	root         string   // the repository
	quick        bool     // shorter runs: a smoke test of the harness, not figures to publish
	million      bool     // the scale section also relists a million tokens (memory hungry)
	sections     []string // the sections this run measures
	memoryTokens []int    // token counts the cluster section measures memory at
	etcdData     string   // if set, the control plane's etcd keeps its data here between runs
	log          func(format string, args ...any)
}

// benchFlags are the bench's own flags (not the ones libraries register on
// the default set, such as -kubeconfig).
var benchFlags = flag.NewFlagSet("bench", flag.ExitOnError)

func main() {
	doc := benchFlags.String("doc", "docs/performance.md", "document whose generated blocks are rewritten")
	only := benchFlags.String("only", "", "comma-separated sections to run (default: all but the opt-in ones): "+names())
	quick := benchFlags.Bool("quick", false, "short runs, to try the harness; the figures are not worth publishing (implies -print unless -doc is set)")
	dryRun := benchFlags.Bool("print", false, "print the blocks instead of rewriting the document")
	million := benchFlags.Bool("million", false, "scale: also decode and cache a million tokens, rather than extrapolate from 100,000 (about 15 GB of memory and 10 more minutes)")
	memoryTokens := benchFlags.String("memory-tokens", "10000,100000", "cluster: token counts, issued through keymint, to measure memory at (100,000 takes about 25 minutes here)")
	etcdData := benchFlags.String("etcd-data", "", "for -only restart: keep the control plane's etcd data (the tokens issued) in this directory, so the next run starts with them (an empty or kept directory, used by nothing else)")
	benchFlags.Usage = usage
	_ = benchFlags.Parse(os.Args[1:])
	docSet := false
	benchFlags.Visit(func(f *flag.Flag) { docSet = docSet || f.Name == "doc" })
	if *quick && !docSet {
		*dryRun = true // a quick run's figures never land in the tracked document by accident
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var counts []int
	for _, f := range strings.Split(*memoryTokens, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			fmt.Fprintf(os.Stderr, "bench: -memory-tokens: %q is not a positive count\n", f)
			os.Exit(2)
		}
		counts = append(counts, n)
	}
	if err := run(ctx, *doc, *only, *quick, *million, *dryRun, counts, *etcdData); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintf(os.Stderr, `Usage: go run ./hack/bench [flags]   (make bench runs it with no flags)

Measures the figures of docs/performance.md, each against a baseline in the same
run, and rewrites the document's generated blocks, section by section (an
interrupted run keeps the sections it finished). Everything takes about 45
minutes on a 2-core machine, most of it issuing 100,000 tokens; run it on an
otherwise idle machine. The cluster section needs the control plane that
make control-plane builds.

Sections:
`)
	for _, s := range sections {
		fmt.Fprintf(os.Stderr, "  %-8s %s\n", s.name, s.about)
	}
	fmt.Fprintf(os.Stderr, "\nFlags:\n")
	benchFlags.PrintDefaults()
}

func names() string {
	var n []string
	for _, s := range sections {
		n = append(n, s.name)
	}
	return strings.Join(n, ",")
}

func run(ctx context.Context, docPath, only string, quick, million, dryRun bool, memoryTokens []int, etcdData string) error {
	root, err := testenv.RepoRoot()
	if err != nil {
		return err
	}
	if !filepath.IsAbs(docPath) {
		docPath = filepath.Join(root, docPath)
	}
	var wanted, measured []string
	for _, n := range strings.Split(only, ",") {
		if n = strings.TrimSpace(n); n != "" {
			if !slices.ContainsFunc(sections, func(s section) bool { return s.name == n }) {
				return fmt.Errorf("-only: no section %q; sections are %s", n, names())
			}
			wanted = append(wanted, n)
		}
	}
	var picked []section
	writes := false // a picked section rewrites its block
	for _, s := range sections {
		if (len(wanted) == 0 && !s.optIn) || slices.Contains(wanted, s.name) {
			picked = append(picked, s)
			if !s.optIn && s.name != "run" {
				if etcdData != "" {
					return fmt.Errorf("-etcd-data is for -only restart: section %s measures from a cluster with no tokens", s.name)
				}
				writes = true
			}
		}
	}
	// The run block says when and where the blocks beside it were
	// measured: it is rewritten with any of them.
	if writes && !dryRun && !slices.ContainsFunc(picked, func(s section) bool { return s.name == "run" }) {
		picked = append([]section{sections[0]}, picked...)
	}
	for _, s := range picked {
		measured = append(measured, s.name)
	}
	e := &env{root: root, quick: quick, million: million, sections: measured, memoryTokens: memoryTokens, etcdData: etcdData, log: func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
	}}
	blocks := map[string]string{}
	for _, s := range picked {
		e.log("== %s: %s", s.name, s.about)
		start := time.Now()
		out, err := s.run(ctx, e)
		if err != nil {
			return fmt.Errorf("section %s: %w", s.name, err)
		}
		blocks[s.name] = out
		e.log("== %s done in %s", s.name, time.Since(start).Round(time.Second))
		if dryRun || s.optIn {
			fmt.Printf("<!-- bench:%s -->\n%s<!-- /bench:%s -->\n\n", s.name, out, s.name)
			continue
		}
		// Write after each section, so a long run interrupted later keeps
		// what it measured.
		if err := rewriteFile(docPath, map[string]string{s.name: out}); err != nil {
			return err
		}
	}
	if !dryRun {
		e.log("wrote %s", docPath)
	}
	return nil
}

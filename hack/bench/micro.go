package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// The packages whose go test benchmarks make the in-process figures, and
// the benchmarks of each that the tables use (BenchmarkIndexMemory is the
// scale section's business).
var (
	microPackages = []string{"./internal/token", "./internal/tokenstate", "./webhook/check"}
	microBenches  = map[string]string{
		"./internal/token":      "^Benchmark(Mint|Parse|Hash|HashString|BaselineRandomHex|BaselineSHA256)$",
		"./internal/tokenstate": "^BenchmarkCheck$",
		"./webhook/check":       "^Benchmark(Check|BaselineHashLookup|CheckHandler|CheckHandlerPolicies|BaselineHandler|Limiter|FeedWatch|BaselineClientGoWatch)$",
	}
)

// benchSample is one line of `go test -bench` output.
type benchSample struct {
	nsPerOp, bytesPerOp, allocsPerOp float64
}

var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+([\d.]+) ns/op(?:\s+[\d.]+ MB/s)?(?:\s+([\d.]+) B/op\s+([\d.]+) allocs/op)?`)

// runMicro builds each package's test binary once, then runs them round-robin
// (token, tokenstate, check, token, …) so that a slow minute of the machine
// hits every benchmark and its baseline alike.
func runMicro(ctx context.Context, e *env) (string, error) {
	rounds, benchtime := 5, "1s"
	if e.quick {
		rounds, benchtime = 1, "100ms"
	}
	dir := filepath.Join(e.root, "bin", "bench")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	bins := map[string]string{}
	for _, pkg := range microPackages {
		bin := filepath.Join(dir, filepath.Base(pkg)+".test")
		cmd := exec.CommandContext(ctx, "go", "test", "-c", "-o", bin, pkg)
		cmd.Dir, cmd.Stderr = e.root, os.Stderr
		if err := cmd.Run(); err != nil {
			return "", fmt.Errorf("go test -c %s: %w", pkg, err)
		}
		bins[pkg] = bin
	}
	samples := map[string][]benchSample{} // "pkg.Benchmark/sub" → one sample per round
	for round := range rounds {
		for _, pkg := range microPackages {
			e.log("micro: round %d/%d, %s", round+1, rounds, pkg)
			cmd := exec.CommandContext(ctx, bins[pkg], "-test.run", "^$", "-test.bench", microBenches[pkg], "-test.benchmem", "-test.benchtime", benchtime)
			cmd.Dir = filepath.Join(e.root, pkg)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, os.Stderr
			if err := cmd.Run(); err != nil {
				return "", fmt.Errorf("%s benchmarks: %w\n%s", pkg, err, out.String())
			}
			for name, s := range parseBench(out.String()) {
				key := filepath.Base(pkg) + "." + name
				samples[key] = append(samples[key], s)
			}
		}
	}
	return microTables(samples, rounds, benchtime)
}

func parseBench(out string) map[string]benchSample {
	res := map[string]benchSample{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		var s benchSample
		s.nsPerOp, _ = strconv.ParseFloat(m[2], 64)
		if m[3] != "" {
			s.bytesPerOp, _ = strconv.ParseFloat(m[3], 64)
			s.allocsPerOp, _ = strconv.ParseFloat(m[4], 64)
		}
		res[m[1]] = s
	}
	return res
}

// stat is the median of a benchmark's rounds.
type stat struct {
	ns, lo, hi, bytes, allocs float64
	ok                        bool
}

func statOf(samples map[string][]benchSample, key string) stat {
	ss := samples[key]
	if len(ss) == 0 {
		return stat{}
	}
	var ns []float64
	st := stat{ok: true, lo: ss[0].nsPerOp, hi: ss[0].nsPerOp}
	for _, s := range ss {
		ns = append(ns, s.nsPerOp)
		st.lo, st.hi = min(st.lo, s.nsPerOp), max(st.hi, s.nsPerOp)
		st.bytes, st.allocs = max(st.bytes, s.bytesPerOp), max(st.allocs, s.allocsPerOp)
	}
	st.ns = median(ns)
	return st
}

func microTables(samples map[string][]benchSample, rounds int, benchtime string) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "%d rounds of every benchmark, round-robin across packages, `-benchtime %s`; median ns/op, range, worst B/op and allocs/op.\n\n", rounds, benchtime)
	row := func(what, key, baseKey, target string, met func(stat, stat) bool) {
		s := statOf(samples, key)
		if !s.ok {
			fmt.Fprintf(&b, "| %s | not run | | | | | |\n", what)
			return
		}
		base, r, v := "", "", ""
		if baseKey != "" {
			if bs := statOf(samples, baseKey); bs.ok {
				base, r = fmt.Sprintf("%.1f", bs.ns), ratio(s.ns, bs.ns)
				if met != nil {
					v = verdict(met(s, bs))
				}
			}
		} else if met != nil {
			v = verdict(met(s, stat{}))
		}
		if target != "" {
			v = strings.TrimSpace(target + " " + v)
		}
		fmt.Fprintf(&b, "| %s | %.1f | %.1f–%.1f | %.0f | %.0f | %s | %s | %s |\n", what, s.ns, s.lo, s.hi, s.bytes, s.allocs, base, r, v)
	}
	header := "| benchmark | ns/op | range | B/op | allocs/op | baseline ns/op | ratio | target |\n|---|---:|---:|---:|---:|---:|---:|---|\n"

	b.WriteString("**Token format** (`internal/token`). Baselines: 32 random bytes as hex; a bare SHA-256 of a token-sized string.\n\n")
	b.WriteString(header)
	row("`Mint`", "token.BenchmarkMint", "token.BenchmarkBaselineRandomHex", "", nil)
	row("`Parse` (shape and checksum)", "token.BenchmarkParse", "token.BenchmarkBaselineSHA256", "", nil)
	row("`Hash`", "token.BenchmarkHash", "token.BenchmarkBaselineSHA256", "", nil)
	row("`HashString` (`sha256:<hex>`, at mint only)", "token.BenchmarkHashString", "token.BenchmarkBaselineSHA256", "", nil)

	b.WriteString("\n**The verdict** (`internal/tokenstate.Check`), the one rule the controller and the check server share; no baseline.\n\n")
	b.WriteString(header)
	for _, name := range sortedKeys(samples, "tokenstate.BenchmarkCheck") {
		row("`"+strings.TrimPrefix(name, "tokenstate.Benchmark")+"`", name, "", "", nil)
	}

	b.WriteString("\n**One check in-process** (`webhook/check`): parse, hash, index lookup, verdict. Baseline: a SHA-256 and one map read, the least a hashed-token check can do, with as many tokens.\n\n")
	b.WriteString(header)
	checkTarget := func(s, _ stat) bool { return s.ns <= 200 && s.allocs == 0 }
	for _, n := range []string{"10", "100000", "1000000"} {
		row("`Check`, "+n+" tokens", "check.BenchmarkCheck/tokens="+n, "check.BenchmarkBaselineHashLookup/tokens="+n, "≤ 200 ns, 0 allocs:", checkTarget)
	}
	ten, million := statOf(samples, "check.BenchmarkCheck/tokens=10"), statOf(samples, "check.BenchmarkCheck/tokens=1000000")
	if ten.ok && million.ok {
		fmt.Fprintf(&b, "\nFlat from 10 to 1,000,000 tokens: a check at 1,000,000 costs %s× one at 10.\n", ratio(million.ns, ten.ns))
	}

	b.WriteString("\n**The whole `/check` answer in-process** (`webhook/check.CheckHandler`, the benchmark reuses its ResponseWriter, so net/http's own costs are not counted). Baseline: a handler writing a fixed 200 with the same writer.\n\n")
	b.WriteString(header)
	handlerTarget := func(s, _ stat) bool { return s.ns <= 1000 && s.allocs <= 3 }
	for _, n := range []string{"10", "100000"} {
		row("`CheckHandler`, "+n+" tokens", "check.BenchmarkCheckHandler/tokens="+n, "check.BenchmarkBaselineHandler", "≤ 1 µs, ≤ 3 allocs:", handlerTarget)
	}

	b.WriteString("\n**`/check` for a token under each policy of issue 22** (`webhook/check.CheckHandlerPolicies`, 10 tokens): a quota spent in process, an approved grant, source addresses, two metadata headers, and all four. Baseline: `CheckHandler` for a token with none; target within 10% of it.\n\n")
	b.WriteString(header)
	policyTarget := func(s, base stat) bool { return s.ns <= 1.1*base.ns && s.allocs == 0 }
	for _, p := range []string{"quota", "approval", "sources", "metadata", "all"} {
		row("`"+p+"`", "check.BenchmarkCheckHandlerPolicies/policy="+p, "check.BenchmarkCheckHandler/tokens=10", "≤ 1.1×, 0 allocs:", policyTarget)
	}

	b.WriteString("\n**One rate-limit decision** (`webhook/check.Limiter`, issue 13), for one of 1,000 tokens: in process, and through a real redis-server on loopback, with leases (what keymint does) and with a round trip per check. Baseline: the in-process decision.\n\n")
	b.WriteString(header)
	row("`Limiter`, in process", "check.BenchmarkLimiter/backend=local", "", "", nil)
	row("`Limiter`, Redis, leases", "check.BenchmarkLimiter/backend=redis/leases=true", "check.BenchmarkLimiter/backend=local", "", nil)
	row("`Limiter`, Redis, a round trip per check", "check.BenchmarkLimiter/backend=redis/leases=false", "check.BenchmarkLimiter/backend=local", "", nil)
	b.WriteString("\n**One ApiToken of the index's watch** (`webhook/check.WatchTokens`, issue 23), over loopback HTTP: what a replica spends on each token as it starts and streams them all. An ApiToken as kube-apiserver sends it (3.7 KB of JSON with its managed fields). Baseline: client-go's watch decoding the same stream into whole ApiTokens, as an informer does.\n\n")
	b.WriteString(header)
	row("`WatchTokens`, one event", "check.BenchmarkFeedWatch", "check.BenchmarkBaselineClientGoWatch", "< 0.5×:", func(s, base stat) bool { return s.ns < 0.5*base.ns })
	return b.String(), nil
}

// sortedKeys lists the sample keys with prefix, in order.
func sortedKeys(samples map[string][]benchSample, prefix string) []string {
	var keys []string
	for k := range samples {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

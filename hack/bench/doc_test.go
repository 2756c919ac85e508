package main

import (
	"strings"
	"testing"
)

func TestRewrite(t *testing.T) {
	doc := "# Perf\n\nprose\n<!-- bench:a -->\nold a\n<!-- /bench:a -->\nmore prose\n<!-- bench:b -->\nold b\n<!-- /bench:b -->\n"
	got, err := rewrite(doc, map[string]string{"a": "new a\nline 2"})
	if err != nil {
		t.Fatal(err)
	}
	want := "# Perf\n\nprose\n<!-- bench:a -->\nnew a\nline 2\n<!-- /bench:a -->\nmore prose\n<!-- bench:b -->\nold b\n<!-- /bench:b -->\n"
	if got != want {
		t.Errorf("rewrite:\n%s\nwant:\n%s", got, want)
	}
	if _, err := rewrite(doc, map[string]string{"c": "x"}); err == nil || !strings.Contains(err.Error(), "bench:c") {
		t.Errorf("a block missing from the document: err = %v, want one naming bench:c", err)
	}
	if _, err := rewrite("<!-- bench:a -->\nno end\n", map[string]string{"a": "x"}); err == nil {
		t.Error("an unclosed block was accepted")
	}
}

// A benchmark that sets bytes prints MB/s between ns/op and B/op: its
// allocations are read all the same.
func TestBenchLineReadsAllocationsAfterThroughput(t *testing.T) {
	for line, want := range map[string][3]string{
		"BenchmarkFeedWatch-2   	    3000	     59224 ns/op	  62.69 MB/s	    5214 B/op	      62 allocs/op": {"59224", "5214", "62"},
		"BenchmarkCheck/tokens=10-2   	 1000	     181.0 ns/op	       0 B/op	       0 allocs/op":           {"181.0", "0", "0"},
	} {
		m := benchLine.FindStringSubmatch(line)
		if m == nil || [3]string{m[2], m[3], m[4]} != want {
			t.Errorf("%q: read %q, want ns/op, B/op, allocs/op %q", line, m, want)
		}
	}
}

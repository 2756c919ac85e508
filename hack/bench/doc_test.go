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

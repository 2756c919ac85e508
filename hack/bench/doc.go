package main

import (
	"fmt"
	"os"
	"strings"
)

// rewriteFile replaces the named generated blocks of the document at path.
func rewriteFile(path string, blocks map[string]string) error {
	old, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	updated, err := rewrite(string(old), blocks)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return os.WriteFile(path, []byte(updated), 0o644)
}

// rewrite replaces the body of each `<!-- bench:NAME -->` … `<!-- /bench:NAME -->`
// block named in blocks. A block missing from the document is an error: a
// figure measured and then silently dropped would be worse than none.
func rewrite(doc string, blocks map[string]string) (string, error) {
	for name, body := range blocks {
		begin, end := "<!-- bench:"+name+" -->\n", "<!-- /bench:"+name+" -->"
		i := strings.Index(doc, begin)
		if i < 0 {
			return "", fmt.Errorf("no %q marker: add the block's two markers where its figures belong", strings.TrimSpace(begin))
		}
		j := strings.Index(doc[i+len(begin):], end)
		if j < 0 {
			return "", fmt.Errorf("block %s has no closing %q", name, end)
		}
		if body != "" && !strings.HasSuffix(body, "\n") {
			body += "\n"
		}
		doc = doc[:i+len(begin)] + body + doc[i+len(begin)+j:]
	}
	return doc, nil
}

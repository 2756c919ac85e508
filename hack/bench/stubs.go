package main

import "context"

// Placeholders until each section is written; each lives in its own file.
func runScale(context.Context, *env) (string, error) { return "_not measured yet_\n", nil }

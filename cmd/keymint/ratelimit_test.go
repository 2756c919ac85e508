package main

import (
	"context"
	"strings"
	"testing"

	"github.com/go-logr/logr"
)

func TestRedisURLErrorsNeverShowThePassword(t *testing.T) {
	const password = "s3cretpass"
	for name, f := range map[string]rateLimitFlags{
		"flag": {backend: "redis", failure: "open", url: "redis://user:" + password + "@host:63x9/0"},
		"env":  {backend: "redis", failure: "open"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv(redisURLEnv, "")
			if f.url == "" {
				t.Setenv(redisURLEnv, "redis://user:"+password+"@host:63x9/0")
			}
			_, err := f.limiter(context.Background(), nil, logr.Discard())
			if err == nil {
				t.Fatal("a URL with port 63x9 was accepted")
			}
			if strings.Contains(err.Error(), password) {
				t.Errorf("the error shows the password: %v", err)
			}
			if !strings.Contains(err.Error(), "not a Redis URL") {
				t.Errorf("the error does not say what is wrong: %v", err)
			}
		})
	}
}

func TestRedisURLNeedsTheRedisBackend(t *testing.T) {
	t.Setenv(redisURLEnv, "redis://127.0.0.1:6379/0")
	if _, err := (rateLimitFlags{backend: "local", failure: "open"}).limiter(context.Background(), nil, logr.Discard()); err == nil {
		t.Error("a Redis URL with --rate-limit-backend=local was accepted: budgets would silently stay per replica")
	}
}

package main

import (
	"context"
	"fmt"
	neturl "net/url"
	"os"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/keymint/keymint/webhook/check"
)

// rateLimitFlags are the flags that choose where rate-limit budgets live.
type rateLimitFlags struct {
	backend string
	url     string
	failure string
}

// redisURLEnv is where keymint reads the Redis URL when --redis-url is
// unset: from a Secret, through the pod's environment, the password never
// shows in the process's arguments.
const redisURLEnv = "KEYMINT_REDIS_URL"

// redactURL removes url, and the password in it, from an error message.
func redactURL(msg, url string) string {
	msg = strings.ReplaceAll(msg, url, "<the URL>")
	if u, err := neturl.Parse(url); err == nil && u.User != nil {
		if p, ok := u.User.Password(); ok && p != "" {
			msg = strings.ReplaceAll(msg, p, "<password>")
		}
	}
	return msg
}

// quietRedisLogger drops go-redis's own logging (one line per failed dial,
// on the check path); the limiter logs a lost and a regained store once.
type quietRedisLogger struct{}

func (quietRedisLogger) Printf(context.Context, string, ...any) {}

// limiter builds the limiter the flags ask for: nil for "local" (the check
// server keeps budgets in process), a RedisLimiter for "redis". A Redis
// that does not answer at start is not fatal: fail open or closed applies,
// and the limiter recovers when it comes up.
func (f rateLimitFlags) limiter(ctx context.Context, reg prometheus.Registerer, log logr.Logger) (check.RateLimiter, error) {
	switch f.backend {
	case "local":
		if f.url != "" || os.Getenv(redisURLEnv) != "" {
			return nil, fmt.Errorf("a Redis URL is set (--redis-url or %s) but --rate-limit-backend is %q: set --rate-limit-backend=redis to use it", redisURLEnv, f.backend)
		}
		return nil, nil
	case "redis":
	default:
		return nil, fmt.Errorf("--rate-limit-backend must be local or redis, not %q", f.backend)
	}
	mode, err := check.ParseFailureMode(f.failure)
	if err != nil {
		return nil, err
	}
	url, from := f.url, "--redis-url"
	if url == "" {
		url, from = os.Getenv(redisURLEnv), redisURLEnv
	}
	if url == "" {
		return nil, fmt.Errorf("--rate-limit-backend=redis needs the Redis URL in environment variable %s (keeps a password out of the command line) or --redis-url, such as redis://redis.keymint-system.svc:6379/0 (rediss:// for TLS)", redisURLEnv)
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		// The parser's error quotes the URL, password and all.
		return nil, fmt.Errorf("%s is not a Redis URL (redis://[user:password@]host:port/db or rediss://…): %s", from, redactURL(err.Error(), url))
	}
	// A check waits at most this long for Redis; no retries on the check
	// path: a failure falls back (or refuses) at once.
	opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout, opts.PoolTimeout = 250*time.Millisecond, 100*time.Millisecond, 100*time.Millisecond, 100*time.Millisecond
	opts.MaxRetries = -1
	redis.SetLogger(quietRedisLogger{})
	l, err := check.NewRedisLimiter(redis.NewClient(opts), mode, reg)
	if err != nil {
		return nil, err
	}
	pingCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := l.Ping(pingCtx); err != nil {
		log.Error(err, "Starting without the shared rate-limit store", "failureMode", mode)
	}
	return l, nil
}

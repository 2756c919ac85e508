// The controllers' own cache: started on the leader only, so that a replica
// that only answers checks holds no ApiToken or Secret objects.

package controllers

import (
	"context"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
)

// Cache is the cache the controllers watch and read, with a client that
// reads from it and writes to the API server. The manager starts it only on
// the elected leader, before or with the controllers (which wait for its
// informers to sync): on the other replicas it holds nothing. The check
// server has a compact index of its own (webhook/check.Feed) and the
// admission webhooks read the manager's cache, so neither needs it.
type Cache struct {
	cache.Cache
	client client.Client
	after  atomic.Pointer[func() bool]
}

// NewCache makes the controllers' cache with CacheOptions and adds it to the
// manager as a leader-only runnable. (Its informers are not followed by
// internal/freshness: on a follower they exist, never started, and would
// read as stale for good.) Each of with changes the options first (tests
// watch some namespaces only).
func NewCache(mgr ctrl.Manager, with ...func(*cache.Options)) (*Cache, error) {
	opts := CacheOptions()
	opts.Scheme, opts.Mapper, opts.HTTPClient = mgr.GetScheme(), mgr.GetRESTMapper(), mgr.GetHTTPClient()
	for _, f := range with {
		f(&opts)
	}
	c, err := cache.New(mgr.GetConfig(), opts)
	if err != nil {
		return nil, err
	}
	cc := &Cache{Cache: c, client: cacheReads{Client: mgr.GetClient(), cache: c}}
	if err := mgr.Add(leaderOnly{cc}); err != nil {
		return nil, err
	}
	return cc, nil
}

// StartAfter makes the cache start only once ready reports true (or
// startAfterAtMost has passed), on the leader. The check server's index
// passes its own sync: a leader that starts cold lists every ApiToken for
// the index first, and is ready to answer checks as soon as a follower
// would, rather than listing them twice at once; its controllers start
// after. A follower that becomes leader has its index already.
func (c *Cache) StartAfter(ready func() bool) { c.after.Store(&ready) }

// startAfterAtMost bounds StartAfter's wait: the controllers run, if late,
// even while the index cannot list (its readiness says why).
const startAfterAtMost = 5 * time.Minute

// start runs the cache once StartAfter's condition holds.
func (c *Cache) start(ctx context.Context) error {
	if ready := c.after.Load(); ready != nil {
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, startAfterAtMost, true,
			func(context.Context) (bool, error) { return (*ready)(), nil })
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			logf.FromContext(ctx).Info("Starting the controllers' cache before the check index has synced", "waited", startAfterAtMost)
		}
	}
	return c.Cache.Start(ctx)
}

// Client reads from the cache and writes as the manager's client does.
func (c *Cache) Client() client.Client { return c.client }

// cacheReads is the manager's client with Get and List served by another
// cache.
type cacheReads struct {
	client.Client
	cache client.Reader
}

func (c cacheReads) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	return c.cache.Get(ctx, key, obj, opts...)
}

func (c cacheReads) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	return c.cache.List(ctx, list, opts...)
}

// leaderOnly runs a cache on the leader only. (The manager starts anything
// with a GetCache method on every replica, with its own caches; this type
// has none.)
type leaderOnly struct{ c *Cache }

func (l leaderOnly) Start(ctx context.Context) error { return l.c.start(ctx) }
func (leaderOnly) NeedLeaderElection() bool          { return true }

package main

// lastused.go: the use-driven writes (lastUsedAt, tokenLastUsedAt,
// status.quota) of tokens in constant use, simulated: real UsageFlushers,
// one per replica, each seeing a check of every token at every flush, over
// a fake clock and a fake API server (controller-runtime's fake client)
// holding the scale fixture's objects; every status write counted, with the
// bytes of the ApiToken it stores (etcd keeps each as a new revision).

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/token"
	"github.com/keymint/keymint/webhook/check"
)

// lastUsedFlush is the check server's --last-used-flush-interval default.
const lastUsedFlush = 10 * time.Second

// lastUsedRun is one simulation: n tokens (users of scaleTokensPerUser
// tokens each, with maxIdle when set) behind replicas, for a simulated span.
type lastUsedRun struct {
	n, replicas int
	span        time.Duration
	maxIdle     time.Duration
	// flush is each replica's flush interval; zero: lastUsedFlush.
	flush time.Duration
}

// lastUsedResult is what the API server received.
type lastUsedResult struct {
	lastUsedRun
	writes int
	bytes  int64 // the stored ApiTokens of those writes, as JSON
	reads  int   // the flushers' reads of ApiTokens from the API server
}

// perSecondAt is the cluster's write rate for tokens in constant use,
// scaled from n to total tokens.
func (r lastUsedResult) perSecondAt(tokens int) float64 {
	return float64(r.writes) / float64(r.n) * float64(tokens) / r.span.Seconds()
}

// bytesPerTokenHour is what one token in constant use writes into etcd an
// hour.
func (r lastUsedResult) bytesPerTokenHour() float64 {
	return float64(r.bytes) / float64(r.n) / r.span.Hours()
}

// simulateLastUsed runs run and counts the status writes. Every replica
// sees a check of every token just before each of its flushes, the worst
// case: every token in constant use, on every replica.
func simulateLastUsed(ctx context.Context, f *scaleFixture, run lastUsedRun) (lastUsedResult, error) {
	res := lastUsedResult{lastUsedRun: run}
	var objs []client.Object
	keys := make([]types.NamespacedName, run.n)
	hashes := make([][32]byte, run.n)
	for u := 0; u*scaleTokensPerUser < run.n; u++ {
		su := f.user(u, true)
		if run.maxIdle > 0 {
			su.Spec.TokenPolicy.MaxIdle = &metav1.Duration{Duration: run.maxIdle}
		}
		objs = append(objs, su)
	}
	for i := range run.n {
		plain, err := token.Mint("billing")
		if err != nil {
			return res, err
		}
		tok, _ := f.token(i, plain, tokenShapeOf(i), true)
		// In use already, recorded at the start: the steady state.
		start := metav1.NewTime(f.now)
		tok.Status.LastUsedAt, tok.Status.TokenLastUsedAt = &start, &start
		objs = append(objs, tok)
		keys[i] = types.NamespacedName{Namespace: tok.Namespace, Name: tok.Name}
		hashes[i] = token.Hash(plain)
	}
	ix := check.NewIndex()
	c := fake.NewClientBuilder().WithScheme(f.scheme).WithObjects(objs...).WithStatusSubresource(&keymintv1alpha1.ApiToken{}).
		WithInterceptorFuncs(interceptor.Funcs{
			Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
				if _, ok := obj.(*keymintv1alpha1.ApiToken); ok {
					res.reads++
				}
				return c.Get(ctx, key, obj, opts...)
			},
			SubResourcePatch: func(ctx context.Context, c client.Client, sub string, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
				if err := c.SubResource(sub).Patch(ctx, obj, patch, opts...); err != nil {
					return err
				}
				// Every replica's index sees the write through its watch.
				if t, ok := obj.(*keymintv1alpha1.ApiToken); ok {
					ix.UpsertToken(check.StripToken(t.DeepCopy()))
				}
				stored, err := json.Marshal(obj)
				if err != nil {
					return err
				}
				res.writes++
				res.bytes += int64(len(stored))
				return nil
			},
		}).Build()
	clk := clocktesting.NewFakeClock(f.now)
	// One index stands for every replica's: each is fed by the same watch.
	for _, obj := range objs {
		switch o := obj.(type) {
		case *keymintv1alpha1.ServiceUser:
			ix.UpsertUser(o)
		case *keymintv1alpha1.ApiToken:
			ix.UpsertToken(check.StripToken(o.DeepCopy()))
		}
	}
	flushers := make([]*check.UsageFlusher, run.replicas)
	for r := range flushers {
		flushers[r] = &check.UsageFlusher{Usage: check.NewUsage(), Client: c, Index: ix, Clock: clk, Interval: cmp.Or(run.flush, lastUsedFlush), MinGap: time.Minute}
	}
	step := cmp.Or(run.flush, lastUsedFlush)
	for at := time.Duration(0); at < run.span; at += step {
		clk.Step(step)
		for _, fl := range flushers {
			for i, key := range keys {
				fl.Usage.Record(key, hashes[i], clk.Now())
			}
			fl.Flush(ctx)
		}
		if err := ctx.Err(); err != nil {
			return res, err
		}
	}
	return res, nil
}

// lastUsedReport is the markdown of the simulations.
func lastUsedReport(runs []lastUsedResult) string {
	var b strings.Builder
	b.WriteString("| tokens simulated | replicas | maxIdle | simulated | status writes | per token an hour | bytes into etcd per token an hour | at 1,000,000 tokens: writes/s | API reads per write |\n|---:|---:|---|---|---:|---:|---:|---:|---:|\n")
	for _, r := range runs {
		idle := "none"
		if r.maxIdle > 0 {
			idle = r.maxIdle.String()
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %.2f | %.0f B | %s | %.2f |\n", thousands(r.n), r.replicas, idle, r.span,
			thousands(r.writes), float64(r.writes)/float64(r.n)/r.span.Hours(), r.bytesPerTokenHour(), thousands(int(r.perSecondAt(scaleMillion))),
			float64(r.reads)/float64(max(r.writes, 1)))
	}
	return b.String()
}

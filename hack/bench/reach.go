package main

// reach.go: revocation reach, the manager's memory per token, and its time
// to ready after a restart.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

// revocationReach revokes n Ready tokens one at a time and measures, from
// the moment the revoking patch is sent, how long until every replica's
// check server refuses the token. The baseline is the same moment to the
// revocation arriving on a bare watch of the bench's own: the least any
// watch-fed system could do.
func (cl *cluster) revocationReach(ctx context.Context, e *env, b *strings.Builder, replicas ...*replica) error {
	n := 200
	if e.quick {
		n = 20
	}
	const ns = "bench-revoke"
	if err := cl.namespaceWithUser(ctx, ns); err != nil {
		return err
	}
	e.log("cluster: revocation reach: issuing %d tokens", n)
	if _, err := cl.issue(ctx, ns, n); err != nil {
		return err
	}
	plains := make([]string, n)
	for i := range n {
		sec := &corev1.Secret{}
		if err := cl.c.Get(ctx, types.NamespacedName{Namespace: ns, Name: fmt.Sprintf("t-%d", i)}, sec); err != nil {
			return err
		}
		plains[i] = string(sec.Data[keymintv1alpha1.SecretTokenKey])
		for _, r := range replicas {
			if code, err := r.check(plains[i]); err != nil || code != http.StatusOK {
				return fmt.Errorf("token t-%d before revocation: status %d, %v", i, code, err)
			}
		}
	}

	w, err := cl.c.Watch(ctx, &keymintv1alpha1.ApiTokenList{}, client.InNamespace(ns))
	if err != nil {
		return err
	}
	defer w.Stop()
	e.log("cluster: revocation reach: revoking %d tokens one at a time", n)
	var reach, watched, patched []time.Duration
	for i := range n {
		name := fmt.Sprintf("t-%d", i)
		sent := time.Now()
		patchDone := make(chan error, 1)
		go func() {
			tok := &keymintv1alpha1.ApiToken{}
			tok.Namespace, tok.Name = ns, name
			patchDone <- cl.c.Patch(ctx, tok, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"revoked":true}}`)))
		}()
		refused := make(chan time.Duration, len(replicas))
		for _, r := range replicas {
			go func() { refused <- pollUntilRefused(ctx, r, plains[i], sent) }()
		}
		var seen time.Duration
		for seen == 0 {
			select {
			case ev, ok := <-w.ResultChan():
				if !ok {
					return errors.New("watch closed")
				}
				if t, ok := ev.Object.(*keymintv1alpha1.ApiToken); ok && ev.Type == watch.Modified && t.Name == name && t.Spec.Revoked {
					seen = time.Since(sent)
				}
			case <-time.After(10 * time.Second):
				return fmt.Errorf("the bare watch never saw %s revoked", name)
			}
		}
		if err := <-patchDone; err != nil {
			return err
		}
		patched = append(patched, time.Since(sent))
		var last time.Duration
		for range replicas {
			d := <-refused
			if d < 0 {
				return fmt.Errorf("a replica still accepted %s 10 s after its revocation", name)
			}
			last = max(last, d)
		}
		reach, watched = append(reach, last), append(watched, seen)
	}
	slices.Sort(reach)
	slices.Sort(watched)
	rp99, wp99 := percentile(reach, 0.99), percentile(watched, 0.99)
	fmt.Fprintf(b, "**Revocation reach**: %d Ready tokens revoked one at a time (a merge patch of `spec.revoked`). Clock starts when the patch is sent; "+
		"keymint's figure ends when **every** replica's `/check` (%d replicas, polled back to back over keep-alive TLS) refuses the token; "+
		"the baseline ends when a bare watch in the bench process receives the change, the least any watch-fed system can do.\n\n", n, len(replicas))
	b.WriteString("| | p50 | p99 | max | ratio p99 | target |\n|---|---:|---:|---:|---:|---|\n")
	fmt.Fprintf(b, "| baseline: the change on a bare watch | %s | %s | %s | | |\n", ms(percentile(watched, 0.5)), ms(wp99), ms(watched[len(watched)-1]))
	fmt.Fprintf(b, "| keymint: every replica refuses | %s | %s | %s | %s | p99 < 100 ms: %s |\n\n",
		ms(percentile(reach, 0.5)), ms(rp99), ms(reach[len(reach)-1]), ratio(float64(rp99), float64(wp99)), verdict(rp99 < 100*time.Millisecond))
	slices.Sort(patched)
	fmt.Fprintf(b, "The patch itself took %s (p50), %s (p99) to return.\n\n", ms(percentile(patched, 0.5)), ms(percentile(patched, 0.99)))
	return nil
}

// pollUntilRefused checks plain on r back to back and returns the time since
// sent at the first 401, or -1 after 10 s.
func pollUntilRefused(ctx context.Context, r *replica, plain string, sent time.Time) time.Duration {
	for time.Since(sent) < 10*time.Second && ctx.Err() == nil {
		if code, err := r.check(plain); err == nil && code == http.StatusUnauthorized {
			return time.Since(sent)
		}
	}
	return -1
}

// memoryRun keeps the replicas' memory at each token count.
type memoryRun struct {
	points   []memoryPoint
	profiles [2][]byte // the last heap profile of the leader and the follower
}

type memoryPoint struct {
	tokens    int
	rss, heap [2]int64 // leader, follower
	etcd      etcdPoint
}

// sample waits for the replicas to settle, has each collect its garbage,
// then records its resident memory and heap in use (the median of five
// readings a second apart). The last heap profile of each is kept. Last,
// it records what etcd holds, and compacts it (etcdGateway.measure).
func (m *memoryRun) sample(ctx context.Context, cl *cluster, leader, follower *replica, tokens int) error {
	time.Sleep(5 * time.Second) // let the last reconciles and flushes pass
	p := memoryPoint{tokens: tokens}
	for i, r := range []*replica{leader, follower} {
		prof, err := r.heapProfile()
		if err != nil {
			return err
		}
		m.profiles[i] = prof
		var rss, heap []float64
		for range 5 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Second):
			}
			v, err := r.rss()
			if err != nil {
				return err
			}
			h, err := r.metric("go_memstats_heap_inuse_bytes")
			if err != nil {
				return err
			}
			rss, heap = append(rss, float64(v)), append(heap, h)
		}
		p.rss[i], p.heap[i] = int64(median(rss)), int64(median(heap))
	}
	g, err := cl.etcd()
	if err != nil {
		return err
	}
	if p.etcd, err = g.measure(ctx); err != nil {
		return err
	}
	m.points = append(m.points, p)
	return nil
}

// memory grows the number of tokens to 10,000 and 100,000 (quick: 2,000)
// through keymint, and reports each replica's memory per token against the
// same replica with no tokens, and what etcd holds per token against the
// same cluster with none (etcdReport). At the largest count it then restarts the
// follower and the leader and reports how long each took to be ready.
func (cl *cluster) memory(ctx context.Context, e *env, b *strings.Builder, m *memoryRun, leader, follower *replica) error {
	targets := e.memoryTokens
	if e.quick {
		targets = []int{2_000}
	}
	goodNS := "" // a namespace whose t-0 is Ready and never revoked
	for _, target := range targets {
		have, err := cl.countTokens(ctx)
		if err != nil {
			return err
		}
		if more := target - have; more > 0 {
			ns := fmt.Sprintf("bench-memory-%d", target)
			if err := cl.namespaceWithUser(ctx, ns); err != nil {
				return err
			}
			e.log("cluster: memory: issuing %d more tokens (to %d)", more, target)
			start := time.Now()
			if _, err := cl.issueMany(ctx, ns, more); err != nil {
				return err
			}
			e.log("cluster: memory: %d tokens issued in %s", more, time.Since(start).Round(time.Second))
			goodNS = ns
		}
		have, err = cl.countTokens(ctx)
		if err != nil {
			return err
		}
		if err := m.sample(ctx, cl, leader, follower, have); err != nil {
			return err
		}
	}
	base := m.points[0]
	b.WriteString("**Memory per token**: each replica's resident memory (VmRSS) and Go heap in use, the median of five readings once idle, " +
		"with every token issued by keymint (Ready, with its Secret), against the same replica before any token existed. " +
		"The leader runs the controllers (their own cache of ApiTokens, ServiceUsers and token Secrets) and the check server; the follower only " +
		"the check server: its index, fed by its own ApiToken watch, and the ServiceUsers. No token has passed a check: a token in use adds its " +
		"prebuilt answer, rate window and pending use (see the scale section).\n\n")
	b.WriteString("| tokens | leader RSS | per token | leader heap | per token | follower RSS | per token | follower heap | per token | target |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, p := range m.points {
		if p.tokens == base.tokens {
			fmt.Fprintf(b, "| %d (baseline) | %s | | %s | | %s | | %s | | |\n", p.tokens, mib(p.rss[0]), mib(p.heap[0]), mib(p.rss[1]), mib(p.heap[1]))
			continue
		}
		per := func(v, v0 int64) float64 { return float64(v-v0) / float64(p.tokens-base.tokens) }
		lr, lh, fr, fh := per(p.rss[0], base.rss[0]), per(p.heap[0], base.heap[0]), per(p.rss[1], base.rss[1]), per(p.heap[1], base.heap[1])
		fmt.Fprintf(b, "| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", p.tokens,
			mib(p.rss[0]), kb(lr), mib(p.heap[0]), kb(lh), mib(p.rss[1]), kb(fr), mib(p.heap[1]), kb(fh), memoryTarget(lr, fr))
	}
	b.WriteString("\n")
	etcdReport(b, m.points)
	last := m.points[len(m.points)-1]
	for i, who := range []string{"leader", "follower"} {
		top, err := pprofTop(ctx, e, m.profiles[i], "heap-"+who+".pprof")
		if err != nil {
			return err
		}
		fmt.Fprintf(b, "<details><summary>Where the %s's heap goes at %d tokens (live objects after a GC, `go tool pprof -top -sample_index=inuse_space`)</summary>\n\n```\n%s```\n\n</details>\n\n", who, last.tokens, top)
	}

	// Restart at the largest count, once its memory is sampled.
	rs := restartRun{tokens: last.tokens, first: [2]time.Duration{leader.readyAfter, follower.readyAfter}, profile: true}
	if err := cl.restartBoth(ctx, e, &rs, leader, follower, goodNS); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	rs.write(b)
	return rs.writeProfiles(ctx, e, b)
}

// Memory targets per token of resident memory: the follower holds the
// token index and its informers; the leader the controllers' cache besides.
const (
	followerRSSPerToken = 1024
	leaderRSSPerToken   = 3 * 1024
)

// memoryTarget judges each replica's RSS per token against its own target.
func memoryTarget(leader, follower float64) string {
	return fmt.Sprintf("leader < %s: %s; follower < %s: %s",
		kbTarget(leaderRSSPerToken), verdict(leader < leaderRSSPerToken),
		kbTarget(followerRSSPerToken), verdict(follower < followerRSSPerToken))
}

func kbTarget(bytes int) string { return fmt.Sprintf("%d KB", bytes/1024) }

// restartTarget is the most a replica may take from its start to ready
// with restartTargetTokens tokens; fewer tokens are only recorded.
const (
	restartTarget       = 10 * time.Second
	restartTargetTokens = 100_000
)

// restartRun is how long each replica took from its process start to a
// /readyz of 200: first with no tokens, at the start of the section, then
// when started again with tokens in the cluster.
type restartRun struct {
	tokens       int
	first, again [2]time.Duration // leader, follower; a zero first was not measured
	profile      bool             // profile each replica's start, and kube-apiserver meanwhile
	profiles     [2]*startProfile // leader, follower
	// floor is kube-apiserver sending every ApiToken to a client that
	// throws them away undecoded (streamFloor), of floorBytes.
	floor      time.Duration
	floorBytes int64
}

// restartBoth restarts the follower, then the leader (whose lease the
// follower may take meanwhile: only the time to ready counts), and records
// how long each took to be ready. If goodNS is set, its t-0 (Ready, never
// revoked) must be accepted by the follower before and right after its
// restart.
func (cl *cluster) restartBoth(ctx context.Context, e *env, rs *restartRun, leader, follower *replica, goodNS string) error {
	// The index lists every token on start: give it time in proportion.
	within := 2*time.Minute + time.Duration(rs.tokens)*time.Millisecond
	plain := ""
	if goodNS != "" {
		sec := &corev1.Secret{}
		if err := cl.c.Get(ctx, types.NamespacedName{Namespace: goodNS, Name: "t-0"}, sec); err != nil {
			return err
		}
		plain = string(sec.Data[keymintv1alpha1.SecretTokenKey])
		if code, err := follower.check(plain); err != nil || code != http.StatusOK {
			return fmt.Errorf("%s/t-0 on the follower before its restart: status %d, %v", goodNS, code, err)
		}
	}
	// A replica just started may still be reconciling every token: the
	// floor and the restarts are measured on a quiet machine.
	if err := settle(ctx, e, leader, follower); err != nil {
		return err
	}
	var err error
	if rs.floor, rs.floorBytes, err = cl.streamFloor(ctx); err != nil {
		return fmt.Errorf("floor: %w", err)
	}
	e.log("cluster: restart: kube-apiserver streamed every ApiToken (%d MB) in %s", rs.floorBytes>>20, rs.floor.Round(time.Millisecond))
	e.log("cluster: restart: the follower, at %d tokens", rs.tokens)
	d, err := cl.restartProfiled(ctx, rs, 1, follower, within)
	if err != nil {
		return fmt.Errorf("follower: %w", err)
	}
	rs.again[1] = d
	e.log("cluster: restart: the follower was ready in %s", d.Round(time.Millisecond))
	if plain != "" {
		if code, err := follower.check(plain); err != nil || code != http.StatusOK {
			return fmt.Errorf("%s/t-0 on the follower right after its restart: status %d, %v", goodNS, code, err)
		}
	}
	e.log("cluster: restart: the leader, at %d tokens", rs.tokens)
	if d, err = cl.restartProfiled(ctx, rs, 0, leader, within); err != nil {
		return fmt.Errorf("leader: %w", err)
	}
	rs.again[0] = d
	e.log("cluster: restart: the leader was ready in %s", d.Round(time.Millisecond))
	return nil
}

// restartProfiled restarts r, profiling its start (and kube-apiserver's
// CPU meanwhile) into rs.profiles[i] if rs asks for it.
func (cl *cluster) restartProfiled(ctx context.Context, rs *restartRun, i int, r *replica, within time.Duration) (time.Duration, error) {
	if !rs.profile {
		return cl.restart(ctx, r, within)
	}
	// Profiling starts once the old process is gone, so the first pprof
	// server to answer is the new one's.
	var p *startProfile
	d, err := cl.restartAfterStop(ctx, r, within, func() { p = cl.profileStart(ctx, r.Ports.Pprof, restartProfileWindow) })
	if err != nil {
		return 0, err
	}
	if err := p.wait(ctx); err != nil {
		return 0, err
	}
	rs.profiles[i] = p
	return d, nil
}

// write is the restart paragraph and table.
func (rs *restartRun) write(b *strings.Builder) {
	fmt.Fprintf(b, "**Restart at %s tokens**: time from process start to ready (index synced), leader and follower. "+
		"Each replica in turn, the follower first, is stopped (SIGTERM) and started again with the same flags; the clock runs from "+
		"the start of the new process until its `/readyz` answers 200 (polled every 50 ms), which it does only once the check server's "+
		"token index has listed every ApiToken and ServiceUser. The leader's lease may pass to the follower meanwhile; the restarted "+
		"leader is timed all the same. The baseline is the first start of the same replica, with no tokens.\n\n", thousands(rs.tokens))
	b.WriteString("| | tokens | leader | follower | target |\n|---|---:|---:|---:|---|\n")
	if rs.first != [2]time.Duration{} {
		fmt.Fprintf(b, "| baseline: first start | 0 | %s | %s | |\n", seconds(rs.first[0]), seconds(rs.first[1]))
	}
	target := fmt.Sprintf("< %s at %s: ", seconds(restartTarget), thousands(restartTargetTokens))
	if rs.tokens >= restartTargetTokens {
		target += fmt.Sprintf("leader %s; follower %s", verdict(rs.again[0] < restartTarget), verdict(rs.again[1] < restartTarget))
	} else {
		target += "for the record"
	}
	fmt.Fprintf(b, "| restart | %d | %s | %s | %s |\n", rs.tokens, seconds(rs.again[0]), seconds(rs.again[1]), target)
	if rs.floor > 0 {
		fmt.Fprintf(b, "| floor: kube-apiserver streams every ApiToken (%s MB of JSON) to a client that decodes none | %d | | %s | follower: %s× the floor |\n",
			thousands(int(rs.floorBytes>>20)), rs.tokens, seconds(rs.floor), ratio(rs.again[1].Seconds(), rs.floor.Seconds()))
	}
	b.WriteString("\n")
	fmt.Fprintf(b, "Leader: about %s at 1,000,000 if it grows linearly with the tokens; follower: about %s "+
		"(the times at %s scaled by 1,000,000/%s, the part that does not grow included).\n\n",
		seconds(extrapolate(rs.again[0], rs.tokens, 1_000_000)), seconds(extrapolate(rs.again[1], rs.tokens, 1_000_000)),
		thousands(rs.tokens), thousands(rs.tokens))
}

// extrapolate scales tn, the time at n tokens, to at tokens in proportion.
func extrapolate(tn time.Duration, n, at int) time.Duration {
	if n <= 0 {
		return tn
	}
	return time.Duration(float64(tn) * float64(at) / float64(n))
}

// pprofTop saves a heap profile under bin/bench and returns the top of it.
func pprofTop(ctx context.Context, e *env, profile []byte, name string) (string, error) {
	return pprofTable(ctx, e, profile, name, "-top", "-sample_index=inuse_space", "-nodecount=15")
}

func mib(v int64) string  { return fmt.Sprintf("%.1f MiB", float64(v)/(1<<20)) }
func kb(v float64) string { return fmt.Sprintf("%.2f KB", v/1024) }

// countTokens counts the ApiTokens page by page, metadata only: one list of
// 100,000 whole objects is a response kube-apiserver may cut.
func (cl *cluster) countTokens(ctx context.Context) (int, error) {
	return cl.countTokensIn(ctx, "")
}

// countTokensIn is countTokens in namespace ns ("": all).
func (cl *cluster) countTokensIn(ctx context.Context, ns string) (int, error) {
	n, cont := 0, ""
	for {
		list := &metav1.PartialObjectMetadataList{}
		list.SetGroupVersionKind(keymintv1alpha1.GroupVersion.WithKind("ApiTokenList"))
		if err := cl.c.List(ctx, list, client.InNamespace(ns), client.Limit(1000), client.Continue(cont)); err != nil {
			return 0, err
		}
		n += len(list.Items)
		if cont = list.Continue; cont == "" {
			return n, nil
		}
	}
}

// issueMany issues n tokens in batches, so one watch never holds too many
// events unread.
func (cl *cluster) issueMany(ctx context.Context, ns string, n int) (time.Duration, error) {
	return cl.issueManyFrom(ctx, ns, 0, n)
}

// issueManyFrom is issueMany for the tokens named t-<from> onwards.
func (cl *cluster) issueManyFrom(ctx context.Context, ns string, from, n int) (time.Duration, error) {
	start := time.Now()
	for done := 0; done < n; {
		batch := min(5_000, n-done)
		if _, err := cl.issueFrom(ctx, ns, from+done, batch); err != nil {
			return 0, err
		}
		done += batch
	}
	return time.Since(start), nil
}

package main

// cluster.go: the figures that need a control plane: issuance against raw
// API writes, revocation reach against a bare watch, memory per token, the
// time a replica takes to be ready again after a restart.

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/yaml"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/testenv"
	"github.com/keymint/keymint/internal/token"
)

// floorGroup is the API group of a copy of the ApiToken CRD that keymint
// does not watch: the issuance floor writes the same objects there, so the
// manager can keep running while the floor is measured.
const floorGroup = "floor.bench.keymint.io"

// cluster is a local control plane with keymint's CRDs, the floor CRD, and
// the keymint binary built.
type cluster struct {
	env        *envtest.Environment
	cfg        *rest.Config
	c          client.WithWatch
	dir        string
	bin        string
	kubeconfig string
	log        func(string, ...any)
}

func runCluster(ctx context.Context, e *env) (string, error) {
	cl, err := startCluster(ctx, e)
	if err != nil {
		return "", err
	}
	defer cl.stop()

	// Two replicas, as config/manager deploys: the leader reconciles, both
	// answer checks.
	leader, err := cl.startReplica(ctx, "a", "--leader-elect")
	if err != nil {
		return "", err
	}
	defer func() { _ = leader.Stop() }()
	follower, err := cl.startReplica(ctx, "b", "--leader-elect")
	if err != nil {
		return "", err
	}
	defer func() { _ = follower.Stop() }()
	mem := &memoryRun{}
	if err := mem.sample(ctx, cl, leader, follower, 0); err != nil {
		return "", fmt.Errorf("memory: %w", err)
	}

	var b strings.Builder
	if err := cl.issuance(ctx, e, &b); err != nil {
		return "", fmt.Errorf("issuance: %w", err)
	}
	if err := cl.revocationReach(ctx, e, &b, leader, follower); err != nil {
		return "", fmt.Errorf("revocation reach: %w", err)
	}
	if err := cl.memory(ctx, e, &b, mem, leader, follower); err != nil {
		return "", fmt.Errorf("memory: %w", err)
	}
	return b.String(), nil
}

func startCluster(ctx context.Context, e *env) (*cluster, error) {
	dir, err := os.MkdirTemp("", "keymint-bench-")
	if err != nil {
		return nil, err
	}
	cl := &cluster{dir: dir, log: e.log}
	e.log("cluster: building keymint")
	if cl.bin, err = testenv.BuildKeymint(ctx, dir); err != nil {
		return nil, err
	}
	floor, err := floorCRD(e.root)
	if err != nil {
		return nil, err
	}
	ctrllog.SetLogger(logr.Discard()) // envtest logs through controller-runtime; the bench says what it does itself
	cl.env, err = testenv.New()
	if err != nil {
		return nil, err
	}
	cl.env.CRDs = []*apiextensionsv1.CustomResourceDefinition{floor}
	if e.etcdData != "" {
		if cl.env.ControlPlane.Etcd, err = keptEtcd(e.etcdData); err != nil {
			return nil, err
		}
	}
	// Every ApiToken written carries a requester record, as in a cluster
	// with keymint's webhooks: the controllers mint for no other.
	if err := testenv.RecordRequesters(cl.env); err != nil {
		return nil, err
	}
	e.log("cluster: starting kube-apiserver and etcd")
	if cl.cfg, err = cl.env.Start(); err != nil {
		return nil, fmt.Errorf("control plane: %w", err)
	}
	cl.cfg.QPS = -1 // no client-side throttling: the API server's fairness decides, as for keymint
	if cl.c, err = client.NewWithWatch(cl.cfg, client.Options{Scheme: testenv.Scheme}); err != nil {
		cl.stop()
		return nil, err
	}
	ring, err := testenv.ClusterKeyring(ctx, cl.c)
	if err != nil {
		cl.stop()
		return nil, err
	}
	if err := testenv.ServeRequesters(ctx, cl.env, ring); err != nil {
		cl.stop()
		return nil, err
	}
	cl.kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := testenv.WriteKubeconfig(cl.cfg, cl.kubeconfig); err != nil {
		cl.stop()
		return nil, err
	}
	return cl, nil
}

// keptEtcd is an etcd whose data stays in dir after it stops.
func keptEtcd(dir string) (*envtest.Etcd, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, err
	}
	return &envtest.Etcd{DataDir: abs}, nil
}

func (cl *cluster) stop() {
	if cl.env != nil {
		_ = cl.env.Stop()
	}
	_ = os.RemoveAll(cl.dir)
}

// floorCRD is keymint's ApiToken CRD moved to floorGroup: same schema, same
// CEL rules, same status subresource.
func floorCRD(root string) (*apiextensionsv1.CustomResourceDefinition, error) {
	data, err := os.ReadFile(filepath.Join(root, "config", "crd", "bases", "keymint.io_apitokens.yaml"))
	if err != nil {
		return nil, err
	}
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := yaml.Unmarshal(data, crd); err != nil {
		return nil, err
	}
	crd.Name = "apitokens." + floorGroup
	crd.Spec.Group = floorGroup
	crd.Spec.Names.ShortNames = nil
	crd.Spec.Names.Categories = nil
	return crd, nil
}

// replica is one running keymint binary.
type replica struct {
	*testenv.Keymint
	name       string        // as given to startReplica: its log and certificate directory
	args       []string      // the flags startReplica was given
	readyAfter time.Duration // from the start of the process until its /readyz answered 200
	checkURL   string
	metricsURL string
	pprofURL   string
	http       *http.Client
}

// startReplica runs keymint on free loopback ports and waits until it is
// ready. Metrics are plain HTTP on loopback, for the bench to read; the log
// goes to keymint-<name>.log in the cluster's directory.
func (cl *cluster) startReplica(ctx context.Context, name string, extra ...string) (*replica, error) {
	return cl.runReplica(ctx, name, testenv.KeymintPorts{}, 0, extra)
}

// restart stops r (SIGTERM, as a rolling update does) and starts it again
// with the same name, flags and ports, waiting up to readyWithin for its
// /readyz. r then stands for the new process, so whoever holds r keeps
// reaching a running keymint. It returns the time from the start of the new
// process until its /readyz answered 200.
func (cl *cluster) restart(ctx context.Context, r *replica, readyWithin time.Duration) (time.Duration, error) {
	return cl.restartAfterStop(ctx, r, readyWithin, nil)
}

// restartAfterStop is restart, calling stopped (if set) once the old
// process has exited and before the new one starts.
func (cl *cluster) restartAfterStop(ctx context.Context, r *replica, readyWithin time.Duration, stopped func()) (time.Duration, error) {
	if err := r.Stop(); err != nil {
		return 0, fmt.Errorf("stopping keymint %s: %w", r.name, err)
	}
	if stopped != nil {
		stopped()
	}
	again, err := cl.runReplica(ctx, r.name, r.Ports, readyWithin, r.args)
	if err != nil {
		return 0, err
	}
	if t, ok := r.http.Transport.(*http.Transport); ok {
		t.CloseIdleConnections() // to the process gone, and trusting its CA
	}
	*r = *again
	return r.readyAfter, nil
}

// runReplica is startReplica on the given ports (0: a free one), waiting up
// to readyWithin (0: StartKeymint's default) for /readyz. The log is
// appended to, so a restarted replica's keeps what the first process wrote.
func (cl *cluster) runReplica(ctx context.Context, name string, ports testenv.KeymintPorts, readyWithin time.Duration, extra []string) (*replica, error) {
	certs := filepath.Join(cl.dir, "certs-"+name)
	logFile := filepath.Join(cl.dir, "keymint-"+name+".log")
	out, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	// StartKeymint starts the process at once and returns when its /readyz
	// first answers 200 (it polls every 50 ms): the time in between is how
	// long the replica took to be ready.
	start := time.Now()
	k, err := testenv.StartKeymint(ctx, testenv.KeymintOptions{
		Binary: cl.bin, Kubeconfig: cl.kubeconfig, Metrics: true, Pprof: true, Log: out,
		Ports: ports, ReadyWithin: readyWithin,
		Args: append([]string{
			"--check-self-signed-dir", certs,
			"--mutating-webhook-configuration", testenv.RequesterWebhookName,
			// Checks of the bench are not what a rate limit is for.
			"--default-requests-per-minute", "1000000",
		}, extra...),
	})
	if err != nil {
		out.Close()
		return nil, fmt.Errorf("keymint %s (log in %s): %w", name, logFile, err)
	}
	readyAfter := time.Since(start)
	go func() { <-k.Exited(); out.Close() }()
	// The check server writes a new CA into certs each time it starts: read
	// it now the process is ready.
	r := &replica{Keymint: k, name: name, args: slices.Clone(extra), readyAfter: readyAfter,
		checkURL:   "https://127.0.0.1:" + strconv.Itoa(k.Ports.Check),
		metricsURL: "http://127.0.0.1:" + strconv.Itoa(k.Ports.Metrics) + "/metrics",
		pprofURL:   "http://127.0.0.1:" + strconv.Itoa(k.Ports.Pprof) + "/debug/pprof"}
	ca, err := os.ReadFile(filepath.Join(certs, "ca.crt"))
	if err != nil {
		_ = k.Kill()
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	r.http = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, MaxIdleConnsPerHost: 16,
	}}
	return r, nil
}

// check answers the /check status for a bearer value.
func (r *replica) check(plain string) (int, error) {
	req, err := http.NewRequest(http.MethodGet, r.checkURL+"/check", nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+plain)
	resp, err := r.http.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// heapProfile runs a garbage collection in the replica and returns its heap
// profile (pprof's ?gc=1), so what follows measures live memory.
func (r *replica) heapProfile() ([]byte, error) {
	return get(context.Background(), http.DefaultClient, r.pprofURL+"/heap?gc=1")
}

// rss is the replica's resident memory, from /proc.
func (r *replica) rss() (int64, error) {
	return procRSS(r.Pid())
}

func procRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var kb int64
		if _, err := fmt.Sscanf(sc.Text(), "VmRSS: %d kB", &kb); err == nil {
			return kb << 10, nil
		}
	}
	return 0, errors.New("no VmRSS in /proc status")
}

// metric reads one unlabelled-or-labelled sample from the replica's
// /metrics: the first line that starts with series.
func (r *replica) metric(series string) (float64, error) {
	resp, err := http.Get(r.metricsURL)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	return metricFrom(resp.Body, series)
}

func metricFrom(body io.Reader, series string) (float64, error) {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, series+" ") {
			return strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(line, series)), 64)
		}
	}
	return 0, fmt.Errorf("no %s in /metrics", series)
}

// ---- issuance ---------------------------------------------------------------

// issueConcurrency is the bench client's workers, and keymint's
// MaxConcurrentReconciles for ApiTokens.
const issueConcurrency = 4

// issuance compares keymint taking n ApiTokens from create to Ready with the
// floor: the same client and concurrency creating the same ApiToken (in the
// floor CRD), its Secret, and writing its Ready status directly. Rounds
// alternate floor and keymint; the manager runs throughout.
func (cl *cluster) issuance(ctx context.Context, e *env, b *strings.Builder) error {
	n, rounds := 1000, 3
	if e.quick {
		n, rounds = 100, 1
	}
	// A token keymint issues gives the floor its status and Secret to copy,
	// so both sides write objects of the same size.
	if err := cl.namespaceWithUser(ctx, "bench-template"); err != nil {
		return err
	}
	if _, err := cl.issue(ctx, "bench-template", 1); err != nil {
		return err
	}
	tmplTok, tmplSec := &keymintv1alpha1.ApiToken{}, &corev1.Secret{}
	key := types.NamespacedName{Namespace: "bench-template", Name: "t-0"}
	if err := cl.c.Get(ctx, key, tmplTok); err != nil {
		return err
	}
	if err := cl.c.Get(ctx, key, tmplSec); err != nil {
		return err
	}

	var floorTimes, keymintTimes []float64
	var keymintWrites map[string]float64
	for round := range rounds {
		ns := fmt.Sprintf("bench-floor-%d", round)
		if err := cl.namespace(ctx, ns); err != nil {
			return err
		}
		e.log("cluster: issuance round %d/%d: floor, %d tokens", round+1, rounds, n)
		d, err := cl.floorIssue(ctx, ns, n, tmplTok, tmplSec)
		if err != nil {
			return err
		}
		floorTimes = append(floorTimes, d.Seconds())

		ns = fmt.Sprintf("bench-issue-%d", round)
		if err := cl.namespaceWithUser(ctx, ns); err != nil {
			return err
		}
		e.log("cluster: issuance round %d/%d: keymint, %d tokens", round+1, rounds, n)
		before, err := cl.apiserverWrites(ctx)
		if err != nil {
			return err
		}
		d, err = cl.issue(ctx, ns, n)
		if err != nil {
			return err
		}
		keymintTimes = append(keymintTimes, d.Seconds())
		// Writes keep coming after Ready (events, for one): count them once
		// the manager is idle.
		time.Sleep(2 * time.Second)
		after, err := cl.apiserverWrites(ctx)
		if err != nil {
			return err
		}
		keymintWrites = diffCounts(after, before)
		e.log("cluster: %d write series before, %d after, %d changed", len(before), len(after), len(keymintWrites))
	}

	f, k := median(floorTimes), median(keymintTimes)
	fmt.Fprintf(b, "**Issuance**: %d ApiTokens from the first create to the last Ready, %d rounds alternating with the floor, median. "+
		"The floor is the same client with the same %d workers (keymint reconciles %d ApiTokens at a time) creating the same ApiToken "+
		"(in a copy of the CRD keymint does not watch), creating its Secret and writing its Ready status: three writes of the same objects. "+
		"The admission webhooks are not installed here.\n\n", n, rounds, issueConcurrency, issueConcurrency)
	b.WriteString("| | seconds (median) | rounds | tokens/s | ratio to floor | target |\n|---|---:|---|---:|---:|---|\n")
	fmt.Fprintf(b, "| floor: raw API writes | %.2f | %s | %.0f | | |\n", f, secondsList(floorTimes), float64(n)/f)
	fmt.Fprintf(b, "| keymint: create → Ready | %.2f | %s | %.0f | %s | ≤ 1.2: %s |\n\n", k, secondsList(keymintTimes), float64(n)/k, ratio(k, f), verdict(k <= 1.2*f))
	if len(keymintWrites) > 0 {
		b.WriteString("API requests per token during a keymint round (kube-apiserver's `apiserver_request_total`, last round, writes only):\n\n")
		b.WriteString("| resource | verb | per token |\n|---|---|---:|\n")
		var keys []string
		for k := range keymintWrites {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, key := range keys {
			if v := keymintWrites[key] / float64(n); v >= 0.01 {
				res, verb, _ := strings.Cut(key, " ")
				fmt.Fprintf(b, "| %s | %s | %.2f |\n", res, verb, v)
			}
		}
		b.WriteString("\n")
	}
	return nil
}

func secondsList(xs []float64) string {
	var s []string
	for _, x := range xs {
		s = append(s, fmt.Sprintf("%.2f", x))
	}
	return strings.Join(s, ", ")
}

func (cl *cluster) namespace(ctx context.Context, ns string) error {
	return client.IgnoreAlreadyExists(cl.c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}))
}

// namespaceWithUser makes ns and its ServiceUser "bench".
func (cl *cluster) namespaceWithUser(ctx context.Context, ns string) error {
	if err := cl.namespace(ctx, ns); err != nil {
		return err
	}
	return client.IgnoreAlreadyExists(cl.c.Create(ctx, testenv.ServiceUser(ns, "bench",
		testenv.WithPermissions("links:read", "links:write"), testenv.WithRequestsPerMinute(1_000_000))))
}

func benchToken(ns string, i int) *keymintv1alpha1.ApiToken {
	return testenv.ApiToken(ns, fmt.Sprintf("t-%d", i), "bench", testenv.WithScopes("links:read"))
}

// issue creates n ApiTokens in ns with issueConcurrency workers and returns
// the time from the first create until a watch has seen all of them Ready.
func (cl *cluster) issue(ctx context.Context, ns string, n int) (time.Duration, error) {
	return cl.issueFrom(ctx, ns, 0, n)
}

// issueFrom is issue for the tokens named t-<from> … t-<from+n-1>.
func (cl *cluster) issueFrom(ctx context.Context, ns string, from, n int) (time.Duration, error) {
	w, err := cl.c.Watch(ctx, &keymintv1alpha1.ApiTokenList{}, client.InNamespace(ns))
	if err != nil {
		return 0, err
	}
	defer func() { w.Stop() }()
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		errc <- parallel(ctx, n, issueConcurrency, func(i int) error { return cl.c.Create(ctx, benchToken(ns, from+i)) })
	}()
	ready := map[string]bool{}
	see := func(t *keymintv1alpha1.ApiToken) {
		if inBatch(t.Name, from, n) && meta.IsStatusConditionTrue(t.Status.Conditions, keymintv1alpha1.ApiTokenConditionReady) {
			ready[t.Name] = true
		}
	}
	timeout := time.After(time.Duration(n)*100*time.Millisecond + time.Minute)
	for len(ready) < n {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok || ev.Type == watch.Error {
				// The API server may end a watch: list what is Ready, and
				// watch again from there.
				var list keymintv1alpha1.ApiTokenList
				if err := cl.c.List(ctx, &list, client.InNamespace(ns)); err != nil {
					return 0, err
				}
				for i := range list.Items {
					see(&list.Items[i])
				}
				w.Stop()
				if w, err = cl.c.Watch(ctx, &keymintv1alpha1.ApiTokenList{}, client.InNamespace(ns),
					&client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: list.ResourceVersion}}); err != nil {
					return 0, err
				}
				continue
			}
			if t, ok := ev.Object.(*keymintv1alpha1.ApiToken); ok {
				see(t)
			}
		case err := <-errc:
			if err != nil {
				return 0, err
			}
			errc = nil
		case <-timeout:
			return 0, fmt.Errorf("only %d of %d ApiTokens became Ready", len(ready), n)
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return time.Since(start), nil
}

// inBatch says whether name is one of t-<from> … t-<from+n-1>.
func inBatch(name string, from, n int) bool {
	i, err := strconv.Atoi(strings.TrimPrefix(name, "t-"))
	return err == nil && strings.HasPrefix(name, "t-") && i >= from && i < from+n
}

// floorIssue writes, for each of n tokens, what keymint's issuance amounts
// to, directly: the ApiToken, its Secret, its Ready status.
func (cl *cluster) floorIssue(ctx context.Context, ns string, n int, tmplTok *keymintv1alpha1.ApiToken, tmplSec *corev1.Secret) (time.Duration, error) {
	start := time.Now()
	err := parallel(ctx, n, issueConcurrency, func(i int) error {
		tok, err := toFloor(benchToken(ns, i))
		if err != nil {
			return err
		}
		if err := cl.c.Create(ctx, tok); err != nil {
			return err
		}
		plain, err := token.Mint("km")
		if err != nil {
			return err
		}
		sec := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: ns, Name: tok.GetName(),
				Labels:      map[string]string{"floor.bench.keymint.io/api-token": tok.GetName()},
				Annotations: tmplSec.Annotations,
				OwnerReferences: []metav1.OwnerReference{{
					APIVersion: floorGroup + "/v1alpha1", Kind: "ApiToken", Name: tok.GetName(), UID: tok.GetUID(),
					Controller: ptrTo(true), BlockOwnerDeletion: ptrTo(true),
				}},
			},
			Type: tmplSec.Type,
			Data: map[string][]byte{keymintv1alpha1.SecretTokenKey: []byte(plain)},
		}
		if err := cl.c.Create(ctx, sec); err != nil {
			return err
		}
		status := tmplTok.Status.DeepCopy()
		status.TokenHash = token.HashString(plain)
		status.SecretName = sec.Name
		raw, err := runtime.DefaultUnstructuredConverter.ToUnstructured(status)
		if err != nil {
			return err
		}
		tok.Object["status"] = raw
		return cl.c.Status().Update(ctx, tok)
	})
	return time.Since(start), err
}

func toFloor(t *keymintv1alpha1.ApiToken) (*unstructured.Unstructured, error) {
	raw, err := runtime.DefaultUnstructuredConverter.ToUnstructured(t)
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{Object: raw}
	u.SetGroupVersionKind(schema.GroupVersionKind{Group: floorGroup, Version: "v1alpha1", Kind: "ApiToken"})
	return u, nil
}

func ptrTo[T any](v T) *T { return &v }

// parallel runs f(0..n-1) on workers goroutines; the first error stops it.
func parallel(ctx context.Context, n, workers int, f func(i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					cancel(fmt.Errorf("item %d: %w", i, err))
					return
				}
			}
		}()
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}

// apiserverWrites counts kube-apiserver's write requests by resource/verb.
func (cl *cluster) apiserverWrites(ctx context.Context) (map[string]float64, error) {
	hc, err := rest.HTTPClientFor(cl.cfg)
	if err != nil {
		return nil, err
	}
	body, err := get(ctx, hc, strings.TrimSuffix(cl.cfg.Host, "/")+"/metrics")
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver's /metrics: %w", err)
	}
	counts := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, "apiserver_request_total{") {
			continue
		}
		labels, value, ok := strings.Cut(strings.TrimPrefix(line, "apiserver_request_total{"), "} ")
		if !ok {
			continue
		}
		l := parseLabels(labels)
		switch l["verb"] {
		case "POST", "PUT", "PATCH", "DELETE":
		default:
			continue
		}
		res := l["resource"]
		if l["subresource"] != "" {
			res += "/" + l["subresource"]
		}
		v, _ := strconv.ParseFloat(value, 64)
		counts[res+" "+l["verb"]] += v
	}
	return counts, nil
}

func parseLabels(s string) map[string]string {
	m := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if ok {
			m[k] = strings.Trim(v, `"`)
		}
	}
	return m
}

func diffCounts(after, before map[string]float64) map[string]float64 {
	d := map[string]float64{}
	for k, v := range after {
		if v-before[k] > 0 {
			d[k] = v - before[k]
		}
	}
	return d
}

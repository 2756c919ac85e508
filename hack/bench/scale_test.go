package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	apiruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/controllers"
	"github.com/keymint/keymint/internal/secretrecord"
	"github.com/keymint/keymint/internal/testenv"
	"github.com/keymint/keymint/internal/token"
)

// canonicalJSON re-encodes JSON with sorted keys, to compare field sets.
func canonicalJSON(t *testing.T, raw []byte) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func TestManagedFieldSet(t *testing.T) {
	obj := map[string]any{
		"metadata": map[string]any{
			"labels":          map[string]any{"a": "1"},
			"finalizers":      []any{"x/y"},
			"ownerReferences": []any{map[string]any{"uid": "u1", "kind": "ApiToken", "name": "t"}},
		},
		"spec": map[string]any{
			"scopes":   []any{"links:read", "qr:read"},
			"atomic":   []any{"p", "q"},
			"rotation": map[string]any{"every": "1h"},
			"revoked":  false,
		},
		"status": map[string]any{
			"conditions": []any{map[string]any{"type": "Ready", "status": "True"}},
		},
	}
	lists := map[string]smdListKind{
		".metadata.finalizers":      {set: true},
		".metadata.ownerReferences": {key: "uid", atomicItems: true},
		".spec.scopes":              {set: true},
		".status.conditions":        {key: "type"},
	}
	for _, c := range []struct {
		dots bool
		want string
	}{
		{dots: true, want: `{
			"f:metadata":{
				"f:finalizers":{".":{},"v:\"x/y\"":{}},
				"f:labels":{".":{},"f:a":{}},
				"f:ownerReferences":{".":{},"k:{\"uid\":\"u1\"}":{}}},
			"f:spec":{".":{},"f:atomic":{},"f:revoked":{},"f:rotation":{".":{},"f:every":{}},
				"f:scopes":{".":{},"v:\"links:read\"":{},"v:\"qr:read\"":{}}},
			"f:status":{".":{},"f:conditions":{".":{},"k:{\"type\":\"Ready\"}":{".":{},"f:status":{},"f:type":{}}}}}`},
		// Apply: "." only on map-list items.
		{dots: false, want: `{
			"f:metadata":{
				"f:finalizers":{"v:\"x/y\"":{}},
				"f:labels":{"f:a":{}},
				"f:ownerReferences":{"k:{\"uid\":\"u1\"}":{}}},
			"f:spec":{"f:atomic":{},"f:revoked":{},"f:rotation":{"f:every":{}},
				"f:scopes":{"v:\"links:read\"":{},"v:\"qr:read\"":{}}},
			"f:status":{"f:conditions":{"k:{\"type\":\"Ready\"}":{".":{},"f:status":{},"f:type":{}}}}}`},
	} {
		got, _ := json.Marshal(managedFieldSet(obj, "", c.dots, lists))
		if want := canonicalJSON(t, []byte(c.want)); string(got) != want {
			t.Errorf("dots=%v:\n got %s\nwant %s", c.dots, got, want)
		}
	}
}

func TestUvarintLen(t *testing.T) {
	for x, want := range map[uint64]int{0: 1, 127: 1, 128: 2, 16383: 2, 16384: 3, 1 << 27: 4, math.MaxUint64: 10} {
		if got := uvarintLen(x); got != want {
			t.Errorf("uvarintLen(%d) = %d, want %d", x, got, want)
		}
	}
}

func TestEtcdRevisionBytes(t *testing.T) {
	// KeyValue: key 1+1+50, two revisions 2×(1+4), version 1+1, value
	// 1+2+1000: 1067; revision key 17, bbolt element 16; pages 90% full.
	if got, want := etcdRevisionBytes(50, 1000), 1100/0.9; math.Abs(got-want) > 1e-9 {
		t.Errorf("etcdRevisionBytes(50, 1000) = %f, want %f", got, want)
	}
}

func TestThousands(t *testing.T) {
	for n, want := range map[int]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -1234: "-1,234", 100000: "100,000"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestScaleDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		1500 * time.Microsecond: "1.5 ms", 90 * time.Second: "90.0 s", 3 * time.Minute: "3.0 min",
	} {
		if got := scaleDuration(d); got != want {
			t.Errorf("scaleDuration(%s) = %q, want %q", d, got, want)
		}
	}
}

// TestFixtureSecret reads the fixture's Secret as the controllers do:
// secretrecord.Read must find it signed for its ApiToken, holding the token
// whose hash (and serial) the ApiToken's status names.
func TestFixtureSecret(t *testing.T) {
	f, err := newScaleFixture(time.Now().UTC().Truncate(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		plain, _ := token.Mint("billing")
		tok, sec := f.token(i, plain, tokenShapeOf(i), true)
		got := secretrecord.Read(sec, tok, f.ring)
		switch {
		case got.Signed == nil:
			t.Errorf("token %d: secretrecord.Read does not verify the Secret's record (holds %v)", i, got.Holds)
		case got.Hash != token.HashString(plain) || got.Signed.Hash != tok.Status.TokenHash || got.Signed.Serial != tok.Status.Serial:
			t.Errorf("token %d: the Secret holds a token hashing to %s under record %+v; the status names %s, serial %d",
				i, got.Hash, *got.Signed, tok.Status.TokenHash, tok.Status.Serial)
		}
		if owner := metav1.GetControllerOf(sec); owner == nil || owner.UID != tok.UID || sec.Name != tok.SecretNameOrDefault() {
			t.Errorf("token %d: Secret %s is not the ApiToken's", i, sec.Name)
		}
		if got := sec.ManagedFields[0].FieldsV1.Raw; !bytes.Contains(got, []byte(tok.UID)) {
			t.Errorf("token %d: the Secret's managed fields name another owner: %s", i, got)
		}
	}
}

// TestScaleSmall runs the whole section on a few tokens: every step checks
// its own results (index length, /check answers, store sizes).
func TestScaleSmall(t *testing.T) {
	ctx := context.Background()
	f, err := newScaleFixture(time.Now().UTC().Truncate(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	sz, err := measureStoredSizes(f)
	if err != nil {
		t.Fatal(err)
	}
	if sz.token[shapeRotating] == 0 || sz.secret == 0 || sz.user == 0 || sz.token[shapeLargest] <= sz.token[shapeRotating] {
		t.Fatalf("sizes: %+v", sz)
	}
	ix, err := measureCheckIndex(ctx, f, 250)
	if err != nil {
		t.Fatal(err)
	}
	var rel []scaleRelistResult
	for _, transformed := range []bool{true, false} {
		r, err := measureCacheRelist(ctx, f, scaleRelistRun{n: 1200, transformed: transformed})
		if err != nil {
			t.Fatal(err)
		}
		rel = append(rel, r)
	}
	if rel[0].tokenWire == 0 || rel[0].secretWire == 0 {
		t.Errorf("no bytes listed: %+v", rel[0])
	}
	lu := []lastUsedResult{{lastUsedRun: lastUsedRun{n: 10, replicas: 3, span: time.Hour}, writes: 10, bytes: 20_000, reads: 10}}
	out := scaleReport(sz, []scaleIndexResult{ix}, rel, lu, true)
	for _, want := range []string{"| 250 | 3 |", "| 1,200 | keymint's |", "| 1,200 | none |", "What a replica holds at 1,000,000 tokens", "on a follower", "on the leader", "**277 status writes a second** (target < 300: met", "| 10 | 3 | none | 1h0m0s | 10 | 1.00 | 2000 B | 277 | 1.00 |"} {
		if !strings.Contains(out, want) {
			t.Errorf("the report lacks %q:\n%s", want, out)
		}
	}
}

// TestFixtureMatchesAPIServer runs the controllers against kube-apiserver
// and compares what they leave with the fixture: the managedFields
// kube-apiserver records, field for field, and the stored sizes.
func TestFixtureMatchesAPIServer(t *testing.T) {
	f, err := newScaleFixture(time.Now().UTC().Truncate(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	// Field managers are named after the client's user agent.
	const keymintAgent = "keymint/v0.0.0 (linux/amd64) kubernetes/$Format"
	e := testenv.RunT(t, testenv.RunInput{
		ManagerConfig: func(cfg *rest.Config) *rest.Config { return withAgent(cfg, keymintAgent) },
		SetupReconcilers: func(ctx context.Context, e *testenv.Environment) error {
			return controllers.Setup(ctx, e.Manager, controllers.Options{RequesterWebhook: testenv.RequesterWebhookName, Clock: clock.RealClock{}, Keyring: e.Keyring, ExpiryWarning: controllers.DefaultExpiryWarning})
		},
	})
	cfg, c, ctx := e.Config, e.Client, t.Context()
	keymint := withAgent(cfg, keymintAgent)
	// The key the environment's requester webhook signs with.
	f.ring = e.Keyring
	kubectl, err := client.New(withAgent(cfg, "kubectl/v1.36.3 (linux/amd64) kubernetes/x"), client.Options{Scheme: testenv.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	manager, err := client.New(keymint, client.Options{Scheme: testenv.Scheme})
	if err != nil {
		t.Fatal(err)
	}

	su := f.user(0, false)
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: su.Namespace}}); err != nil {
		t.Fatal(err)
	}
	apply := func(obj client.Object, meta metav1.ObjectMeta, spec any) {
		t.Helper()
		gvk := obj.GetObjectKind().GroupVersionKind()
		patch, _ := json.Marshal(map[string]any{"apiVersion": gvk.GroupVersion().String(), "kind": gvk.Kind,
			"metadata": map[string]any{"name": meta.Name, "namespace": meta.Namespace}, "spec": spec})
		if err := kubectl.Patch(ctx, obj, client.RawPatch(types.ApplyPatchType, patch), client.FieldOwner("kubectl")); err != nil {
			t.Fatal(err)
		}
	}
	apply(su.DeepCopy(), su.ObjectMeta, su.Spec)
	var want [2]*keymintv1alpha1.ApiToken
	for i := range want {
		plain, _ := token.Mint("billing")
		want[i], _ = f.token(i, plain, tokenShapeOf(i), true)
		apply(want[i].DeepCopy(), want[i].ObjectMeta, want[i].Spec)
	}

	// Wait until both are Ready, then write lastUsedAt as the check server does.
	var got [2]*keymintv1alpha1.ApiToken
	for i := range got {
		var err error
		if _, got[i], err = testenv.WaitIssued(ctx, c, want[i].Namespace, want[i].Name, time.Minute); err != nil {
			t.Fatal(err)
		}
		patch := client.MergeFromWithOptions(got[i].DeepCopy(), client.MergeFromWithOptimisticLock{})
		used := metav1.NewTime(time.Now().Truncate(time.Second))
		got[i].Status.LastUsedAt, got[i].Status.TokenLastUsedAt = &used, &used
		if err := manager.Status().Patch(ctx, got[i], patch); err != nil {
			t.Fatal(err)
		}
	}

	// The managed fields kube-apiserver recorded are the ones managedEntries
	// computes from the same objects.
	compare := func(obj client.Object, writers []fieldWriter) {
		t.Helper()
		recorded := obj.GetManagedFields()
		obj.SetManagedFields(nil)
		computed := managedEntries(obj.(apiruntime.Object), writers, time.Time{})
		if len(recorded) != len(computed) {
			t.Fatalf("%s: %d managedFields entries, the fixture makes %d: %+v", obj.GetName(), len(recorded), len(computed), recorded)
		}
		for i, r := range recorded {
			m := computed[i]
			if r.Manager != m.Manager || r.Operation != m.Operation || r.Subresource != m.Subresource {
				t.Errorf("%s: entry %d is %s/%s/%s, the fixture's %s/%s/%s", obj.GetName(), i, r.Manager, r.Operation, r.Subresource, m.Manager, m.Operation, m.Subresource)
				continue
			}
			if g, w := canonicalJSON(t, r.FieldsV1.Raw), canonicalJSON(t, m.FieldsV1.Raw); g != w {
				t.Errorf("%s, %s: kube-apiserver recorded\n%s\nthe fixture computes\n%s", obj.GetName(), r.Manager, g, w)
			}
		}
		obj.SetManagedFields(recorded)
	}
	// The ServiceUser is recounted up to a second after its tokens change:
	// wait for the counts of both tokens.
	realUser := &keymintv1alpha1.ServiceUser{}
	if err := testenv.Poll(ctx, time.Minute, fmt.Sprintf("ServiceUser %s to count its %d tokens", su.Name, len(want)), func(ctx context.Context) error {
		if err := c.Get(ctx, client.ObjectKeyFromObject(su), realUser); err != nil {
			return err
		}
		if realUser.Status.Tokens != int32(len(want)) || realUser.Status.ActiveTokens != int32(len(want)) {
			return fmt.Errorf("status %+v", realUser.Status)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	compare(realUser, userWriters)
	var secrets [2]*corev1.Secret
	for i := range got {
		if err := c.Get(ctx, client.ObjectKeyFromObject(want[i]), got[i]); err != nil {
			t.Fatal(err)
		}
		compare(got[i], tokenWriters)
		secrets[i] = &corev1.Secret{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: got[i].Namespace, Name: got[i].Status.SecretName}, secrets[i]); err != nil {
			t.Fatal(err)
		}
		compare(secrets[i], secretWriters)
	}

	// The scoped shape is a token as first issued: its sizes are the real
	// ones, but for the lengths of names and numbers.
	plain, _ := token.Mint("billing")
	fixTok, fixSec := f.token(1, plain, shapeScoped, true)
	fixUser := f.user(0, true)
	sizeOf := func(obj apiruntime.Object) int {
		obj = obj.DeepCopyObject()
		obj.(client.Object).SetResourceVersion("")
		gvk, _, _ := testenv.Scheme.ObjectKinds(obj)
		obj.GetObjectKind().SetGroupVersionKind(gvk[0])
		b, _ := json.Marshal(obj)
		return len(b)
	}
	for _, p := range []struct {
		what          string
		real, fixture apiruntime.Object
	}{
		{"ApiToken", got[1], fixTok}, {"Secret", secrets[1], fixSec}, {"ServiceUser", realUser, fixUser},
	} {
		r, m := sizeOf(p.real), sizeOf(p.fixture)
		if math.Abs(float64(r-m)) > 0.02*float64(r) {
			t.Errorf("%s: %d bytes stored, the fixture's %d", p.what, r, m)
		}
	}
}

// withAgent is cfg with another user agent.
func withAgent(cfg *rest.Config, agent string) *rest.Config {
	c := *cfg
	c.UserAgent = agent
	return &c
}

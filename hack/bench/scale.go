package main

// scale.go: the `scale` section. A million tokens on paper and in memory:
// what etcd stores per token and where its limits bind, what the check index
// and the manager's cache hold per token, and how long a restarted replica
// takes to list and index them all.
//
// The objects are built the way keymint and kube-apiserver leave them: an
// ApiToken with the status the controller writes (apitoken_status.go's
// desiredStatus: its conditions, hash, prefix, serial, times), its Secret
// with the token and the signed record (internal/secretrecord, as the
// controller writes it), and the managedFields kube-apiserver records for
// each writer. The controllers' condition messages are unexported, so they
// are mirrored here; sizes follow them, not the other way round.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	apiruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	toolscache "k8s.io/client-go/tools/cache"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/controllers"
	"github.com/keymint/keymint/internal/recordkey"
	"github.com/keymint/keymint/internal/requester"
	"github.com/keymint/keymint/internal/secretrecord"
	"github.com/keymint/keymint/internal/testenv"
	"github.com/keymint/keymint/internal/token"
	"github.com/keymint/keymint/internal/tokenstate"
	"github.com/keymint/keymint/webhook/check"
)

// The population: scaleTokensPerUser ApiTokens per ServiceUser,
// scaleUsersPerNamespace ServiceUsers per namespace. Even tokens rotate like the sample
// billing-exporter-prod (every 600h, an hour's grace, their own Secret
// name, rotated twice so far); odd ones are scoped and short-lived like
// billing-backfill (config/samples). Every token has been used.
const (
	scaleTokensPerUser     = 100
	scaleUsersPerNamespace = 10
	scaleMillion           = 1_000_000
	// scaleListPage is client-go's pager page size.
	scaleListPage = 500
)

// etcd's and kube-apiserver's defaults, as the limits the figures are held
// against.
const (
	etcdQuota      = 2 << 30         // etcd --quota-backend-bytes default
	etcdQuotaMax   = 8 << 30         // the largest quota etcd recommends
	etcdMaxRequest = 3 << 19         // etcd --max-request-bytes default, 1.5 MiB
	etcdFill       = 0.9             // bbolt page fill for etcd's in-order writes
	etcdCompaction = 5 * time.Minute // kube-apiserver --etcd-compaction-interval default
)

func runScale(ctx context.Context, e *env) (string, error) {
	indexSizes, relists := []int{10_000, 100_000, scaleMillion}, []scaleRelistRun{{100_000, true}, {100_000, false}}
	if e.million {
		relists = append(relists, scaleRelistRun{scaleMillion, true})
	}
	if e.quick {
		indexSizes, relists = []int{10_000, 100_000}, []scaleRelistRun{{20_000, true}, {20_000, false}, {100_000, true}}
	}
	// A safety net on a shared machine: collect harder than let the heap
	// grow past this. The figures are live heap after a GC, not affected.
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(16 << 30))
	defer debug.FreeOSMemory()

	f, err := newScaleFixture(time.Now().UTC().Truncate(time.Second))
	if err != nil {
		return "", err
	}
	sz, err := measureStoredSizes(f)
	if err != nil {
		return "", err
	}
	var idx []scaleIndexResult
	for _, n := range indexSizes {
		e.log("scale: index of %s tokens", thousands(n))
		r, err := measureCheckIndex(ctx, f, n)
		if err != nil {
			return "", err
		}
		idx = append(idx, r)
	}
	var rel []scaleRelistResult
	for _, run := range relists {
		e.log("scale: relist of %s tokens, transforms %v", thousands(run.n), run.transformed)
		r, err := measureCacheRelist(ctx, f, run)
		if err != nil {
			return "", err
		}
		rel = append(rel, r)
	}
	var lu []lastUsedResult
	for _, run := range lastUsedRuns(e.quick) {
		e.log("scale: lastUsedAt of %s tokens in constant use behind %d replicas, maxIdle %v, %v simulated", thousands(run.n), run.replicas, run.maxIdle, run.span)
		r, err := simulateLastUsed(ctx, f, run)
		if err != nil {
			return "", err
		}
		lu = append(lu, r)
	}
	return scaleReport(sz, idx, rel, lu, e.quick), nil
}

// lastUsedRuns are the simulations of use-driven writes: tokens with no
// idle rule and with a maxIdle of an hour (the finest it records, apart
// from retireWhenIdle's grace periods), behind 1 and 3 replicas. Each
// replica flushes once a simulated minute rather than every 10 s: the
// writes are the same (a token's are 3 hours or 15 minutes apart), and the
// fake API server's reads are the simulation's cost.
func lastUsedRuns(quick bool) []lastUsedRun {
	n, span := 500, 6*time.Hour
	if quick {
		n = 100
	}
	return []lastUsedRun{
		{n: n, replicas: 1, span: span, flush: time.Minute},
		{n: n, replicas: 3, span: span, flush: time.Minute},
		{n: n, replicas: 3, span: span, flush: time.Minute, maxIdle: time.Hour},
	}
}

// scaleFixture builds the objects of token i, user u.
type scaleFixture struct {
	now    time.Time
	ring   *recordkey.Keyring
	scheme *apiruntime.Scheme
	codecs serializer.CodecFactory
	// fields caches managedFields by object shape: building them is slow,
	// and they differ between objects of one shape only by the owner's UID.
	fields map[string]scaleManagedTemplate
}

type scaleManagedTemplate struct {
	entries []metav1.ManagedFieldsEntry
	uid     string // replaced by each object's own owner UID
}

func newScaleFixture(now time.Time) (*scaleFixture, error) {
	ring, err := recordkey.Generate("k1")
	if err != nil {
		return nil, err
	}
	s := apiruntime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, err
	}
	if err := keymintv1alpha1.AddToScheme(s); err != nil {
		return nil, err
	}
	return &scaleFixture{now: now, ring: ring, scheme: s, codecs: serializer.NewCodecFactory(s), fields: map[string]scaleManagedTemplate{}}, nil
}

// fakeUID is a UUID-shaped UID, distinct per kind and number.
func fakeUID(kind byte, n int) types.UID {
	return types.UID(fmt.Sprintf("%08x-7a3c-4e1b-9f2d-%012x", kind, n))
}

func scaleUserName(u int) (ns, name string) {
	return fmt.Sprintf("payments-%04d", u/scaleUsersPerNamespace), fmt.Sprintf("billing-exporter-%05d", u)
}

func (f *scaleFixture) at(d time.Duration) metav1.Time { return metav1.NewTime(f.now.Add(d)) }

// user is ServiceUser u as applied (like config/samples' billing-exporter),
// with the finalizer and status its controller writes.
func (f *scaleFixture) user(u int, managed bool) *keymintv1alpha1.ServiceUser {
	ns, name := scaleUserName(u)
	su := &keymintv1alpha1.ServiceUser{
		TypeMeta: metav1.TypeMeta{APIVersion: keymintv1alpha1.GroupVersion.String(), Kind: "ServiceUser"},
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: ns, UID: fakeUID('u', u), Generation: 1, CreationTimestamp: f.at(-90 * 24 * time.Hour),
			Finalizers: []string{controllers.TokensFinalizer},
		},
		Spec: keymintv1alpha1.ServiceUserSpec{
			DisplayName: "Billing exporter",
			Description: "Nightly export of invoices to the data warehouse. Owner: payments team.",
			Permissions: []string{"invoices:read", "reports:write"},
			Groups:      []string{"payments"},
			TokenPolicy: keymintv1alpha1.TokenPolicy{
				Prefix: "billing", MaxLifetime: &metav1.Duration{Duration: 2160 * time.Hour},
				DefaultLifetime: &metav1.Duration{Duration: 720 * time.Hour}, RequestsPerMinute: 600,
			},
		},
		Status: keymintv1alpha1.ServiceUserStatus{
			Conditions: []metav1.Condition{{
				Type: keymintv1alpha1.ServiceUserConditionReady, Status: metav1.ConditionTrue, ObservedGeneration: 1,
				LastTransitionTime: f.at(-90 * 24 * time.Hour), Reason: keymintv1alpha1.ServiceUserReasonEnabled,
				Message: "The service user is enabled; its tokens can be used",
			}},
			Tokens: scaleTokensPerUser, ActiveTokens: scaleTokensPerUser, UnrevokedTokens: scaleTokensPerUser, ObservedGeneration: 1,
		},
	}
	if managed {
		su.ManagedFields = f.managed("user", su, "", userWriters)
	}
	return su
}

// tokenShape is a kind of token.
type tokenShape int

const (
	shapeRotating tokenShape = iota // like billing-exporter-prod
	shapeScoped                     // like billing-backfill
	shapeLargest                    // every field at its longest valid size
)

// scaleRequester is who asked for the fixture's tokens: an admin with a
// client certificate, as envtest's and kubectl's usually are.
var scaleRequester = authenticationv1.UserInfo{Username: "admin", Groups: []string{"system:masters", "system:authenticated"},
	Extra: map[string]authenticationv1.ExtraValue{"authentication.kubernetes.io/credential-id": {"X509SHA256=" + strings.Repeat("0", 64)}}}

func tokenShapeOf(i int) tokenShape { return tokenShape(i % 2) }

// token returns ApiToken i and its Secret holding plain, as the controller
// leaves them; with managed, also the managedFields kube-apiserver records.
func (f *scaleFixture) token(i int, plain string, s tokenShape, managed bool) (*keymintv1alpha1.ApiToken, *corev1.Secret) {
	u := i / scaleTokensPerUser
	ns, user := scaleUserName(u)
	name := fmt.Sprintf("%s-%02d", user, i%scaleTokensPerUser)
	tok := &keymintv1alpha1.ApiToken{
		TypeMeta: metav1.TypeMeta{APIVersion: keymintv1alpha1.GroupVersion.String(), Kind: "ApiToken"},
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: ns, UID: fakeUID('t', i), Generation: 1, CreationTimestamp: f.at(-60 * 24 * time.Hour),
		},
		Spec: keymintv1alpha1.ApiTokenSpec{ServiceUser: user},
	}
	issued, serial := f.at(-5*24*time.Hour), int64(3)
	expires := metav1.NewTime(issued.Add(720 * time.Hour)) // the user's defaultLifetime
	st := &tok.Status
	switch s {
	case shapeRotating, shapeLargest:
		tok.Spec.Description = "Production export job"
		tok.Spec.Rotation = &keymintv1alpha1.Rotation{Every: &metav1.Duration{Duration: 600 * time.Hour}, GracePeriod: &metav1.Duration{Duration: time.Hour}}
		tok.Spec.SecretName = name + "-token"
		st.RotatedAt = &issued
		next := metav1.NewTime(issued.Add(600 * time.Hour))
		st.NextRotationAt = &next
	case shapeScoped:
		tok.Spec.Description = "One-off backfill of 2025 invoices"
		tok.Spec.Scopes = []string{"invoices:read"}
		tok.Spec.Lifetime = &metav1.Duration{Duration: 168 * time.Hour}
		issued, serial = f.at(-24*time.Hour), 1
		expires = metav1.NewTime(issued.Add(168 * time.Hour))
	}
	granted, grantedStatus, grantedReason := "The token gets all its spec asks for", metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonAsRequested
	var previous []keymintv1alpha1.PreviousToken
	if s == shapeLargest {
		tok.Name = strings.Repeat("t", 253)
		tok.Spec.SecretName = strings.Repeat("s", 253)
		tok.Spec.Description = strings.Repeat("d", 1024)
		for j := range 128 {
			tok.Spec.Scopes = append(tok.Spec.Scopes, fmt.Sprintf("%s:%03d", strings.Repeat("r", 124), j))
		}
		for j := range 16 {
			tok.Spec.Audiences = append(tok.Spec.Audiences, fmt.Sprintf("%s%03d", strings.Repeat("a", 250), j))
		}
		tok.Annotations = map[string]string{keymintv1alpha1.RotateAnnotation: strings.Repeat("r", 256)}
		st.LastRotationRequest = tok.Annotations[keymintv1alpha1.RotateAnnotation]
		// Rotated eight times within the grace period: as many hashes as
		// the controller keeps.
		for j := range 8 {
			previous = append(previous, keymintv1alpha1.PreviousToken{
				TokenHash: token.FormatHash(sha256.Sum256([]byte(fmt.Sprint(plain, j)))), IssuedAt: issued, ValidUntil: metav1.NewTime(issued.Add(time.Hour)),
			})
		}
		st.PreviousTokens = previous
		grantedStatus, grantedReason = metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonScopesNotHeld
		granted = fmt.Sprintf("Scopes %s are not among ServiceUser %q's permissions and are not granted", strings.Join(tok.Spec.Scopes, ", "), user)
	}
	// Admitted for an admin, as the apply in TestFixtureMatchesAPIServer is.
	requester.Admit(f.ring, nil, tok, scaleRequester, tok.CreationTimestamp.Time, time.Time{})
	secretName := tok.SecretNameOrDefault()
	display := token.Display(plain)
	used := f.at(-time.Minute)
	st.TokenHash, st.TokenPrefix, st.SecretName, st.Serial = token.HashString(plain), display, secretName, serial
	st.IssuedAt, st.ExpiresAt, st.LastUsedAt, st.TokenLastUsedAt = &issued, &expires, &used, &used
	// The line's start: this token's issue, or the first rotated one's (as
	// many bytes).
	st.IdleSince = &issued
	st.ServiceUserUID, st.ObservedGeneration = string(fakeUID('u', u)), 1
	cond := func(typ string, status metav1.ConditionStatus, reason, message string) metav1.Condition {
		return metav1.Condition{Type: typ, Status: status, ObservedGeneration: 1, LastTransitionTime: tok.CreationTimestamp, Reason: reason, Message: message}
	}
	// In the order desiredStatus sets them, with its messages. The
	// default 7-day warning: a token that does not rotate first is inside
	// it for its last week.
	soon := cond(keymintv1alpha1.ApiTokenConditionExpiringSoon, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonNotExpiringSoon,
		"The token is not inside its expiry warning window")
	if week := 7 * 24 * time.Hour; tok.Spec.Rotation == nil && !f.at(0).Time.Before(expires.Add(-week)) {
		soon = cond(keymintv1alpha1.ApiTokenConditionExpiringSoon, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonWithinWarningWindow,
			fmt.Sprintf("Token %s… expires at %s, within the %s warning window, and no scheduled rotation replaces it first: "+
				"rotate it (annotation %s), or set a later expiresAt or lifetime", display, expires.UTC().Format(time.RFC3339), week, keymintv1alpha1.RotateAnnotation))
	}
	st.Conditions = []metav1.Condition{
		soon,
		cond(keymintv1alpha1.ApiTokenConditionRevoked, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonNotRevoked, "The token is not revoked"),
		cond(keymintv1alpha1.ApiTokenConditionExpired, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonNotExpired, "The token has not expired"),
		cond(keymintv1alpha1.ApiTokenConditionAuthorized, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonAuthorized,
			fmt.Sprintf("user %q, who asked for this token, may mint tokens of ServiceUser %q as it is now", scaleRequester.Username, user)),
		cond(keymintv1alpha1.ApiTokenConditionReady, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonIssued, fmt.Sprintf("Token %s… is in Secret %q", display, secretName)),
		cond(keymintv1alpha1.ApiTokenConditionRequestGranted, grantedStatus, grantedReason, granted),
	}

	rec := secretrecord.Record{Serial: serial, Hash: st.TokenHash, ServiceUserUID: types.UID(st.ServiceUserUID), IssuedAt: issued.Time, ExpiresAt: &expires.Time,
		RotationRequest: st.LastRotationRequest, IdleSince: &st.IdleSince.Time}
	if st.RotatedAt != nil {
		rec.RotatedAt = &st.RotatedAt.Time
		// The record was written at the rotation, while the token before
		// was still in its grace period.
		rec.Previous = []secretrecord.Previous{{Hash: token.FormatHash(sha256.Sum256([]byte(plain + "-before"))),
			IssuedAt: issued.Add(-600 * time.Hour), ValidUntil: issued.Add(time.Hour)}}
		for _, p := range previous {
			rec.Previous = append(rec.Previous, secretrecord.Previous{Hash: p.TokenHash, IssuedAt: p.IssuedAt.Time, ValidUntil: p.ValidUntil.Time})
		}
	}
	yes := true
	sec := &corev1.Secret{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{
			Name: secretName, Namespace: ns, UID: fakeUID('s', i), CreationTimestamp: tok.CreationTimestamp,
			Labels: map[string]string{keymintv1alpha1.TokenLabel: secretrecord.TokenLabelValue(name)},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: keymintv1alpha1.GroupVersion.String(), Kind: "ApiToken", Name: tok.Name, UID: tok.UID,
				Controller: &yes, BlockOwnerDeletion: &yes,
			}},
		},
		Type: corev1.SecretTypeOpaque,
	}
	secretrecord.Write(sec, tok, f.ring, plain, rec)
	if managed {
		key := fmt.Sprint("token", s)
		tok.ManagedFields = f.managed(key, tok, "", tokenWriters)
		sec.ManagedFields = f.managed("secret"+key, sec, string(tok.UID), secretWriters)
	}
	return tok, sec
}

// fieldWriter is one field manager of an object: the top-level fields it set
// (and, under metadata, which ones).
type fieldWriter struct {
	manager     string
	op          metav1.ManagedFieldsOperationType
	subresource string
	top, meta   []string
}

// The lists of keymint's objects that are not atomic, by path.
var keymintListKinds = map[string]smdListKind{
	".metadata.finalizers":      {set: true},
	".metadata.ownerReferences": {key: "uid", atomicItems: true},
	".spec.scopes":              {set: true},
	".spec.audiences":           {set: true},
	".spec.permissions":         {set: true},
	".spec.groups":              {set: true},
	".status.conditions":        {key: "type"},
}

// The writers of keymint's objects. A ServiceUser and an ApiToken are
// applied server-side (by kubectl, Flux or Argo CD; a client-side `kubectl
// apply` is costed apart); keymint adds the finalizer and writes the status,
// and, on every replica, lastUsedAt (same manager and subresource: one
// entry); it creates and updates the Secret.
var (
	userWriters = []fieldWriter{
		{manager: "kubectl", op: metav1.ManagedFieldsOperationApply, top: []string{"spec"}},
		{manager: "keymint", op: metav1.ManagedFieldsOperationUpdate, top: []string{"metadata"}, meta: []string{"finalizers"}},
		{manager: "keymint", op: metav1.ManagedFieldsOperationUpdate, subresource: "status", top: []string{"status"}},
	}
	tokenWriters = []fieldWriter{
		{manager: "kubectl", op: metav1.ManagedFieldsOperationApply, top: []string{"spec"}, meta: []string{"annotations"}},
		{manager: "keymint", op: metav1.ManagedFieldsOperationUpdate, subresource: "status", top: []string{"status"}},
	}
	secretWriters = []fieldWriter{
		{manager: "keymint", op: metav1.ManagedFieldsOperationUpdate, top: []string{"metadata", "data", "type"}, meta: []string{"labels", "annotations", "ownerReferences"}},
	}
)

// managed returns the managedFields of obj's writers, from the template for
// its shape; ownerUID, the one per-object value in a template, is replaced.
func (f *scaleFixture) managed(shapeKey string, obj apiruntime.Object, ownerUID string, writers []fieldWriter) []metav1.ManagedFieldsEntry {
	t, ok := f.fields[shapeKey]
	if !ok {
		t = scaleManagedTemplate{entries: managedEntries(obj, writers, f.now.Add(-time.Minute)), uid: ownerUID}
		f.fields[shapeKey] = t
	}
	out := slices.Clone(t.entries)
	for i := range out {
		raw := out[i].FieldsV1.Raw
		if t.uid != "" {
			raw = bytes.ReplaceAll(raw, []byte(t.uid), []byte(ownerUID))
		} else {
			raw = bytes.Clone(raw)
		}
		out[i].FieldsV1 = &metav1.FieldsV1{Raw: raw}
		tm := *out[i].Time
		out[i].Time = &tm
	}
	return out
}

// managedEntries returns the managedFields kube-apiserver records for the
// writers of obj, each owning the fields of obj it names.
func managedEntries(obj apiruntime.Object, writers []fieldWriter, at time.Time) []metav1.ManagedFieldsEntry {
	var whole map[string]any
	b, _ := json.Marshal(obj)
	_ = json.Unmarshal(b, &whole)
	var entries []metav1.ManagedFieldsEntry
	for _, w := range writers {
		owned := map[string]any{}
		for _, k := range w.top {
			v, ok := whole[k]
			if !ok {
				continue
			}
			if m, isMap := v.(map[string]any); isMap && k == "metadata" {
				part := map[string]any{}
				for _, mk := range w.meta {
					if mv, ok := m[mk]; ok {
						part[mk] = mv
					}
				}
				if len(part) == 0 {
					continue
				}
				v = part
			}
			owned[k] = v
		}
		raw, _ := json.Marshal(managedFieldSet(owned, "", w.op == metav1.ManagedFieldsOperationUpdate, keymintListKinds))
		entries = append(entries, metav1.ManagedFieldsEntry{
			Manager: w.manager, Operation: w.op, APIVersion: obj.GetObjectKind().GroupVersionKind().GroupVersion().String(),
			Time: &metav1.Time{Time: at}, FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: raw}, Subresource: w.subresource,
		})
	}
	return entries
}

// smdListKind says how structured-merge-diff names the items of a list: by
// value (a set of scalars) or by one field of each item (a map list).
type smdListKind struct {
	set bool
	key string
	// atomicItems: each item is a leaf (OwnerReference is
	// +structType=atomic).
	atomicItems bool
}

// managedFieldSet returns the managedFields set (FieldsV1) kube-apiserver records
// for a manager that set every field of v, a JSON object at path: "f:<name>"
// per field, "v:<json>" per item of a set, "k:{<key>:<json>}" per item of a
// map list, and "." for a map or list the manager set as a whole, which
// Update operations record (dots; never for metadata, which every object
// has) and Apply operations record only for map list items. lists names the
// non-atomic lists by path (".status.conditions"); every other list is
// atomic, a leaf. TestFixtureMatchesAPIServer holds it to kube-apiserver's
// records of the same objects.
func managedFieldSet(v map[string]any, path string, dots bool, lists map[string]smdListKind) map[string]any {
	set := map[string]any{}
	for name, val := range v {
		p := path + "." + name
		switch val := val.(type) {
		case map[string]any:
			sub := managedFieldSet(val, p, dots, lists)
			if dots && p != ".metadata" {
				sub["."] = map[string]any{}
			}
			set["f:"+name] = sub
		case []any:
			kind, ok := lists[p]
			if !ok {
				set["f:"+name] = map[string]any{}
				continue
			}
			sub := map[string]any{}
			for _, item := range val {
				if kind.set {
					b, _ := json.Marshal(item)
					sub["v:"+string(b)] = map[string]any{}
					continue
				}
				obj, _ := item.(map[string]any)
				b, _ := json.Marshal(map[string]any{kind.key: obj[kind.key]})
				if kind.atomicItems {
					sub["k:"+string(b)] = map[string]any{}
					continue
				}
				itemSet := managedFieldSet(obj, p, dots, lists)
				itemSet["."] = map[string]any{}
				sub["k:"+string(b)] = itemSet
			}
			if dots {
				sub["."] = map[string]any{}
			}
			set["f:"+name] = sub
		default:
			set["f:"+name] = map[string]any{}
		}
	}
	return set
}

// storedSizes is what etcd stores per object.
type storedSizes struct {
	token        [3]int // JSON, by shape
	tokenManaged [3]int // of which managedFields
	tokenCSA     int    // extra for a token applied client-side (last-applied annotation)
	secret       int    // protobuf
	secretJSON   int
	secretMF     int // managedFields in the protobuf
	secretToken  int // the plaintext token in it
	user         int
	tokenKey     int // etcd key lengths
	secretKey    int
	userKey      int
}

func (s storedSizes) avgToken() float64 {
	return float64(s.token[shapeRotating]+s.token[shapeScoped]) / 2
}

func measureStoredSizes(f *scaleFixture) (storedSizes, error) {
	var s storedSizes
	proto, ok := apiruntime.SerializerInfoForMediaType(f.codecs.SupportedMediaTypes(), apiruntime.ContentTypeProtobuf)
	if !ok {
		return s, fmt.Errorf("no protobuf serializer")
	}
	for _, sh := range []tokenShape{shapeRotating, shapeScoped, shapeLargest} {
		plain, err := token.Mint("billing")
		if err != nil {
			return s, err
		}
		tok, sec := f.token(0, plain, sh, true)
		b, err := json.Marshal(tok)
		if err != nil {
			return s, err
		}
		s.token[sh] = len(b)
		mf, _ := json.Marshal(tok.ManagedFields)
		s.tokenManaged[sh] = len(`,"managedFields":`) + len(mf)
		if sh != shapeRotating {
			continue
		}
		s.tokenKey = len("/registry/" + keymintv1alpha1.GroupVersion.Group + "/apitokens/" + tok.Namespace + "/" + tok.Name)
		s.secretKey = len("/registry/secrets/" + sec.Namespace + "/" + sec.Name)
		// What client-side `kubectl apply` adds: the manifest again, as an
		// annotation, and its field manager's entry for that annotation.
		manifest, _ := json.Marshal(map[string]any{
			"apiVersion": tok.APIVersion, "kind": tok.Kind,
			"metadata": map[string]any{"annotations": map[string]any{}, "name": tok.Name, "namespace": tok.Namespace},
			"spec":     tok.Spec,
		})
		csa := tok.DeepCopy()
		csa.Annotations = map[string]string{"kubectl.kubernetes.io/last-applied-configuration": string(manifest) + "\n"}
		csa.ManagedFields[0].Manager, csa.ManagedFields[0].Operation = "kubectl-client-side-apply", metav1.ManagedFieldsOperationUpdate
		csa.ManagedFields[0].FieldsV1.Raw = bytes.Replace(csa.ManagedFields[0].FieldsV1.Raw, []byte(`{"f:spec"`),
			[]byte(`{"f:metadata":{".":{},"f:annotations":{".":{},"f:kubectl.kubernetes.io/last-applied-configuration":{}}},"f:spec"`), 1)
		if b, err := json.Marshal(csa); err == nil {
			s.tokenCSA = len(b) - s.token[shapeRotating]
		}
		var buf bytes.Buffer
		if err := f.codecs.EncoderForVersion(proto.Serializer, corev1.SchemeGroupVersion).Encode(sec, &buf); err != nil {
			return s, err
		}
		s.secret = buf.Len()
		bare := sec.DeepCopy()
		bare.ManagedFields = nil
		buf.Reset()
		if err := f.codecs.EncoderForVersion(proto.Serializer, corev1.SchemeGroupVersion).Encode(bare, &buf); err != nil {
			return s, err
		}
		s.secretMF = s.secret - buf.Len()
		if b, err := json.Marshal(sec); err == nil {
			s.secretJSON = len(b)
		}
		s.secretToken = len(plain)
		su := f.user(0, true)
		if b, err := json.Marshal(su); err == nil {
			s.user = len(b)
		}
		s.userKey = len("/registry/" + keymintv1alpha1.GroupVersion.Group + "/serviceusers/" + su.Namespace + "/" + su.Name)
	}
	return s, nil
}

// etcdRevisionBytes estimates what one revision of a key takes in etcd's
// bbolt file: the mvccpb.KeyValue record (key, create and mod revisions,
// version, value, with protobuf's tags and lengths), its 17-byte revision key
// and bbolt's 16-byte leaf element, in pages filled to 90%.
func etcdRevisionBytes(key, value int) float64 {
	const revision, version = 1 << 27, 100 // hundreds of millions of revisions; a few versions per key
	field := func(n int) int { return 1 + uvarintLen(uint64(n)) + n }
	kv := field(key) + 2*(1+uvarintLen(revision)) + 1 + uvarintLen(version) + field(value)
	return float64(kv+17+16) / etcdFill
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

// liveHeap is the live heap after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// scaleIndexResult is the check index at n tokens.
type scaleIndexResult struct {
	n, users   int
	build      span   // UpsertUser and UpsertToken, nothing else
	decode     span   // the feed's watch decoding each ApiToken (check.DecodeTokenEvent)
	heap, warm uint64 // after the build; after one /check per token
}

// measureCheckIndex builds the check index of n tokens as the feed does, from
// ApiTokens as the cache holds them (managed fields stripped), then sends
// each token through the /check handler once: what a check server holds
// once every token is in use (prebuilt answer, rate-limit window, pending
// lastUsedAt).
func measureCheckIndex(ctx context.Context, f *scaleFixture, n int) (scaleIndexResult, error) {
	r := scaleIndexResult{n: n, users: (n + scaleTokensPerUser - 1) / scaleTokensPerUser}
	plains := make([]string, n)
	for i := range plains {
		p, err := token.Mint("billing")
		if err != nil {
			return r, err
		}
		plains[i] = p
	}
	base := liveHeap()
	ix := check.NewIndex()
	for u := range r.users {
		su := f.user(u, false)
		r.build.measure(func() { ix.UpsertUser(su) })
	}
	const batch = 1000
	toks := make([]*keymintv1alpha1.ApiToken, 0, batch)
	for i := 0; i < n; i += batch {
		if err := ctx.Err(); err != nil {
			return r, err
		}
		toks = toks[:0]
		for j := i; j < min(n, i+batch); j++ {
			tok, _ := f.token(j, plains[j], tokenShapeOf(j), true)
			// As the feed gets it: a watch event of the API server's JSON,
			// decoded by the feed's own decoder, each string its own, then
			// stripped.
			data, err := json.Marshal(tok)
			if err != nil {
				return r, err
			}
			frame := append(append([]byte(`{"type":"ADDED","object":`), data...), '}')
			var fed *keymintv1alpha1.ApiToken
			if err := r.decode.measureErr(func() error {
				_, obj, err := check.DecodeTokenEvent(frame)
				fed, _ = obj.(*keymintv1alpha1.ApiToken)
				return err
			}); err != nil {
				return r, err
			}
			toks = append(toks, check.StripToken(fed))
		}
		r.build.measure(func() {
			for _, tok := range toks {
				ix.UpsertToken(tok)
			}
		})
	}
	clear(toks)
	if ix.Len() != n {
		return r, fmt.Errorf("index holds %d hashes, want %d", ix.Len(), n)
	}
	r.heap = liveHeap() - base

	h := check.NewHandler(ix, clocktesting.NewFakeClock(f.now), 500, prometheus.NewRegistry()).ServeMux()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, check.CheckPath, nil)
	if err != nil {
		return r, err
	}
	w := &statusOnlyWriter{header: http.Header{}}
	for i, p := range plains {
		req.Header.Set("Authorization", "Bearer "+p)
		clear(w.header)
		w.code = 0
		h.ServeHTTP(w, req)
		if w.code != http.StatusOK {
			return r, fmt.Errorf("token %d: /check answered %d", i, w.code)
		}
	}
	r.warm = liveHeap() - base
	runtime.KeepAlive(ix)
	runtime.KeepAlive(h)
	return r, nil
}

// statusOnlyWriter is a ResponseWriter that keeps only the status.
type statusOnlyWriter struct {
	header http.Header
	code   int
}

func (w *statusOnlyWriter) Header() http.Header { return w.header }
func (w *statusOnlyWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}
func (w *statusOnlyWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return len(p), nil
}

// scaleRelistRun is one informer-relist simulation.
type scaleRelistRun struct {
	n           int
	transformed bool // with the manager's cache transforms
}

// scaleRelistResult is what a relist of n tokens leaves in the cache.
type scaleRelistResult struct {
	scaleRelistRun
	users, tokens, secrets             int64 // heap held by each store
	usersTime, tokensTime, secretsTime span
	tokenWire, secretWire, userWire    int64 // bytes of the list pages
	index                              int64 // the check index, on top of the cached ApiTokens
	// hashIndex and userIndex are what the manager's two ApiToken field
	// indexes add to their store.
	hashIndex, userIndex int64
	indexTime            span
}

// measureCacheRelist lists n ApiTokens, n Secrets and their ServiceUsers into
// stores built like controller-runtime's informers (namespace index, and for
// ApiTokens the manager's two field indexes), page by page as client-go's
// pager receives them: ApiTokens and ServiceUsers as JSON (custom resources
// have no protobuf), Secrets as protobuf (controller-runtime asks for it for
// built-in kinds). Each page is built and encoded outside the clock; the clock
// runs over decode, transform and store. Then, on the transformed run, the
// check index is fed from the cached objects, as after a restart.
func measureCacheRelist(ctx context.Context, f *scaleFixture, run scaleRelistRun) (scaleRelistResult, error) {
	r := scaleRelistResult{scaleRelistRun: run}
	jsonInfo, _ := apiruntime.SerializerInfoForMediaType(f.codecs.SupportedMediaTypes(), apiruntime.ContentTypeJSON)
	protoInfo, _ := apiruntime.SerializerInfoForMediaType(f.codecs.SupportedMediaTypes(), apiruntime.ContentTypeProtobuf)
	opts := controllers.CacheOptions()
	tokenTransform, userTransform, secretTransform := opts.DefaultTransform, opts.DefaultTransform, toolscache.TransformFunc(nil)
	for obj, by := range opts.ByObject {
		if _, ok := obj.(*corev1.Secret); ok {
			secretTransform = by.Transform
		}
	}
	if secretTransform == nil {
		return r, fmt.Errorf("controllers.CacheOptions has no Secret transform")
	}
	if !run.transformed {
		tokenTransform, userTransform, secretTransform = nil, nil, nil
	}
	users := (run.n + scaleTokensPerUser - 1) / scaleTokensPerUser

	base := liveHeap()
	userStore := newInformerStore()
	d, wire, err := simulateRelist(ctx, users, userStore, userTransform, func(start, count int) ([]byte, error) {
		list := &keymintv1alpha1.ServiceUserList{TypeMeta: metav1.TypeMeta{APIVersion: keymintv1alpha1.GroupVersion.String(), Kind: "ServiceUserList"}}
		for u := start; u < start+count; u++ {
			list.Items = append(list.Items, *f.user(u, true))
		}
		return encodeObject(jsonInfo.Serializer, list)
	}, func(b []byte) (apiruntime.Object, error) {
		obj, _, err := jsonInfo.Serializer.Decode(b, nil, &keymintv1alpha1.ServiceUserList{})
		return obj, err
	})
	if err != nil {
		return r, err
	}
	r.usersTime, r.userWire = d, wire
	h := liveHeap()
	r.users, base = int64(h-base), h

	userIndex := toolscache.Indexers{"field:" + controllers.ServiceUserIndex: crFieldIndex(controllers.ServiceUserIndexFunc)}
	hashIndex := toolscache.Indexers{"field:" + controllers.TokenHashIndex: crFieldIndex(controllers.TokenHashIndexFunc)}
	tokenStore := newInformerStore(userIndex, hashIndex)
	d, wire, err = simulateRelist(ctx, run.n, tokenStore, tokenTransform, func(start, count int) ([]byte, error) {
		list := &keymintv1alpha1.ApiTokenList{TypeMeta: metav1.TypeMeta{APIVersion: keymintv1alpha1.GroupVersion.String(), Kind: "ApiTokenList"}}
		for i := start; i < start+count; i++ {
			plain, err := token.Mint("billing")
			if err != nil {
				return nil, err
			}
			tok, _ := f.token(i, plain, tokenShapeOf(i), true)
			list.Items = append(list.Items, *tok)
		}
		return encodeObject(jsonInfo.Serializer, list)
	}, func(b []byte) (apiruntime.Object, error) {
		obj, _, err := jsonInfo.Serializer.Decode(b, nil, &keymintv1alpha1.ApiTokenList{})
		return obj, err
	})
	if err != nil {
		return r, err
	}
	r.tokensTime, r.tokenWire = d, wire
	h = liveHeap()
	r.tokens, base = int64(h-base), h

	if run.transformed {
		objs := tokenStore.List()
		bare, err := storeHeap(objs, nil)
		if err != nil {
			return r, err
		}
		withHash, err := storeHeap(objs, hashIndex)
		if err != nil {
			return r, err
		}
		withUser, err := storeHeap(objs, userIndex)
		if err != nil {
			return r, err
		}
		r.hashIndex, r.userIndex = withHash-bare, withUser-bare
		clear(objs)
		base = liveHeap()

		ix := check.NewIndex()
		users, tokens := userStore.List(), tokenStore.List()
		r.indexTime.measure(func() {
			for _, o := range users {
				ix.UpsertUser(o.(*keymintv1alpha1.ServiceUser))
			}
			for _, o := range tokens {
				ix.UpsertToken(o.(*keymintv1alpha1.ApiToken))
			}
		})
		clear(users)
		clear(tokens)
		if ix.Len() != run.n {
			return r, fmt.Errorf("index holds %d hashes, want %d", ix.Len(), run.n)
		}
		h = liveHeap()
		r.index, base = int64(h-base), h
		defer runtime.KeepAlive(ix)
	}

	secretStore := newInformerStore()
	d, wire, err = simulateRelist(ctx, run.n, secretStore, secretTransform, func(start, count int) ([]byte, error) {
		list := &corev1.SecretList{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "SecretList"}}
		for i := start; i < start+count; i++ {
			plain, err := token.Mint("billing")
			if err != nil {
				return nil, err
			}
			_, sec := f.token(i, plain, tokenShapeOf(i), true)
			sec.TypeMeta = metav1.TypeMeta{}
			list.Items = append(list.Items, *sec)
		}
		return encodeObject(protoInfo.Serializer, list)
	}, func(b []byte) (apiruntime.Object, error) {
		obj, _, err := protoInfo.Serializer.Decode(b, nil, &corev1.SecretList{})
		return obj, err
	})
	if err != nil {
		return r, err
	}
	r.secretsTime, r.secretWire = d, wire
	r.secrets = int64(liveHeap() - base)
	runtime.KeepAlive(userStore)
	runtime.KeepAlive(tokenStore)
	runtime.KeepAlive(secretStore)
	return r, nil
}

func encodeObject(enc apiruntime.Encoder, obj apiruntime.Object) ([]byte, error) {
	var buf bytes.Buffer
	err := enc.Encode(obj, &buf)
	return buf.Bytes(), err
}

// newInformerStore is an informer's indexer as controller-runtime makes it:
// keyed by namespace/name, indexed by namespace, plus extra.
func newInformerStore(extra ...toolscache.Indexers) toolscache.Indexer {
	ix := toolscache.Indexers{toolscache.NamespaceIndex: toolscache.MetaNamespaceIndexFunc}
	for _, e := range extra {
		for k, v := range e {
			ix[k] = v
		}
	}
	return toolscache.NewIndexer(toolscache.MetaNamespaceKeyFunc, ix)
}

// storeHeap is the heap an informer store with the extra indexes takes
// over objs, the objects themselves not counted.
func storeHeap(objs []any, extra toolscache.Indexers) (int64, error) {
	base := liveHeap()
	store := newInformerStore(extra)
	for _, o := range objs {
		if err := store.Add(o); err != nil {
			return 0, err
		}
	}
	h := int64(liveHeap() - base)
	runtime.KeepAlive(store)
	return h, nil
}

// crFieldIndex indexes each value of the controllers' index function under
// "<namespace>/<value>" and "__all_namespaces/<value>", as
// controller-runtime's IndexField does.
func crFieldIndex(values client.IndexerFunc) toolscache.IndexFunc {
	return func(obj any) ([]string, error) {
		t, ok := obj.(*keymintv1alpha1.ApiToken)
		if !ok {
			return nil, fmt.Errorf("%T is not an ApiToken", obj)
		}
		var out []string
		for _, v := range values(t) {
			out = append(out, t.Namespace+"/"+v, "__all_namespaces/"+v)
		}
		return out, nil
	}
}

// simulateRelist decodes n objects page by page into store, through
// transform; page builds and encodes one page outside the clock. It returns
// the time spent decoding, transforming and storing, and the bytes received.
func simulateRelist(ctx context.Context, n int, store toolscache.Indexer, transform toolscache.TransformFunc,
	page func(start, count int) ([]byte, error), decode func([]byte) (apiruntime.Object, error)) (span, int64, error) {
	var spent span
	var wire int64
	for start := 0; start < n; start += scaleListPage {
		if err := ctx.Err(); err != nil {
			return spent, wire, err
		}
		data, err := page(start, min(scaleListPage, n-start))
		if err != nil {
			return spent, wire, err
		}
		wire += int64(len(data))
		err = spent.measureErr(func() error {
			list, err := decode(data)
			if err != nil {
				return err
			}
			// As the reflector does: one allocation per item, so that no
			// item keeps its whole page alive.
			items, err := meta.ExtractListWithAlloc(list)
			if err != nil {
				return err
			}
			for _, item := range items {
				var obj any = item
				if transform != nil {
					if obj, err = transform(obj); err != nil {
						return err
					}
				}
				if err := store.Add(obj); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return spent, wire, err
		}
	}
	if got := len(store.ListKeys()); got != n {
		return spent, wire, fmt.Errorf("store holds %d objects, want %d", got, n)
	}
	return spent, wire, nil
}

// span is time spent in measured code: wall clock, and the CPU time of the
// whole process (user and system, every thread, so the garbage collector's
// share too), which other work on a shared machine inflates far less.
type span struct{ wall, cpu time.Duration }

func (s *span) measure(f func()) {
	_ = s.measureErr(func() error { f(); return nil })
}

func (s *span) measureErr(f func() error) error {
	w, c := time.Now(), processCPU()
	err := f()
	s.cpu += processCPU() - c
	s.wall += time.Since(w)
	return err
}

func (s span) plus(o span) span { return span{s.wall + o.wall, s.cpu + o.cpu} }

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// scaleReport renders the section.
func scaleReport(s storedSizes, idx []scaleIndexResult, rel []scaleRelistResult, lu []lastUsedResult, quick bool) string {
	var b strings.Builder
	const n = scaleMillion
	tokenRev := etcdRevisionBytes(s.tokenKey, int(s.avgToken()))
	secretRev := etcdRevisionBytes(s.secretKey, s.secret)
	userRev := etcdRevisionBytes(s.userKey, s.user)
	perToken := tokenRev + secretRev + userRev/scaleTokensPerUser
	live := perToken * n

	fmt.Fprintf(&b, "**What etcd stores per token.** Objects built as keymint and kube-apiserver leave them (`TestFixtureMatchesAPIServer` "+
		"checks them against kube-apiserver %s running the controllers): a Ready ApiToken with the status the controller writes, its Secret with the token "+
		"and the signed record, one ServiceUser per %d tokens, and the managedFields kube-apiserver records for each writer (server-side "+
		"apply for the spec; keymint for status, lastUsedAt, finalizer and Secret). Custom resources are stored as JSON, as kube-apiserver "+
		"has no protobuf for them; Secrets as protobuf (a little more with encryption at rest). Per revision: the value with its key and "+
		"etcd's and bbolt's own records, in pages %.0f%% full.\n\n", testenv.KubernetesVersion, scaleTokensPerUser, etcdFill*100)
	b.WriteString("| object | stored as | bytes | of which managedFields | etcd bytes per revision |\n|---|---|---:|---:|---:|\n")
	fmt.Fprintf(&b, "| ApiToken that rotates (like `billing-exporter-prod`) | JSON | %s | %s | %s |\n",
		thousands(s.token[shapeRotating]), thousands(s.tokenManaged[shapeRotating]), thousands(int(etcdRevisionBytes(s.tokenKey, s.token[shapeRotating]))))
	fmt.Fprintf(&b, "| ApiToken with one scope, 168h (like `billing-backfill`) | JSON | %s | %s | %s |\n",
		thousands(s.token[shapeScoped]), thousands(s.tokenManaged[shapeScoped]), thousands(int(etcdRevisionBytes(s.tokenKey, s.token[shapeScoped]))))
	fmt.Fprintf(&b, "| … applied with client-side `kubectl apply` instead | JSON | +%s | | |\n", thousands(s.tokenCSA))
	fmt.Fprintf(&b, "| Secret (token of %d B, record, signature, owner) | protobuf (as JSON: %s) | %s | %s | %s |\n",
		s.secretToken, thousands(s.secretJSON), thousands(s.secret), thousands(s.secretMF), thousands(int(secretRev)))
	fmt.Fprintf(&b, "| ServiceUser, one per %d tokens | JSON | %s | | %s |\n", scaleTokensPerUser, thousands(s.user), thousands(int(userRev)))
	fmt.Fprintf(&b, "| the largest valid ApiToken (128 scopes, 16 audiences, 8 grace hashes, longest names) | JSON | %s | %s | |\n",
		thousands(s.token[shapeLargest]), thousands(s.tokenManaged[shapeLargest]))

	b.WriteString("\n**The check index** (`webhook/check.Index`), built with `UpsertUser` and `UpsertToken` as its feed calls them, from " +
		"ApiTokens decoded from watch events of their JSON by the feed's decoder (`check.DecodeTokenEvent`, timed apart) and stripped " +
		"(`check.StripToken`) as its own reflector gets them (the build clock runs over those calls only); then every token sent once through the `/check` handler in-process, which adds its prebuilt answer, its rate-limit window " +
		"and its pending lastUsedAt. Heap is what stays live after a GC: the index holds no object, only its entries (a token's spec shared " +
		"with the tokens whose specs are equal). Times are CPU time of the process, GC included.\n\n")
	b.WriteString("| tokens | ServiceUsers | build, CPU | per token | heap | per token | after one `/check` each | per token |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range idx {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s B | %s | %s B |\n", thousands(r.n), thousands(r.users),
			scaleDuration(r.build.cpu), scaleDuration(r.build.cpu/time.Duration(r.n)), scaleMB(float64(r.heap)),
			thousands(int(r.heap)/r.n), scaleMB(float64(r.warm)), thousands(int(r.warm)/r.n))
	}

	fmt.Fprintf(&b, "\n**The controllers' cache after a relist** (the leader's; a follower has none). ApiTokens and ServiceUsers decoded from JSON, Secrets from protobuf "+
		"(controller-runtime asks for it for built-in kinds), %d per page as client-go's pager asks, one allocation per item as the "+
		"reflector makes them, through the transforms of `controllers.CacheOptions()` (managed fields and kubectl's last-applied configuration stripped; a Secret no ApiToken "+
		"controls also loses its data and annotations), into client-go indexers with controller-runtime's namespace index and the "+
		"controllers' two ApiToken field indexes. The clock (CPU time, GC included) runs over decode, transform and store; the last two "+
		"columns feed a check index from the cached objects, sharing their strings, for comparison with the index's own feed above.\n\n", scaleListPage)
	b.WriteString("| tokens | transforms | ApiTokens, CPU | heap per token | Secrets, CPU | heap per token | ServiceUsers: heap each | index from the cache, CPU | heap per token |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rel {
		users := (r.n + scaleTokensPerUser - 1) / scaleTokensPerUser
		tr, it, ih := "none", "", ""
		if r.transformed {
			tr = "keymint's"
			it, ih = scaleDuration(r.indexTime.cpu), thousands(int(r.index)/r.n)+" B"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s B | %s | %s B | %s B | %s | %s |\n", thousands(r.n), tr, scaleDuration(r.tokensTime.cpu),
			thousands(int(r.tokens)/r.n), scaleDuration(r.secretsTime.cpu), thousands(int(r.secrets)/r.n),
			thousands(int(r.users)/users), it, ih)
	}

	ix, full, bare := idx[len(idx)-1], largestRelist(rel, true), largestRelist(rel, false)
	if full == nil || bare == nil {
		return b.String()
	}
	per := func(total int64, of int) float64 { return float64(total) / float64(of) }
	idxAlone, checked := per(int64(ix.heap), ix.n), per(int64(ix.warm)-int64(ix.heap), ix.n)
	tok, sec, user := per(full.tokens, full.n), per(full.secrets, full.n), per(full.users, full.n)
	bareTok, bareSec, bareUser := per(bare.tokens, bare.n), per(bare.secrets, bare.n), per(bare.users, bare.n)
	follower := (user + idxAlone) * n // the ServiceUsers (the manager's cache) and the index
	leader := follower + (tok+user+sec)*n
	// A restart decodes every ApiToken (as the relist does) and builds the
	// index from them; the leader's controllers then list into their cache.
	indexBuild := per(int64(ix.build.cpu), ix.n)
	feedDecode := per(int64(ix.decode.cpu), ix.n)
	restart := time.Duration((feedDecode+indexBuild)*float64(full.n)) + full.usersTime.cpu
	tokenWire := per(full.tokenWire, full.n)

	from := fmt.Sprintf("per-token figures from the %s-token runs", thousands(full.n))
	if full.n != n || ix.n != n {
		from += ", times scaled linearly"
	}
	if quick {
		from = "**quick run**, " + from
	}
	fmt.Fprintf(&b, "\n**What a replica holds at 1,000,000 tokens** (%s):\n\n", from)
	fmt.Fprintf(&b, "- **every replica: the check index, %s**, %s once every token has passed a check (%s B per token, %s B more once "+
		"checked), and the ServiceUsers (%s B per token): no ApiToken object. A follower holds nothing else per token;\n",
		scaleMB(idxAlone*n), scaleMB((idxAlone+checked)*n), thousands(int(idxAlone)), thousands(int(checked)), thousands(int(user)))
	fmt.Fprintf(&b, "- **the leader also: the controllers' cache, %s** of ApiTokens and ServiceUsers (%s B per token) and %s of token "+
		"Secrets (%s B per token: the hash of each token and its signed record, never the token); without the transforms %s and %s. Of a "+
		"cached ApiToken, the `%s` field index takes %s B (%s at a million): controller-runtime indexes each value twice, under its "+
		"namespace and under all namespaces, and a hash, being unique, gets two sets of its own; the `%s` index takes %s B;\n",
		scaleMB((tok+user)*n), thousands(int(tok+user)), scaleMB(sec*n), thousands(int(sec)), scaleMB((bareTok+bareUser)*n), scaleMB(bareSec*n),
		controllers.TokenHashIndex, thousands(int(per(full.hashIndex, full.n))), scaleMB(per(full.hashIndex, full.n)*n),
		controllers.ServiceUserIndex, thousands(int(per(full.userIndex, full.n))))
	fmt.Fprintf(&b, "- **live heap: %s on a follower, %s on the leader** (any follower may become the leader: size every replica for "+
		"it); with Go's default GOGC=100 the heap grows to about twice the live data between collections;\n", scaleMB(follower), scaleMB(leader))
	fmt.Fprintf(&b, "- **after a restart**, decoding every ApiToken and building the index costs %s of CPU (%s to decode, with the feed's "+
		"own watch decoder, `check.DecodeTokenEvent`, which reads only what the index keeps; %s to index), "+
		"on top of kube-apiserver's time to send %s of ApiToken JSON; the check server is not ready until then (it refuses no token for not "+
		"having seen it). The leader's controllers list again into their own cache, whole objects through client-go, once the index has "+
		"synced: %s more, and %s for the Secrets;\n",
		scaleDuration(toMillion(restart, full.n)), scaleDuration(time.Duration(feedDecode*n)),
		scaleDuration(time.Duration(indexBuild*n)), scaleMB(tokenWire*n),
		scaleDuration(toMillion(full.tokensTime.cpu, full.n)), scaleDuration(toMillion(full.secretsTime.cpu, full.n)))
	fmt.Fprintf(&b, "- the index's reflector streams its first list (WatchList, on by default from client-go 0.35 against kube-apiserver "+
		"1.34 or later: objects one by one, each stripped as it arrives); against an older kube-apiserver it reads the list in pages of "+
		"%d and strips each page, so it never holds the whole answer decoded. kube-apiserver's watch cache itself holds every ApiToken "+
		"and Secret as decoded objects, managed fields included: at least the untransformed %s;\n",
		check.FeedPageSize, scaleMB((bareTok+bareSec)*n))

	fits := func(quota float64) string {
		if live < quota {
			return fmt.Sprintf("fits (%.0f%%)", 100*live/quota)
		}
		return fmt.Sprintf("**does not fit**: it binds at about %s tokens", thousands(int(quota/perToken)))
	}
	fmt.Fprintf(&b, "- **etcd: %.2f GiB of live data**, %s keys, %s bytes per token with its Secret and its share of a "+
		"ServiceUser. etcd's default 2 GiB quota %s; 8 GiB, the most etcd recommends, %s. No object grows with the number of tokens (a "+
		"ServiceUser's status holds counts, not lists), and the largest valid ApiToken, %s, is far below etcd's %.1f MiB request limit;\n",
		live/(1<<30), thousands(2*n+n/scaleTokensPerUser), thousands(int(perToken)), fits(etcdQuota), fits(etcdQuotaMax),
		scaleKB(s.token[shapeLargest]), float64(etcdMaxRequest)/(1<<20))
	// Every lastUsedAt write is a new revision of the whole ApiToken, kept
	// until kube-apiserver compacts (every 5 minutes, to the revision of the
	// round before: 5 to 10 minutes of history); bbolt reuses the pages
	// after, but its file, which the quota counts, does not shrink without a
	// defragmentation.
	if len(lu) > 0 {
		plain := lu[0]
		for _, r := range lu {
			if r.maxIdle == 0 && r.replicas > plain.replicas {
				plain = r
			}
		}
		writes := plain.perSecondAt(n)
		perTokenWrites := float64(plain.writes) / float64(plain.n) // over the span
		kept := min(perTokenWrites, perTokenWrites*float64(2*etcdCompaction)/float64(plain.span)) * tokenRev
		fmt.Fprintf(&b, "- **use-driven writes** (`lastUsedAt`, `tokenLastUsedAt`, `status.quota`), simulated: real `UsageFlusher`s, one per replica, "+
			"each seeing a check of every token before each flush, against a fake API server holding the fixture's objects, every status write "+
			"counted with the ApiToken it stores. A token in constant use is written once per recording gap (`tokenstate.UseRecordingGap`: %s "+
			"without an idle rule), whatever the number of replicas: with all 1,000,000 tokens in use, **%s status writes a second** (target < 300: %s; "+
			"%.1f MB/s into etcd's log, **%.0f B per token an hour**, target < 1 KB: %s), and about %.2f GiB of history kept until compaction. A `maxIdle` of "+
			"an hour records every 15 minutes, %.0f times as many (table).\n\n",
			tokenstate.DefaultUseRecordingGap, thousands(int(writes)), verdict(writes < 300), writes*tokenRev/1e6, plain.bytesPerTokenHour(),
			verdict(plain.bytesPerTokenHour() < 1000), float64(n)*kept/(1<<30), float64(tokenstate.DefaultUseRecordingGap/(15*time.Minute)))
		b.WriteString(lastUsedReport(lu))
	}
	return b.String()
}

func largestRelist(rel []scaleRelistResult, transformed bool) *scaleRelistResult {
	var best *scaleRelistResult
	for i := range rel {
		if rel[i].transformed == transformed && (best == nil || rel[i].n > best.n) {
			best = &rel[i]
		}
	}
	return best
}

// toMillion scales a duration measured over n tokens to a million.
func toMillion(d time.Duration, n int) time.Duration {
	return time.Duration(float64(d) * scaleMillion / float64(n))
}

// scaleDuration formats a duration: ms() below a second, seconds below
// two minutes, minutes above.
func scaleDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return ms(d)
	case d < 2*time.Minute:
		return fmt.Sprintf("%.1f s", d.Seconds())
	}
	return fmt.Sprintf("%.1f min", d.Minutes())
}

// scaleMB formats bytes in MB (10^6) below a GB, GB above.
func scaleMB(x float64) string {
	if x >= 1e9 {
		return fmt.Sprintf("%.2f GB", x/1e9)
	}
	return fmt.Sprintf("%.0f MB", x/1e6)
}

func scaleKB(x int) string { return fmt.Sprintf("%.1f KB", float64(x)/1e3) }

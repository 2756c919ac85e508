package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

func TestTheCacheKeepsNoContentsOfSecretsNoApiTokenControls(t *testing.T) {
	tok := &keymintv1alpha1.ApiToken{ObjectMeta: metav1.ObjectMeta{Name: "t", UID: "u"}}
	owned := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "t", Annotations: map[string]string{"a": "b"}, ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "x"}},
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(tok, keymintv1alpha1.GroupVersion.WithKind("ApiToken"))}},
		Data: map[string][]byte{"token": []byte("km_x")},
	}
	foreign := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "big", Labels: map[string]string{keymintv1alpha1.TokenLabel: ""}, Annotations: map[string]string{"a": "b"}},
		Data:       map[string][]byte{"blob": make([]byte, 1<<20)},
	}
	out, _ := keepOwnedSecrets(owned)
	if s := out.(*corev1.Secret); s.Data == nil || s.Annotations == nil || s.ManagedFields != nil {
		t.Errorf("an owned Secret lost its contents or kept managed fields: %+v", s)
	}
	out, _ = keepOwnedSecrets(foreign)
	if s := out.(*corev1.Secret); s.Data != nil || s.Annotations != nil || s.Labels == nil {
		t.Errorf("a labelled Secret no ApiToken controls kept data %d bytes, annotations %v", len(s.Data["blob"]), s.Annotations)
	}
}

// Cached ApiTokens share the strings many tokens have alike (one copy of
// "The token is not revoked" for the whole cache), and keep every value.
func TestCachedTokensShareEqualStrings(t *testing.T) {
	decoded := func() *keymintv1alpha1.ApiToken {
		// Each from JSON, as the informer gets them: no string shared yet.
		var tok keymintv1alpha1.ApiToken
		if err := json.Unmarshal([]byte(`{"metadata":{"namespace":"team-a","name":"t"},"spec":{"serviceUser":"ci","scopes":["links:read"]},
			"status":{"conditions":[{"type":"Revoked","status":"False","reason":"NotRevoked","message":"The token is not revoked"}]}}`), &tok); err != nil {
			t.Fatal(err)
		}
		return &tok
	}
	a, b := decoded(), decoded()
	want := a.DeepCopy()
	if _, err := stripUnread(a); err != nil {
		t.Fatal(err)
	}
	// A collection between two tokens cached must not end the sharing
	// while the first is held.
	runtime.GC()
	if _, err := stripUnread(b); err != nil {
		t.Fatal(err)
	}
	if !equality.Semantic.DeepEqual(a, want) {
		t.Errorf("a cached token changed: %+v, want %+v", a, want)
	}
	same := func(x, y string) bool { return unsafe.StringData(x) == unsafe.StringData(y) }
	ca, cb := a.Status.Conditions[0], b.Status.Conditions[0]
	for what, pair := range map[string][2]string{
		"namespace": {a.Namespace, b.Namespace}, "serviceUser": {a.Spec.ServiceUser, b.Spec.ServiceUser}, "scope": {a.Spec.Scopes[0], b.Spec.Scopes[0]},
		"condition type": {ca.Type, cb.Type}, "reason": {ca.Reason, cb.Reason}, "message": {ca.Message, cb.Message},
	} {
		if !same(pair[0], pair[1]) {
			t.Errorf("the %s %q is held twice", what, pair[0])
		}
	}
}

func TestShortDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		time.Hour: "1h", 15 * time.Minute: "15m", 90 * time.Minute: "1h30m", 90 * time.Hour: "90h", 5 * time.Minute: "5m",
		30 * time.Second: "30s", time.Hour + 30*time.Second: "1h0m30s",
	} {
		if got := shortDuration(d); got != want {
			t.Errorf("shortDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

// The table keeps no string nothing else holds: once the strings are gone,
// so are their entries.
func TestStringTableForgetsStringsNoOneHolds(t *testing.T) {
	tab := &stringTable{}
	held := make([]string, 100)
	for i := range held {
		held[i] = tab.share(fmt.Sprintf("message number %d, long enough not to be tiny", i))
	}
	if again := tab.share(strings.Clone(held[7])); unsafe.StringData(again) != unsafe.StringData(held[7]) {
		t.Fatal("an equal string was not shared")
	}
	runtime.KeepAlive(held)
	held = nil
	for range 100 {
		runtime.GC()
		tab.mu.Lock()
		n := len(tab.m)
		tab.mu.Unlock()
		if n == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond) // cleanups run on their own goroutine
	}
	t.Errorf("the table still holds %d strings no one holds", len(tab.m))
}

// startRecorder is a cache that records its start.
type startRecorder struct {
	cache.Cache
	started chan struct{}
}

func (s *startRecorder) Start(ctx context.Context) error {
	close(s.started)
	<-ctx.Done()
	return nil
}

// The controllers' cache, told to start after the check index, waits for
// it: a cold leader lists its ApiTokens for the index first.
func TestControllersCacheStartsAfterTheIndex(t *testing.T) {
	rec := &startRecorder{started: make(chan struct{})}
	c := &Cache{Cache: rec}
	var synced atomic.Bool
	c.StartAfter(synced.Load)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() { _ = leaderOnly{c}.Start(ctx) }()
	select {
	case <-rec.started:
		t.Fatal("the cache started before the index synced")
	case <-time.After(500 * time.Millisecond):
	}
	synced.Store(true)
	select {
	case <-rec.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the cache did not start once the index synced")
	}
}

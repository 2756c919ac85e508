package controllers

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
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

package controllers

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/recordkey/recordkeytest"
	"github.com/keymint/keymint/internal/secretrecord"
)

// TestSecretLookup covers how the controller classifies the Secret it finds,
// including through the API server when its cache has not seen it yet.
func TestSecretLookup(t *testing.T) {
	scheme := runtime.NewScheme()
	_ = corev1.AddToScheme(scheme)
	_ = keymintv1alpha1.AddToScheme(scheme)
	// A token reconciled before: a Secret the cache has not seen is looked
	// up past the cache.
	tok := &keymintv1alpha1.ApiToken{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "t", UID: "uid-now"},
		Status: keymintv1alpha1.ApiTokenStatus{Conditions: []metav1.Condition{{
			Type: keymintv1alpha1.ApiTokenConditionReady, Status: metav1.ConditionFalse, Reason: keymintv1alpha1.ApiTokenReasonPending,
		}}},
	}
	owned := func(uid types.UID) *corev1.Secret {
		prev := tok.DeepCopy()
		prev.UID = uid
		return &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: "ns", Name: "t", Labels: map[string]string{keymintv1alpha1.TokenLabel: "t"},
				OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(prev, keymintv1alpha1.GroupVersion.WithKind("ApiToken"))},
			},
			Data: map[string][]byte{keymintv1alpha1.SecretTokenKey: []byte("km_x")},
		}
	}
	foreign := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "t"}}
	// An ApiToken of the same name in another API group is someone else's.
	otherGroup := owned("uid-other")
	otherGroup.OwnerReferences[0].APIVersion = "evil.example.com/v1"

	tests := map[string]struct {
		cached, live *corev1.Secret
		wantSecret   bool
		wantConflict bool
		wantToken    bool
	}{
		"no Secret anywhere":                                       {},
		"its own Secret in the cache":                              {cached: owned("uid-now"), live: owned("uid-now"), wantSecret: true, wantToken: true},
		"its own Secret the cache has not seen yet is no conflict": {live: owned("uid-now"), wantSecret: true, wantToken: true},
		"a Secret of someone else is a conflict":                   {live: foreign, wantConflict: true},
		"a Secret of an ApiToken kind of another API group is a conflict": {
			cached: otherGroup, live: otherGroup, wantConflict: true,
		},
		"a Secret of an earlier ApiToken of that name is taken over, its token dropped": {
			cached: owned("uid-before"), live: owned("uid-before"), wantSecret: true,
		},
	}
	// A token never reconciled has nothing of keymint's outside the cache: it
	// creates its Secret straight away, and a foreign one makes that fail.
	t.Run("a token never reconciled does not look past the cache", func(t *testing.T) {
		fresh := tok.DeepCopy()
		fresh.Status = keymintv1alpha1.ApiTokenStatus{}
		r := &ApiTokenReconciler{
			Client:    fake.NewClientBuilder().WithScheme(scheme).Build(),
			APIReader: fake.NewClientBuilder().WithScheme(scheme).WithObjects(foreign).Build(),
		}
		sec, conflict, err := r.secret(context.Background(), fresh, neverReconciled(fresh))
		if err != nil || sec != nil || conflict {
			t.Fatalf("secret = %v, conflict = %v, err = %v; want none of them", sec != nil, conflict, err)
		}
	})
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cache, live := fake.NewClientBuilder().WithScheme(scheme), fake.NewClientBuilder().WithScheme(scheme)
			if tc.cached != nil {
				cache = cache.WithObjects(tc.cached)
			}
			if tc.live != nil {
				live = live.WithObjects(tc.live)
			}
			r := &ApiTokenReconciler{Client: cache.Build(), APIReader: live.Build()}
			sec, conflict, err := r.secret(context.Background(), tok, false)
			if err != nil {
				t.Fatal(err)
			}
			if (sec != nil) != tc.wantSecret || conflict != tc.wantConflict {
				t.Fatalf("secret = %v, conflict = %v; want a Secret: %v, conflict: %v", sec != nil, conflict, tc.wantSecret, tc.wantConflict)
			}
			if holds := sec != nil && secretrecord.Read(sec, tok, recordkeytest.Keyring(t, "test")).Holds; holds != tc.wantToken {
				t.Errorf("holds a token: %v, want %v", holds, tc.wantToken)
			}
		})
	}
}

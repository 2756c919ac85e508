package controllers

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/recordkey/recordkeytest"
	"github.com/keymint/keymint/internal/secretrecord"
	"github.com/keymint/keymint/internal/token"
)

// TestOwnSecretSeenBeforeOwnStatusIsNoRecovery: the reconcile that follows
// keymint's own Secret write can read a cached ApiToken without the status
// written next. That is no crash: nothing is recovered and no Adopted Event
// is emitted, because the API server's status already names the record.
func TestOwnSecretSeenBeforeOwnStatusIsNoRecovery(t *testing.T) {
	ring := recordkeytest.Keyring(t, "test")
	user := &keymintv1alpha1.ServiceUser{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "ci", UID: "uid-ci"}}
	stale := &keymintv1alpha1.ApiToken{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "t", UID: "uid-t"},
		Spec:       keymintv1alpha1.ApiTokenSpec{ServiceUser: "ci"},
	}
	plain, _ := token.Mint("km")
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "t",
		OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(stale, keymintv1alpha1.GroupVersion.WithKind("ApiToken"))}}}
	secretrecord.Write(sec, stale, ring, plain, secretrecord.Record{Serial: 1, Hash: token.HashString(plain), IssuedAt: now, ServiceUserUID: "uid-ci"})
	fresh := stale.DeepCopy()
	issued := metav1.NewTime(now)
	fresh.Status = keymintv1alpha1.ApiTokenStatus{Serial: 1, TokenHash: token.HashString(plain), IssuedAt: &issued}

	r, recorder := newFakeReconciler(t, ring, []client.Object{stale, user, sec}, []client.Object{fresh})
	if _, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: types.NamespacedName{Namespace: "ns", Name: "t"}}); err != nil {
		t.Fatal(err)
	}
	close(recorder.Events)
	for e := range recorder.Events {
		if strings.Contains(e, "Adopted") {
			t.Errorf("Event %q: nothing was recovered", e)
		}
	}
}

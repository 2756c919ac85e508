package controllers

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

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
	scheme := runtime.NewScheme()
	_ = corev1.AddToScheme(scheme)
	_ = keymintv1alpha1.AddToScheme(scheme)
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

	cached := fake.NewClientBuilder().WithScheme(scheme).WithObjects(stale, user, sec).WithStatusSubresource(stale).
		WithIndex(&keymintv1alpha1.ApiToken{}, TokenHashIndex, func(o client.Object) []string { return StatusHashes(&o.(*keymintv1alpha1.ApiToken).Status) }).Build()
	recorder := events.NewFakeRecorder(10)
	r := &ApiTokenReconciler{
		Client: cached, APIReader: fake.NewClientBuilder().WithScheme(scheme).WithObjects(fresh).Build(),
		Recorder: recorder, Clock: clocktesting.NewFakeClock(now), Keyring: ring,
	}
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

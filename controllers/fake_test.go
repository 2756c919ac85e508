package controllers

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/recordkey"
)

// newFakeReconciler builds an ApiTokenReconciler on fake clients, at now:
// its cache holds cached, indexed as SetupIndexes indexes the manager's,
// and its APIReader reads apiServer. It signs with ring and records its
// Events in the returned recorder. Callers set the authorizer they need.
func newFakeReconciler(t *testing.T, ring *recordkey.Keyring, cached, apiServer []client.Object) (*ApiTokenReconciler, *events.FakeRecorder) {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := keymintv1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	cache := fake.NewClientBuilder().WithScheme(scheme).WithObjects(cached...).
		WithStatusSubresource(&keymintv1alpha1.ApiToken{}, &keymintv1alpha1.ServiceUser{}).
		WithIndex(&keymintv1alpha1.ApiToken{}, ServiceUserIndex, ServiceUserIndexFunc).
		WithIndex(&keymintv1alpha1.ApiToken{}, TokenHashIndex, TokenHashIndexFunc).
		Build()
	recorder := events.NewFakeRecorder(50)
	return &ApiTokenReconciler{
		Client:    cache,
		APIReader: fake.NewClientBuilder().WithScheme(scheme).WithObjects(apiServer...).Build(),
		Recorder:  recorder,
		Clock:     clocktesting.NewFakeClock(now),
		Keyring:   ring,
	}, recorder
}

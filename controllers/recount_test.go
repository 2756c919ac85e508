package controllers

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/event"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

// TestRecountUser: a token of an enabled user waits for the batched recount;
// one of a disabled or missing user is recounted at once, so the counts that
// gate re-enabling never lag behind a token issued just before a disable.
func TestRecountUser(t *testing.T) {
	scheme := runtime.NewScheme()
	_ = keymintv1alpha1.AddToScheme(scheme)
	user := func(name string, disabled bool) *keymintv1alpha1.ServiceUser {
		return &keymintv1alpha1.ServiceUser{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}, Spec: keymintv1alpha1.ServiceUserSpec{Disabled: disabled}}
	}
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(user("on", false), user("off", true)).Build()
	h := recountUser(c, time.Hour) // nothing delayed comes out during the test

	for _, tc := range []struct {
		user    string
		waiting int
	}{
		{"on", 0},
		{"off", 1},
		{"gone", 1},
	} {
		q := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[ctrl.Request]())
		tok := &keymintv1alpha1.ApiToken{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "t"}, Spec: keymintv1alpha1.ApiTokenSpec{ServiceUser: tc.user}}
		h.Create(context.Background(), event.CreateEvent{Object: tok}, q)
		h.Update(context.Background(), event.UpdateEvent{ObjectOld: tok, ObjectNew: tok}, q)
		if got := q.Len(); got != tc.waiting {
			t.Errorf("token of user %q: %d recounts queued at once, want %d", tc.user, got, tc.waiting)
		}
		q.ShutDown()
	}
}

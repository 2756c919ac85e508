package controllers

import (
	"k8s.io/apimachinery/pkg/api/equality"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

// notOnlyLastUsed drops ApiToken updates that change nothing but
// status.lastUsedAt: every replica's check server writes it, up to once a
// minute per token, and no reconcile depends on it.
func notOnlyLastUsed() predicate.Predicate {
	return predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		before, ok1 := e.ObjectOld.(*keymintv1alpha1.ApiToken)
		after, ok2 := e.ObjectNew.(*keymintv1alpha1.ApiToken)
		return !ok1 || !ok2 || !onlyLastUsedChanged(before, after)
	}}
}

func onlyLastUsedChanged(before, after *keymintv1alpha1.ApiToken) bool {
	a, b := before.DeepCopy(), after.DeepCopy()
	for _, t := range []*keymintv1alpha1.ApiToken{a, b} {
		t.Status.LastUsedAt = nil
		t.ResourceVersion = ""
		t.ManagedFields = nil
	}
	return equality.Semantic.DeepEqual(a, b)
}

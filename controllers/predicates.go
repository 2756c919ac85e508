// Watch predicates: which ApiToken updates are worth a reconcile.

package controllers

import (
	"k8s.io/apimachinery/pkg/api/equality"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/tokenstate"
)

// notOnlyLastUsed drops ApiToken updates that change nothing but the
// recorded uses (status.lastUsedAt and its lastUsedRecording, tokenLastUsedAt,
// previousTokens[].lastUsedAt, and the quota count):
// the check servers write them, about once per recording gap per token.
// Two uses matter: the first of a token whose rotated-out predecessors
// retireWhenIdle may retire, since retiring waits for it; and any use of a
// token inside its idle warning window, which ends the warning.
func notOnlyLastUsed() predicate.Predicate {
	return predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		before, ok1 := e.ObjectOld.(*keymintv1alpha1.ApiToken)
		after, ok2 := e.ObjectNew.(*keymintv1alpha1.ApiToken)
		return !ok1 || !ok2 || !onlyLastUsedChanged(before, after) || firstUseToRetireOn(before, after) || useEndsIdleWarning(after)
	}}
}

// useEndsIdleWarning reports whether after is warned of idleness: a use
// recorded now moves its idle revocation later, and the warning goes.
func useEndsIdleWarning(after *keymintv1alpha1.ApiToken) bool {
	for _, c := range after.Status.Conditions {
		if c.Type == keymintv1alpha1.ApiTokenConditionExpiringSoon {
			return c.Reason == keymintv1alpha1.ApiTokenReasonIdleWithinWarningWindow
		}
	}
	return false
}

func onlyLastUsedChanged(before, after *keymintv1alpha1.ApiToken) bool {
	a, b := before.DeepCopy(), after.DeepCopy()
	for _, t := range []*keymintv1alpha1.ApiToken{a, b} {
		t.Status.LastUsedAt, t.Status.LastUsedRecording, t.Status.TokenLastUsedAt, t.Status.Quota = nil, nil, nil, nil
		for i := range t.Status.PreviousTokens {
			t.Status.PreviousTokens[i].LastUsedAt = nil
		}
		t.ResourceVersion = ""
		t.ManagedFields = nil
	}
	return equality.Semantic.DeepEqual(a, b)
}

// firstUseToRetireOn reports whether after records the first use of its
// current token while retireWhenIdle may retire a predecessor.
func firstUseToRetireOn(before, after *keymintv1alpha1.ApiToken) bool {
	return before.Status.TokenLastUsedAt == nil && after.Status.TokenLastUsedAt != nil &&
		len(after.Status.PreviousTokens) > 0 && tokenstate.RetireWhenIdle(&after.Spec) > 0
}

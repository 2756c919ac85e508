package plugin

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

// rotate stops waiting, and says why, once keymint denies the mint it asked
// for; a denial from before the request is not this one's.
func TestNotAuthorizedSince(t *testing.T) {
	asked := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	cond := func(status metav1.ConditionStatus, at time.Time) *keymintv1alpha1.ApiToken {
		return &keymintv1alpha1.ApiToken{Status: keymintv1alpha1.ApiTokenStatus{Conditions: []metav1.Condition{{
			Type: keymintv1alpha1.ApiTokenConditionAuthorized, Status: status, Reason: "NotAllowed",
			Message: "No token is minted: user \"bob\" may not ...", LastTransitionTime: metav1.NewTime(at),
		}}}}
	}
	for name, tc := range map[string]struct {
		tok  *keymintv1alpha1.ApiToken
		want bool
	}{
		"denied after the request":  {tok: cond(metav1.ConditionFalse, asked.Add(time.Second)), want: true},
		"denied in the same second": {tok: cond(metav1.ConditionFalse, asked), want: true},
		"denied before the request": {tok: cond(metav1.ConditionFalse, asked.Add(-time.Minute))},
		"authorized":                {tok: cond(metav1.ConditionTrue, asked.Add(time.Second))},
		"never asked":               {tok: &keymintv1alpha1.ApiToken{}},
	} {
		if got := notAuthorizedSince(tc.tok, asked); (got != "") != tc.want {
			t.Errorf("%s: %q, want a denial: %v", name, got, tc.want)
		}
	}
}

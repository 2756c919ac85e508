package controllers

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

func TestOnlyLastUsedChanged(t *testing.T) {
	base := func() *keymintv1alpha1.ApiToken {
		return &keymintv1alpha1.ApiToken{
			ObjectMeta: metav1.ObjectMeta{Name: "t", ResourceVersion: "1"},
			Spec:       keymintv1alpha1.ApiTokenSpec{ServiceUser: "ci"},
			Status:     keymintv1alpha1.ApiTokenStatus{TokenHash: "sha256:a"},
		}
	}
	tests := map[string]struct {
		change func(*keymintv1alpha1.ApiToken)
		want   bool
	}{
		"only lastUsedAt and the resourceVersion": {change: func(t *keymintv1alpha1.ApiToken) {
			t.Status.LastUsedAt = &metav1.Time{Time: now}
			t.ResourceVersion = "2"
		}, want: true},
		"the spec":               {change: func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = true }},
		"an annotation (rotate)": {change: func(t *keymintv1alpha1.ApiToken) { t.Annotations = map[string]string{"keymint.io/rotate": "1"} }},
		"the status hash":        {change: func(t *keymintv1alpha1.ApiToken) { t.Status.TokenHash = "sha256:b" }},
		"a wiped status":         {change: func(t *keymintv1alpha1.ApiToken) { t.Status = keymintv1alpha1.ApiTokenStatus{} }},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			after := base()
			tc.change(after)
			if got := onlyLastUsedChanged(base(), after); got != tc.want {
				t.Errorf("onlyLastUsedChanged = %v, want %v", got, tc.want)
			}
		})
	}
}

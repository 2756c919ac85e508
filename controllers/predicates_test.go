package controllers

import (
	"testing"
	"time"

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
		"only the per-hash uses": {change: func(t *keymintv1alpha1.ApiToken) {
			t.Status.TokenLastUsedAt = &metav1.Time{Time: now}
			t.Status.LastUsedAt = &metav1.Time{Time: now}
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

func TestFirstUseToRetireOn(t *testing.T) {
	retiring := func(used bool, previous int) *keymintv1alpha1.ApiToken {
		tok := &keymintv1alpha1.ApiToken{Spec: keymintv1alpha1.ApiTokenSpec{Rotation: &keymintv1alpha1.Rotation{
			GracePeriod: &metav1.Duration{Duration: time.Hour}, RetireWhenIdle: &metav1.Duration{Duration: 10 * time.Minute},
		}}}
		if used {
			tok.Status.TokenLastUsedAt = &metav1.Time{Time: now}
		}
		tok.Status.PreviousTokens = make([]keymintv1alpha1.PreviousToken, previous)
		return tok
	}
	noRetire := retiring(true, 1)
	noRetire.Spec.Rotation.RetireWhenIdle = nil
	tests := map[string]struct {
		before, after *keymintv1alpha1.ApiToken
		want          bool
	}{
		"the first use, with a predecessor to retire": {before: retiring(false, 1), after: retiring(true, 1), want: true},
		"a later use":                                  {before: retiring(true, 1), after: retiring(true, 1)},
		"the first use, no predecessor left":           {before: retiring(false, 0), after: retiring(true, 0)},
		"the first use of a token without the setting": {before: retiring(false, 1), after: noRetire},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := firstUseToRetireOn(tc.before, tc.after); got != tc.want {
				t.Errorf("firstUseToRetireOn = %v, want %v", got, tc.want)
			}
		})
	}
}

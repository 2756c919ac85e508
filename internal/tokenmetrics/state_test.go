package tokenmetrics

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/tokenstate"
)

// TestEvaluate: each state keymint_apitokens counts, from the same verdict
// the controller and the check server use.
func TestEvaluate(t *testing.T) {
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *metav1.Time { t := metav1.NewTime(now.Add(d)); return &t }
	issued := func(mods ...func(*keymintv1alpha1.ApiToken)) *keymintv1alpha1.ApiToken {
		tok := &keymintv1alpha1.ApiToken{
			Spec:   keymintv1alpha1.ApiTokenSpec{ServiceUser: "u"},
			Status: keymintv1alpha1.ApiTokenStatus{TokenHash: "sha256:00", IssuedAt: at(-time.Hour)},
		}
		for _, m := range mods {
			m(tok)
		}
		return tok
	}
	user := tokenstate.User{Found: true, UID: "uid"}
	cases := map[string]struct {
		token *keymintv1alpha1.ApiToken
		user  tokenstate.User
		want  string
	}{
		"issued, no expiry":   {token: issued(), user: user, want: StateActive},
		"not issued yet":      {token: &keymintv1alpha1.ApiToken{Spec: keymintv1alpha1.ApiTokenSpec{ServiceUser: "u"}}, user: user, want: StatePending},
		"past its expiry":     {token: issued(func(t *keymintv1alpha1.ApiToken) { t.Status.ExpiresAt = at(-time.Second) }), user: user, want: StateExpired},
		"at its expiry":       {token: issued(func(t *keymintv1alpha1.ApiToken) { t.Status.ExpiresAt = at(0) }), user: user, want: StateExpired},
		"a second before":     {token: issued(func(t *keymintv1alpha1.ApiToken) { t.Status.ExpiresAt = at(time.Second) }), user: user, want: StateActive},
		"revoked by spec":     {token: issued(func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = true }), user: user, want: StateRevoked},
		"being deleted":       {token: issued(func(t *keymintv1alpha1.ApiToken) { t.DeletionTimestamp = at(0) }), user: user, want: StateRevoked},
		"user disabled":       {token: issued(), user: tokenstate.User{Found: true, Disabled: true}, want: StateDisabled},
		"user missing":        {token: issued(), user: tokenstate.User{}, want: StateOrphaned},
		"revoked and expired": {token: issued(func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = true; t.Status.ExpiresAt = at(-time.Second) }), user: user, want: StateRevoked},
		"rotated-out token in its grace period": {token: issued(func(t *keymintv1alpha1.ApiToken) {
			t.Status.PreviousTokens = []keymintv1alpha1.PreviousToken{{TokenHash: "sha256:01", IssuedAt: *at(-2 * time.Hour), ValidUntil: *at(time.Minute)}}
		}), user: user, want: StateRotating},
		"grace period over": {token: issued(func(t *keymintv1alpha1.ApiToken) {
			t.Status.PreviousTokens = []keymintv1alpha1.PreviousToken{{TokenHash: "sha256:01", IssuedAt: *at(-2 * time.Hour), ValidUntil: *at(0)}}
		}), user: user, want: StateActive},
		"unused past its maxIdle": {token: issued(func(t *keymintv1alpha1.ApiToken) {
			t.Status.IssuedAt = at(-30*time.Minute - tokenstate.UseRecordingSlack - time.Second)
		}),
			user: tokenstate.User{Found: true, UID: "uid", MaxIdle: 30 * time.Minute}, want: StateIdle}, // never used: past 30m + the slack
		"used within its maxIdle": {token: issued(func(t *keymintv1alpha1.ApiToken) { t.Status.LastUsedAt = at(-time.Minute) }),
			user: tokenstate.User{Found: true, UID: "uid", MaxIdle: 30 * time.Minute}, want: StateActive},
		"revoked for idleness before": {token: func() *keymintv1alpha1.ApiToken {
			tok := &keymintv1alpha1.ApiToken{Spec: keymintv1alpha1.ApiTokenSpec{ServiceUser: "u"}}
			tok.Status.IdleRevokedAt = at(-time.Hour)
			return tok
		}(), user: user, want: StateIdle},
		"reported leaked, not replaced yet": {token: issued(func(t *keymintv1alpha1.ApiToken) {
			t.Status.LeakReports = []keymintv1alpha1.LeakReport{{TokenHash: "sha256:00", Source: "github"}}
		}), user: user, want: StateLeaked},
		"a rotated-out token reported: the current one is active": {token: issued(func(t *keymintv1alpha1.ApiToken) {
			t.Status.PreviousTokens = []keymintv1alpha1.PreviousToken{{TokenHash: "sha256:01", IssuedAt: *at(-2 * time.Hour), ValidUntil: *at(time.Minute)}}
			t.Status.LeakReports = []keymintv1alpha1.LeakReport{{TokenHash: "sha256:01", Source: "github"}}
		}), user: user, want: StateActive},
		"waiting for approval, never issued": {token: &keymintv1alpha1.ApiToken{Spec: keymintv1alpha1.ApiTokenSpec{ServiceUser: "u"}},
			user: tokenstate.User{Found: true, UID: "uid", RequireApproval: true}, want: StateAwaitingApproval},
		"issued, then widened: waiting for approval again": {token: issued(func(t *keymintv1alpha1.ApiToken) {
			t.Status.Approval = &keymintv1alpha1.ApprovalStatus{Decision: keymintv1alpha1.DecisionApproved, By: "erin", Grant: "sha256:narrower"}
		}), user: tokenstate.User{Found: true, UID: "uid", RequireApproval: true}, want: StateAwaitingApproval},
		"approval denied": {token: issued(func(t *keymintv1alpha1.ApiToken) {
			t.Status.Approval = &keymintv1alpha1.ApprovalStatus{Decision: keymintv1alpha1.DecisionDenied, By: "erin", Grant: tokenstate.GrantDigest(&t.Spec)}
			t.Status.Conditions = []metav1.Condition{{Type: keymintv1alpha1.ApiTokenConditionApproved, Status: metav1.ConditionFalse, Reason: keymintv1alpha1.ApiTokenReasonDenied}}
		}), user: tokenstate.User{Found: true, UID: "uid", RequireApproval: true}, want: StateApprovalDenied},
		"approved as it is": {token: issued(func(t *keymintv1alpha1.ApiToken) {
			t.Status.Approval = &keymintv1alpha1.ApprovalStatus{Decision: keymintv1alpha1.DecisionApproved, By: "erin", Grant: tokenstate.GrantDigest(&t.Spec)}
		}), user: tokenstate.User{Found: true, UID: "uid", RequireApproval: true}, want: StateActive},
		"Secret name taken": {token: func() *keymintv1alpha1.ApiToken {
			tok := &keymintv1alpha1.ApiToken{Spec: keymintv1alpha1.ApiTokenSpec{ServiceUser: "u"}}
			tok.Status.Conditions = []metav1.Condition{{Type: keymintv1alpha1.ApiTokenConditionReady, Status: metav1.ConditionFalse, Reason: keymintv1alpha1.ApiTokenReasonSecretConflict}}
			return tok
		}(), user: user, want: StateConflict},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got, _ := Evaluate(tc.token, &tc.user, now); got != tc.want {
				t.Errorf("state = %q, want %q", got, tc.want)
			}
		})
	}
}

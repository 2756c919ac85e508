package controllers

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/tokenstate"
)

var now = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// obs builds an observation of an issued, valid token of an enabled user;
// options change one thing each.
func obs(opts ...func(*observation)) observation {
	o := observation{
		Spec:             &keymintv1alpha1.ApiTokenSpec{ServiceUser: "ci"},
		User:             tokenstate.User{Found: true},
		Record:           secretRecord{Hash: "sha256:current", Display: "km_current", IssuedAt: now.Add(-time.Hour)},
		HasToken:         true,
		SecretHoldsToken: true,
		HadToken:         true,
		Now:              now,
	}
	for _, f := range opts {
		f(&o)
	}
	return o
}

func noToken(o *observation) { o.Record, o.HasToken, o.SecretHoldsToken = secretRecord{}, false, false }

func TestDecide(t *testing.T) {
	tests := map[string]struct {
		obs              observation
		wantAction       action
		wantReason       string
		wantRevokeReason string
	}{
		"a valid token in steady state: nothing to do": {
			obs: obs(), wantAction: actNone,
		},
		"a new ApiToken: issue": {
			obs: obs(noToken, func(o *observation) { o.HadToken = false }), wantAction: actIssue, wantReason: eventIssued,
		},
		"the status names a token the Secret lost: issue, saying it was lost": {
			obs: obs(noToken), wantAction: actIssue, wantReason: eventTokenLost,
		},
		"the Secret holds a token that does not match its record: replace it": {
			obs: obs(noToken, func(o *observation) { o.SecretHoldsToken = true; o.HadToken = false }), wantAction: actIssue, wantReason: eventReissued,
		},
		"revoked by spec with a token in the Secret: remove it": {
			obs:        obs(func(o *observation) { o.Spec.Revoked = true }),
			wantAction: actRevoke, wantReason: eventRevoked, wantRevokeReason: keymintv1alpha1.ApiTokenReasonRevokedBySpec,
		},
		"revoked and already emptied: nothing more to do": {
			obs:        obs(noToken, func(o *observation) { o.Spec.Revoked = true }),
			wantAction: actNone, wantRevokeReason: keymintv1alpha1.ApiTokenReasonRevokedBySpec,
		},
		"a disabled user revokes": {
			obs:        obs(func(o *observation) { o.User.Disabled = true }),
			wantAction: actRevoke, wantReason: eventRevoked, wantRevokeReason: keymintv1alpha1.ApiTokenReasonServiceUserDisabled,
		},
		"a missing user revokes, and nothing is minted for it": {
			obs:        obs(noToken, func(o *observation) { o.User = tokenstate.User{} }),
			wantAction: actNone, wantRevokeReason: keymintv1alpha1.ApiTokenReasonServiceUserNotFound,
		},
		"a Secret conflict: touch nothing": {
			obs: obs(noToken, func(o *observation) { o.Conflict = true }), wantAction: actNone,
		},
		"a Secret conflict still reports a revocation, so a ServiceUser deletion can finish": {
			obs:        obs(noToken, func(o *observation) { o.Conflict = true; o.User = tokenstate.User{} }),
			wantAction: actNone, wantRevokeReason: keymintv1alpha1.ApiTokenReasonServiceUserNotFound,
		},
		"a new rotate annotation value: rotate": {
			obs: obs(func(o *observation) { o.RotateRequest = "1" }), wantAction: actRotate, wantReason: eventRotationRequested,
		},
		"the rotate value already handled: nothing": {
			obs: obs(func(o *observation) { o.RotateRequest = "1"; o.Record.RotationRequest = "1" }), wantAction: actNone,
		},
		"a first issue with an annotation present issues, it does not rotate": {
			obs: obs(noToken, func(o *observation) { o.RotateRequest = "1"; o.HadToken = false }), wantAction: actIssue, wantReason: eventIssued,
		},
		"a rotation schedule that has come due: rotate": {
			obs: obs(func(o *observation) {
				o.Spec.Rotation = &keymintv1alpha1.Rotation{Every: &metav1.Duration{Duration: time.Hour}}
			}),
			wantAction: actRotate, wantReason: eventRotationScheduled,
		},
		"a rotation schedule not yet due: nothing": {
			obs: obs(func(o *observation) {
				o.Spec.Rotation = &keymintv1alpha1.Rotation{Every: &metav1.Duration{Duration: 2 * time.Hour}}
			}),
			wantAction: actNone,
		},
		"a token that expired before its rotation fell due is not rotated on schedule": {
			obs: obs(func(o *observation) {
				o.Spec.Rotation = &keymintv1alpha1.Rotation{Every: &metav1.Duration{Duration: time.Hour}}
				o.Spec.Lifetime = &metav1.Duration{Duration: 30 * time.Minute}
			}),
			wantAction: actNone,
		},
		"a rotation due at the instant of expiry still happens": {
			obs: obs(func(o *observation) {
				o.Spec.Rotation = &keymintv1alpha1.Rotation{Every: &metav1.Duration{Duration: time.Hour}}
				o.Spec.Lifetime = &metav1.Duration{Duration: time.Hour}
			}),
			wantAction: actRotate, wantReason: eventRotationScheduled,
		},
		"a rotation that fell due before expiry happens even when reconciled late": {
			obs: obs(func(o *observation) {
				o.Spec.Rotation = &keymintv1alpha1.Rotation{Every: &metav1.Duration{Duration: 50 * time.Minute}}
				o.Spec.Lifetime = &metav1.Duration{Duration: 55 * time.Minute}
			}),
			wantAction: actRotate, wantReason: eventRotationScheduled,
		},
		"an expired token is rotated on request, which renews it": {
			obs: obs(func(o *observation) {
				o.Spec.Lifetime = &metav1.Duration{Duration: 30 * time.Minute}
				o.RotateRequest = "renew"
			}),
			wantAction: actRotate, wantReason: eventRotationRequested,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			d := decide(tc.obs)
			if d.Action != tc.wantAction || d.Reason != tc.wantReason || d.RevokeReason != tc.wantRevokeReason {
				t.Errorf("decide = %+v, want action %v reason %q revoke %q", d, tc.wantAction, tc.wantReason, tc.wantRevokeReason)
			}
		})
	}
}

func TestNewRecord(t *testing.T) {
	grace := func(d time.Duration) func(*observation) {
		return func(o *observation) {
			o.Spec.Rotation = &keymintv1alpha1.Rotation{GracePeriod: &metav1.Duration{Duration: d}}
		}
	}
	tests := map[string]struct {
		obs          observation
		action       action
		wantPrevious []tokenstate.Previous
		wantRotated  bool
	}{
		"an issue keeps no previous hash": {
			obs: obs(grace(time.Hour)), action: actIssue,
		},
		"a rotation without grace keeps no previous hash": {
			obs: obs(), action: actRotate, wantRotated: true,
		},
		"a rotation with grace keeps the old hash until now + grace": {
			obs: obs(grace(time.Hour)), action: actRotate, wantRotated: true,
			wantPrevious: []tokenstate.Previous{{Hash: "sha256:current", ValidUntil: now.Add(time.Hour)}},
		},
		"the grace period never outlives the old token": {
			obs:    obs(grace(time.Hour), func(o *observation) { o.Spec.Lifetime = &metav1.Duration{Duration: 70 * time.Minute} }),
			action: actRotate, wantRotated: true,
			wantPrevious: []tokenstate.Previous{{Hash: "sha256:current", ValidUntil: now.Add(10 * time.Minute)}},
		},
		"hashes whose grace has ended are dropped": {
			obs: obs(grace(time.Hour), func(o *observation) {
				o.Record.Previous = []tokenstate.Previous{{Hash: "sha256:old", ValidUntil: now}, {Hash: "sha256:older", ValidUntil: now.Add(time.Minute)}}
			}),
			action: actRotate, wantRotated: true,
			wantPrevious: []tokenstate.Previous{{Hash: "sha256:older", ValidUntil: now.Add(time.Minute)}, {Hash: "sha256:current", ValidUntil: now.Add(time.Hour)}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			rec := newRecord(tc.obs, decision{Action: tc.action}, "sha256:new", "km_new")
			if rec.Hash != "sha256:new" || !rec.IssuedAt.Equal(now) {
				t.Errorf("record = %+v, want the new hash issued now", rec)
			}
			if (rec.RotatedAt != nil) != tc.wantRotated {
				t.Errorf("rotatedAt = %v, want set: %v", rec.RotatedAt, tc.wantRotated)
			}
			if len(rec.Previous) != len(tc.wantPrevious) {
				t.Fatalf("previous = %+v, want %+v", rec.Previous, tc.wantPrevious)
			}
			for i := range rec.Previous {
				if rec.Previous[i].Hash != tc.wantPrevious[i].Hash || !rec.Previous[i].ValidUntil.Equal(tc.wantPrevious[i].ValidUntil) {
					t.Errorf("previous[%d] = %+v, want %+v", i, rec.Previous[i], tc.wantPrevious[i])
				}
			}
		})
	}
}

func TestNewRecordBoundsPreviousTokens(t *testing.T) {
	o := obs(func(o *observation) {
		o.Spec.Rotation = &keymintv1alpha1.Rotation{GracePeriod: &metav1.Duration{Duration: time.Hour}}
		for i := range 20 {
			o.Record.Previous = append(o.Record.Previous, tokenstate.Previous{Hash: "sha256:p", ValidUntil: now.Add(time.Duration(i+1) * time.Minute)})
		}
	})
	rec := newRecord(o, decision{Action: actRotate}, "sha256:new", "km_new")
	if len(rec.Previous) != maxPreviousTokens {
		t.Fatalf("kept %d previous hashes, want %d", len(rec.Previous), maxPreviousTokens)
	}
	if last := rec.Previous[len(rec.Previous)-1]; last.Hash != "sha256:current" {
		t.Errorf("the newest previous hash is %q, want the one just rotated out", last.Hash)
	}
}

func TestDesiredStatus(t *testing.T) {
	tests := map[string]struct {
		obs        observation
		d          decision
		hasToken   bool
		wantReady  metav1.ConditionStatus
		wantReason string
		wantHash   string
		wantWake   time.Duration
	}{
		"issued, no expiry: Ready, nothing scheduled": {
			obs: obs(), hasToken: true, wantReady: metav1.ConditionTrue, wantReason: keymintv1alpha1.ApiTokenReasonIssued, wantHash: "sha256:current",
		},
		"issued with a lifetime: wake at expiry": {
			obs:      obs(func(o *observation) { o.Spec.Lifetime = &metav1.Duration{Duration: 3 * time.Hour} }),
			hasToken: true, wantReady: metav1.ConditionTrue, wantReason: keymintv1alpha1.ApiTokenReasonIssued, wantHash: "sha256:current",
			wantWake: 2 * time.Hour,
		},
		"rotation due before expiry: wake at the rotation": {
			obs: obs(func(o *observation) {
				o.Spec.Lifetime = &metav1.Duration{Duration: 3 * time.Hour}
				o.Spec.Rotation = &keymintv1alpha1.Rotation{Every: &metav1.Duration{Duration: 90 * time.Minute}}
			}),
			hasToken: true, wantReady: metav1.ConditionTrue, wantReason: keymintv1alpha1.ApiTokenReasonIssued, wantHash: "sha256:current",
			wantWake: 30 * time.Minute,
		},
		"a grace period ending first: wake when it ends": {
			obs: obs(func(o *observation) {
				o.Record.Previous = []tokenstate.Previous{{Hash: "sha256:old", ValidUntil: now.Add(5 * time.Minute)}}
			}),
			hasToken: true, wantReady: metav1.ConditionTrue, wantReason: keymintv1alpha1.ApiTokenReasonIssued, wantHash: "sha256:current",
			wantWake: 5 * time.Minute,
		},
		"expired: not Ready, nothing more scheduled": {
			obs:      obs(func(o *observation) { o.Spec.Lifetime = &metav1.Duration{Duration: time.Hour} }),
			hasToken: true, wantReady: metav1.ConditionFalse, wantReason: keymintv1alpha1.ApiTokenReasonExpired, wantHash: "sha256:current",
		},
		"revoked: not Ready, no hash": {
			obs: obs(), d: decision{RevokeReason: keymintv1alpha1.ApiTokenReasonServiceUserDisabled}, hasToken: false,
			wantReady: metav1.ConditionFalse, wantReason: keymintv1alpha1.ApiTokenReasonServiceUserDisabled,
		},
		"a Secret conflict: not Ready": {
			obs: obs(noToken, func(o *observation) { o.Conflict = true }), hasToken: false,
			wantReady: metav1.ConditionFalse, wantReason: keymintv1alpha1.ApiTokenReasonSecretConflict,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			current := keymintv1alpha1.ApiTokenStatus{TokenHash: "sha256:stale", LastUsedAt: &metav1.Time{Time: now}}
			res := desiredStatus(current, 7, "ci-secret", tc.obs, tc.d, tc.obs.Record, tc.hasToken)
			ready := meta.FindStatusCondition(res.Status.Conditions, keymintv1alpha1.ApiTokenConditionReady)
			if ready == nil || ready.Status != tc.wantReady || ready.Reason != tc.wantReason || ready.ObservedGeneration != 7 {
				t.Errorf("Ready = %+v, want %s/%s at generation 7", ready, tc.wantReady, tc.wantReason)
			}
			if res.Status.TokenHash != tc.wantHash {
				t.Errorf("tokenHash = %q, want %q", res.Status.TokenHash, tc.wantHash)
			}
			if res.RequeueAfter != tc.wantWake {
				t.Errorf("requeue after %v, want %v", res.RequeueAfter, tc.wantWake)
			}
			if res.Status.LastUsedAt == nil {
				t.Error("lastUsedAt, written by the check server, was dropped")
			}
			if res.Status.ObservedGeneration != 7 || res.Status.SecretName != "ci-secret" {
				t.Errorf("observedGeneration %d, secretName %q", res.Status.ObservedGeneration, res.Status.SecretName)
			}
		})
	}
}

func TestTrustedRecord(t *testing.T) {
	issued := now.Add(-time.Hour)
	status := keymintv1alpha1.ApiTokenStatus{
		TokenHash: "sha256:current", IssuedAt: &metav1.Time{Time: issued}, LastRotationRequest: "r1",
		PreviousTokens: []keymintv1alpha1.PreviousToken{{TokenHash: "sha256:old", ValidUntil: metav1.Time{Time: now.Add(time.Minute)}}},
	}
	graceHour := &keymintv1alpha1.ApiTokenSpec{Rotation: &keymintv1alpha1.Rotation{GracePeriod: &metav1.Duration{Duration: time.Hour}}}
	// planted is what someone who can edit the Secret wrote into its annotations.
	planted := secretRecord{
		Hash: "sha256:current", IssuedAt: now.Add(1000 * time.Hour), RotationRequest: "r9",
		Previous: []tokenstate.Previous{{Hash: "sha256:planted", ValidUntil: now.Add(10000 * time.Hour)}},
	}

	t.Run("a token the status names keeps the status's issue time and hashes", func(t *testing.T) {
		rec := trustedRecord(&status, graceHour, planted, now)
		if !rec.IssuedAt.Equal(issued) || rec.RotationRequest != "r1" || len(rec.Previous) != 1 || rec.Previous[0].Hash != "sha256:old" {
			t.Errorf("record %+v follows the annotations, want the status", rec)
		}
	})
	t.Run("a token the status does not name is adopted, with its annotations bounded", func(t *testing.T) {
		lost := keymintv1alpha1.ApiTokenStatus{}
		rec := trustedRecord(&lost, graceHour, planted, now)
		if rec.IssuedAt.After(now) {
			t.Errorf("issued at %v, after now", rec.IssuedAt)
		}
		if len(rec.Previous) != 1 || rec.Previous[0].ValidUntil.After(now.Add(time.Hour)) {
			t.Errorf("previous %+v: want grace bounded to now + the spec's 1h", rec.Previous)
		}
		if rec.RotationRequest != "r9" {
			t.Errorf("rotation request %q: a rebuild keeps the handled value, so a crash never rotates twice", rec.RotationRequest)
		}
	})
}

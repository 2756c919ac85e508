package controllers

import (
	"errors"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/requester"
	"github.com/keymint/keymint/internal/tokenstate"
)

func TestDesiredStatus(t *testing.T) {
	tests := map[string]struct {
		obs        observation
		d          decision
		wantReady  metav1.ConditionStatus
		wantReason string
		wantHash   string
		wantExpiry *time.Time
		wantWake   time.Duration
		wantPrev   []time.Time
		failed     error
	}{
		"issued, no expiry: Ready, nothing scheduled": {
			obs: obs(), wantReady: metav1.ConditionTrue, wantReason: keymintv1alpha1.ApiTokenReasonIssued, wantHash: "sha256:current",
		},
		"issued with a lifetime: wake at expiry": {
			obs:       obs(lifetime(3*time.Hour), recorded(now.Add(2*time.Hour))),
			wantReady: metav1.ConditionTrue, wantReason: keymintv1alpha1.ApiTokenReasonIssued, wantHash: "sha256:current",
			wantExpiry: ptrTime(now.Add(2 * time.Hour)), wantWake: 2 * time.Hour,
		},
		"a lifetime shortened since minting: the earlier expiry becomes the record": {
			obs:       obs(lifetime(90*time.Minute), recorded(now.Add(2*time.Hour))),
			wantReady: metav1.ConditionTrue, wantReason: keymintv1alpha1.ApiTokenReasonIssued, wantHash: "sha256:current",
			wantExpiry: ptrTime(now.Add(30 * time.Minute)), wantWake: 30 * time.Minute,
		},
		"a lifetime extended since minting: the record keeps the minted expiry": {
			obs:       obs(lifetime(5*time.Hour), recorded(now.Add(-time.Second))),
			wantReady: metav1.ConditionFalse, wantReason: keymintv1alpha1.ApiTokenReasonExpired, wantHash: "sha256:current",
			wantExpiry: ptrTime(now.Add(-time.Second)),
		},
		"rotation due before expiry: wake at the rotation": {
			obs:       obs(lifetime(3*time.Hour), recorded(now.Add(2*time.Hour)), rotation(90*time.Minute, 0)),
			wantReady: metav1.ConditionTrue, wantReason: keymintv1alpha1.ApiTokenReasonIssued, wantHash: "sha256:current",
			wantExpiry: ptrTime(now.Add(2 * time.Hour)), wantWake: 30 * time.Minute,
		},
		"a grace period ending first: wake when it ends": {
			obs: obs(func(o *observation) {
				o.Current.Previous = []tokenstate.Previous{{Hash: "sha256:old", IssuedAt: now.Add(-2 * time.Hour), ValidUntil: now.Add(5 * time.Minute)}}
			}),
			wantReady: metav1.ConditionTrue, wantReason: keymintv1alpha1.ApiTokenReasonIssued, wantHash: "sha256:current",
			wantWake: 5 * time.Minute, wantPrev: []time.Time{now.Add(5 * time.Minute)},
		},
		"a maxLifetime shortened since rotation cuts the grace period short": {
			obs: obs(func(o *observation) {
				o.User.MaxLifetime = 2*time.Hour + time.Minute
				o.Current.Expiry, o.Current.Expires = now.Add(time.Hour+time.Minute), true
				o.Current.Previous = []tokenstate.Previous{{Hash: "sha256:old", IssuedAt: now.Add(-2 * time.Hour), ValidUntil: now.Add(time.Hour)}}
			}),
			wantReady: metav1.ConditionTrue, wantReason: keymintv1alpha1.ApiTokenReasonIssued, wantHash: "sha256:current",
			wantExpiry: ptrTime(now.Add(time.Hour + time.Minute)), wantWake: time.Minute, wantPrev: []time.Time{now.Add(time.Minute)},
		},
		"expired: not Ready, nothing more scheduled": {
			obs:       obs(lifetime(time.Hour), recorded(now)),
			wantReady: metav1.ConditionFalse, wantReason: keymintv1alpha1.ApiTokenReasonExpired, wantHash: "sha256:current",
			wantExpiry: ptrTime(now),
		},
		"revoked: not Ready, no hash": {
			obs: obs(func(o *observation) { o.User.Disabled = true }), d: decision{Action: actRevoke},
			wantReady: metav1.ConditionFalse, wantReason: keymintv1alpha1.ApiTokenReasonServiceUserDisabled,
		},
		"the Secret no longer delivers the token and its replacement could not be written: the old hash stops anyway": {
			obs: obs(func(o *observation) { o.Delivered = false }), d: decision{Action: actIssue}, failed: errors.New("Secret is immutable"),
			wantReady: metav1.ConditionFalse, wantReason: keymintv1alpha1.ApiTokenReasonPending,
		},
		"a rotation that could not be written keeps the current token": {
			obs: obs(), d: decision{Action: actRotate}, failed: errors.New("Secret is immutable"),
			wantReady: metav1.ConditionTrue, wantReason: keymintv1alpha1.ApiTokenReasonIssued, wantHash: "sha256:current",
		},
		"a rotation its requester may not have: the current token stays, Ready": {
			obs: obs(denied(keymintv1alpha1.ApiTokenReasonNotAllowed)), d: decision{Action: actRotate},
			wantReady: metav1.ConditionTrue, wantReason: keymintv1alpha1.ApiTokenReasonIssued, wantHash: "sha256:current",
		},
		"a lost Secret whose replacement its requester may not have: the old hash stops, Ready says why": {
			obs: obs(denied(keymintv1alpha1.ApiTokenReasonNotAllowed), func(o *observation) { o.Delivered = false }), d: decision{Action: actIssue},
			wantReady: metav1.ConditionFalse, wantReason: keymintv1alpha1.ApiTokenReasonNotAllowed,
		},
		"a first issue without a requester record: not minted, Ready says why": {
			obs: obs(noToken, func(o *observation) {
				o.Trust = &requester.Trust{Problem: requester.Missing}
				a := noRecord(requester.Missing, "ns", "t")
				o.Auth = &a
			}), d: decision{Action: actIssue},
			wantReady: metav1.ConditionFalse, wantReason: keymintv1alpha1.ApiTokenReasonNoRequesterRecord,
		},
		"no requester record and no user: the missing record, not the missing user": {
			obs: obs(noToken, func(o *observation) {
				o.Trust = &requester.Trust{Problem: requester.Forged}
				o.User = tokenstate.User{}
			}),
			wantReady: metav1.ConditionFalse, wantReason: keymintv1alpha1.ApiTokenReasonNoRequesterRecord,
		},
		"a Secret conflict: not Ready": {
			obs:       obs(noToken, func(o *observation) { o.Conflict = true }),
			wantReady: metav1.ConditionFalse, wantReason: keymintv1alpha1.ApiTokenReasonSecretConflict,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			current := keymintv1alpha1.ApiTokenStatus{TokenHash: "sha256:stale", LastUsedAt: &metav1.Time{Time: now}}
			res := desiredStatus(current, 7, "ci-secret", tc.obs, afterAction(tc.obs, tc.d, nil, tc.failed))
			ready := meta.FindStatusCondition(res.Status.Conditions, keymintv1alpha1.ApiTokenConditionReady)
			if ready == nil || ready.Status != tc.wantReady || ready.Reason != tc.wantReason || ready.ObservedGeneration != 7 {
				t.Errorf("Ready = %+v, want %s/%s at generation 7", ready, tc.wantReady, tc.wantReason)
			}
			if res.Status.TokenHash != tc.wantHash {
				t.Errorf("tokenHash = %q, want %q", res.Status.TokenHash, tc.wantHash)
			}
			if got := res.Status.ExpiresAt; (got == nil) != (tc.wantExpiry == nil) || (got != nil && !got.Time.Equal(*tc.wantExpiry)) {
				t.Errorf("expiresAt = %v, want %v", got, tc.wantExpiry)
			}
			if res.RequeueAfter != tc.wantWake {
				t.Errorf("requeue after %v, want %v", res.RequeueAfter, tc.wantWake)
			}
			if len(res.Status.PreviousTokens) != len(tc.wantPrev) {
				t.Fatalf("previous = %+v, want ends %v", res.Status.PreviousTokens, tc.wantPrev)
			}
			for i, p := range res.Status.PreviousTokens {
				if !p.ValidUntil.Time.Equal(tc.wantPrev[i]) {
					t.Errorf("previous[%d] valid until %v, want %v", i, p.ValidUntil, tc.wantPrev[i])
				}
			}
			if res.Status.LastUsedAt == nil {
				t.Error("lastUsedAt, written by the check server, was dropped")
			}
			if res.Status.Serial != 3 || res.Status.ObservedGeneration != 7 || res.Status.SecretName != "ci-secret" {
				t.Errorf("serial %d, observedGeneration %d, secretName %q", res.Status.Serial, res.Status.ObservedGeneration, res.Status.SecretName)
			}
		})
	}
}

// A revoked ApiToken may be written by anyone who may write ApiTokens (no
// admission runs): its status must not tell whether its ServiceUser exists,
// which scopes it lacks, or whether a Secret of its secretName exists.
func TestARevokedTokensStatusTellsNothingOfItsUser(t *testing.T) {
	revoked := func(o *observation) {
		noToken(o)
		o.Spec.Revoked = true
		o.Spec.Scopes = []string{"admin:write"}
		o.Trust = &requester.Trust{Problem: requester.Missing}
	}
	exists := obs(revoked, func(o *observation) { o.User.Permissions = []string{"invoices:read"} })
	secretTaken := obs(revoked, func(o *observation) { o.Conflict = true })
	missing := obs(revoked, func(o *observation) { o.User = tokenstate.User{} })
	disabled := obs(revoked, func(o *observation) { o.User.Disabled = true })
	var want []metav1.Condition
	for name, o := range map[string]observation{"exists": exists, "missing": missing, "disabled": disabled, "a Secret of its secretName exists": secretTaken} {
		st := desiredStatus(keymintv1alpha1.ApiTokenStatus{}, 1, "s", o, afterAction(o, decide(o), nil, nil)).Status
		for i := range st.Conditions {
			st.Conditions[i].LastTransitionTime = metav1.Time{}
		}
		if want == nil {
			want = st.Conditions
		}
		if !equality.Semantic.DeepEqual(st.Conditions, want) {
			t.Errorf("%s: conditions %+v differ from %+v", name, st.Conditions, want)
		}
		for _, c := range st.Conditions {
			if strings.Contains(c.Message, "admin:write") || strings.Contains(c.Message, "exist") || strings.Contains(c.Message, "disabled") {
				t.Errorf("%s: condition %s says %q", name, c.Type, c.Message)
			}
		}
		if g := meta.FindStatusCondition(st.Conditions, keymintv1alpha1.ApiTokenConditionRequestGranted); g == nil || g.Status != metav1.ConditionUnknown {
			t.Errorf("%s: RequestGranted = %+v, want Unknown", name, g)
		}
	}
}

func TestRequestGranted(t *testing.T) {
	tests := map[string]struct {
		obs        observation
		wantStatus metav1.ConditionStatus
		wantReason string
		wantIn     []string
	}{
		"nothing asked beyond the user": {obs: obs(), wantStatus: metav1.ConditionTrue, wantReason: keymintv1alpha1.ApiTokenReasonAsRequested},
		"a scope the user lacks": {
			obs: obs(func(o *observation) {
				o.Spec.Scopes = []string{"links:read", "admin:write"}
				o.User.Permissions = []string{"links:read"}
			}),
			wantStatus: metav1.ConditionFalse, wantReason: keymintv1alpha1.ApiTokenReasonScopesNotHeld, wantIn: []string{"admin:write"},
		},
		"a lifetime beyond maxLifetime": {
			obs:        obs(lifetime(48*time.Hour), func(o *observation) { o.User.MaxLifetime = 24 * time.Hour }),
			wantStatus: metav1.ConditionFalse, wantReason: keymintv1alpha1.ApiTokenReasonLifetimeCapped, wantIn: []string{"24h0m0s"},
		},
		"both: the scopes are named first, and the lifetime too": {
			obs: obs(lifetime(48*time.Hour), func(o *observation) {
				o.User.MaxLifetime = 24 * time.Hour
				o.Spec.Scopes = []string{"admin:write"}
			}),
			wantStatus: metav1.ConditionFalse, wantReason: keymintv1alpha1.ApiTokenReasonScopesNotHeld, wantIn: []string{"admin:write", "maxLifetime"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			st := desiredStatus(keymintv1alpha1.ApiTokenStatus{}, 1, "s", tc.obs, afterAction(tc.obs, decision{}, nil, nil)).Status
			c := meta.FindStatusCondition(st.Conditions, keymintv1alpha1.ApiTokenConditionRequestGranted)
			if c == nil || c.Status != tc.wantStatus || c.Reason != tc.wantReason {
				t.Fatalf("RequestGranted = %+v, want %s/%s", c, tc.wantStatus, tc.wantReason)
			}
			for _, w := range tc.wantIn {
				if !strings.Contains(c.Message, w) {
					t.Errorf("message %q does not name %q", c.Message, w)
				}
			}
		})
	}
}

func TestDesiredStatusBindsARecordWithoutAUserUIDToTheUserFound(t *testing.T) {
	o := obs(func(o *observation) { o.Current.UserUID = "" })
	st := desiredStatus(keymintv1alpha1.ApiTokenStatus{}, 1, "s", o, afterAction(o, decision{}, nil, nil)).Status
	if st.ServiceUserUID != "uid-ci" {
		t.Errorf("serviceUserUID = %q, want the user's uid-ci", st.ServiceUserUID)
	}
}

func TestADeletingApiTokenIsRevokedAndMintsNothing(t *testing.T) {
	o := obs(func(o *observation) { o.Current.Deleting = true; o.RotateRequest = "new" })
	if d := decide(o); d.Action != actRevoke {
		t.Errorf("decide = %+v, want the Secret emptied", d)
	}
	st := desiredStatus(keymintv1alpha1.ApiTokenStatus{}, 1, "s", o, afterAction(o, decision{Action: actRevoke}, nil, nil)).Status
	if c := meta.FindStatusCondition(st.Conditions, keymintv1alpha1.ApiTokenConditionRevoked); c == nil || c.Reason != keymintv1alpha1.ApiTokenReasonDeleting || st.TokenHash != "" {
		t.Errorf("Revoked = %+v, hash %q; want Deleting and no hash", c, st.TokenHash)
	}
}

// What the status tells of the ServiceUser of a token keymint never minted
// is for a requester keymint trusts: not one whose record was signed before
// the requester webhook existed, nor any while the webhook can be skipped.
func TestTheStatusTellsOfTheUserOnlyForATrustedRequester(t *testing.T) {
	missingUser := func(trust *requester.Trust) observation {
		return obs(noToken, func(o *observation) { o.User = tokenstate.User{}; o.Trust = trust })
	}
	tests := map[string]struct {
		obs observation
		// wantRevoked is the Revoked condition's reason; wantReady and
		// wantAuthorized the other two conditions' ("" for not set).
		wantRevoked, wantReady, wantAuthorized string
	}{
		"a trusted requester is told the user is missing": {
			obs:         missingUser(&requester.Trust{Record: &requester.Record{}}),
			wantRevoked: keymintv1alpha1.ApiTokenReasonServiceUserNotFound, wantReady: keymintv1alpha1.ApiTokenReasonServiceUserNotFound,
		},
		"a record signed before the requester webhook existed is told nothing": {
			obs:         missingUser(&requester.Trust{Problem: requester.BeforeWebhook}),
			wantRevoked: keymintv1alpha1.ApiTokenReasonNotRevoked, wantReady: keymintv1alpha1.ApiTokenReasonNoRequesterRecord,
			wantAuthorized: keymintv1alpha1.ApiTokenReasonNoRequesterRecord,
		},
		"a webhook that can be skipped: nothing is told, and the status says why": {
			obs:         missingUser(&requester.Trust{NotEnforced: `MutatingWebhookConfiguration "m" has failurePolicy Ignore`}),
			wantRevoked: keymintv1alpha1.ApiTokenReasonNotRevoked, wantReady: keymintv1alpha1.ApiTokenReasonRequesterWebhookNotEnforced,
			wantAuthorized: keymintv1alpha1.ApiTokenReasonRequesterWebhookNotEnforced,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			st := desiredStatus(keymintv1alpha1.ApiTokenStatus{}, 1, "s", tc.obs, afterAction(tc.obs, decide(tc.obs), nil, nil)).Status
			reason := func(condType string) string {
				if c := meta.FindStatusCondition(st.Conditions, condType); c != nil {
					return c.Reason
				}
				return ""
			}
			if got := reason(keymintv1alpha1.ApiTokenConditionRevoked); got != tc.wantRevoked {
				t.Errorf("Revoked reason %q, want %q", got, tc.wantRevoked)
			}
			if got := reason(keymintv1alpha1.ApiTokenConditionReady); got != tc.wantReady {
				t.Errorf("Ready reason %q, want %q", got, tc.wantReady)
			}
			if got := reason(keymintv1alpha1.ApiTokenConditionAuthorized); got != tc.wantAuthorized {
				t.Errorf("Authorized reason %q, want %q", got, tc.wantAuthorized)
			}
			for _, c := range st.Conditions {
				if tc.wantRevoked == keymintv1alpha1.ApiTokenReasonNotRevoked && strings.Contains(c.Message, "does not exist") {
					t.Errorf("condition %s tells an untrusted requester the user is missing: %q", c.Type, c.Message)
				}
			}
		})
	}
}

// After a mint the status describes the token just minted, with that
// token's own expiry and schedule, not the one it replaced.
func TestTheStatusAfterAMintDescribesTheNewToken(t *testing.T) {
	o := obs(lifetime(2*time.Hour), rotation(90*time.Minute, 0), recorded(now.Add(-time.Minute)))
	d := decide(o)
	if d.Action != actIssue || d.Reason != eventRenewed {
		t.Fatalf("decide = %+v, want a renewal of the expired token", d)
	}
	// A mint happens only once its requester is asked and allowed.
	o.Auth = &authorization{Allowed: true, Reason: keymintv1alpha1.ApiTokenReasonAuthorized, Message: "allowed"}
	rec := newRecord(o, d, "sha256:new", "km_new")
	res := desiredStatus(keymintv1alpha1.ApiTokenStatus{TokenHash: "sha256:current", Serial: 3}, 1, "s", o, afterAction(o, d, &rec, nil))
	st := res.Status
	if st.TokenHash != "sha256:new" || st.Serial != 4 || !st.ExpiresAt.Time.Equal(now.Add(2*time.Hour)) || !st.NextRotationAt.Time.Equal(now.Add(90*time.Minute)) {
		t.Errorf("status %+v, want the new token: serial 4, expiring at +2h, rotating at +90m", st)
	}
	if !meta.IsStatusConditionTrue(st.Conditions, keymintv1alpha1.ApiTokenConditionReady) || meta.IsStatusConditionTrue(st.Conditions, keymintv1alpha1.ApiTokenConditionExpired) {
		t.Errorf("conditions %+v, want Ready and not Expired", st.Conditions)
	}
	if res.RequeueAfter != 90*time.Minute {
		t.Errorf("requeue after %v, want the new token's rotation in 90m", res.RequeueAfter)
	}
}

// Each condition's chain: the first rule that applies wins, in this order.
func TestReadyChainOrder(t *testing.T) {
	tests := map[string]struct {
		obs        observation
		d          decision
		failed     error
		wantReason string
	}{
		"a Secret conflict wins over everything the user shows": {
			obs:        obs(noToken, func(o *observation) { o.Conflict = true; o.User.Disabled = true }),
			wantReason: keymintv1alpha1.ApiTokenReasonSecretConflict,
		},
		"a revocation wins over an expiry": {
			obs:        obs(lifetime(time.Hour), recorded(now), func(o *observation) { o.User.Disabled = true; o.SecretHolds = false }),
			wantReason: keymintv1alpha1.ApiTokenReasonServiceUserDisabled,
		},
		"a denial wins over a failed write": {
			obs: obs(denied(keymintv1alpha1.ApiTokenReasonNotAllowed), func(o *observation) { o.Delivered = false }), d: decision{Action: actIssue},
			failed: errors.New("Secret is immutable"), wantReason: keymintv1alpha1.ApiTokenReasonNotAllowed,
		},
		"an expiry wins over a failed write": {
			obs: obs(lifetime(time.Hour), recorded(now)), d: decision{Action: actRotate}, failed: errors.New("Secret is immutable"),
			wantReason: keymintv1alpha1.ApiTokenReasonExpired,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			st := desiredStatus(keymintv1alpha1.ApiTokenStatus{}, 1, "s", tc.obs, afterAction(tc.obs, tc.d, nil, tc.failed)).Status
			if c := meta.FindStatusCondition(st.Conditions, keymintv1alpha1.ApiTokenConditionReady); c == nil || c.Reason != tc.wantReason {
				t.Errorf("Ready = %+v, want reason %s", c, tc.wantReason)
			}
		})
	}
}

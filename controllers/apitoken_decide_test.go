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

var now = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// obs builds an observation of an issued, valid, delivered token (serial 3,
// minted an hour ago) of an enabled user; options change one thing each.
func obs(opts ...func(*observation)) observation {
	spec := &keymintv1alpha1.ApiTokenSpec{ServiceUser: "ci"}
	o := observation{
		Spec:    spec,
		User:    tokenstate.User{Found: true, UID: "uid-ci"},
		Current: tokenstate.Token{Spec: spec, Issued: true, IssuedAt: now.Add(-time.Hour), UserUID: "uid-ci"},
		Hash:    "sha256:current", Display: "km_current", Serial: 3,
		Delivered: true, SecretHolds: true, Now: now,
	}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// denied: the requester may not have the decided token minted.
func denied(reason string) func(*observation) {
	return func(o *observation) { o.Auth = &authorization{Reason: reason, Message: "No token is minted: ci"} }
}

// noToken: the status names no token and the Secret holds nothing.
func noToken(o *observation) {
	o.Current = tokenstate.Token{Spec: o.Spec}
	o.Hash, o.Delivered, o.SecretHolds = "", false, false
}

func lifetime(d time.Duration) func(*observation) {
	return func(o *observation) { o.Spec.Lifetime = &metav1.Duration{Duration: d} }
}

// recorded sets the expiry the current token was minted with.
func recorded(at time.Time) func(*observation) {
	return func(o *observation) { o.Current.Expiry, o.Current.Expires = at, true }
}

func rotation(every, grace time.Duration) func(*observation) {
	return func(o *observation) {
		o.Spec.Rotation = &keymintv1alpha1.Rotation{}
		if every > 0 {
			o.Spec.Rotation.Every = &metav1.Duration{Duration: every}
		}
		if grace > 0 {
			o.Spec.Rotation.GracePeriod = &metav1.Duration{Duration: grace}
		}
	}
}

func TestDecide(t *testing.T) {
	tests := map[string]struct {
		obs        observation
		wantAction action
		wantReason string
	}{
		"a valid token in steady state: nothing to do": {obs: obs(), wantAction: actNone},
		"a new ApiToken: issue": {
			obs: obs(noToken), wantAction: actIssue, wantReason: eventIssued,
		},
		"the status names a token the Secret lost: issue, saying it was lost": {
			obs:        obs(func(o *observation) { o.Delivered, o.SecretHolds = false, false }),
			wantAction: actIssue, wantReason: eventTokenLost,
		},
		"the status names a token and the Secret holds another: never adopt it, issue a fresh one": {
			obs:        obs(func(o *observation) { o.Delivered = false }),
			wantAction: actIssue, wantReason: eventSecretChanged,
		},
		"the status names no token and the Secret holds one keymint cannot vouch for: replace it": {
			obs:        obs(noToken, func(o *observation) { o.SecretHolds = true }),
			wantAction: actIssue, wantReason: eventSecretChanged,
		},
		"revoked by spec with a token in the Secret: remove it": {
			obs:        obs(func(o *observation) { o.Spec.Revoked = true }),
			wantAction: actRevoke, wantReason: eventRevoked,
		},
		"revoked and already emptied: nothing more to do": {
			obs: obs(noToken, func(o *observation) { o.Spec.Revoked = true }), wantAction: actNone,
		},
		"revoked with a token keymint cannot vouch for in the Secret: remove it, mint nothing": {
			obs:        obs(noToken, func(o *observation) { o.Spec.Revoked = true; o.SecretHolds = true }),
			wantAction: actRevoke, wantReason: eventRevoked,
		},
		"a disabled user revokes": {
			obs:        obs(func(o *observation) { o.User.Disabled = true }),
			wantAction: actRevoke, wantReason: eventRevoked,
		},
		"a missing user revokes, and nothing is minted for it": {
			obs: obs(noToken, func(o *observation) { o.User = tokenstate.User{} }), wantAction: actNone,
		},
		"a user deleted and created again under the same name revokes the old token": {
			obs:        obs(func(o *observation) { o.User.UID = "uid-ci-again" }),
			wantAction: actRevoke, wantReason: eventRevoked,
		},
		"after that revocation the new user gets a new token": {
			obs:        obs(noToken, func(o *observation) { o.User.UID = "uid-ci-again" }),
			wantAction: actIssue, wantReason: eventIssued,
		},
		"a Secret conflict: touch nothing": {
			obs: obs(noToken, func(o *observation) { o.Conflict = true }), wantAction: actNone,
		},
		"another ApiToken claims the hash: reissue": {
			obs: obs(func(o *observation) { o.Claimed = true }), wantAction: actIssue, wantReason: eventHashConflict,
		},
		"a new rotate annotation value: rotate": {
			obs: obs(func(o *observation) { o.RotateRequest = "1" }), wantAction: actRotate, wantReason: eventRotationRequested,
		},
		"the rotate value already handled: nothing": {
			obs: obs(func(o *observation) { o.RotateRequest = "1"; o.RotationRequest = "1" }), wantAction: actNone,
		},
		"a first issue with an annotation present issues, it does not rotate": {
			obs: obs(noToken, func(o *observation) { o.RotateRequest = "1" }), wantAction: actIssue, wantReason: eventIssued,
		},
		"a rotation schedule that has come due: rotate": {
			obs: obs(rotation(time.Hour, 0)), wantAction: actRotate, wantReason: eventRotationScheduled,
		},
		"a rotation schedule 1 s from due: nothing": {
			obs: obs(rotation(time.Hour+time.Second, 0)), wantAction: actNone,
		},
		"a token that expired before its rotation fell due is not rotated on schedule": {
			obs: obs(rotation(time.Hour, 0), lifetime(30*time.Minute), recorded(now.Add(-30*time.Minute))), wantAction: actNone,
		},
		"a rotation due at the instant of expiry still happens": {
			obs: obs(rotation(time.Hour, 0), lifetime(time.Hour), recorded(now)), wantAction: actRotate, wantReason: eventRotationScheduled,
		},
		"a rotation that fell due before expiry happens even when reconciled late": {
			obs:        obs(rotation(50*time.Minute, 0), lifetime(55*time.Minute), recorded(now.Add(-5*time.Minute))),
			wantAction: actRotate, wantReason: eventRotationScheduled,
		},
		"an expired token is rotated on request": {
			obs:        obs(lifetime(30*time.Minute), recorded(now.Add(-30*time.Minute)), func(o *observation) { o.RotateRequest = "renew" }),
			wantAction: actRotate, wantReason: eventRotationRequested,
		},
		"a lifetime extended after expiry mints a new token; the expired one stays refused": {
			obs:        obs(lifetime(2*time.Hour), recorded(now.Add(-time.Second))),
			wantAction: actIssue, wantReason: eventRenewed,
		},
		"a lifetime extended before expiry replaces the token, with the grace period": {
			obs:        obs(lifetime(2*time.Hour), recorded(now.Add(time.Second))),
			wantAction: actRotate, wantReason: eventRenewed,
		},
		"an expiry removed altogether is an extension too": {
			obs: obs(recorded(now.Add(time.Minute))), wantAction: actRotate, wantReason: eventRenewed,
		},
		"an extension to an expiresAt already past mints nothing": {
			obs: obs(recorded(now.Add(-time.Hour)), func(o *observation) {
				o.Spec.ExpiresAt = &metav1.Time{Time: now.Add(-time.Minute)}
			}),
			wantAction: actNone,
		},
		"a shortened lifetime applies to the token in place": {
			obs: obs(lifetime(90*time.Minute), recorded(now.Add(time.Hour))), wantAction: actNone,
		},
		"an expired token stays expired while its expiry is unchanged": {
			obs: obs(lifetime(30*time.Minute), recorded(now.Add(-30*time.Minute))), wantAction: actNone,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			d := decide(tc.obs)
			if d.Action != tc.wantAction || d.Reason != tc.wantReason {
				t.Errorf("decide = %+v, want action %v reason %q", d, tc.wantAction, tc.wantReason)
			}
		})
	}
}

func TestObserveToken(t *testing.T) {
	issued := metav1.NewTime(now.Add(-time.Hour))
	status := keymintv1alpha1.ApiTokenStatus{TokenHash: "sha256:status", TokenPrefix: "km_status", IssuedAt: &issued, Serial: 3}
	signed := func(serial int64) *secretRecord {
		return &secretRecord{Serial: serial, Hash: "sha256:secret", Display: "km_secret", IssuedAt: now}
	}
	tests := map[string]struct {
		status      keymintv1alpha1.ApiTokenStatus
		secret      secretState
		wantAdopted bool
		wantHash    string
	}{
		"a signed record newer than the status is adopted (a crash between the writes)": {
			status: status, secret: secretState{Plain: "x", Holds: true, Signed: signed(4)}, wantAdopted: true, wantHash: "sha256:secret",
		},
		"a signed record at the status's serial is not: the status already moved past it": {
			status: status, secret: secretState{Plain: "x", Holds: true, Signed: signed(3)}, wantHash: "sha256:status",
		},
		"a signed record older than a revoked status is not: a restored backup revives nothing": {
			status: keymintv1alpha1.ApiTokenStatus{Serial: 5}, secret: secretState{Plain: "x", Holds: true, Signed: signed(2)},
		},
		"a signed record recovers a lost status": {
			status: keymintv1alpha1.ApiTokenStatus{}, secret: secretState{Plain: "x", Holds: true, Signed: signed(1)}, wantAdopted: true, wantHash: "sha256:secret",
		},
		"an unsigned Secret is never adopted": {
			status: keymintv1alpha1.ApiTokenStatus{}, secret: secretState{Plain: "x", Holds: true},
		},
		"a revoked status adopts nothing, even a newer record: a fresh token is minted instead": {
			status: keymintv1alpha1.ApiTokenStatus{Serial: 1}, secret: secretState{Plain: "x", Holds: true, Signed: signed(2)},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			o := observation{Spec: &keymintv1alpha1.ApiTokenSpec{}}
			observeToken(&o, &tc.status, tc.secret)
			if o.Adopted != tc.wantAdopted || o.Hash != tc.wantHash || o.Current.Issued != (tc.wantHash != "") {
				t.Errorf("adopted %v hash %q issued %v; want adopted %v hash %q", o.Adopted, o.Hash, o.Current.Issued, tc.wantAdopted, tc.wantHash)
			}
			if o.Adopted && (!o.Delivered || o.Serial != tc.secret.Signed.Serial) {
				t.Errorf("an adopted record: delivered %v serial %d", o.Delivered, o.Serial)
			}
		})
	}
}

func TestAdoptedRecordBringsNoHashTheStatusDoesNotName(t *testing.T) {
	issued := metav1.NewTime(now.Add(-time.Hour))
	status := keymintv1alpha1.ApiTokenStatus{TokenHash: "sha256:status", IssuedAt: &issued, Serial: 3}
	rec := &secretRecord{Serial: 4, Hash: "sha256:secret", IssuedAt: now, Previous: []recordPrevious{
		{Hash: "sha256:status", IssuedAt: now.Add(-time.Hour), ValidUntil: now.Add(time.Hour)},
		{Hash: "sha256:planted", IssuedAt: now.Add(-time.Hour), ValidUntil: now.Add(time.Hour)},
	}}
	o := observation{Spec: &keymintv1alpha1.ApiTokenSpec{}}
	observeToken(&o, &status, secretState{Plain: "x", Holds: true, Signed: rec})
	if !o.Adopted || len(o.Current.Previous) != 1 || o.Current.Previous[0].Hash != "sha256:status" {
		t.Errorf("adopted %v with previous %+v; want only the status's own hash in grace", o.Adopted, o.Current.Previous)
	}
}

func TestNewRecord(t *testing.T) {
	tests := map[string]struct {
		obs          observation
		action       action
		wantExpiry   *time.Time
		wantPrevious []recordPrevious
		wantRotated  bool
	}{
		"an issue keeps no previous hash": {
			obs: obs(rotation(0, time.Hour)), action: actIssue,
		},
		"a new token's expiry is the spec's, counted from now": {
			obs: obs(lifetime(2*time.Hour), recorded(now.Add(time.Hour))), action: actIssue, wantExpiry: ptrTime(now.Add(2 * time.Hour)),
		},
		"a rotation without grace keeps no previous hash": {
			obs: obs(), action: actRotate, wantRotated: true,
		},
		"a rotation with grace keeps the old hash until now + grace": {
			obs: obs(rotation(0, time.Hour)), action: actRotate, wantRotated: true,
			wantPrevious: []recordPrevious{{Hash: "sha256:current", IssuedAt: now.Add(-time.Hour), ValidUntil: now.Add(time.Hour)}},
		},
		"the grace period never outlives the old token's recorded expiry": {
			obs: obs(rotation(0, time.Hour), recorded(now.Add(10*time.Minute))), action: actRotate, wantRotated: true,
			wantPrevious: []recordPrevious{{Hash: "sha256:current", IssuedAt: now.Add(-time.Hour), ValidUntil: now.Add(10 * time.Minute)}},
		},
		"an expired token rotated out gets no grace": {
			obs: obs(rotation(0, time.Hour), recorded(now.Add(-time.Second))), action: actRotate, wantRotated: true,
		},
		"hashes whose grace has ended are dropped": {
			obs: obs(rotation(0, time.Hour), func(o *observation) {
				o.Current.Previous = []tokenstate.Previous{
					{Hash: "sha256:old", IssuedAt: now.Add(-2 * time.Hour), ValidUntil: now},
					{Hash: "sha256:older", IssuedAt: now.Add(-3 * time.Hour), ValidUntil: now.Add(time.Minute)},
				}
			}),
			action: actRotate, wantRotated: true,
			wantPrevious: []recordPrevious{
				{Hash: "sha256:older", IssuedAt: now.Add(-3 * time.Hour), ValidUntil: now.Add(time.Minute)},
				{Hash: "sha256:current", IssuedAt: now.Add(-time.Hour), ValidUntil: now.Add(time.Hour)},
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			rec := newRecord(tc.obs, decision{Action: tc.action}, "sha256:new", "km_new")
			if rec.Hash != "sha256:new" || !rec.IssuedAt.Equal(now) || rec.Serial != 4 || rec.ServiceUserUID != "uid-ci" {
				t.Errorf("record = %+v, want the new hash, issued now, serial 4, for uid-ci", rec)
			}
			if (rec.ExpiresAt == nil) != (tc.wantExpiry == nil) || (rec.ExpiresAt != nil && !rec.ExpiresAt.Equal(*tc.wantExpiry)) {
				t.Errorf("expiresAt = %v, want %v", rec.ExpiresAt, tc.wantExpiry)
			}
			if (rec.RotatedAt != nil) != tc.wantRotated {
				t.Errorf("rotatedAt = %v, want set: %v", rec.RotatedAt, tc.wantRotated)
			}
			if len(rec.Previous) != len(tc.wantPrevious) {
				t.Fatalf("previous = %+v, want %+v", rec.Previous, tc.wantPrevious)
			}
			for i, p := range rec.Previous {
				w := tc.wantPrevious[i]
				if p.Hash != w.Hash || !p.ValidUntil.Equal(w.ValidUntil) || !p.IssuedAt.Equal(w.IssuedAt) {
					t.Errorf("previous[%d] = %+v, want %+v", i, p, w)
				}
			}
		})
	}
}

func ptrTime(t time.Time) *time.Time { return &t }

func TestNewRecordBoundsPreviousTokens(t *testing.T) {
	o := obs(rotation(0, time.Hour), func(o *observation) {
		for i := range 20 {
			o.Current.Previous = append(o.Current.Previous, tokenstate.Previous{Hash: "sha256:p", IssuedAt: now.Add(-time.Hour), ValidUntil: now.Add(time.Duration(i+1) * time.Minute)})
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
				o.RequesterProblem = requester.Missing
				a := noRecord(requester.Missing, "ns", "t")
				o.Auth = &a
			}), d: decision{Action: actIssue},
			wantReady: metav1.ConditionFalse, wantReason: keymintv1alpha1.ApiTokenReasonNoRequesterRecord,
		},
		"no requester record and no user: the missing record, not the missing user": {
			obs:       obs(noToken, func(o *observation) { o.RequesterProblem = requester.Forged; o.User = tokenstate.User{} }),
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
		o.RequesterProblem = requester.Missing
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

// A revocation decided on a stale cache knows an older serial than the
// status it writes over: the serial still never goes back.
func TestTheSerialNeverGoesBack(t *testing.T) {
	o := obs(func(o *observation) { o.Spec.Revoked = true; o.Serial = 2 })
	st := desiredStatus(keymintv1alpha1.ApiTokenStatus{Serial: 5, TokenHash: "sha256:newer"}, 1, "s", o, afterAction(o, decision{Action: actRevoke}, nil, nil)).Status
	if st.Serial != 5 || st.TokenHash != "" {
		t.Errorf("serial %d, hash %q; want 5 and none", st.Serial, st.TokenHash)
	}
	o = obs(noToken, func(o *observation) { o.Serial, o.OurRecord = 2, 4 })
	if rec := newRecord(o, decision{Action: actIssue}, "sha256:x", "km_x"); rec.Serial != 5 {
		t.Errorf("a token minted past a record of ours with serial 4 has serial %d, want 5", rec.Serial)
	}
	if d := decide(obs(noToken, func(o *observation) { o.SecretHolds, o.OurRecord = true, 4 })); d.Reason != eventIssued {
		t.Errorf("a Secret holding keymint's own unadopted record: %+v, want an issue without a SecretChanged warning", d)
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

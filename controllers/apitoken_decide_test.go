package controllers

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/requester"
	"github.com/keymint/keymint/internal/secretrecord"
	"github.com/keymint/keymint/internal/tokenstate"
)

var now = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// obs builds an observation of an issued, valid, delivered token (serial 3,
// minted an hour ago) of an enabled user, asked for by a requester keymint
// trusts; options change one thing each. The verdict follows them.
func obs(opts ...func(*observation)) observation {
	spec := &keymintv1alpha1.ApiTokenSpec{ServiceUser: "ci"}
	o := observation{
		Spec:    spec,
		User:    tokenstate.User{Found: true, UID: "uid-ci"},
		Current: tokenstate.Token{Spec: spec, Issued: true, IssuedAt: now.Add(-time.Hour), UserUID: "uid-ci"},
		Hash:    "sha256:current", Display: "km_current", Serial: 3,
		Delivered: true, SecretHolds: true, Now: now,
		Trust: &requester.Trust{Record: &requester.Record{}},
	}
	for _, f := range opts {
		f(&o)
	}
	o.evaluate()
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

func TestNewRecord(t *testing.T) {
	tests := map[string]struct {
		obs          observation
		action       action
		wantExpiry   *time.Time
		wantPrevious []secretrecord.Previous
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
			wantPrevious: []secretrecord.Previous{{Hash: "sha256:current", IssuedAt: now.Add(-time.Hour), ValidUntil: now.Add(time.Hour)}},
		},
		"the grace period never outlives the old token's recorded expiry": {
			obs: obs(rotation(0, time.Hour), recorded(now.Add(10*time.Minute))), action: actRotate, wantRotated: true,
			wantPrevious: []secretrecord.Previous{{Hash: "sha256:current", IssuedAt: now.Add(-time.Hour), ValidUntil: now.Add(10 * time.Minute)}},
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
			wantPrevious: []secretrecord.Previous{
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

// The requester is asked about only where the outcome depends on it: a
// steady issued token costs no read of the webhook's configuration.
func TestNeedsRequester(t *testing.T) {
	tests := map[string]struct {
		obs  observation
		d    decision
		want bool
	}{
		"an issued token that stays":      {obs: obs(), want: false},
		"a mint":                          {obs: obs(noToken), d: decision{Action: actIssue}, want: true},
		"a rotation":                      {obs: obs(), d: decision{Action: actRotate}, want: true},
		"a revocation for a user's state": {obs: obs(func(o *observation) { o.User.Disabled = true }), d: decision{Action: actRevoke}, want: true},
		"no token, nothing to do":         {obs: obs(noToken, func(o *observation) { o.Conflict = true }), want: true},
		"revoked by its spec":             {obs: obs(func(o *observation) { o.Spec.Revoked = true }), d: decision{Action: actRevoke}, want: false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := needsRequester(&tc.obs, tc.d); got != tc.want {
				t.Errorf("needsRequester = %v, want %v", got, tc.want)
			}
		})
	}
}

// The trust decision worded as the Authorized answer: nothing to say for a
// requester keymint trusts, or when it did not ask.
func TestDistrust(t *testing.T) {
	tests := map[string]struct {
		trust      *requester.Trust
		wantReason string
	}{
		"not asked":              {},
		"trusted":                {trust: &requester.Trust{Record: &requester.Record{}}},
		"no record":              {trust: &requester.Trust{Problem: requester.Missing}, wantReason: keymintv1alpha1.ApiTokenReasonNoRequesterRecord},
		"signed before the hook": {trust: &requester.Trust{Problem: requester.BeforeWebhook}, wantReason: keymintv1alpha1.ApiTokenReasonNoRequesterRecord},
		"a skippable webhook":    {trust: &requester.Trust{NotEnforced: "x"}, wantReason: keymintv1alpha1.ApiTokenReasonRequesterWebhookNotEnforced},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			a := distrust(tc.trust, "ns", "t")
			switch {
			case tc.wantReason == "" && a != nil:
				t.Errorf("distrust = %+v, want none", a)
			case tc.wantReason != "" && (a == nil || a.Allowed || a.Reason != tc.wantReason):
				t.Errorf("distrust = %+v, want a refusal for %s", a, tc.wantReason)
			}
		})
	}
}

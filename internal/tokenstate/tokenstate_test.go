package tokenstate

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

// t0 is when the current token of most cases was minted.
var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

const (
	uid      types.UID = "uid-1"
	otherUID types.UID = "uid-2"
)

// active is an enabled ServiceUser with no policy, the one most tokens were
// minted for.
var active = User{Found: true, UID: uid}

func dur(d time.Duration) *metav1.Duration { return &metav1.Duration{Duration: d} }
func at(t time.Time) *metav1.Time          { return &metav1.Time{Time: t} }
func i32(n int32) *int32                   { return &n }

func lifetime(d time.Duration) *keymintv1alpha1.ApiTokenSpec {
	return &keymintv1alpha1.ApiTokenSpec{Lifetime: dur(d)}
}

// issued is the token of spec minted at t0 for uid, its expiry recorded as
// expiry (the zero time: it was minted without one).
func issued(spec *keymintv1alpha1.ApiTokenSpec, expiry time.Time) Token {
	return Token{Spec: spec, Issued: true, IssuedAt: t0, Expiry: expiry, Expires: !expiry.IsZero(), UserUID: uid}
}

// withPrevious is tok with rotated-out hashes.
func withPrevious(tok Token, prev ...Previous) Token {
	tok.Previous = prev
	return tok
}

func TestUserFrom(t *testing.T) {
	deleting := metav1.NewTime(t0)
	tests := map[string]struct {
		user *keymintv1alpha1.ServiceUser
		want User
	}{
		"a missing user is not found": {user: nil, want: User{}},
		"a user being deleted counts as not found": {
			user: &keymintv1alpha1.ServiceUser{
				ObjectMeta: metav1.ObjectMeta{UID: uid, DeletionTimestamp: &deleting},
				Spec:       keymintv1alpha1.ServiceUserSpec{Permissions: []string{"a:b"}},
			},
			want: User{},
		},
		"an enabled user with no policy": {
			user: &keymintv1alpha1.ServiceUser{ObjectMeta: metav1.ObjectMeta{UID: uid}},
			want: User{Found: true, UID: uid},
		},
		"uid, permissions and policy are read": {
			user: &keymintv1alpha1.ServiceUser{
				ObjectMeta: metav1.ObjectMeta{UID: uid},
				Spec: keymintv1alpha1.ServiceUserSpec{
					Disabled: true, Permissions: []string{"a:b"},
					TokenPolicy: keymintv1alpha1.TokenPolicy{
						MaxLifetime: dur(time.Hour), DefaultLifetime: dur(time.Minute), RequestsPerMinute: 42,
					},
				},
			},
			want: User{
				Found: true, UID: uid, Disabled: true, Permissions: []string{"a:b"},
				MaxLifetime: time.Hour, DefaultLifetime: time.Minute, RequestsPerMinute: 42,
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := UserFrom(tc.user); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("UserFrom = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestTokenFrom(t *testing.T) {
	spec := lifetime(time.Hour)
	tests := map[string]struct {
		status keymintv1alpha1.ApiTokenStatus
		want   Token
	}{
		"an empty status names no token": {want: Token{Spec: spec}},
		"a hash without an issue time is not issued": {
			status: keymintv1alpha1.ApiTokenStatus{TokenHash: "sha256:a"},
			want:   Token{Spec: spec},
		},
		"an issue time without a hash is not issued": {
			status: keymintv1alpha1.ApiTokenStatus{IssuedAt: at(t0)},
			want:   Token{Spec: spec, IssuedAt: t0},
		},
		"a token minted without expiry": {
			status: keymintv1alpha1.ApiTokenStatus{TokenHash: "sha256:a", IssuedAt: at(t0), ServiceUserUID: string(uid)},
			want:   Token{Spec: spec, Issued: true, IssuedAt: t0, UserUID: uid, Approved: true},
		},
		"a full record with rotated-out hashes in order": {
			status: keymintv1alpha1.ApiTokenStatus{
				TokenHash: "sha256:a", IssuedAt: at(t0), ExpiresAt: at(t0.Add(time.Hour)), ServiceUserUID: string(uid),
				PreviousTokens: []keymintv1alpha1.PreviousToken{
					{TokenHash: "sha256:p1", IssuedAt: metav1.NewTime(t0.Add(-2 * time.Hour)), ValidUntil: metav1.NewTime(t0.Add(time.Minute))},
					{TokenHash: "sha256:p2", IssuedAt: metav1.NewTime(t0.Add(-time.Hour)), ValidUntil: metav1.NewTime(t0.Add(2 * time.Minute))},
				},
			},
			want: Token{
				Spec: spec, Issued: true, IssuedAt: t0, Expiry: t0.Add(time.Hour), Expires: true, UserUID: uid, Approved: true,
				Previous: []Previous{
					{Hash: "sha256:p1", IssuedAt: t0.Add(-2 * time.Hour), ValidUntil: t0.Add(time.Minute)},
					{Hash: "sha256:p2", IssuedAt: t0.Add(-time.Hour), ValidUntil: t0.Add(2 * time.Minute)},
				},
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := TokenFrom(spec, &tc.status); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("TokenFrom = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestRevocation(t *testing.T) {
	tests := map[string]struct {
		revoked bool // spec.revoked
		user    User
		// tokenUID is the ServiceUser UID recorded at mint ("" in older records).
		tokenUID  types.UID
		notIssued bool // the status names no token
		want      string
		accepted  bool
	}{
		"an active token of an enabled user": {user: active, tokenUID: uid, want: "", accepted: true},
		"revoked in its spec":                {revoked: true, user: active, tokenUID: uid, want: keymintv1alpha1.ApiTokenReasonRevokedBySpec},
		"its user is missing":                {user: User{}, tokenUID: uid, want: keymintv1alpha1.ApiTokenReasonServiceUserNotFound},
		"its user is disabled": {
			user: User{Found: true, UID: uid, Disabled: true}, tokenUID: uid, want: keymintv1alpha1.ApiTokenReasonServiceUserDisabled,
		},
		"spec revocation wins over a missing user": {revoked: true, user: User{}, tokenUID: uid, want: keymintv1alpha1.ApiTokenReasonRevokedBySpec},
		"spec revocation wins over a disabled user": {
			revoked: true, user: User{Found: true, UID: uid, Disabled: true}, tokenUID: uid, want: keymintv1alpha1.ApiTokenReasonRevokedBySpec,
		},
		"spec revocation wins over a recreated user": {
			revoked: true, user: User{Found: true, UID: otherUID}, tokenUID: uid, want: keymintv1alpha1.ApiTokenReasonRevokedBySpec,
		},
		// A user that is both missing (recreated) and disabled is missing.
		"a missing user wins over a disabled one": {
			user: User{Found: true, UID: otherUID, Disabled: true}, tokenUID: uid, want: keymintv1alpha1.ApiTokenReasonServiceUserNotFound,
		},
		"minted for a user since deleted and created again": {
			user: User{Found: true, UID: otherUID}, tokenUID: uid, want: keymintv1alpha1.ApiTokenReasonServiceUserNotFound,
		},
		"a record older than the uid field matches any user": {user: User{Found: true, UID: otherUID}, tokenUID: "", want: "", accepted: true},
		// Before the first issue there is no minted token to compare.
		"a token not issued yet ignores the recorded uid": {user: User{Found: true, UID: otherUID}, tokenUID: uid, notIssued: true, want: ""},
		"a token not issued yet is never accepted":        {user: active, notIssued: true, want: ""},
		"a token not issued yet of a missing user": {
			user: User{}, notIssued: true, want: keymintv1alpha1.ApiTokenReasonServiceUserNotFound,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			tok := Token{Spec: &keymintv1alpha1.ApiTokenSpec{Revoked: tc.revoked}, Issued: !tc.notIssued, IssuedAt: t0, UserUID: tc.tokenUID}
			if tc.notIssued {
				tok.IssuedAt = time.Time{}
			}
			v := Evaluate(&tok, &tc.user, t0.Add(time.Hour))
			if v.Revoked != tc.want {
				t.Errorf("Revoked = %q, want %q", v.Revoked, tc.want)
			}
			if v.Accepted != tc.accepted {
				t.Errorf("Accepted = %v, want %v", v.Accepted, tc.accepted)
			}
		})
	}
}

func TestEvaluateExpiry(t *testing.T) {
	tests := map[string]struct {
		token Token
		user  User
		now   time.Time
		// expiry is the effective expiry; the zero time means none.
		expiry   time.Time
		extended bool
		expired  bool
	}{
		"no expiry anywhere: never expires": {
			token: issued(&keymintv1alpha1.ApiTokenSpec{}, time.Time{}), user: active, now: t0.Add(100000 * time.Hour),
		},

		// The spec still gives what was recorded.
		"as recorded, 1s before expiry": {
			token: issued(lifetime(2*time.Hour), t0.Add(2*time.Hour)), user: active,
			now: t0.Add(2*time.Hour - time.Second), expiry: t0.Add(2 * time.Hour),
		},
		"as recorded, at the instant of expiry": {
			token: issued(lifetime(2*time.Hour), t0.Add(2*time.Hour)), user: active,
			now: t0.Add(2 * time.Hour), expiry: t0.Add(2 * time.Hour), expired: true,
		},
		"as recorded, 1s after expiry": {
			token: issued(lifetime(2*time.Hour), t0.Add(2*time.Hour)), user: active,
			now: t0.Add(2*time.Hour + time.Second), expiry: t0.Add(2 * time.Hour), expired: true,
		},

		// spec.lifetime shortened from 2h to 1h since the mint.
		"lifetime shortened, 1s before the new expiry": {
			token: issued(lifetime(time.Hour), t0.Add(2*time.Hour)), user: active,
			now: t0.Add(time.Hour - time.Second), expiry: t0.Add(time.Hour),
		},
		"lifetime shortened, at the new expiry": {
			token: issued(lifetime(time.Hour), t0.Add(2*time.Hour)), user: active,
			now: t0.Add(time.Hour), expiry: t0.Add(time.Hour), expired: true,
		},
		"lifetime shortened, 1s after the new expiry": {
			token: issued(lifetime(time.Hour), t0.Add(2*time.Hour)), user: active,
			now: t0.Add(time.Hour + time.Second), expiry: t0.Add(time.Hour), expired: true,
		},
		"expiresAt moved earlier": {
			token: issued(&keymintv1alpha1.ApiTokenSpec{ExpiresAt: at(t0.Add(30 * time.Minute))}, t0.Add(2*time.Hour)), user: active,
			now: t0.Add(30 * time.Minute), expiry: t0.Add(30 * time.Minute), expired: true,
		},
		"the user's maxLifetime lowered below the record": {
			token: issued(lifetime(2*time.Hour), t0.Add(2*time.Hour)), user: User{Found: true, UID: uid, MaxLifetime: 45 * time.Minute},
			now: t0.Add(45*time.Minute - time.Second), expiry: t0.Add(45 * time.Minute),
		},

		// Minted without expiry; the spec or policy now gives one.
		"no expiry recorded, lifetime added, 1s before": {
			token: issued(lifetime(time.Hour), time.Time{}), user: active,
			now: t0.Add(time.Hour - time.Second), expiry: t0.Add(time.Hour),
		},
		"no expiry recorded, lifetime added, at the instant": {
			token: issued(lifetime(time.Hour), time.Time{}), user: active,
			now: t0.Add(time.Hour), expiry: t0.Add(time.Hour), expired: true,
		},
		"no expiry recorded, lifetime added, 1s after": {
			token: issued(lifetime(time.Hour), time.Time{}), user: active,
			now: t0.Add(time.Hour + time.Second), expiry: t0.Add(time.Hour), expired: true,
		},
		"no expiry recorded, maxLifetime added": {
			token: issued(&keymintv1alpha1.ApiTokenSpec{}, time.Time{}), user: User{Found: true, UID: uid, MaxLifetime: 3 * time.Hour},
			now: t0.Add(3 * time.Hour), expiry: t0.Add(3 * time.Hour), expired: true,
		},
		"no expiry recorded, defaultLifetime added": {
			token: issued(&keymintv1alpha1.ApiTokenSpec{}, time.Time{}), user: User{Found: true, UID: uid, DefaultLifetime: 3 * time.Hour},
			now: t0.Add(3*time.Hour - time.Second), expiry: t0.Add(3 * time.Hour),
		},

		// The spec now gives a later expiry, or none: the record holds, and a
		// token refused for expiry never comes back.
		"lifetime extended, 1s before the recorded expiry": {
			token: issued(lifetime(3*time.Hour), t0.Add(2*time.Hour)), user: active,
			now: t0.Add(2*time.Hour - time.Second), expiry: t0.Add(2 * time.Hour), extended: true,
		},
		"lifetime extended, at the recorded expiry": {
			token: issued(lifetime(3*time.Hour), t0.Add(2*time.Hour)), user: active,
			now: t0.Add(2 * time.Hour), expiry: t0.Add(2 * time.Hour), extended: true, expired: true,
		},
		"lifetime extended, 1s after the recorded expiry": {
			token: issued(lifetime(3*time.Hour), t0.Add(2*time.Hour)), user: active,
			now: t0.Add(2*time.Hour + time.Second), expiry: t0.Add(2 * time.Hour), extended: true, expired: true,
		},
		"lifetime extended, before its new expiry still expired": {
			token: issued(lifetime(3*time.Hour), t0.Add(2*time.Hour)), user: active,
			now: t0.Add(3*time.Hour - time.Second), expiry: t0.Add(2 * time.Hour), extended: true, expired: true,
		},
		"extended by 1s": {
			token: issued(lifetime(2*time.Hour+time.Second), t0.Add(2*time.Hour)), user: active,
			now: t0.Add(2 * time.Hour), expiry: t0.Add(2 * time.Hour), extended: true, expired: true,
		},
		"expiresAt moved later": {
			token: issued(&keymintv1alpha1.ApiTokenSpec{ExpiresAt: at(t0.Add(10 * time.Hour))}, t0.Add(2*time.Hour)), user: active,
			now: t0.Add(2 * time.Hour), expiry: t0.Add(2 * time.Hour), extended: true, expired: true,
		},
		"expiry removed from the spec": {
			token: issued(&keymintv1alpha1.ApiTokenSpec{}, t0.Add(2*time.Hour)), user: active,
			now: t0.Add(2 * time.Hour), expiry: t0.Add(2 * time.Hour), extended: true, expired: true,
		},
		"the user's defaultLifetime raised": {
			token: issued(&keymintv1alpha1.ApiTokenSpec{}, t0.Add(time.Hour)), user: User{Found: true, UID: uid, DefaultLifetime: 2 * time.Hour},
			now: t0.Add(time.Hour - time.Second), expiry: t0.Add(time.Hour), extended: true,
		},
		"the spec 1s shorter than the record is not an extension": {
			token: issued(lifetime(2*time.Hour-time.Second), t0.Add(2*time.Hour)), user: active,
			now: t0.Add(2*time.Hour - time.Second), expiry: t0.Add(2*time.Hour - time.Second), expired: true,
		},

		// Fractions of a second: the record holds whole seconds, so a
		// spec or policy a fraction past it is no extension (it would
		// renew at every reconcile), and it is read a fraction earlier.
		"expiresAt half a second past the record is no extension": {
			token: issued(&keymintv1alpha1.ApiTokenSpec{ExpiresAt: at(t0.Add(2*time.Hour + 500*time.Millisecond))}, t0.Add(2*time.Hour)), user: active,
			now: t0.Add(time.Hour), expiry: t0.Add(2 * time.Hour),
		},
		"a lifetime with a fraction is read to the whole second below": {
			token: issued(lifetime(2*time.Hour+999*time.Millisecond), t0.Add(2*time.Hour)), user: active,
			now: t0.Add(time.Hour), expiry: t0.Add(2 * time.Hour),
		},
		"a maxLifetime shortened by half a second cuts a whole second": {
			token: issued(&keymintv1alpha1.ApiTokenSpec{}, t0.Add(2*time.Hour)), user: User{Found: true, UID: uid, MaxLifetime: 2*time.Hour - 500*time.Millisecond},
			now: t0.Add(time.Hour), expiry: t0.Add(2*time.Hour - time.Second),
		},

		// A token not issued has no expiry and is never accepted.
		"not issued": {
			token: Token{Spec: lifetime(time.Hour)}, user: active, now: t0,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			v := Evaluate(&tc.token, &tc.user, tc.now)
			wantExpires := !tc.expiry.IsZero()
			if v.Expires != wantExpires || (wantExpires && !v.Expiry.Equal(tc.expiry)) {
				t.Errorf("Expiry = %v (expires %v), want %v (expires %v)", v.Expiry, v.Expires, tc.expiry, wantExpires)
			}
			if v.Extended != tc.extended {
				t.Errorf("Extended = %v, want %v", v.Extended, tc.extended)
			}
			if v.Expired != tc.expired {
				t.Errorf("Expired = %v, want %v", v.Expired, tc.expired)
			}
			wantAccepted := tc.token.Issued && !tc.expired
			if v.Accepted != wantAccepted {
				t.Errorf("Accepted = %v, want %v", v.Accepted, wantAccepted)
			}
		})
	}
}

func TestEvaluateRotation(t *testing.T) {
	every := func(d time.Duration) *keymintv1alpha1.Rotation { return &keymintv1alpha1.Rotation{Every: dur(d)} }
	day := 24 * time.Hour
	tests := map[string]struct {
		token Token
		user  User
		// next is the scheduled rotation; the zero time: it does not rotate.
		next time.Time
	}{
		"no rotation": {token: issued(&keymintv1alpha1.ApiTokenSpec{}, time.Time{}), user: active},
		"a grace period alone schedules nothing": {
			token: issued(&keymintv1alpha1.ApiTokenSpec{Rotation: &keymintv1alpha1.Rotation{GracePeriod: dur(time.Hour)}}, time.Time{}), user: active,
		},
		"a zero period schedules nothing": {
			token: issued(&keymintv1alpha1.ApiTokenSpec{Rotation: every(0)}, time.Time{}), user: active,
		},
		"every counts from issue, no expiry": {
			token: issued(&keymintv1alpha1.ApiTokenSpec{Rotation: every(day)}, time.Time{}), user: active, next: t0.Add(day),
		},
		"due well before expiry": {
			token: issued(&keymintv1alpha1.ApiTokenSpec{Lifetime: dur(2 * day), Rotation: every(day)}, t0.Add(2*day)), user: active,
			next: t0.Add(day),
		},
		"expiry 1s after the rotation": {
			token: issued(&keymintv1alpha1.ApiTokenSpec{Lifetime: dur(day + time.Second), Rotation: every(day)}, t0.Add(day+time.Second)), user: active,
			next: t0.Add(day),
		},
		"due exactly at expiry": {
			token: issued(&keymintv1alpha1.ApiTokenSpec{Lifetime: dur(day), Rotation: every(day)}, t0.Add(day)), user: active,
			next: t0.Add(day),
		},
		"expiry 1s before the rotation": {
			token: issued(&keymintv1alpha1.ApiTokenSpec{Lifetime: dur(day - time.Second), Rotation: every(day)}, t0.Add(day-time.Second)), user: active,
		},
		// Recorded 2d, but the spec now says 12h: the effective expiry decides.
		"the effective expiry, shortened, comes first": {
			token: issued(&keymintv1alpha1.ApiTokenSpec{Lifetime: dur(12 * time.Hour), Rotation: every(day)}, t0.Add(2*day)), user: active,
		},
		"maxLifetime lowered below the rotation": {
			token: issued(&keymintv1alpha1.ApiTokenSpec{Lifetime: dur(2 * day), Rotation: every(day)}, t0.Add(2*day)),
			user:  User{Found: true, UID: uid, MaxLifetime: 12 * time.Hour},
		},
		// Recorded 12h, the spec now says 2d: the record still decides.
		"an extended token rotates by its recorded expiry": {
			token: issued(&keymintv1alpha1.ApiTokenSpec{Lifetime: dur(2 * day), Rotation: every(day)}, t0.Add(12*time.Hour)), user: active,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			v := Evaluate(&tc.token, &tc.user, t0)
			wantRotates := !tc.next.IsZero()
			if v.Rotates != wantRotates || (wantRotates && !v.NextRotation.Equal(tc.next)) {
				t.Errorf("NextRotation = %v (rotates %v), want %v (rotates %v)", v.NextRotation, v.Rotates, tc.next, wantRotates)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	// current expires at t0+2h as recorded and as its spec says.
	current := issued(lifetime(2*time.Hour), t0.Add(2*time.Hour))
	// grace is minted 20h before t0 and accepted until t0+2h as recorded.
	grace := Previous{Hash: "old", IssuedAt: t0.Add(-20 * time.Hour), ValidUntil: t0.Add(2 * time.Hour)}
	noExpiry := &keymintv1alpha1.ApiTokenSpec{}
	tests := map[string]struct {
		token Token
		user  User
		which int // Current or an index into token.Previous
		now   time.Time
		want  Refusal
	}{
		// The current hash.
		"current: accepted":          {token: current, user: active, which: Current, now: t0, want: Accepted},
		"current: 1s before expiry":  {token: current, user: active, which: Current, now: t0.Add(2*time.Hour - time.Second), want: Accepted},
		"current: at expiry":         {token: current, user: active, which: Current, now: t0.Add(2 * time.Hour), want: Expired},
		"current: 1s after expiry":   {token: current, user: active, which: Current, now: t0.Add(2*time.Hour + time.Second), want: Expired},
		"current: revoked in spec":   {token: issued(&keymintv1alpha1.ApiTokenSpec{Revoked: true}, time.Time{}), user: active, which: Current, now: t0, want: Revoked},
		"current: user missing":      {token: current, user: User{}, which: Current, now: t0, want: Revoked},
		"current: user disabled":     {token: current, user: User{Found: true, UID: uid, Disabled: true}, which: Current, now: t0, want: Revoked},
		"current: user recreated":    {token: current, user: User{Found: true, UID: otherUID}, which: Current, now: t0, want: Revoked},
		"current: revoked, expired":  {token: issued(&keymintv1alpha1.ApiTokenSpec{Revoked: true}, t0), user: active, which: Current, now: t0, want: Revoked},
		"current: not issued":        {token: Token{Spec: noExpiry}, user: active, which: Current, now: t0, want: GraceEnded},
		"current: spec shortened":    {token: issued(lifetime(time.Hour), t0.Add(2*time.Hour)), user: active, which: Current, now: t0.Add(time.Hour), want: Expired},
		"current: extended, expired": {token: issued(lifetime(5*time.Hour), t0.Add(2*time.Hour)), user: active, which: Current, now: t0.Add(2 * time.Hour), want: Expired},
		"current: an expiry removed does not bring it back": {
			token: issued(noExpiry, t0.Add(2*time.Hour)), user: active, which: Current, now: t0.Add(3 * time.Hour), want: Expired,
		},

		// A rotated-out hash, accepted strictly before its ValidUntil.
		"previous: 1s before its grace ends": {
			token: withPrevious(issued(noExpiry, time.Time{}), grace), user: active, which: 0, now: t0.Add(2*time.Hour - time.Second), want: Accepted,
		},
		"previous: when its grace ends": {
			token: withPrevious(issued(noExpiry, time.Time{}), grace), user: active, which: 0, now: t0.Add(2 * time.Hour), want: GraceEnded,
		},
		"previous: 1s after its grace ends": {
			token: withPrevious(issued(noExpiry, time.Time{}), grace), user: active, which: 0, now: t0.Add(2*time.Hour + time.Second), want: GraceEnded,
		},
		"previous: the second of two": {
			token: withPrevious(issued(noExpiry, time.Time{}), Previous{Hash: "older", IssuedAt: t0.Add(-40 * time.Hour), ValidUntil: t0}, grace),
			user:  active, which: 1, now: t0.Add(time.Hour), want: Accepted,
		},
		"previous: the first of two, ended": {
			token: withPrevious(issued(noExpiry, time.Time{}), Previous{Hash: "older", IssuedAt: t0.Add(-40 * time.Hour), ValidUntil: t0}, grace),
			user:  active, which: 0, now: t0.Add(time.Hour), want: GraceEnded,
		},
		"previous: a longer lifetime leaves its grace as recorded": {
			token: withPrevious(issued(lifetime(1000*time.Hour), t0.Add(1000*time.Hour)), grace), user: active, which: 0,
			now: t0.Add(2 * time.Hour), want: GraceEnded,
		},
		// maxLifetime lowered to 21h after the rotation: the previous token,
		// minted at t0-20h, is accepted until t0+1h.
		"previous: maxLifetime lowered, 1s before": {
			token: withPrevious(issued(noExpiry, time.Time{}), grace), user: User{Found: true, UID: uid, MaxLifetime: 21 * time.Hour},
			which: 0, now: t0.Add(time.Hour - time.Second), want: Accepted,
		},
		"previous: maxLifetime lowered, at the instant": {
			token: withPrevious(issued(noExpiry, time.Time{}), grace), user: User{Found: true, UID: uid, MaxLifetime: 21 * time.Hour},
			which: 0, now: t0.Add(time.Hour), want: GraceEnded,
		},
		"previous: maxLifetime lowered, 1s after": {
			token: withPrevious(issued(noExpiry, time.Time{}), grace), user: User{Found: true, UID: uid, MaxLifetime: 21 * time.Hour},
			which: 0, now: t0.Add(time.Hour + time.Second), want: GraceEnded,
		},
		"previous: lifetime lowered, 1s before": {
			token: withPrevious(issued(lifetime(21*time.Hour), t0.Add(48*time.Hour)), grace), user: active,
			which: 0, now: t0.Add(time.Hour - time.Second), want: Accepted,
		},
		"previous: lifetime lowered, at the instant": {
			token: withPrevious(issued(lifetime(21*time.Hour), t0.Add(48*time.Hour)), grace), user: active,
			which: 0, now: t0.Add(time.Hour), want: GraceEnded,
		},
		"previous: expiresAt moved before its grace ends": {
			token: withPrevious(issued(&keymintv1alpha1.ApiTokenSpec{ExpiresAt: at(t0.Add(30 * time.Minute))}, t0.Add(48*time.Hour)), grace),
			user:  active, which: 0, now: t0.Add(30 * time.Minute), want: GraceEnded,
		},
		"previous: revoked in spec": {
			token: withPrevious(issued(&keymintv1alpha1.ApiTokenSpec{Revoked: true}, time.Time{}), grace), user: active, which: 0, now: t0, want: Revoked,
		},
		"previous: user missing": {
			token: withPrevious(issued(noExpiry, time.Time{}), grace), user: User{}, which: 0, now: t0, want: Revoked,
		},
		"previous: user disabled": {
			token: withPrevious(issued(noExpiry, time.Time{}), grace), user: User{Found: true, UID: uid, Disabled: true}, which: 0, now: t0, want: Revoked,
		},
		"previous: user recreated": {
			token: withPrevious(issued(noExpiry, time.Time{}), grace), user: User{Found: true, UID: otherUID}, which: 0, now: t0, want: Revoked,
		},
		"previous: a record without its issue time keeps its recorded end of grace": {
			token: Token{Spec: lifetime(time.Hour), Issued: true, IssuedAt: t0, UserUID: uid,
				Previous: []Previous{{Hash: "sha256:old", ValidUntil: t0.Add(time.Hour)}}},
			user: active, which: 0, now: t0.Add(time.Hour - time.Second), want: Accepted,
		},
		"previous: index past the end": {
			token: withPrevious(issued(noExpiry, time.Time{}), grace), user: active, which: 1, now: t0, want: GraceEnded,
		},
		"previous: index with no previous": {
			token: issued(noExpiry, time.Time{}), user: active, which: 0, now: t0, want: GraceEnded,
		},
		// A selector below Current is no hash of the token.
		"an index below Current": {
			token: Token{Spec: noExpiry}, user: active, which: -2, now: t0, want: GraceEnded,
		},
		// The current token, recorded to expire at t0+10m (the spec now gives
		// none), is expired at t0+30m; its previous hash still has grace.
		"previous: accepted while the current token is expired": {
			token: withPrevious(issued(noExpiry, t0.Add(10*time.Minute)), grace), user: active, which: 0, now: t0.Add(30 * time.Minute), want: Accepted,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := Check(&tc.token, &tc.user, tc.which, tc.now); got != tc.want {
				t.Errorf("Check(which %d) = %s, want %s", tc.which, refusalName[got], refusalName[tc.want])
			}
		})
	}
}

var refusalName = map[Refusal]string{Accepted: "Accepted", Revoked: "Revoked", Expired: "Expired", GraceEnded: "GraceEnded"}

func TestCheckAllocatesNothing(t *testing.T) {
	tok := withPrevious(
		issued(&keymintv1alpha1.ApiTokenSpec{
			Scopes: []string{"links:read", "links:write"}, Lifetime: dur(48 * time.Hour),
			Rotation: &keymintv1alpha1.Rotation{Every: dur(24 * time.Hour), GracePeriod: dur(time.Hour)},
		}, t0.Add(48*time.Hour)),
		Previous{Hash: "p1", IssuedAt: t0.Add(-47 * time.Hour), ValidUntil: t0.Add(time.Hour)},
		Previous{Hash: "p2", IssuedAt: t0.Add(-24 * time.Hour), ValidUntil: t0.Add(time.Hour)},
	)
	user := User{Found: true, UID: uid, Permissions: []string{"links:read", "links:write"}, MaxLifetime: 72 * time.Hour}
	for _, which := range []int{Current, 0, 1} {
		var got Refusal
		allocs := testing.AllocsPerRun(100, func() { got = Check(&tok, &user, which, t0) })
		if allocs != 0 {
			t.Errorf("Check(which %d) allocates %v times, want 0", which, allocs)
		}
		if got != Accepted {
			t.Errorf("Check(which %d) = %s, want Accepted", which, refusalName[got])
		}
	}
}

func BenchmarkCheck(b *testing.B) {
	tok := withPrevious(
		issued(&keymintv1alpha1.ApiTokenSpec{
			Scopes: []string{"links:read", "links:write"}, Lifetime: dur(720 * time.Hour),
			Rotation: &keymintv1alpha1.Rotation{Every: dur(168 * time.Hour), GracePeriod: dur(time.Hour)},
		}, t0.Add(720*time.Hour)),
		Previous{Hash: "p1", IssuedAt: t0.Add(-336 * time.Hour), ValidUntil: t0.Add(time.Hour)},
		Previous{Hash: "p2", IssuedAt: t0.Add(-168 * time.Hour), ValidUntil: t0.Add(time.Hour)},
	)
	user := User{Found: true, UID: uid, Permissions: []string{"links:read", "links:write"}, MaxLifetime: 2160 * time.Hour}
	now := t0.Add(30 * time.Minute)
	for name, which := range map[string]int{"current": Current, "previous": 1} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				Check(&tok, &user, which, now)
			}
		})
	}
}

func TestGracePeriod(t *testing.T) {
	tests := map[string]struct {
		rotation *keymintv1alpha1.Rotation
		want     time.Duration
	}{
		"no rotation":          {rotation: nil, want: 0},
		"rotation sets none":   {rotation: &keymintv1alpha1.Rotation{Every: dur(time.Hour)}, want: 0},
		"an hour":              {rotation: &keymintv1alpha1.Rotation{GracePeriod: dur(time.Hour)}, want: time.Hour},
		"negative counts as 0": {rotation: &keymintv1alpha1.Rotation{GracePeriod: dur(-time.Hour)}, want: 0},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := GracePeriod(&keymintv1alpha1.ApiTokenSpec{Rotation: tc.rotation}); got != tc.want {
				t.Errorf("GracePeriod = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestRotatedOut(t *testing.T) {
	withGrace := func(g time.Duration, lt *metav1.Duration) *keymintv1alpha1.ApiTokenSpec {
		return &keymintv1alpha1.ApiTokenSpec{Lifetime: lt, Rotation: &keymintv1alpha1.Rotation{Every: dur(time.Hour), GracePeriod: dur(g)}}
	}
	// now is when the current token is rotated out, 5h after it was minted.
	now := t0.Add(5 * time.Hour)
	tests := map[string]struct {
		token Token
		user  User
		// until is the end of its grace; the zero time: it gets none.
		until time.Time
	}{
		"no rotation, no grace": {token: issued(&keymintv1alpha1.ApiTokenSpec{}, time.Time{}), user: active},
		"zero grace":            {token: issued(withGrace(0, nil), time.Time{}), user: active},
		"negative grace":        {token: issued(withGrace(-time.Hour, nil), time.Time{}), user: active},
		"grace counts from now": {token: issued(withGrace(time.Hour, nil), time.Time{}), user: active, until: now.Add(time.Hour)},
		"expiry 1s after the end of grace": {
			token: issued(withGrace(time.Hour, dur(6*time.Hour+time.Second)), t0.Add(6*time.Hour+time.Second)), user: active, until: now.Add(time.Hour),
		},
		"expiry exactly at the end of grace": {
			token: issued(withGrace(time.Hour, dur(6*time.Hour)), t0.Add(6*time.Hour)), user: active, until: now.Add(time.Hour),
		},
		"expiry 1s before the end of grace caps it": {
			token: issued(withGrace(time.Hour, dur(6*time.Hour-time.Second)), t0.Add(6*time.Hour-time.Second)), user: active,
			until: now.Add(time.Hour - time.Second),
		},
		"expiry 1s after now": {
			token: issued(withGrace(time.Hour, dur(5*time.Hour+time.Second)), t0.Add(5*time.Hour+time.Second)), user: active,
			until: now.Add(time.Second),
		},
		"expired at the instant": {
			token: issued(withGrace(time.Hour, dur(5*time.Hour)), t0.Add(5*time.Hour)), user: active,
		},
		"expired 1s before": {
			token: issued(withGrace(time.Hour, dur(5*time.Hour-time.Second)), t0.Add(5*time.Hour-time.Second)), user: active,
		},
		// Recorded to expire at +10h, the spec now says 5h30m.
		"capped at the effective, shortened expiry": {
			token: issued(withGrace(time.Hour, dur(5*time.Hour+30*time.Minute)), t0.Add(10*time.Hour)), user: active,
			until: now.Add(30 * time.Minute),
		},
		"capped at the user's lowered maxLifetime": {
			token: issued(withGrace(time.Hour, nil), time.Time{}), user: User{Found: true, UID: uid, MaxLifetime: 5*time.Hour + 10*time.Minute},
			until: now.Add(10 * time.Minute),
		},
		// Recorded to expire at +5h20m, the spec now says 10h.
		"an extended token is capped at its recorded expiry": {
			token: issued(withGrace(time.Hour, dur(10*time.Hour)), t0.Add(5*time.Hour+20*time.Minute)), user: active,
			until: now.Add(20 * time.Minute),
		},
		"revoked in spec": {
			token: issued(&keymintv1alpha1.ApiTokenSpec{Revoked: true, Rotation: &keymintv1alpha1.Rotation{GracePeriod: dur(time.Hour)}}, time.Time{}),
			user:  active,
		},
		"user disabled":  {token: issued(withGrace(time.Hour, nil), time.Time{}), user: User{Found: true, UID: uid, Disabled: true}},
		"user missing":   {token: issued(withGrace(time.Hour, nil), time.Time{}), user: User{}},
		"user recreated": {token: issued(withGrace(time.Hour, nil), time.Time{}), user: User{Found: true, UID: otherUID}},
		"not issued":     {token: Token{Spec: withGrace(time.Hour, nil)}, user: active},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			v := Evaluate(&tc.token, &tc.user, now)
			got, ok := RotatedOut(&tc.token, &v, "sha256:cur", now)
			if tc.until.IsZero() {
				if ok {
					t.Errorf("RotatedOut = %+v, want no grace", got)
				}
				return
			}
			want := Previous{Hash: "sha256:cur", IssuedAt: t0, ValidUntil: tc.until}
			if !ok || got.Hash != want.Hash || !got.IssuedAt.Equal(want.IssuedAt) || !got.ValidUntil.Equal(want.ValidUntil) {
				t.Errorf("RotatedOut = %+v, %v; want %+v", got, ok, want)
			}
		})
	}
}

func TestStillAccepted(t *testing.T) {
	now := t0.Add(time.Hour)
	// Hashes named for the order they were rotated out, issued 10h, 20h and
	// 30h before t0.
	c := Previous{Hash: "c", IssuedAt: t0.Add(-10 * time.Hour), ValidUntil: now.Add(time.Second)}
	a := Previous{Hash: "a", IssuedAt: t0.Add(-20 * time.Hour), ValidUntil: now.Add(time.Hour)}
	b := Previous{Hash: "b", IssuedAt: t0.Add(-30 * time.Hour), ValidUntil: now.Add(2 * time.Hour)}
	ending := func(hash string, d time.Duration) Previous {
		return Previous{Hash: hash, IssuedAt: t0.Add(-time.Hour), ValidUntil: now.Add(d)}
	}
	noExpiry := &keymintv1alpha1.ApiTokenSpec{}
	tests := map[string]struct {
		token Token
		user  User
		want  []Previous
	}{
		"none rotated out": {token: issued(noExpiry, time.Time{}), user: active, want: nil},
		"ended 1s ago, ending now, 1s left": {
			token: withPrevious(issued(noExpiry, time.Time{}), ending("past", -time.Second), ending("now", 0), ending("left", time.Second)),
			user:  active, want: []Previous{ending("left", time.Second)},
		},
		"order is kept": {token: withPrevious(issued(noExpiry, time.Time{}), c, a, b), user: active, want: []Previous{c, a, b}},
		// maxLifetime lowered to 31h: b (minted t0-30h) now ends at t0+1h,
		// which is now; a (t0-20h) at t0+11h, later than recorded.
		"maxLifetime cuts one short to now": {
			token: withPrevious(issued(noExpiry, time.Time{}), c, a, b), user: User{Found: true, UID: uid, MaxLifetime: 31 * time.Hour},
			want: []Previous{c, a},
		},
		// maxLifetime lowered to 31h1s: b now ends 1s from now.
		"maxLifetime cuts one short to 1s from now": {
			token: withPrevious(issued(noExpiry, time.Time{}), c, a, b), user: User{Found: true, UID: uid, MaxLifetime: 31*time.Hour + time.Second},
			want: []Previous{c, a, {Hash: "b", IssuedAt: b.IssuedAt, ValidUntil: now.Add(time.Second)}},
		},
		// Lifetime lowered to 21h30m: a (t0-20h) now ends at t0+1h30m, b
		// (t0-30h) at t0-8h30m; c (t0-10h) keeps its recorded end.
		"lifetime lowered": {
			token: withPrevious(issued(lifetime(21*time.Hour+30*time.Minute), t0.Add(48*time.Hour)), c, a, b), user: active,
			want: []Previous{c, {Hash: "a", IssuedAt: a.IssuedAt, ValidUntil: t0.Add(90 * time.Minute)}},
		},
		// The current token, recorded to expire at t0, is expired.
		"the current token expired": {
			token: withPrevious(issued(noExpiry, t0), c), user: active, want: []Previous{c},
		},
		"revoked in spec": {
			token: withPrevious(issued(&keymintv1alpha1.ApiTokenSpec{Revoked: true}, time.Time{}), c, a, b), user: active, want: nil,
		},
		"user missing":   {token: withPrevious(issued(noExpiry, time.Time{}), c, a, b), user: User{}, want: nil},
		"user disabled":  {token: withPrevious(issued(noExpiry, time.Time{}), c, a, b), user: User{Found: true, UID: uid, Disabled: true}, want: nil},
		"user recreated": {token: withPrevious(issued(noExpiry, time.Time{}), c, a, b), user: User{Found: true, UID: otherUID}, want: nil},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			v := Evaluate(&tc.token, &tc.user, now)
			got := StillAccepted(&tc.token, &tc.user, &v, now)
			if tc.want == nil && got != nil {
				t.Fatalf("StillAccepted = %+v, want nil", got)
			}
			if !slices.EqualFunc(got, tc.want, func(g, w Previous) bool {
				return g.Hash == w.Hash && g.IssuedAt.Equal(w.IssuedAt) && g.ValidUntil.Equal(w.ValidUntil)
			}) {
				t.Errorf("StillAccepted = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestExpiry(t *testing.T) {
	tests := map[string]struct {
		spec keymintv1alpha1.ApiTokenSpec
		user User
		// want is the expiry relative to issue; wantNone means it never expires.
		want     time.Duration
		wantNone bool
	}{
		"nothing set: never expires":                       {wantNone: true},
		"lifetime counts from issue":                       {spec: keymintv1alpha1.ApiTokenSpec{Lifetime: dur(2 * time.Hour)}, want: 2 * time.Hour},
		"expiresAt is absolute":                            {spec: keymintv1alpha1.ApiTokenSpec{ExpiresAt: at(t0.Add(90 * time.Minute))}, want: 90 * time.Minute},
		"defaultLifetime applies when the token is silent": {user: User{DefaultLifetime: time.Hour}, want: time.Hour},
		"the token's lifetime beats defaultLifetime": {
			spec: keymintv1alpha1.ApiTokenSpec{Lifetime: dur(3 * time.Hour)}, user: User{DefaultLifetime: time.Hour}, want: 3 * time.Hour,
		},
		// The two conflict in the API; the doc gives expiresAt first.
		"expiresAt wins over lifetime": {
			spec: keymintv1alpha1.ApiTokenSpec{ExpiresAt: at(t0.Add(3 * time.Hour)), Lifetime: dur(time.Hour)}, want: 3 * time.Hour,
		},
		"the token's expiresAt beats defaultLifetime": {
			spec: keymintv1alpha1.ApiTokenSpec{ExpiresAt: at(t0.Add(3 * time.Hour))}, user: User{DefaultLifetime: time.Hour}, want: 3 * time.Hour,
		},
		"maxLifetime caps a longer lifetime": {
			spec: keymintv1alpha1.ApiTokenSpec{Lifetime: dur(48 * time.Hour)}, user: User{MaxLifetime: 24 * time.Hour}, want: 24 * time.Hour,
		},
		"maxLifetime caps a lifetime 1s longer": {
			spec: keymintv1alpha1.ApiTokenSpec{Lifetime: dur(24*time.Hour + time.Second)}, user: User{MaxLifetime: 24 * time.Hour}, want: 24 * time.Hour,
		},
		"maxLifetime equal to the lifetime": {
			spec: keymintv1alpha1.ApiTokenSpec{Lifetime: dur(24 * time.Hour)}, user: User{MaxLifetime: 24 * time.Hour}, want: 24 * time.Hour,
		},
		"a lifetime 1s shorter than maxLifetime": {
			spec: keymintv1alpha1.ApiTokenSpec{Lifetime: dur(24*time.Hour - time.Second)}, user: User{MaxLifetime: 24 * time.Hour}, want: 24*time.Hour - time.Second,
		},
		"maxLifetime caps a later expiresAt": {
			spec: keymintv1alpha1.ApiTokenSpec{ExpiresAt: at(t0.Add(1000 * time.Hour))}, user: User{MaxLifetime: 24 * time.Hour}, want: 24 * time.Hour,
		},
		"maxLifetime caps defaultLifetime":                     {user: User{DefaultLifetime: 48 * time.Hour, MaxLifetime: 24 * time.Hour}, want: 24 * time.Hour},
		"maxLifetime gives an expiry to a token that had none": {user: User{MaxLifetime: 24 * time.Hour}, want: 24 * time.Hour},
		"a shorter lifetime stays under maxLifetime": {
			spec: keymintv1alpha1.ApiTokenSpec{Lifetime: dur(time.Hour)}, user: User{MaxLifetime: 24 * time.Hour}, want: time.Hour,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, ok := Expiry(&tc.spec, &tc.user, t0)
			if tc.wantNone {
				if ok {
					t.Errorf("Expiry = %v, want none", got)
				}
				return
			}
			if !ok || !got.Equal(t0.Add(tc.want)) {
				t.Errorf("Expiry = %v (%v), want issue + %v", got, ok, tc.want)
			}
		})
	}
}

func TestEffectiveScopes(t *testing.T) {
	perms := []string{"links:write", "links:read", "qr:read"}
	tests := map[string]struct {
		scopes []string
		perms  []string
		want   []string
	}{
		"no scopes: all the user's permissions, sorted": {perms: perms, want: []string{"links:read", "links:write", "qr:read"}},
		"no scopes, duplicate permissions collapse":     {perms: []string{"qr:read", "a:b", "qr:read"}, want: []string{"a:b", "qr:read"}},
		"scopes are a subset":                           {scopes: []string{"qr:read"}, perms: perms, want: []string{"qr:read"}},
		"scopes come out sorted":                        {scopes: []string{"qr:read", "links:read"}, perms: perms, want: []string{"links:read", "qr:read"}},
		"a scope the user lacks is not granted":         {scopes: []string{"qr:read", "admin:write"}, perms: perms, want: []string{"qr:read"}},
		"a user with no permissions grants nothing":     {scopes: []string{"qr:read"}, perms: nil, want: nil},
		"duplicates collapse":                           {scopes: []string{"qr:read", "qr:read"}, perms: perms, want: []string{"qr:read"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := EffectiveScopes(tc.scopes, tc.perms); !slices.Equal(got, tc.want) {
				t.Errorf("EffectiveScopes = %v, want %v", got, tc.want)
			}
		})
	}
}

// Admit is a check's whole rule: validity first, then the audience, the
// budgets and the scopes a token lacks.
func TestAdmit(t *testing.T) {
	user := User{Found: true, UID: uid, Permissions: []string{"links:read", "links:write", "qr:read"},
		ScopeRates: []keymintv1alpha1.ScopeRate{{Scope: "links:write", RequestsPerMinute: 6}}}
	valid := func(spec *keymintv1alpha1.ApiTokenSpec) Token { return issued(spec, time.Time{}) }
	scoped := &keymintv1alpha1.ApiTokenSpec{Scopes: []string{"links:read", "links:write", "admin"}}
	many := &keymintv1alpha1.ApiTokenSpec{}
	var nine []string
	for i := range MaxBudgets + 1 {
		s := fmt.Sprintf("s%d", i)
		many.ScopeRequestsPerMinute = append(many.ScopeRequestsPerMinute, keymintv1alpha1.ScopeRate{Scope: s, RequestsPerMinute: 1})
		nine = append(nine, s)
	}
	tests := map[string]struct {
		token   Token
		user    User
		demand  Demand
		refusal Refusal
		matched []string
		budgets []Budget
		missing []string
	}{
		"valid, nothing asked: the default rate": {
			token: valid(&keymintv1alpha1.ApiTokenSpec{}), user: user, demand: Demand{DefaultRate: 500},
			budgets: []Budget{{Limit: 500}},
		},
		"revoked: refused before anything else": {
			token: valid(&keymintv1alpha1.ApiTokenSpec{Revoked: true, Audiences: []string{"api"}}), user: user, demand: Demand{Scopes: []string{"nope"}},
			refusal: Revoked,
		},
		"an audience the token is not for": {
			token: valid(&keymintv1alpha1.ApiTokenSpec{Audiences: []string{"api"}}), user: user, demand: Demand{Audiences: []string{"kube"}},
			refusal: NotForAudience,
		},
		"the audiences it is for, in the caller's order": {
			token: valid(&keymintv1alpha1.ApiTokenSpec{Audiences: []string{"api", "web"}}), user: user,
			demand: Demand{Audiences: []string{"web", "kube", "api"}, DefaultRate: 5}, matched: []string{"web", "api"}, budgets: []Budget{{Limit: 5}},
		},
		"a rated scope counts against its own budget only": {
			token: valid(scoped), user: user, demand: Demand{Scopes: []string{"links:write", "links:read"}, DefaultRate: 500},
			budgets: []Budget{{Scope: "links:write", Limit: 6}},
		},
		"scopes the token lacks: its own not granted, or never asked": {
			token: valid(scoped), user: user, demand: Demand{Scopes: []string{"admin", "qr:read", "links:read"}, DefaultRate: 500},
			budgets: []Budget{{Limit: 500}}, missing: []string{"admin", "qr:read"},
		},
		"a token with no scopes may do all its user's permissions": {
			token: valid(&keymintv1alpha1.ApiTokenSpec{}), user: user, demand: Demand{Scopes: []string{"qr:read", "admin"}, DefaultRate: 1},
			budgets: []Budget{{Limit: 1}}, missing: []string{"admin"},
		},
		"more rated scopes than budgets": {
			token: valid(many), user: user, demand: Demand{Scopes: nine}, refusal: TooManyBudgets,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			// Filled in place: what a held before does not show through.
			a := Admission{Refusal: Expired, MatchedAudiences: 3, Missing: []string{"stale"}}
			a.Budgets.Add("stale", 1)
			Admit(&tc.token, &tc.user, Current, t0, tc.demand, &a)
			if a.Refusal != tc.refusal {
				t.Fatalf("refusal %v, want %v", a.Refusal, tc.refusal)
			}
			if got := tc.demand.Audiences[:a.MatchedAudiences]; !slices.Equal(got, tc.matched) && len(got)+len(tc.matched) > 0 {
				t.Errorf("audiences %v, want %v", got, tc.matched)
			}
			budgets := a.Budgets.List[:a.Budgets.N]
			if !slices.Equal(budgets, tc.budgets) && len(budgets)+len(tc.budgets) > 0 {
				t.Errorf("budgets %v, want %v", budgets, tc.budgets)
			}
			if !slices.Equal(a.Missing, tc.missing) {
				t.Errorf("missing %v, want %v", a.Missing, tc.missing)
			}
		})
	}
}

// Grants says what EffectiveScopes lists, scope by scope.
func TestGrantsAgreesWithEffectiveScopes(t *testing.T) {
	perms := []string{"a", "b", "c"}
	for _, scopes := range [][]string{nil, {"a"}, {"b", "z"}, {"a", "b", "c"}} {
		spec := &keymintv1alpha1.ApiTokenSpec{Scopes: scopes}
		effective := EffectiveScopes(scopes, perms)
		for _, s := range []string{"a", "b", "c", "z"} {
			if got, want := Grants(spec, &User{Permissions: perms}, s), slices.Contains(effective, s); got != want {
				t.Errorf("scopes %v: Grants(%q) = %v, EffectiveScopes says %v", scopes, s, got, want)
			}
		}
	}
}

// Budgets keep at most MaxBudgets scopes, each once.
func TestBudgetsHoldAtMostMaxBudgetsScopes(t *testing.T) {
	var bs Budgets
	for i := range MaxBudgets {
		if !bs.Add(fmt.Sprint("s", i), 1) {
			t.Fatalf("budget %d refused", i)
		}
	}
	if !bs.Add("s0", 1) || bs.N != MaxBudgets {
		t.Errorf("a scope added twice: %d budgets", bs.N)
	}
	if bs.Add("one-more", 1) {
		t.Error("a budget past MaxBudgets was added")
	}
}

func TestAcceptsAudience(t *testing.T) {
	tests := map[string]struct {
		audiences []string // the token's spec.audiences
		requested []string
		want      []string
		ok        bool
	}{
		"unrestricted, nothing asked":         {ok: true},
		"unrestricted, any audience accepted": {requested: []string{"api", "kube"}, want: nil, ok: true},
		"restricted, one matches":             {audiences: []string{"api", "web"}, requested: []string{"kube", "web"}, want: []string{"web"}, ok: true},
		"restricted, matches in request order": {
			audiences: []string{"api", "web"}, requested: []string{"web", "kube", "api"}, want: []string{"web", "api"}, ok: true,
		},
		"restricted, none matches":  {audiences: []string{"api"}, requested: []string{"kube"}, want: nil, ok: false},
		"restricted, nothing asked": {audiences: []string{"api"}, want: nil, ok: false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			requested := slices.Clone(tc.requested)
			n, ok := AcceptsAudience(tc.audiences, requested)
			if got := requested[:n]; ok != tc.ok || !slices.Equal(got, tc.want) {
				t.Errorf("AcceptsAudience = %v, %v; want %v, %v", got, ok, tc.want, tc.ok)
			}
			if len(tc.audiences) == 0 && n != 0 {
				t.Errorf("an unrestricted token matched %v, want no audience", requested[:n])
			}
			// Reordered, nothing lost: the caller's list holds what it held.
			before, after := slices.Clone(tc.requested), slices.Clone(requested)
			slices.Sort(before)
			slices.Sort(after)
			if !slices.Equal(before, after) {
				t.Errorf("requested %v became %v", tc.requested, requested)
			}
		})
	}
}

func TestRate(t *testing.T) {
	const serverDefault = 500
	tests := map[string]struct {
		token *int32 // spec.requestsPerMinute
		user  int32  // the user's tokenPolicy.requestsPerMinute, 0 when unset
		want  int32
	}{
		"the token's own rate wins over the user's": {token: i32(10), user: 20, want: 10},
		"the token's own rate without a policy":     {token: i32(10), want: 10},
		"the token's own rate above the user's":     {token: i32(30), user: 20, want: 30},
		"the user's policy when the token is silent": {
			user: 20, want: 20,
		},
		"the server default when both are silent": {want: serverDefault},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			spec := &keymintv1alpha1.ApiTokenSpec{RequestsPerMinute: tc.token}
			if got := Rate(spec, &User{Found: true, RequestsPerMinute: tc.user}, serverDefault); got != tc.want {
				t.Errorf("Rate = %d, want %d", got, tc.want)
			}
		})
	}
}

// The check path calls AcceptsAudience on every check: it allocates nothing,
// matched or not.
func TestAcceptsAudienceAllocatesNothing(t *testing.T) {
	audiences := []string{"vault", "grafana"}
	var buf [4]string
	for _, requested := range [][]string{{"kube"}, {"vault"}, {"kube", "grafana", "vault"}} {
		if n := testing.AllocsPerRun(100, func() {
			req := append(buf[:0], requested...)
			_, _ = AcceptsAudience(audiences, req)
		}); n != 0 {
			t.Errorf("AcceptsAudience(%q) allocates %v times", requested, n)
		}
	}
}

func TestRetire(t *testing.T) {
	retiring := &keymintv1alpha1.ApiTokenSpec{Rotation: &keymintv1alpha1.Rotation{GracePeriod: dur(time.Hour), RetireWhenIdle: dur(10 * time.Minute)}}
	graceOnly := &keymintv1alpha1.ApiTokenSpec{Rotation: &keymintv1alpha1.Rotation{GracePeriod: dur(time.Hour)}}
	// prev was rotated out at t0, when the current token was minted.
	prev := func(lastUsed time.Time) Previous {
		return Previous{Hash: "sha256:old", IssuedAt: t0.Add(-24 * time.Hour), ValidUntil: t0.Add(time.Hour), LastUsed: lastUsed}
	}
	tests := map[string]struct {
		spec *keymintv1alpha1.ApiTokenSpec
		// currentUsed is the current token's last use; zero: never used.
		currentUsed time.Time
		prev        Previous
		now         time.Time
		wantRetired bool
		// wantNext is when the kept hash is due to retire; zero: none.
		wantNext time.Time
	}{
		"no retireWhenIdle: the grace period runs its course": {
			spec: graceOnly, currentUsed: t0.Add(time.Minute), prev: prev(time.Time{}), now: t0.Add(59 * time.Minute),
		},
		"the new token never used: kept however idle the old one is": {
			spec: retiring, prev: prev(time.Time{}), now: t0.Add(59 * time.Minute),
		},
		"new token used, old one unused since the rotation: retired 10m after it": {
			spec: retiring, currentUsed: t0.Add(time.Minute), prev: prev(time.Time{}), now: t0.Add(10 * time.Minute), wantRetired: true,
		},
		"new token used, 9m59s after the rotation: kept, due at 10m": {
			spec: retiring, currentUsed: t0.Add(time.Minute), prev: prev(time.Time{}), now: t0.Add(10*time.Minute - time.Second),
			wantNext: t0.Add(10 * time.Minute),
		},
		"old token used 5m after the rotation: kept until 10m after that use": {
			spec: retiring, currentUsed: t0.Add(time.Minute), prev: prev(t0.Add(5 * time.Minute)), now: t0.Add(12 * time.Minute),
			wantNext: t0.Add(15 * time.Minute),
		},
		"old token's last use is from before the rotation: idle counts from the rotation": {
			spec: retiring, currentUsed: t0.Add(time.Minute), prev: prev(t0.Add(-time.Hour)), now: t0.Add(10 * time.Minute), wantRetired: true,
		},
		"due after its grace ends: nothing scheduled, the grace end stands": {
			spec: retiring, currentUsed: t0.Add(time.Minute), prev: prev(t0.Add(55 * time.Minute)), now: t0.Add(56 * time.Minute),
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			tok := issued(tc.spec, time.Time{})
			tok.LastUsed = tc.currentUsed
			kept, retired, next := Retire(&tok, []Previous{tc.prev}, tc.now)
			if got := len(retired) == 1; got != tc.wantRetired {
				t.Fatalf("retired %v, kept %v; want retired = %v", retired, kept, tc.wantRetired)
			}
			if len(kept)+len(retired) != 1 {
				t.Errorf("kept %d + retired %d hashes, want 1 in all", len(kept), len(retired))
			}
			if !next.Equal(tc.wantNext) {
				t.Errorf("next = %v, want %v", next, tc.wantNext)
			}
		})
	}
}

func TestExpiringSoon(t *testing.T) {
	week := 7 * 24 * time.Hour
	tests := map[string]struct {
		spec    *keymintv1alpha1.ApiTokenSpec
		user    User
		warning time.Duration
		now     time.Time
		// wantOpens is when the window opens; zero: it never does.
		wantSoon  bool
		wantOpens time.Time
		wantIdle  bool
	}{
		"outside the window": {
			spec: lifetime(30 * 24 * time.Hour), user: active, warning: week, now: t0.Add(22 * 24 * time.Hour),
			wantOpens: t0.Add(23 * 24 * time.Hour),
		},
		"at the window's start": {
			spec: lifetime(30 * 24 * time.Hour), user: active, warning: week, now: t0.Add(23 * 24 * time.Hour),
			wantSoon: true, wantOpens: t0.Add(23 * 24 * time.Hour),
		},
		"a token that never expires": {
			spec: &keymintv1alpha1.ApiTokenSpec{}, user: active, warning: week, now: t0,
		},
		"expired: no longer soon": {
			spec: lifetime(time.Hour), user: active, warning: week, now: t0.Add(2 * time.Hour),
		},
		"a rotation scheduled before expiry replaces it": {
			spec: &keymintv1alpha1.ApiTokenSpec{Lifetime: dur(30 * 24 * time.Hour), Rotation: &keymintv1alpha1.Rotation{Every: dur(29 * 24 * time.Hour)}},
			user: active, warning: week, now: t0.Add(25 * 24 * time.Hour),
		},
		"warnings off": {
			spec: lifetime(time.Hour), user: active, now: t0.Add(59 * time.Minute),
		},
		"revoked": {
			spec: &keymintv1alpha1.ApiTokenSpec{Lifetime: dur(time.Hour), Revoked: true}, user: active, warning: week, now: t0,
		},
		"idleness comes before expiry: its window": {
			spec: lifetime(30 * 24 * time.Hour), user: User{Found: true, UID: uid, MaxIdle: 10 * 24 * time.Hour}, warning: week, now: t0.Add(4 * 24 * time.Hour),
			wantSoon: true, wantOpens: t0.Add(3*24*time.Hour + UseRecordingSlack), wantIdle: true,
		},
		"idleness is not put off by a scheduled rotation": {
			spec: &keymintv1alpha1.ApiTokenSpec{Rotation: &keymintv1alpha1.Rotation{Every: dur(24 * time.Hour)}}, user: User{Found: true, UID: uid, MaxIdle: 10 * 24 * time.Hour},
			warning: week, now: t0, wantOpens: t0.Add(3*24*time.Hour + UseRecordingSlack), wantIdle: true,
		},
		"expiry before idleness: the expiry's window": {
			spec: lifetime(5 * 24 * time.Hour), user: User{Found: true, UID: uid, MaxIdle: 10 * 24 * time.Hour}, warning: week, now: t0,
			wantSoon: true, wantOpens: t0.Add(-2 * 24 * time.Hour),
		},
		"maxLifetime brings the expiry into the window": {
			spec: lifetime(30 * 24 * time.Hour), user: User{Found: true, UID: uid, MaxLifetime: 8 * 24 * time.Hour}, warning: week, now: t0.Add(36 * time.Hour),
			wantSoon: true, wantOpens: t0.Add(24 * time.Hour),
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			expiry, _ := Expiry(tc.spec, &tc.user, t0)
			tok := issued(tc.spec, expiry)
			v := Evaluate(&tok, &tc.user, tc.now)
			w := ExpiringSoon(&v, tc.warning, tc.now)
			if w.Soon != tc.wantSoon || w.OK != !tc.wantOpens.IsZero() || !w.Opens.Equal(tc.wantOpens) || w.Idle != tc.wantIdle {
				t.Errorf("ExpiringSoon = %+v; want soon %v, opens %v, idle %v", w, tc.wantSoon, tc.wantOpens, tc.wantIdle)
			}
		})
	}
}

// TestIdleness holds maxIdle to its rule: counted from the later of the
// last recorded use (of any hash) and the start of the token's line, plus
// the recording slack; the token's maxIdle only shortens its user's; an
// idle revocation outlives the token record.
func TestIdleness(t *testing.T) {
	day := 24 * time.Hour
	user := User{Found: true, UID: uid, MaxIdle: 30 * day}
	tests := map[string]struct {
		spec      *keymintv1alpha1.ApiTokenSpec
		user      User
		tok       func(*Token)
		now       time.Time
		wantAt    time.Time // zero: no idle revocation ahead
		wantIdle  bool
		wantCheck Refusal
	}{
		// A first use is written at the next flush: only the slack.
		"never used, 1s before the end": {
			user: user, now: t0.Add(30*day + UseRecordingSlack - time.Second), wantAt: t0.Add(30*day + UseRecordingSlack),
		},
		"never used, at the end": {
			user: user, now: t0.Add(30*day + UseRecordingSlack), wantAt: t0.Add(30*day + UseRecordingSlack), wantIdle: true, wantCheck: Revoked,
		},
		// After a use, later ones within its gap are held back.
		"used on day 20, its gap unknown: counted from the use, the longest gap waited": {
			user: user, tok: func(t *Token) { t.AnyLastUsed = t0.Add(20 * day) }, now: t0.Add(40 * day), wantAt: t0.Add(50*day + DefaultUseRecordingGap + UseRecordingSlack),
		},
		"used, recorded under its gap of 15m: that gap waited": {
			spec: &keymintv1alpha1.ApiTokenSpec{MaxIdle: dur(time.Hour)}, user: active,
			tok: func(t *Token) { t.AnyLastUsed, t.AnyLastUsedGap = t0.Add(day), 15*time.Minute },
			now: t0.Add(day + time.Hour + 15*time.Minute + UseRecordingSlack), wantAt: t0.Add(day + time.Hour + 15*time.Minute + UseRecordingSlack), wantIdle: true, wantCheck: Revoked,
		},
		"used, recorded under 15m, 1s before the end": {
			spec: &keymintv1alpha1.ApiTokenSpec{MaxIdle: dur(time.Hour)}, user: active,
			tok: func(t *Token) { t.AnyLastUsed, t.AnyLastUsedGap = t0.Add(day), 15*time.Minute },
			now: t0.Add(day + time.Hour + 15*time.Minute + UseRecordingSlack - time.Second), wantAt: t0.Add(day + time.Hour + 15*time.Minute + UseRecordingSlack),
		},
		"re-issued long after its last use: from the new line's start, the slack alone": {
			user: user, tok: func(t *Token) { t.AnyLastUsed, t.IssuedAt, t.IdleSince = t0.Add(day), t0.Add(10*day), t0.Add(10*day) },
			now: t0.Add(10 * day), wantAt: t0.Add(40*day + UseRecordingSlack),
		},
		"re-issued within the gap of its last use: from the end of that gap": {
			user: user, tok: func(t *Token) {
				t.AnyLastUsed, t.IssuedAt, t.IdleSince = t0.Add(10*day-time.Hour), t0.Add(10*day), t0.Add(10*day)
			},
			now: t0.Add(10 * day), wantAt: t0.Add(10*day - time.Hour + DefaultUseRecordingGap + 30*day + UseRecordingSlack),
		},
		"recorded under 15m, maxIdle raised since: the gap now, longer, waited": {
			spec: &keymintv1alpha1.ApiTokenSpec{MaxIdle: dur(8 * time.Hour)}, user: active,
			tok: func(t *Token) { t.AnyLastUsed, t.AnyLastUsedGap = t0.Add(day), 15*time.Minute },
			now: t0.Add(day), wantAt: t0.Add(day + 8*time.Hour + 2*time.Hour + UseRecordingSlack),
		},
		"recorded under 3h, maxIdle shortened since: the recorded gap, longer, waited": {
			spec: &keymintv1alpha1.ApiTokenSpec{MaxIdle: dur(time.Hour)}, user: active,
			tok: func(t *Token) { t.AnyLastUsed, t.AnyLastUsedGap = t0.Add(day), 3*time.Hour },
			now: t0.Add(day), wantAt: t0.Add(day + time.Hour + 3*time.Hour + UseRecordingSlack),
		},
		"a rotation carries the line's start": {
			user: user, tok: func(t *Token) { t.IssuedAt, t.IdleSince = t0.Add(25*day), t0 }, now: t0.Add(30*day + UseRecordingSlack), wantAt: t0.Add(30*day + UseRecordingSlack),
			wantIdle: true, wantCheck: Revoked,
		},
		"the token's maxIdle shortens its user's": {
			spec: &keymintv1alpha1.ApiTokenSpec{MaxIdle: dur(2 * day)}, user: user, now: t0.Add(2*day + UseRecordingSlack), wantAt: t0.Add(2*day + UseRecordingSlack),
			wantIdle: true, wantCheck: Revoked,
		},
		"the token's maxIdle never lengthens its user's": {
			spec: &keymintv1alpha1.ApiTokenSpec{MaxIdle: dur(90 * day)}, user: user, now: t0, wantAt: t0.Add(30*day + UseRecordingSlack),
		},
		"the token's own maxIdle, its user setting none": {
			spec: &keymintv1alpha1.ApiTokenSpec{MaxIdle: dur(2 * day)}, user: active, now: t0, wantAt: t0.Add(2*day + UseRecordingSlack),
		},
		"no maxIdle": {user: active, now: t0.Add(1000 * day)},
		"expiry first: it expires, never idles": {
			spec: lifetime(10 * day), user: user, now: t0.Add(40 * day), wantCheck: Expired,
		},
		"revoked for idleness before: stays revoked, used or not": {
			user: user, tok: func(t *Token) { t.IdleRevoked, t.AnyLastUsed = true, t0.Add(day) }, now: t0.Add(2 * day), wantAt: t0.Add(31*day + DefaultUseRecordingGap + UseRecordingSlack),
			wantIdle: true, wantCheck: Revoked,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			spec := tc.spec
			if spec == nil {
				spec = &keymintv1alpha1.ApiTokenSpec{}
			}
			expiry, _ := Expiry(spec, &tc.user, t0)
			tok := issued(spec, expiry)
			if tc.tok != nil {
				tc.tok(&tok)
			}
			v := Evaluate(&tok, &tc.user, tc.now)
			if v.Idles != !tc.wantAt.IsZero() || !v.IdleAt.Equal(tc.wantAt) {
				t.Errorf("idle at %v (%v), want %v", v.IdleAt, v.Idles, tc.wantAt)
			}
			if got := v.Revoked == keymintv1alpha1.ApiTokenReasonIdle; got != tc.wantIdle || v.Accepted == (tc.wantCheck != Accepted) {
				t.Errorf("revoked %q, accepted %v; want idle %v, check %v", v.Revoked, v.Accepted, tc.wantIdle, tc.wantCheck)
			}
			if got := Check(&tok, &tc.user, Current, tc.now); got != tc.wantCheck {
				t.Errorf("Check = %v, want %v", got, tc.wantCheck)
			}
		})
	}
}

// TestLeakedHashesAreRefused: a reported hash is refused, current or
// rotated-out, and drops out of the grace period; the others are not.
func TestLeakedHashesAreRefused(t *testing.T) {
	spec := &keymintv1alpha1.ApiTokenSpec{}
	tok := issued(spec, time.Time{})
	tok.Previous = []Previous{
		{Hash: "sha256:a", IssuedAt: t0.Add(-time.Hour), ValidUntil: t0.Add(time.Hour), Leaked: true},
		{Hash: "sha256:b", IssuedAt: t0.Add(-time.Hour), ValidUntil: t0.Add(time.Hour)},
	}
	if got := Check(&tok, &active, 0, t0); got != Leaked {
		t.Errorf("leaked rotated-out hash: %v, want Leaked", got)
	}
	if got := Check(&tok, &active, 1, t0); got != Accepted {
		t.Errorf("other rotated-out hash: %v, want Accepted", got)
	}
	if got := Check(&tok, &active, Current, t0); got != Accepted {
		t.Errorf("current: %v, want Accepted", got)
	}
	v := Evaluate(&tok, &active, t0)
	if kept := StillAccepted(&tok, &active, &v, t0); len(kept) != 1 || kept[0].Hash != "sha256:b" {
		t.Errorf("StillAccepted = %v, want only sha256:b", kept)
	}
	tok.Leaked = true
	v = Evaluate(&tok, &active, t0)
	if got := Check(&tok, &active, Current, t0); got != Leaked || v.Accepted || !v.Leaked {
		t.Errorf("leaked current: %v, accepted %v; want Leaked, not accepted", got, v.Accepted)
	}
	if _, ok := RotatedOut(&tok, &v, "sha256:c", t0); ok {
		t.Error("a leaked current token was kept for a grace period")
	}
}

// TestSourceAllowed: a client must be inside the token's list and its
// user's, each when set; an unknown client only when neither is.
func TestSourceAllowed(t *testing.T) {
	p := func(cidrs ...string) []netip.Prefix { return ParseSources(cidrs) }
	a := netip.MustParseAddr
	tests := map[string]struct {
		tok, user []netip.Prefix
		addr      netip.Addr
		want      bool
	}{
		"no lists, unknown client":                   {addr: netip.Addr{}, want: true},
		"no lists":                                   {addr: a("192.0.2.1"), want: true},
		"in the token's":                             {tok: p("10.0.0.0/8"), addr: a("10.9.9.9"), want: true},
		"outside the token's":                        {tok: p("10.0.0.0/8"), addr: a("11.0.0.1"), want: false},
		"unknown client, token restricted":           {tok: p("10.0.0.0/8"), addr: netip.Addr{}, want: false},
		"in the user's only":                         {user: p("10.0.0.0/8"), addr: a("10.0.0.1"), want: true},
		"in the token's, outside the user's":         {tok: p("10.0.0.0/8"), user: p("10.1.0.0/16"), addr: a("10.2.0.1"), want: false},
		"in both":                                    {tok: p("10.0.0.0/8"), user: p("10.1.0.0/16"), addr: a("10.1.0.1"), want: true},
		"an IPv4-mapped IPv6 address counts as IPv4": {tok: p("10.0.0.0/8"), addr: a("::ffff:10.0.0.1"), want: true},
		"IPv6":                                  {tok: p("2001:db8::/32"), addr: a("2001:db8::1"), want: true},
		"only unreadable entries allow nothing": {tok: p("office"), addr: a("10.0.0.1"), want: false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := SourceAllowed(tc.tok, tc.user, tc.addr); got != tc.want {
				t.Errorf("SourceAllowed = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestAdmitRefusesAClientOutsideTheSources: Admit applies the rule, and
// lets IgnoreSources skip it; a refusal charges no budget.
func TestAdmitRefusesAClientOutsideTheSources(t *testing.T) {
	spec := &keymintv1alpha1.ApiTokenSpec{AllowedSourceCIDRs: []string{"10.0.0.0/8"}}
	tok := issued(spec, time.Time{})
	tok.Sources = ParseSources(spec.AllowedSourceCIDRs)
	var adm Admission
	Admit(&tok, &active, Current, t0, Demand{Source: netip.MustParseAddr("192.0.2.1"), DefaultRate: 60}, &adm)
	if adm.Refusal != SourceNotAllowed || adm.Budgets.N != 0 {
		t.Errorf("outside: %v with %d budgets, want SourceNotAllowed and none", adm.Refusal, adm.Budgets.N)
	}
	Admit(&tok, &active, Current, t0, Demand{IgnoreSources: true, DefaultRate: 60}, &adm)
	if adm.Refusal != Accepted {
		t.Errorf("IgnoreSources: %v", adm.Refusal)
	}
	Admit(&tok, &active, Current, t0, Demand{Source: netip.MustParseAddr("10.0.0.1"), DefaultRate: 60}, &adm)
	if adm.Refusal != Accepted || adm.Budgets.N != 1 {
		t.Errorf("inside: %v with %d budgets", adm.Refusal, adm.Budgets.N)
	}
	if got := TokenFrom(spec, &keymintv1alpha1.ApiTokenStatus{}).Sources; len(got) != 1 || got[0] != netip.MustParsePrefix("10.0.0.0/8") {
		t.Errorf("TokenFrom parsed %v", got)
	}
}

// TestApproved: a token's grant is approved by an Approved decision for
// exactly its spec as it is (revocation and rotation requests aside), or,
// with no decision recorded, when it was issued before its user required
// approval; a denial, or a decision for another spec, approves nothing.
func TestApproved(t *testing.T) {
	spec := &keymintv1alpha1.ApiTokenSpec{ServiceUser: "exporter", Scopes: []string{"metrics:read"}}
	widened := &keymintv1alpha1.ApiTokenSpec{ServiceUser: "exporter", Scopes: []string{"metrics:read", "metrics:write"}}
	revoked := spec.DeepCopy()
	revoked.Revoked = true
	decided := func(decision string, s *keymintv1alpha1.ApiTokenSpec) *keymintv1alpha1.ApprovalStatus {
		return &keymintv1alpha1.ApprovalStatus{Decision: decision, By: "carol", Grant: GrantDigest(s)}
	}
	issuedStatus := keymintv1alpha1.ApiTokenStatus{TokenHash: "sha256:a", IssuedAt: at(t0)}
	tests := map[string]struct {
		spec     *keymintv1alpha1.ApiTokenSpec
		approval *keymintv1alpha1.ApprovalStatus
		issued   bool
		want     bool
	}{
		"never decided, never issued":              {spec: spec},
		"never decided, issued before the policy":  {spec: spec, issued: true, want: true},
		"approved as it is":                        {spec: spec, approval: decided(keymintv1alpha1.DecisionApproved, spec), want: true},
		"approved, then widened":                   {spec: widened, approval: decided(keymintv1alpha1.DecisionApproved, spec), issued: true},
		"approved, and revoking changes no grant":  {spec: revoked, approval: decided(keymintv1alpha1.DecisionApproved, spec), want: true},
		"denied as it is":                          {spec: spec, approval: decided(keymintv1alpha1.DecisionDenied, spec), issued: true},
		"a grant with no decision's name approves": {spec: spec, approval: &keymintv1alpha1.ApprovalStatus{Grant: GrantDigest(spec)}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			st := keymintv1alpha1.ApiTokenStatus{Approval: tc.approval}
			if tc.issued {
				st.TokenHash, st.IssuedAt = issuedStatus.TokenHash, issuedStatus.IssuedAt
			}
			if got := Approved(tc.spec, &st); got != tc.want {
				t.Errorf("Approved = %v, want %v", got, tc.want)
			}
			if got := TokenFrom(tc.spec, &st).Approved; got != tc.want {
				t.Errorf("TokenFrom(...).Approved = %v, want %v", got, tc.want)
			}
		})
	}
	if GrantDigest(spec) == GrantDigest(widened) {
		t.Error("a widened spec has the grant digest of the narrower one")
	}
	if Digest(spec, "") == Digest(spec, "again") || GrantDigest(spec) != Digest(spec, "") {
		t.Error("a rotation request must change the request digest and not the grant")
	}
}

// TestUnapprovedTokensAreRefused: under a user that requires approval, a
// token whose grant is not approved is refused, current and rotated-out
// hashes alike, and is not accepted by the verdict; once approved, and for
// users that require none, it is.
func TestUnapprovedTokensAreRefused(t *testing.T) {
	strict := active
	strict.RequireApproval = true
	tok := issued(&keymintv1alpha1.ApiTokenSpec{}, time.Time{})
	tok.Previous = []Previous{{Hash: "sha256:p", IssuedAt: t0.Add(-time.Hour), ValidUntil: t0.Add(time.Hour)}}
	for _, which := range []int{Current, 0} {
		if got := Check(&tok, &strict, which, t0); got != NotApproved {
			t.Errorf("hash %d, unapproved: %v, want NotApproved", which, got)
		}
		if got := Check(&tok, &active, which, t0); got != Accepted {
			t.Errorf("hash %d, no approval required: %v, want Accepted", which, got)
		}
	}
	if v := Evaluate(&tok, &strict, t0); v.Accepted || !v.Unapproved {
		t.Errorf("unapproved verdict: accepted %v, unapproved %v", v.Accepted, v.Unapproved)
	}
	if v := Evaluate(&Token{Spec: tok.Spec}, &strict, t0); !v.Unapproved {
		t.Error("a token not issued yet under a user that requires approval is not unapproved")
	}
	tok.Approved = true
	if got := Check(&tok, &strict, Current, t0); got != Accepted {
		t.Errorf("approved: %v, want Accepted", got)
	}
	tok.Spec = &keymintv1alpha1.ApiTokenSpec{Revoked: true}
	if got := Check(&tok, &strict, Current, t0); got != Revoked {
		t.Errorf("revoked and approved: %v, want Revoked (a revocation wins)", got)
	}
}

// TestQuota: a token's own quota wins over its user's; periods are aligned
// to the epoch, so replicas agree on them from the time alone; without
// refill there is one period, for good. Admit hands the quota on only for
// a check its rules accept.
func TestQuota(t *testing.T) {
	day := &keymintv1alpha1.Quota{Uses: 100, Refill: &keymintv1alpha1.QuotaRefill{Every: metav1.Duration{Duration: 24 * time.Hour}}}
	once := &keymintv1alpha1.Quota{Uses: 5}
	user := active
	user.Quota = day
	if got := QuotaOf(&keymintv1alpha1.ApiTokenSpec{}, &user); got != day {
		t.Errorf("no quota of its own: %v, want the user's", got)
	}
	if got := QuotaOf(&keymintv1alpha1.ApiTokenSpec{Quota: once}, &user); got != once {
		t.Errorf("a quota of its own, narrower: %v, want it", got)
	}
	hourly := &keymintv1alpha1.Quota{Uses: 50, Refill: &keymintv1alpha1.QuotaRefill{Every: metav1.Duration{Duration: time.Hour}}}
	more := &keymintv1alpha1.Quota{Uses: 1000, Refill: day.Refill}
	for name, q := range map[string]*keymintv1alpha1.Quota{"more uses": more, "refilled more often": hourly} {
		if got := QuotaOf(&keymintv1alpha1.ApiTokenSpec{Quota: q}, &user); got != day {
			t.Errorf("a token's own quota with %s than its user's: %v, want the user's", name, got)
		}
	}
	lifetime := active
	lifetime.Quota = once
	if got := QuotaOf(&keymintv1alpha1.ApiTokenSpec{Quota: &keymintv1alpha1.Quota{Uses: 1, Refill: day.Refill}}, &lifetime); got != once {
		t.Errorf("a refilled quota under a user's lifetime quota: %v, want the user's", got)
	}
	if got := QuotaOf(&keymintv1alpha1.ApiTokenSpec{}, &active); got != nil {
		t.Errorf("neither sets one: %v", got)
	}
	midnight := time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		at         time.Time
		samePeriod bool
	}{{midnight.Add(-time.Nanosecond), false}, {midnight, true}, {midnight.Add(24*time.Hour - time.Nanosecond), true}} {
		u := QuotaAt(day, tc.at)
		if u.Refill.Equal(QuotaAt(day, midnight).Refill) != tc.samePeriod || u.Uses != 100 {
			t.Errorf("at %s: refill %s, uses %d", tc.at, u.Refill, u.Uses)
		}
	}
	if u := QuotaAt(day, midnight.Add(time.Hour)); !u.Refill.Equal(midnight.Add(24 * time.Hour)) {
		t.Errorf("refill at %s, want the next midnight UTC", u.Refill)
	}
	if u := QuotaAt(once, t0); !u.Refill.IsZero() {
		t.Errorf("no refill: %+v, want none", u)
	}

	tok := issued(&keymintv1alpha1.ApiTokenSpec{Quota: once}, time.Time{})
	var a Admission
	Admit(&tok, &active, Current, t0, Demand{DefaultRate: 10}, &a)
	if a.Refusal != Accepted || a.Quota.Uses != 5 {
		t.Errorf("accepted check: %v, quota %+v", a.Refusal, a.Quota)
	}
	tok.Spec = &keymintv1alpha1.ApiTokenSpec{Quota: once, Revoked: true}
	Admit(&tok, &active, Current, t0, Demand{DefaultRate: 10}, &a)
	if a.Quota.Uses != 0 {
		t.Errorf("a refused check carries a quota to spend: %+v", a.Quota)
	}
}

// TestPolicyLoosening: what widens a ServiceUser's tokens when its policy
// changes from before to after (admission asks for mint, and approve when
// its tokens require approval).
func TestPolicyLoosening(t *testing.T) {
	p := func(cidrs ...string) []netip.Prefix { return ParseSources(cidrs) }
	for _, tc := range []struct {
		name          string
		before, after []netip.Prefix
		wider         bool
	}{
		{"no list before: nothing to widen", nil, p("10.0.0.0/8"), false},
		{"the list removed", p("10.0.0.0/8"), nil, true},
		{"the same list", p("10.0.0.0/8"), p("10.0.0.0/8"), false},
		{"narrowed", p("10.0.0.0/8"), p("10.1.0.0/16", "10.2.3.4/32"), false},
		{"a range added", p("10.0.0.0/8"), p("10.0.0.0/8", "192.0.2.0/24"), true},
		{"a wider prefix of the same address", p("10.1.0.0/16"), p("10.0.0.0/8"), true},
		{"IPv6 under IPv4 is not covered", p("10.0.0.0/8"), p("::/0"), true},
		{"an unreadable entry allows nothing, so narrows", p("10.0.0.0/8"), p("nonsense"), false},
	} {
		if got := SourcesWider(tc.after, tc.before); got != tc.wider {
			t.Errorf("sources %s: wider %v, want %v", tc.name, got, tc.wider)
		}
	}
	q := func(uses int64, every time.Duration) *keymintv1alpha1.Quota {
		out := &keymintv1alpha1.Quota{Uses: uses}
		if every > 0 {
			out.Refill = &keymintv1alpha1.QuotaRefill{Every: metav1.Duration{Duration: every}}
		}
		return out
	}
	for _, tc := range []struct {
		name          string
		before, after *keymintv1alpha1.Quota
		looser        bool
	}{
		{"none before", nil, q(10, 0), false},
		{"removed", q(10, 0), nil, true},
		{"more uses", q(10, time.Hour), q(11, time.Hour), true},
		{"fewer uses", q(10, time.Hour), q(9, time.Hour), false},
		{"refilled more often", q(10, 24*time.Hour), q(10, time.Hour), true},
		{"refilled at all", q(10, 0), q(10, 24*time.Hour), true},
		{"no longer refilled", q(10, time.Hour), q(10, 0), false},
	} {
		if got := QuotaLooser(tc.after, tc.before); got != tc.looser {
			t.Errorf("quota %s: looser %v, want %v", tc.name, got, tc.looser)
		}
	}
}

// TestUseRecordingGap: how stale a token's recorded uses may be, from the
// rules that read them.
func TestUseRecordingGap(t *testing.T) {
	grace := []Previous{{Hash: "sha256:old", ValidUntil: t0.Add(time.Hour)}}
	for name, tc := range map[string]struct {
		spec keymintv1alpha1.ApiTokenSpec
		user User
		prev []Previous
		want time.Duration
	}{
		"no idle rule: 3 hours":                      {want: 3 * time.Hour},
		"the user's maxIdle of a day: 6h, capped":    {user: User{MaxIdle: 24 * time.Hour}, want: 3 * time.Hour},
		"the user's maxIdle of 8h: a quarter":        {user: User{MaxIdle: 8 * time.Hour}, want: 2 * time.Hour},
		"the user's maxIdle of 2h: a quarter":        {user: User{MaxIdle: 2 * time.Hour}, want: 30 * time.Minute},
		"the token's maxIdle of 1h: a quarter":       {spec: keymintv1alpha1.ApiTokenSpec{MaxIdle: dur(time.Hour)}, want: 15 * time.Minute},
		"retireWhenIdle with no hash in grace":       {spec: keymintv1alpha1.ApiTokenSpec{Rotation: &keymintv1alpha1.Rotation{RetireWhenIdle: dur(time.Hour)}}, want: 3 * time.Hour},
		"retireWhenIdle with a hash in grace: 1m":    {spec: keymintv1alpha1.ApiTokenSpec{Rotation: &keymintv1alpha1.Rotation{RetireWhenIdle: dur(time.Hour)}}, prev: grace, want: time.Minute},
		"never finer than a minute (tiny maxIdle)":   {user: User{MaxIdle: 2 * time.Minute}, want: time.Minute},
		"the shorter maxIdle of token and user wins": {spec: keymintv1alpha1.ApiTokenSpec{MaxIdle: dur(4 * time.Hour)}, user: User{MaxIdle: 2 * time.Hour}, want: 30 * time.Minute},
	} {
		tok := TokenFrom(&tc.spec, &keymintv1alpha1.ApiTokenStatus{})
		tok.Previous = tc.prev
		if got := UseRecordingGap(&tok, &tc.user); got != tc.want {
			t.Errorf("%s: %v, want %v", name, got, tc.want)
		}
	}
}

// TestIdlenessWaitsTheRecordedGap: a use may have been recorded under a
// coarser gap before a rotation (retireWhenIdle) or a shorter maxIdle made
// the token's gap finer; idleness waits the gap it was recorded under (the
// longest when that is unknown), so neither revokes a token early.
func TestIdlenessWaitsTheRecordedGap(t *testing.T) {
	spec := &keymintv1alpha1.ApiTokenSpec{Rotation: &keymintv1alpha1.Rotation{RetireWhenIdle: dur(10 * time.Minute)}}
	tok := TokenFrom(spec, &keymintv1alpha1.ApiTokenStatus{})
	tok.Issued, tok.IssuedAt, tok.AnyLastUsed = true, t0, t0
	tok.Previous = []Previous{{Hash: "sha256:old", ValidUntil: t0.Add(time.Hour)}}
	u := User{Found: true, UID: uid, MaxIdle: time.Hour}
	if gap := UseRecordingGap(&tok, &u); gap != MinUseRecordingGap {
		t.Fatalf("gap %v, want a minute while a rotated-out hash waits", gap)
	}
	at, ok := IdleRevocationAt(&tok, &u)
	if want := t0.Add(time.Hour + DefaultUseRecordingGap + UseRecordingSlack); !ok || !at.Equal(want) {
		t.Errorf("gap unknown: idle at %v (%v), want %v: maxIdle, the longest gap and the slack after the recorded use", at, ok, want)
	}
	tok.AnyLastUsedGap = 15 * time.Minute
	at, ok = IdleRevocationAt(&tok, &u)
	if want := t0.Add(time.Hour + 15*time.Minute + UseRecordingSlack); !ok || !at.Equal(want) {
		t.Errorf("recorded under 15m: idle at %v (%v), want %v: maxIdle, the recorded gap and the slack after the recorded use", at, ok, want)
	}
}

// TestRecordedGap reads the gap a status recorded beside lastUsedAt only
// for the lastUsedAt it names.
func TestRecordedGap(t *testing.T) {
	at := metav1.NewTime(t0)
	rec := func(when time.Time, gap time.Duration) *keymintv1alpha1.UseRecording {
		return &keymintv1alpha1.UseRecording{LastUsedAt: metav1.NewTime(when), Gap: metav1.Duration{Duration: gap}}
	}
	tests := map[string]struct {
		st   keymintv1alpha1.ApiTokenStatus
		want time.Duration
	}{
		"recorded with this lastUsedAt":        {st: keymintv1alpha1.ApiTokenStatus{LastUsedAt: &at, LastUsedRecording: rec(t0, 15*time.Minute)}, want: 15 * time.Minute},
		"none recorded (an older keymint)":     {st: keymintv1alpha1.ApiTokenStatus{LastUsedAt: &at}},
		"recorded for an earlier lastUsedAt":   {st: keymintv1alpha1.ApiTokenStatus{LastUsedAt: &at, LastUsedRecording: rec(t0.Add(-time.Hour), 15*time.Minute)}},
		"no lastUsedAt":                        {st: keymintv1alpha1.ApiTokenStatus{LastUsedRecording: rec(t0, 15*time.Minute)}},
		"a gap longer than any is the longest": {st: keymintv1alpha1.ApiTokenStatus{LastUsedAt: &at, LastUsedRecording: rec(t0, 1000*time.Hour)}, want: DefaultUseRecordingGap},
		"a gap of zero or less is no gap":      {st: keymintv1alpha1.ApiTokenStatus{LastUsedAt: &at, LastUsedRecording: rec(t0, -time.Minute)}},
	}
	for name, tc := range tests {
		if got := RecordedGap(&tc.st); got != tc.want {
			t.Errorf("%s: %v, want %v", name, got, tc.want)
		}
		if got := TokenFrom(&keymintv1alpha1.ApiTokenSpec{}, &tc.st).AnyLastUsedGap; got != tc.want {
			t.Errorf("%s: TokenFrom's AnyLastUsedGap %v, want %v", name, got, tc.want)
		}
	}
}

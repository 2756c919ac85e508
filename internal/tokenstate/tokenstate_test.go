package tokenstate

import (
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

func dur(d time.Duration) *metav1.Duration { return &metav1.Duration{Duration: d} }
func at(t time.Time) *metav1.Time          { return &metav1.Time{Time: t} }

func TestUserFrom(t *testing.T) {
	deleting := metav1.NewTime(t0)
	tests := map[string]struct {
		user *keymintv1alpha1.ServiceUser
		want User
	}{
		"a missing user is not found": {user: nil, want: User{}},
		"a user being deleted counts as not found": {
			user: &keymintv1alpha1.ServiceUser{ObjectMeta: metav1.ObjectMeta{DeletionTimestamp: &deleting}},
			want: User{},
		},
		"policy durations are read": {
			user: &keymintv1alpha1.ServiceUser{Spec: keymintv1alpha1.ServiceUserSpec{
				Disabled: true, Permissions: []string{"a:b"},
				TokenPolicy: keymintv1alpha1.TokenPolicy{MaxLifetime: dur(time.Hour), DefaultLifetime: dur(time.Minute)},
			}},
			want: User{Found: true, Disabled: true, Permissions: []string{"a:b"}, MaxLifetime: time.Hour, DefaultLifetime: time.Minute},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := UserFrom(tc.user)
			if got.Found != tc.want.Found || got.Disabled != tc.want.Disabled || got.MaxLifetime != tc.want.MaxLifetime ||
				got.DefaultLifetime != tc.want.DefaultLifetime || !slices.Equal(got.Permissions, tc.want.Permissions) {
				t.Errorf("UserFrom = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestRevocationReason(t *testing.T) {
	active := User{Found: true}
	tests := map[string]struct {
		revoked bool
		user    User
		want    string
	}{
		"an active token of an enabled user":   {user: active, want: ""},
		"revoked in its spec":                  {revoked: true, user: active, want: keymintv1alpha1.ApiTokenReasonRevokedBySpec},
		"its user is disabled":                 {user: User{Found: true, Disabled: true}, want: keymintv1alpha1.ApiTokenReasonServiceUserDisabled},
		"its user is missing":                  {user: User{}, want: keymintv1alpha1.ApiTokenReasonServiceUserNotFound},
		"spec revocation wins over a disabled": {revoked: true, user: User{Found: true, Disabled: true}, want: keymintv1alpha1.ApiTokenReasonRevokedBySpec},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			spec := &keymintv1alpha1.ApiTokenSpec{Revoked: tc.revoked}
			if got := RevocationReason(spec, tc.user); got != tc.want {
				t.Errorf("RevocationReason = %q, want %q", got, tc.want)
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
		"maxLifetime caps a longer lifetime": {
			spec: keymintv1alpha1.ApiTokenSpec{Lifetime: dur(48 * time.Hour)}, user: User{MaxLifetime: 24 * time.Hour}, want: 24 * time.Hour,
		},
		"maxLifetime caps a later expiresAt": {
			spec: keymintv1alpha1.ApiTokenSpec{ExpiresAt: at(t0.Add(1000 * time.Hour))}, user: User{MaxLifetime: 24 * time.Hour}, want: 24 * time.Hour,
		},
		"maxLifetime gives an expiry to a token that had none": {user: User{MaxLifetime: 24 * time.Hour}, want: 24 * time.Hour},
		"a shorter lifetime stays under maxLifetime": {
			spec: keymintv1alpha1.ApiTokenSpec{Lifetime: dur(time.Hour)}, user: User{MaxLifetime: 24 * time.Hour}, want: time.Hour,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, ok := Expiry(&tc.spec, tc.user, t0)
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

func TestExpired(t *testing.T) {
	if Expired(t0, false, t0.Add(1000*time.Hour)) {
		t.Error("a token without expiry expired")
	}
	if Expired(t0, true, t0.Add(-time.Nanosecond)) {
		t.Error("expired before its expiry")
	}
	if !Expired(t0, true, t0) {
		t.Error("not expired at its expiry instant")
	}
}

func TestNextRotation(t *testing.T) {
	if _, ok := NextRotation(&keymintv1alpha1.ApiTokenSpec{}, t0); ok {
		t.Error("a token without rotation has a next rotation")
	}
	if _, ok := NextRotation(&keymintv1alpha1.ApiTokenSpec{Rotation: &keymintv1alpha1.Rotation{GracePeriod: dur(time.Hour)}}, t0); ok {
		t.Error("a grace period alone schedules rotations")
	}
	got, ok := NextRotation(&keymintv1alpha1.ApiTokenSpec{Rotation: &keymintv1alpha1.Rotation{Every: dur(24 * time.Hour)}}, t0)
	if !ok || !got.Equal(t0.Add(24*time.Hour)) {
		t.Errorf("NextRotation = %v, %v; want issue + 24h", got, ok)
	}
}

func TestPreviousValidUntil(t *testing.T) {
	tests := map[string]struct {
		grace    time.Duration
		expiry   time.Time
		expires  bool
		want     time.Time
		wantNone bool
	}{
		"no grace: the old token stops at once":         {grace: 0, wantNone: true},
		"grace counts from the rotation":                {grace: time.Hour, want: t0.Add(time.Hour)},
		"grace never outlives the old token's expiry":   {grace: time.Hour, expiry: t0.Add(10 * time.Minute), expires: true, want: t0.Add(10 * time.Minute)},
		"an already expired old token gets no grace":    {grace: time.Hour, expiry: t0, expires: true, wantNone: true},
		"a later expiry leaves the full grace in place": {grace: time.Hour, expiry: t0.Add(5 * time.Hour), expires: true, want: t0.Add(time.Hour)},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, ok := PreviousValidUntil(tc.grace, tc.expiry, tc.expires, t0)
			if tc.wantNone {
				if ok {
					t.Errorf("PreviousValidUntil = %v, want none", got)
				}
				return
			}
			if !ok || !got.Equal(tc.want) {
				t.Errorf("PreviousValidUntil = %v, %v; want %v", got, ok, tc.want)
			}
		})
	}
}

func TestStillAccepted(t *testing.T) {
	prev := []Previous{{Hash: "a", ValidUntil: t0}, {Hash: "b", ValidUntil: t0.Add(time.Second)}}
	got := StillAccepted(prev, t0)
	if len(got) != 1 || got[0].Hash != "b" {
		t.Errorf("StillAccepted at t0 = %v, want only b (a ends at t0)", got)
	}
	if got := StillAccepted(prev, t0.Add(time.Second)); len(got) != 0 {
		t.Errorf("StillAccepted after both = %v, want none", got)
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
		"scopes are a subset":                           {scopes: []string{"qr:read"}, perms: perms, want: []string{"qr:read"}},
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

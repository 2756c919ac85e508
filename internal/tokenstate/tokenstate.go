// Package tokenstate decides what state a token is in at a given time:
// revoked or not and why, its effective expiry, when it rotates next, which
// hashes are accepted until when, and its effective scopes.
//
// The ApiToken controller and the check server both call it, so they can
// never disagree about whether a token is valid. It does no I/O and reads no
// clock: every function takes the time it decides for.
package tokenstate

import (
	"slices"
	"time"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

// User is what a token's state depends on from its ServiceUser.
type User struct {
	// Found is false when the ServiceUser does not exist or is being deleted.
	Found       bool
	Disabled    bool
	Permissions []string
	// MaxLifetime and DefaultLifetime are zero when unset.
	MaxLifetime     time.Duration
	DefaultLifetime time.Duration
}

// UserFrom reads a ServiceUser; nil means it does not exist.
func UserFrom(u *keymintv1alpha1.ServiceUser) User {
	if u == nil || u.DeletionTimestamp != nil {
		return User{}
	}
	user := User{Found: true, Disabled: u.Spec.Disabled, Permissions: u.Spec.Permissions}
	if d := u.Spec.TokenPolicy.MaxLifetime; d != nil {
		user.MaxLifetime = d.Duration
	}
	if d := u.Spec.TokenPolicy.DefaultLifetime; d != nil {
		user.DefaultLifetime = d.Duration
	}
	return user
}

// RevocationReason returns why a token is revoked, as an ApiToken condition
// reason, or "" when it is not. An explicit revocation wins over the user's
// state, and a missing user over a disabled one.
func RevocationReason(spec *keymintv1alpha1.ApiTokenSpec, user User) string {
	switch {
	case spec.Revoked:
		return keymintv1alpha1.ApiTokenReasonRevokedBySpec
	case !user.Found:
		return keymintv1alpha1.ApiTokenReasonServiceUserNotFound
	case user.Disabled:
		return keymintv1alpha1.ApiTokenReasonServiceUserDisabled
	}
	return ""
}

// Expiry returns when a token issued at issuedAt expires: the earliest of its
// own expiry (spec.expiresAt, else issuedAt + spec.lifetime, else issuedAt +
// the user's defaultLifetime) and issuedAt + the user's maxLifetime. ok is
// false when the token never expires.
func Expiry(spec *keymintv1alpha1.ApiTokenSpec, user User, issuedAt time.Time) (expiry time.Time, ok bool) {
	switch {
	case spec.ExpiresAt != nil:
		expiry, ok = spec.ExpiresAt.Time, true
	case spec.Lifetime != nil:
		expiry, ok = issuedAt.Add(spec.Lifetime.Duration), true
	case user.DefaultLifetime > 0:
		expiry, ok = issuedAt.Add(user.DefaultLifetime), true
	}
	if user.MaxLifetime > 0 {
		if capped := issuedAt.Add(user.MaxLifetime); !ok || capped.Before(expiry) {
			expiry, ok = capped, true
		}
	}
	return expiry, ok
}

// Expired reports whether a token with the given expiry is expired at now.
// A token is expired from its expiry instant on.
func Expired(expiry time.Time, expires bool, now time.Time) bool {
	return expires && !now.Before(expiry)
}

// NextRotation returns when a token issued at issuedAt rotates on schedule;
// ok is false when it has no schedule.
func NextRotation(spec *keymintv1alpha1.ApiTokenSpec, issuedAt time.Time) (time.Time, bool) {
	if spec.Rotation == nil || spec.Rotation.Every == nil || spec.Rotation.Every.Duration <= 0 {
		return time.Time{}, false
	}
	return issuedAt.Add(spec.Rotation.Every.Duration), true
}

// GracePeriod returns how long a rotated-out token stays accepted.
func GracePeriod(spec *keymintv1alpha1.ApiTokenSpec) time.Duration {
	if spec.Rotation == nil || spec.Rotation.GracePeriod == nil || spec.Rotation.GracePeriod.Duration < 0 {
		return 0
	}
	return spec.Rotation.GracePeriod.Duration
}

// PreviousValidUntil returns until when a token rotated out at now stays
// accepted: now + the grace period, but never past its own expiry. ok is
// false when there is no grace at all.
func PreviousValidUntil(grace time.Duration, expiry time.Time, expires bool, now time.Time) (time.Time, bool) {
	if grace <= 0 {
		return time.Time{}, false
	}
	until := now.Add(grace)
	if expires && expiry.Before(until) {
		until = expiry
	}
	return until, until.After(now)
}

// Previous is a rotated-out hash and the instant it stops being accepted.
type Previous struct {
	Hash       string
	ValidUntil time.Time
}

// StillAccepted returns the previous hashes accepted at now, in order.
func StillAccepted(prev []Previous, now time.Time) []Previous {
	var out []Previous
	for _, p := range prev {
		if now.Before(p.ValidUntil) {
			out = append(out, p)
		}
	}
	return out
}

// EffectiveScopes returns what a token may do: its scopes that the user still
// holds, or all the user's permissions when the token names no scopes. The
// result is sorted and has no duplicates.
func EffectiveScopes(scopes, permissions []string) []string {
	var out []string
	if len(scopes) == 0 {
		out = slices.Clone(permissions)
	} else {
		for _, s := range scopes {
			if slices.Contains(permissions, s) {
				out = append(out, s)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

package controllers

import (
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/tokenstate"
)

// maxPreviousTokens bounds the hashes kept in a grace period, so a burst of
// manual rotations cannot grow the Secret and status without limit.
const maxPreviousTokens = 8

// action is what one reconcile does to the token Secret.
type action int

const (
	actNone   action = iota
	actIssue         // mint a token into a Secret that holds none
	actRotate        // replace the Secret's token, keeping the old hash for the grace period
	actRevoke        // remove the token from the Secret
)

// observation is everything a decision depends on, read from the API server
// and the clock.
type observation struct {
	Spec *keymintv1alpha1.ApiTokenSpec
	// RotateRequest is the keymint.io/rotate annotation's value.
	RotateRequest string
	User          tokenstate.User
	// Conflict is true when the Secret name is taken by a Secret this
	// ApiToken does not own.
	Conflict bool
	// Record is the Secret's record; HasToken says whether it is valid.
	Record   secretRecord
	HasToken bool
	// SecretHoldsToken is true when the Secret has any token data at all,
	// valid or not (what a revocation must remove).
	SecretHoldsToken bool
	// HadToken is true when the status still names a token hash.
	HadToken bool
	Now      time.Time
}

// decision is what to do and why.
type decision struct {
	Action action
	// Reason is the Event reason for the action.
	Reason string
	// RevokeReason is the ApiToken condition reason when revoked, else "".
	RevokeReason string
}

// Event reasons beyond the condition reasons.
const (
	eventIssued            = "Issued"
	eventReissued          = "Reissued"
	eventTokenLost         = "TokenLost"
	eventRotationRequested = "RotationRequested"
	eventRotationScheduled = "RotationScheduled"
	eventRevoked           = "Revoked"
	eventExpired           = "Expired"
	eventSecretConflict    = "SecretConflict"
)

// trustedRecord returns the record a reconcile decides from. The status is
// authoritative for a token it already names: the Secret's annotations are
// editable by anyone who can edit the Secret, and must not move an issue
// time or add accepted hashes. The annotations are read only to recover a
// token the status does not name (a crash between the Secret and status
// writes, a status lost to a restore), and then bounded: an issue time no
// later than now, grace periods no longer than the spec's from now, and at
// most maxPreviousTokens of them.
func trustedRecord(st *keymintv1alpha1.ApiTokenStatus, spec *keymintv1alpha1.ApiTokenSpec, fromSecret secretRecord, now time.Time) secretRecord {
	rec := fromSecret
	if st.TokenHash == fromSecret.Hash && st.IssuedAt != nil {
		rec.IssuedAt = st.IssuedAt.Time
		rec.RotatedAt = nil
		if st.RotatedAt != nil {
			t := st.RotatedAt.Time
			rec.RotatedAt = &t
		}
		rec.Previous = nil
		for _, p := range st.PreviousTokens {
			rec.Previous = append(rec.Previous, tokenstate.Previous{Hash: p.TokenHash, ValidUntil: p.ValidUntil.Time})
		}
		rec.RotationRequest = st.LastRotationRequest
		return rec
	}
	if rec.IssuedAt.After(now) {
		rec.IssuedAt = now.Truncate(time.Second)
	}
	latest := now.Add(tokenstate.GracePeriod(spec))
	var prev []tokenstate.Previous
	for _, p := range rec.Previous {
		if p.ValidUntil.After(latest) {
			p.ValidUntil = latest.Truncate(time.Second)
		}
		prev = append(prev, p)
	}
	if len(prev) > maxPreviousTokens {
		prev = prev[len(prev)-maxPreviousTokens:]
	}
	rec.Previous = prev
	return rec
}

// decide picks the one action a reconcile takes.
func decide(o observation) decision {
	reason := tokenstate.RevocationReason(o.Spec, o.User)
	if o.Conflict {
		// Nothing of ours to touch, but still say whether the token is revoked:
		// deleting its ServiceUser waits for that.
		return decision{Action: actNone, RevokeReason: reason}
	}
	if reason != "" {
		d := decision{RevokeReason: reason}
		if o.SecretHoldsToken {
			d.Action, d.Reason = actRevoke, eventRevoked
		}
		return d
	}
	if !o.HasToken {
		switch {
		case o.HadToken:
			// The status names a token the Secret no longer holds: the
			// Secret was deleted or edited. The old hash stops at once.
			return decision{Action: actIssue, Reason: eventTokenLost}
		case o.SecretHoldsToken:
			// Token data that does not match its record: replace it.
			return decision{Action: actIssue, Reason: eventReissued}
		}
		return decision{Action: actIssue, Reason: eventIssued}
	}
	if o.RotateRequest != "" && o.RotateRequest != o.Record.RotationRequest {
		return decision{Action: actRotate, Reason: eventRotationRequested}
	}
	if next, ok := scheduledRotation(o.Spec, o.User, o.Record.IssuedAt); ok && !o.Now.Before(next) {
		return decision{Action: actRotate, Reason: eventRotationScheduled}
	}
	return decision{Action: actNone}
}

// scheduledRotation returns when a token issued at issuedAt rotates on
// schedule. A rotation that falls due after the token's expiry never happens:
// an expired token stays expired until rotated by request. One that fell due
// before expiry happens even if the controller gets to it late.
func scheduledRotation(spec *keymintv1alpha1.ApiTokenSpec, user tokenstate.User, issuedAt time.Time) (time.Time, bool) {
	next, ok := tokenstate.NextRotation(spec, issuedAt)
	if !ok {
		return next, false
	}
	if expiry, expires := tokenstate.Expiry(spec, user, issuedAt); expires && next.After(expiry) {
		return next, false
	}
	return next, true
}

// newRecord returns the record of a token minted at now, with hash and
// display, by the given decision. For a rotation the old hash joins the
// previous ones for the grace period.
func newRecord(o observation, d decision, hash, display string) secretRecord {
	// Whole seconds, as the Secret annotations and the status store them.
	now := o.Now.Truncate(time.Second)
	rec := secretRecord{Hash: hash, Display: display, IssuedAt: now, RotationRequest: o.RotateRequest}
	if d.Action != actRotate {
		return rec
	}
	rec.RotatedAt = &now
	prev := tokenstate.StillAccepted(o.Record.Previous, now)
	oldExpiry, expires := tokenstate.Expiry(o.Spec, o.User, o.Record.IssuedAt)
	if until, ok := tokenstate.PreviousValidUntil(tokenstate.GracePeriod(o.Spec), oldExpiry, expires, now); ok {
		prev = append(prev, tokenstate.Previous{Hash: o.Record.Hash, ValidUntil: until.Truncate(time.Second)})
	}
	if len(prev) > maxPreviousTokens {
		prev = prev[len(prev)-maxPreviousTokens:]
	}
	rec.Previous = prev
	return rec
}

// result is the state after a reconcile's action: the status to write and
// when to look again.
type result struct {
	Status keymintv1alpha1.ApiTokenStatus
	// RequeueAfter is when the state changes next by the clock alone (expiry,
	// rotation, end of a grace period); zero when never.
	RequeueAfter time.Duration
}

// desiredStatus computes the status from the record the Secret holds after
// the action. It starts from the current status so that fields other writers
// own (lastUsedAt) and condition transition times are kept.
func desiredStatus(current keymintv1alpha1.ApiTokenStatus, generation int64, secretName string,
	o observation, d decision, rec secretRecord, hasToken bool) result {
	st := *current.DeepCopy()
	st.ObservedGeneration = generation
	st.SecretName = secretName
	now := o.Now
	var wake []time.Time

	expired := false
	if hasToken && d.RevokeReason == "" {
		expiry, expires := tokenstate.Expiry(o.Spec, o.User, rec.IssuedAt)
		expired = tokenstate.Expired(expiry, expires, now)
		st.TokenHash = rec.Hash
		st.TokenPrefix = rec.Display
		st.IssuedAt = timePtr(&rec.IssuedAt)
		st.RotatedAt = timePtr(rec.RotatedAt)
		st.ExpiresAt = nil
		if expires {
			st.ExpiresAt = timePtr(&expiry)
			if !expired {
				wake = append(wake, expiry)
			}
		}
		st.NextRotationAt = nil
		if next, ok := scheduledRotation(o.Spec, o.User, rec.IssuedAt); ok {
			st.NextRotationAt = timePtr(&next)
			wake = append(wake, next)
		}
		prev := tokenstate.StillAccepted(rec.Previous, now)
		st.PreviousTokens = previousTokens(prev)
		if len(prev) > 0 {
			wake = append(wake, prev[0].ValidUntil)
		}
		st.LastRotationRequest = rec.RotationRequest
	} else {
		// No token is accepted: keep only the display prefix, so humans can
		// still tell which token was revoked.
		st.TokenHash = ""
		st.IssuedAt, st.RotatedAt, st.ExpiresAt, st.NextRotationAt = nil, nil, nil, nil
		st.PreviousTokens = nil
	}

	setCondition(&st, generation, keymintv1alpha1.ApiTokenConditionRevoked, d.RevokeReason != "",
		orDefault(d.RevokeReason, keymintv1alpha1.ApiTokenReasonNotRevoked), revokeMessage(d.RevokeReason, o.Spec.ServiceUser))
	if expired {
		setCondition(&st, generation, keymintv1alpha1.ApiTokenConditionExpired, true, keymintv1alpha1.ApiTokenReasonExpired,
			fmt.Sprintf("The token expired at %s", st.ExpiresAt.UTC().Format(time.RFC3339)))
	} else {
		setCondition(&st, generation, keymintv1alpha1.ApiTokenConditionExpired, false, keymintv1alpha1.ApiTokenReasonNotExpired, "The token has not expired")
	}
	switch {
	case o.Conflict:
		setCondition(&st, generation, keymintv1alpha1.ApiTokenConditionReady, false, keymintv1alpha1.ApiTokenReasonSecretConflict,
			fmt.Sprintf("Secret %q exists and is not owned by this ApiToken; delete it or set spec.secretName on a new ApiToken", secretName))
	case d.RevokeReason != "":
		setCondition(&st, generation, keymintv1alpha1.ApiTokenConditionReady, false, d.RevokeReason, revokeMessage(d.RevokeReason, o.Spec.ServiceUser))
	case expired:
		setCondition(&st, generation, keymintv1alpha1.ApiTokenConditionReady, false, keymintv1alpha1.ApiTokenReasonExpired, "The token has expired")
	default:
		setCondition(&st, generation, keymintv1alpha1.ApiTokenConditionReady, true, keymintv1alpha1.ApiTokenReasonIssued,
			fmt.Sprintf("Token %s… is in Secret %q", rec.Display, secretName))
	}

	res := result{Status: st}
	for _, t := range wake {
		if d := t.Sub(now); d > 0 && (res.RequeueAfter == 0 || d < res.RequeueAfter) {
			res.RequeueAfter = d
		}
	}
	return res
}

func revokeMessage(reason, user string) string {
	switch reason {
	case keymintv1alpha1.ApiTokenReasonRevokedBySpec:
		return "The token is revoked by spec.revoked"
	case keymintv1alpha1.ApiTokenReasonServiceUserDisabled:
		return fmt.Sprintf("ServiceUser %q is disabled", user)
	case keymintv1alpha1.ApiTokenReasonServiceUserNotFound:
		return fmt.Sprintf("ServiceUser %q does not exist or is being deleted", user)
	}
	return "The token is not revoked"
}

func setCondition(st *keymintv1alpha1.ApiTokenStatus, generation int64, condType string, status bool, reason, message string) {
	s := metav1.ConditionFalse
	if status {
		s = metav1.ConditionTrue
	}
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{
		Type: condType, Status: s, Reason: reason, Message: message, ObservedGeneration: generation,
	})
}

func timePtr(t *time.Time) *metav1.Time {
	if t == nil {
		return nil
	}
	// The API stores whole seconds; truncating here keeps a status read back
	// equal to the one computed, so a steady state writes nothing.
	v := metav1.NewTime(t.UTC().Truncate(time.Second))
	return &v
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Decide: the one action a reconcile takes, the record it mints and the state it leaves, as pure functions of the observation.

package controllers

import (
	"time"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/secretrecord"
	"github.com/keymint/keymint/internal/tokenstate"
)

// maxPreviousTokens bounds the hashes kept in a grace period, so a burst of
// manual rotations cannot grow the Secret and status without limit.
const maxPreviousTokens = 8

// action is what one reconcile does to the token Secret.
type action int

const (
	actNone   action = iota
	actIssue         // mint a token; the one before, if any, stops at once
	actRotate        // mint a token; the one before stays accepted for the grace period
	actRevoke        // remove the token from the Secret
)

// decision is what to do and why.
type decision struct {
	Action action
	// Reason is the Event reason for the action.
	Reason string
}

// mints reports whether a decision mints a token.
func (d decision) mints() bool { return d.Action == actIssue || d.Action == actRotate }

// denied reports whether the token d mints was denied to its requester:
// fail closed, a mint nobody authorized is denied too.
func (o *observation) denied(d decision) bool {
	return d.mints() && (o.Auth == nil || !o.Auth.Allowed || o.unapproved())
}

// unapproved reports whether the token's user requires approval and the
// approval asked is not given (or none was asked: fail closed).
func (o *observation) unapproved() bool {
	return o.User.RequireApproval && (o.Approval == nil || !o.Approval.Approved)
}

// decide picks the one action a reconcile takes.
func decide(o observation) decision {
	v := &o.Verdict
	switch {
	case o.Conflict:
		return decision{}
	case v.Revoked == keymintv1alpha1.ApiTokenReasonIdle && !o.SecretHolds && o.RotateRequest != "" && o.RotateRequest != o.RotationRequest:
		// Idleness is undone only by asking for a new token, once the idle
		// one is out of the Secret: a mint that is denied must not leave it
		// there.
		return decision{Action: actIssue, Reason: eventReissued}
	case v.Revoked != "":
		if o.SecretHolds {
			return decision{Action: actRevoke, Reason: eventRevoked}
		}
		return decision{}
	case o.Current.Issued && o.Claimed && v.Expired, o.Current.Issued && !o.Delivered && v.Expired:
		// A token past its expiry is not replaced: that would revive it.
		return decision{}
	case o.Current.Issued && v.Leaked && !v.Expired:
		// Refused since it was reported; its consumers get a new one now.
		return decision{Action: actIssue, Reason: eventLeaked}
	case o.Current.Issued && o.Claimed:
		// One hash, one ApiToken: checks refuse a hash two claim, and both
		// controllers replace it.
		return decision{Action: actIssue, Reason: eventHashConflict}
	case !o.Current.Issued && o.SecretHolds && o.OurRecord == 0:
		// Token data keymint cannot vouch for (planted, edited, or older
		// than the status): it is never accepted; replace it.
		return decision{Action: actIssue, Reason: eventSecretChanged}
	case !o.Current.Issued:
		return decision{Action: actIssue, Reason: eventIssued}
	case !o.Delivered && o.SecretHolds:
		return decision{Action: actIssue, Reason: eventSecretChanged}
	case !o.Delivered:
		// The Secret was deleted or emptied: the status's token stops at once.
		return decision{Action: actIssue, Reason: eventTokenLost}
	case v.Extended && renewalLives(o):
		// Expiry never moves later: a longer life is a new token.
		if v.Accepted {
			return decision{Action: actRotate, Reason: eventRenewed}
		}
		return decision{Action: actIssue, Reason: eventRenewed}
	case o.RotateRequest != "" && o.RotateRequest != o.RotationRequest:
		return decision{Action: actRotate, Reason: eventRotationRequested}
	case v.Rotates && !o.Now.Before(v.NextRotation):
		return decision{Action: actRotate, Reason: eventRotationScheduled}
	}
	return decision{}
}

// renewalLives reports whether a token minted now would outlive now, so
// renewing after an extension is worth a new token.
func renewalLives(o observation) bool {
	expiry, expires := tokenstate.Expiry(o.Spec, &o.User, o.Now)
	return !expires || o.Now.Before(expiry)
}

// needsRequester reports whether what a reconcile deciding d does or says
// depends on its requester: a mint is for them to have, and what the status
// tells of the ServiceUser is for those keymint acted for (see reveal). Not
// when the spec revokes the token (nothing is minted, nothing told), nor
// when an issued token stays as it is (the status tells what keymint
// minted): that steady state costs no read.
func needsRequester(o *observation, d decision) bool {
	return !o.Spec.Revoked && (d.Action != actNone || !o.Current.Issued)
}

// replaces reports whether a decision replaces the current token with one
// of the same life (the Secret lost it, another ApiToken claims its hash, or
// it was reported leaked): it must give nothing the current token did not
// have. A leak report comes from anyone who holds the token: it must not
// buy a fresh lifetime.
func replaces(o observation, d decision) bool {
	return d.Action == actIssue && o.Current.Issued &&
		(d.Reason == eventTokenLost || d.Reason == eventSecretChanged || d.Reason == eventHashConflict || d.Reason == eventLeaked)
}

// newRecord returns the record of a token minted at now, with hash and
// display, by the given decision. A rotation keeps the token before it for
// the grace period; an issue does not. A replacement keeps the current
// token's issue time, expiry and rotation schedule.
func newRecord(o observation, d decision, hash, display string) secretrecord.Record {
	// Whole seconds, as the status stores them. The verdict, at o.Now, is
	// the same at now: every expiry is in whole seconds.
	now := o.Now.Truncate(time.Second)
	v := &o.Verdict
	rec := secretrecord.Record{
		Serial: max(o.Serial, o.OurRecord) + 1, Hash: hash, Display: display, ServiceUserUID: o.User.UID,
		IssuedAt: now, RotationRequest: o.RotateRequest, IdleSince: &now,
	}
	if o.Current.Issued && v.Revoked == "" && !v.Expired {
		// A token that follows a live one (a rotation, a replacement, a
		// leak) is not a fresh start: idleness counts on.
		since := idleSince(&o.Current)
		rec.IdleSince = &since
	}
	if replaces(o, d) {
		rec.IssuedAt, rec.RotatedAt, rec.RotationRequest = o.Current.IssuedAt, o.RotatedAt, o.RotationRequest
		if v.Expires {
			expiry := v.Expiry
			rec.ExpiresAt = &expiry
		}
		return rec
	}
	if expiry, ok := tokenstate.Expiry(o.Spec, &o.User, now); ok {
		rec.ExpiresAt = &expiry
	}
	if d.Action != actRotate {
		return rec
	}
	rec.RotatedAt = &now
	prev := tokenstate.StillAccepted(&o.Current, &o.User, v, now)
	if p, ok := tokenstate.RotatedOut(&o.Current, v, o.Hash, now); ok {
		p.ValidUntil = p.ValidUntil.Truncate(time.Second)
		prev = append(prev, p)
	}
	if len(prev) > maxPreviousTokens {
		prev = prev[len(prev)-maxPreviousTokens:]
	}
	rec.Previous = toRecordPrevious(prev)
	return rec
}

// idleSince is when the line of token t began.
func idleSince(t *tokenstate.Token) time.Time {
	if t.IdleSince.IsZero() {
		return t.IssuedAt
	}
	return t.IdleSince
}

// toRecordPrevious converts grace-period entries for the record.
func toRecordPrevious(prev []tokenstate.Previous) []secretrecord.Previous {
	out := make([]secretrecord.Previous, len(prev))
	for i, p := range prev {
		out[i] = secretrecord.Previous{Hash: p.Hash, IssuedAt: p.IssuedAt, ValidUntil: p.ValidUntil}
	}
	return out
}

// after is the token state a reconcile leaves behind.
type after struct {
	Token tokenstate.Token
	// Verdict is Token's state at the observation's instant: the
	// observation's own when the token stayed, else Token's, evaluated once.
	Verdict         tokenstate.Verdict
	Hash, Display   string
	Serial          int64
	RotatedAt       *time.Time
	RotationRequest string
	// Failed says why the action's Secret write failed, "" when it did not.
	Failed string
	// Denied is true when the decided token was not minted: its requester
	// may not have it (observation.Auth says why).
	Denied bool
}

// afterAction returns the state after the decision's action: the new
// record's token, no token after a revocation, else the observed one. When
// the requester may not have the token minted, or the Secret write failed
// (failed non-nil), the status still moves: a token the Secret no longer
// delivers, or another ApiToken claims, stops at once, whether or not its
// replacement could be written.
func afterAction(o observation, d decision, rec *secretrecord.Record, failed error) after {
	kept := after{Token: o.Current, Verdict: o.Verdict, Hash: o.Hash, Display: o.Display, Serial: o.Serial, RotatedAt: o.RotatedAt,
		RotationRequest: o.RotationRequest}
	// An emptied token stays revoked for idleness if that is why.
	emptied := tokenstate.Token{Spec: o.Spec, Deleting: o.Current.Deleting,
		IdleRevoked: o.Verdict.Revoked == keymintv1alpha1.ApiTokenReasonIdle}
	var a after
	switch denied := o.denied(d); {
	case failed != nil || denied:
		a = kept
		a.Denied = denied
		if failed != nil {
			a.Failed = failed.Error()
		}
		if d.Action != actIssue || !o.Current.Issued || (o.Delivered && !o.Claimed) {
			return a
		}
		a.Token, a.Hash, a.RotatedAt = emptied, "", nil
	case d.mints():
		a = after{Token: tokenFromRecord(o.Spec, rec), Hash: rec.Hash, Display: rec.Display, Serial: rec.Serial,
			RotatedAt: rec.RotatedAt, RotationRequest: rec.RotationRequest}
		// Uses of the line so far count against its idleness.
		a.Token.AnyLastUsed, a.Token.AnyLastUsedGap = o.Current.AnyLastUsed, o.Current.AnyLastUsedGap
	case d.Action == actRevoke:
		a = after{Token: emptied, Display: o.Display, Serial: max(o.Serial, o.OurRecord), RotationRequest: o.RotationRequest}
	default:
		return kept
	}
	a.evaluate(&o)
	return a
}

// evaluate sets the verdict of the state a reconcile leaves when it is not
// the observed one: a token it minted or emptied, or the same token read
// again after a status write conflicted.
func (a *after) evaluate(o *observation) {
	a.Verdict = tokenstate.Evaluate(&a.Token, &o.User, o.Now)
}

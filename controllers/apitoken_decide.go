package controllers

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/requester"
	"github.com/keymint/keymint/internal/token"
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

// observation is everything a decision depends on, read from the API server
// and the clock.
type observation struct {
	// Namespace and Name are the ApiToken's.
	Namespace, Name string
	Spec            *keymintv1alpha1.ApiTokenSpec
	// RotateRequest is the keymint.io/rotate annotation's value.
	RotateRequest string
	User          tokenstate.User
	// Conflict is true when the Secret name is taken by a Secret this
	// ApiToken does not own.
	Conflict bool
	// Current is the token the status names, or the one a signed Secret
	// record newer than the status names (Adopted).
	Current tokenstate.Token
	// Hash, Display, Serial, RotatedAt and RotationRequest complete Current's
	// record.
	Hash            string
	Display         string
	Serial          int64
	RotatedAt       *time.Time
	RotationRequest string
	// Adopted is true when Current comes from the Secret's signed record.
	Adopted bool
	// Delivered is true when the Secret holds Current's token.
	Delivered bool
	// SecretHolds is true when the Secret has any token data or record.
	SecretHolds bool
	// Claimed is true when another ApiToken's status names one of Current's
	// hashes.
	Claimed bool
	// RequesterProblem says why the ApiToken's requester record does not
	// verify, "" when it does (whether keymint may act on it is asked at
	// the moment of a mint: authorizeMint).
	RequesterProblem requester.Problem
	// Auth answers whether the requester may have the decided token minted
	// now; nil when this reconcile asked nothing.
	Auth *authorization
	// OurRecord is the serial of a record keymint signed in the Secret and
	// that was not adopted (a token minted after a revocation whose status
	// write was lost); zero when none. A new token's serial passes it, and
	// replacing it is no sign of tampering.
	OurRecord int64
	// ExpiryWarning is how long before expiry the token is ExpiringSoon:
	// its user's tokenPolicy.expiryWarning, else the manager's default.
	ExpiryWarning time.Duration
	Now           time.Time
}

// decision is what to do and why.
type decision struct {
	Action action
	// Reason is the Event reason for the action.
	Reason string
}

// Event reasons beyond the condition reasons.
const (
	eventIssued            = "Issued"
	eventAdopted           = "Adopted"
	eventSecretChanged     = "SecretChanged"
	eventHashConflict      = "HashConflict"
	eventSecretWriteFailed = "SecretWriteFailed"
	eventExpiryShortened   = "ExpiryShortened"
	eventTokenLost         = "TokenLost"
	eventRenewed           = "Renewed"
	eventRotationRequested = "RotationRequested"
	eventRotationScheduled = "RotationScheduled"
	eventRevoked           = "Revoked"
	eventExpired           = "Expired"
	eventSecretConflict    = "SecretConflict"
	eventExpiringSoon      = "ExpiringSoon"
	eventRetiredIdle       = "RetiredIdleToken"
	eventMintDenied        = "MintDenied"
	eventMintRateLimited   = "MintRateLimited"
)

// observeToken fills in the token part of an observation: the status's
// token, unless the Secret carries a record keymint signed for this ApiToken
// with a higher serial than the status has seen. Nothing else in a Secret is
// evidence of a token.
func observeToken(o *observation, st *keymintv1alpha1.ApiTokenStatus, sec secretState) {
	o.SecretHolds = sec.Holds
	// A status that has named a token and names none now was revoked (or
	// never written after an un-revoke): nothing minted before is adopted
	// into it; a fresh token is minted instead.
	if rec := sec.Signed; rec != nil && rec.Serial > st.Serial && (st.Serial == 0 || st.TokenHash != "") {
		rec.Previous = namedPrevious(rec.Previous, st)
		o.Current = tokenFromRecord(o.Spec, rec)
		o.Hash, o.Display, o.Serial, o.RotatedAt, o.RotationRequest = rec.Hash, rec.Display, rec.Serial, rec.RotatedAt, rec.RotationRequest
		o.Adopted, o.Delivered = true, true
		return
	}
	if sec.Signed != nil {
		o.OurRecord = sec.Signed.Serial
	}
	o.Current = tokenstate.TokenFrom(o.Spec, st)
	o.Hash, o.Display, o.Serial, o.RotationRequest = st.TokenHash, st.TokenPrefix, st.Serial, st.LastRotationRequest
	if st.RotatedAt != nil {
		t := st.RotatedAt.Time
		o.RotatedAt = &t
	}
	o.Delivered = o.Current.Issued && sec.Plain != "" && token.Matches(sec.Plain, st.TokenHash)
}

// namedPrevious keeps the grace-period hashes of an adopted record that the
// status names too: the token it replaced, or ones still in grace. A record
// never brings a hash into the status by itself.
func namedPrevious(prev []recordPrevious, st *keymintv1alpha1.ApiTokenStatus) []recordPrevious {
	named := statusHashes(st)
	var out []recordPrevious
	for _, p := range prev {
		if slices.Contains(named, p.Hash) {
			out = append(out, p)
		}
	}
	return out
}

// mints reports whether a decision mints a token.
func (d decision) mints() bool { return d.Action == actIssue || d.Action == actRotate }

// denied reports whether the token d mints was denied to its requester.
func (o observation) denied(d decision) bool { return d.mints() && o.Auth != nil && !o.Auth.Allowed }

// decide picks the one action a reconcile takes.
func decide(o observation) decision {
	v := tokenstate.Evaluate(&o.Current, &o.User, o.Now)
	switch {
	case o.Conflict:
		return decision{}
	case v.Revoked != "":
		if o.SecretHolds {
			return decision{Action: actRevoke, Reason: eventRevoked}
		}
		return decision{}
	case o.Current.Issued && o.Claimed && v.Expired, o.Current.Issued && !o.Delivered && v.Expired:
		// A token past its expiry is not replaced: that would revive it.
		return decision{}
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

// replaces reports whether a decision replaces the current token with one
// of the same life (the Secret lost it, or another ApiToken claims its hash):
// that needs no one's authority, so it must give nothing the current token
// did not have.
func replaces(o observation, d decision) bool {
	return d.Action == actIssue && o.Current.Issued &&
		(d.Reason == eventTokenLost || d.Reason == eventSecretChanged || d.Reason == eventHashConflict)
}

// newRecord returns the record of a token minted at now, with hash and
// display, by the given decision. A rotation keeps the token before it for
// the grace period; an issue does not. A replacement keeps the current
// token's issue time, expiry and rotation schedule.
func newRecord(o observation, d decision, hash, display string) secretRecord {
	// Whole seconds, as the status stores them.
	now := o.Now.Truncate(time.Second)
	rec := secretRecord{
		Serial: max(o.Serial, o.OurRecord) + 1, Hash: hash, Display: display, ServiceUserUID: o.User.UID,
		IssuedAt: now, RotationRequest: o.RotateRequest,
	}
	if replaces(o, d) {
		v := tokenstate.Evaluate(&o.Current, &o.User, o.Now)
		rec.IssuedAt, rec.RotatedAt, rec.RotationRequest = o.Current.IssuedAt, o.RotatedAt, o.RotationRequest
		if v.Expires {
			rec.ExpiresAt = &v.Expiry
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
	v := tokenstate.Evaluate(&o.Current, &o.User, now)
	prev := tokenstate.StillAccepted(&o.Current, &o.User, &v, now)
	if p, ok := tokenstate.RotatedOut(&o.Current, &v, o.Hash, now); ok {
		p.ValidUntil = p.ValidUntil.Truncate(time.Second)
		prev = append(prev, p)
	}
	if len(prev) > maxPreviousTokens {
		prev = prev[len(prev)-maxPreviousTokens:]
	}
	rec.Previous = toRecordPrevious(prev)
	return rec
}

// result is the state after a reconcile's action: the status to write and
// when to look again.
type result struct {
	Status keymintv1alpha1.ApiTokenStatus
	// RequeueAfter is when the state changes next by the clock alone (expiry,
	// rotation, end of a grace period, a warning window); zero when never.
	RequeueAfter time.Duration
	// Retired are the rotated-out hashes retireWhenIdle ended at this
	// reconcile.
	Retired []tokenstate.Previous
}

// after is the token state a reconcile leaves behind.
type after struct {
	Token           tokenstate.Token
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
// (failed non-nil), the status still moves: a token
// the Secret no longer delivers, or another ApiToken claims, stops at once,
// whether or not its replacement could be written.
func afterAction(o observation, d decision, rec *secretRecord, failed error) after {
	denied := o.denied(d)
	if failed != nil || denied {
		a := after{Token: o.Current, Hash: o.Hash, Display: o.Display, Serial: o.Serial, RotatedAt: o.RotatedAt,
			RotationRequest: o.RotationRequest, Denied: denied}
		if failed != nil {
			a.Failed = failed.Error()
		}
		if d.Action == actIssue && o.Current.Issued && (!o.Delivered || o.Claimed) {
			a.Token, a.Hash, a.RotatedAt = tokenstate.Token{Spec: o.Spec, Deleting: o.Current.Deleting}, "", nil
		}
		return a
	}
	switch d.Action {
	case actIssue, actRotate:
		return after{Token: tokenFromRecord(o.Spec, rec), Hash: rec.Hash, Display: rec.Display, Serial: rec.Serial,
			RotatedAt: rec.RotatedAt, RotationRequest: rec.RotationRequest}
	case actRevoke:
		return after{Token: tokenstate.Token{Spec: o.Spec, Deleting: o.Current.Deleting}, Display: o.Display, Serial: max(o.Serial, o.OurRecord), RotationRequest: o.RotationRequest}
	}
	return after{Token: o.Current, Hash: o.Hash, Display: o.Display, Serial: o.Serial, RotatedAt: o.RotatedAt, RotationRequest: o.RotationRequest}
}

// desiredStatus computes the status from the state after the action, with
// the verdict of tokenstate. It starts from the current status so that
// fields other writers own (lastUsedAt) and condition transition times are
// kept.
func desiredStatus(current keymintv1alpha1.ApiTokenStatus, generation int64, secretName string,
	o observation, a after) result {
	st := *current.DeepCopy()
	st.ObservedGeneration = generation
	st.SecretName = secretName
	// The serial never goes back: an action decided on a stale cache (a
	// revocation that did not see the token minted just before it) knows an
	// older serial than the status it writes over.
	st.Serial = max(current.Serial, a.Serial)
	st.TokenPrefix = a.Display
	st.LastRotationRequest = a.RotationRequest
	now := o.Now
	v := tokenstate.Evaluate(&a.Token, &o.User, now)
	var wake []time.Time
	var retired []tokenstate.Previous

	if a.Token.Issued && v.Revoked == "" {
		st.TokenHash = a.Hash
		st.ServiceUserUID = string(a.Token.UserUID)
		if st.ServiceUserUID == "" && o.User.Found {
			// A record older than the field: bind it to the user it has now.
			st.ServiceUserUID = string(o.User.UID)
		}
		st.IssuedAt = timePtr(&a.Token.IssuedAt)
		st.RotatedAt = timePtr(a.RotatedAt)
		// The effective expiry becomes the record: a later extension of the
		// spec can never move it back out.
		st.ExpiresAt = nil
		if v.Expires {
			st.ExpiresAt = timePtr(&v.Expiry)
			if !v.Expired {
				wake = append(wake, v.Expiry)
			}
		}
		st.NextRotationAt = nil
		if v.Rotates {
			st.NextRotationAt = timePtr(&v.NextRotation)
			wake = append(wake, v.NextRotation)
		}
		// Uses are the check servers' record: the current token's carries
		// over while it stays current, and a rotated-out one keeps its own.
		if current.TokenHash != a.Hash {
			st.TokenLastUsedAt = nil
		}
		a.Token.LastUsed = time.Time{}
		if st.TokenLastUsedAt != nil {
			a.Token.LastUsed = st.TokenLastUsedAt.Time
		}
		prev := withLastUsed(tokenstate.StillAccepted(&a.Token, &o.User, &v, now), &current)
		var next time.Time
		prev, retired, next = tokenstate.Retire(&a.Token, prev, now)
		if !next.IsZero() {
			wake = append(wake, next)
		}
		st.PreviousTokens = previousTokens(prev)
		for _, p := range prev {
			wake = append(wake, p.ValidUntil)
		}
	} else {
		// No token is accepted: keep the serial and display prefix, so
		// humans can tell which token was revoked and no older record is
		// ever adopted.
		st.TokenHash, st.ServiceUserUID = "", ""
		st.IssuedAt, st.RotatedAt, st.ExpiresAt, st.NextRotationAt = nil, nil, nil, nil
		st.PreviousTokens, st.TokenLastUsedAt = nil, nil
	}

	if soon, opens, ok := tokenstate.ExpiringSoon(&v, o.ExpiryWarning, now); soon {
		setCondition(&st, generation, keymintv1alpha1.ApiTokenConditionExpiringSoon, true, keymintv1alpha1.ApiTokenReasonWithinWarningWindow,
			fmt.Sprintf("Token %s… expires at %s, within the %s warning window, and no scheduled rotation replaces it first: "+
				"rotate it (annotation %s), or set a later expiresAt or lifetime", a.Display, v.Expiry.UTC().Format(time.RFC3339),
				o.ExpiryWarning, keymintv1alpha1.RotateAnnotation))
	} else {
		if ok {
			wake = append(wake, opens)
		}
		setCondition(&st, generation, keymintv1alpha1.ApiTokenConditionExpiringSoon, false, keymintv1alpha1.ApiTokenReasonNotExpiringSoon,
			"The token is not inside its expiry warning window")
	}

	// What the status says of the ServiceUser (whether it exists, is
	// disabled, which permissions it lacks) is for those keymint acted for:
	// a token it minted, or one a requester whose right admission checked
	// asked for. Anyone may write a revoked ApiToken (no admission runs), so
	// its status tells nothing of the user.
	reveal := !o.Spec.Revoked && (o.RequesterProblem == "" || a.Token.Issued)
	revoked := v.Revoked
	if !reveal && revoked != keymintv1alpha1.ApiTokenReasonRevokedBySpec && revoked != keymintv1alpha1.ApiTokenReasonDeleting {
		revoked = ""
	}
	setCondition(&st, generation, keymintv1alpha1.ApiTokenConditionRevoked, revoked != "",
		orDefault(revoked, keymintv1alpha1.ApiTokenReasonNotRevoked), revokeMessage(revoked, o.Spec.ServiceUser))
	if v.Expired {
		setCondition(&st, generation, keymintv1alpha1.ApiTokenConditionExpired, true, keymintv1alpha1.ApiTokenReasonExpired,
			fmt.Sprintf("The token expired at %s", st.ExpiresAt.UTC().Format(time.RFC3339)))
	} else {
		setCondition(&st, generation, keymintv1alpha1.ApiTokenConditionExpired, false, keymintv1alpha1.ApiTokenReasonNotExpired, "The token has not expired")
	}
	auth := o.Auth
	if auth == nil && !reveal && !o.Spec.Revoked {
		// Nothing was asked (the user is missing or disabled, say), and
		// nothing could be: there is no requester to ask about.
		na := noRecord(o.RequesterProblem, o.Namespace, o.Name)
		auth = &na
	}
	if auth != nil {
		setCondition(&st, generation, keymintv1alpha1.ApiTokenConditionAuthorized, auth.Allowed, auth.Reason, auth.Message)
	}
	switch {
	case o.Conflict && reveal:
		// (Hidden otherwise: a revoked ApiToken naming any secretName would
		// tell its writer whether a Secret of that name exists.)
		setCondition(&st, generation, keymintv1alpha1.ApiTokenConditionReady, false, keymintv1alpha1.ApiTokenReasonSecretConflict,
			fmt.Sprintf("Secret %q exists and is not owned by this ApiToken; delete it or set spec.secretName on a new ApiToken", secretName))
	case revoked != "":
		setCondition(&st, generation, keymintv1alpha1.ApiTokenConditionReady, false, revoked, revokeMessage(revoked, o.Spec.ServiceUser))
	case !reveal || (!v.Accepted && a.Denied):
		setCondition(&st, generation, keymintv1alpha1.ApiTokenConditionReady, false, auth.Reason, auth.Message)
	case v.Expired:
		setCondition(&st, generation, keymintv1alpha1.ApiTokenConditionReady, false, keymintv1alpha1.ApiTokenReasonExpired,
			"The token has expired; a later expiresAt or lifetime mints a new one")
	case !v.Accepted && a.Failed != "":
		setCondition(&st, generation, keymintv1alpha1.ApiTokenConditionReady, false, keymintv1alpha1.ApiTokenReasonPending,
			"No token is issued: "+a.Failed)
	case !v.Accepted:
		setCondition(&st, generation, keymintv1alpha1.ApiTokenConditionReady, false, keymintv1alpha1.ApiTokenReasonPending, "No token is issued yet")
	default:
		setCondition(&st, generation, keymintv1alpha1.ApiTokenConditionReady, true, keymintv1alpha1.ApiTokenReasonIssued,
			fmt.Sprintf("Token %s… is in Secret %q", a.Display, secretName))
	}

	switch {
	case !reveal:
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{
			Type: keymintv1alpha1.ApiTokenConditionRequestGranted, Status: metav1.ConditionUnknown, Reason: keymintv1alpha1.ApiTokenReasonNotEvaluated,
			Message: "Not evaluated while the token is revoked by its spec or has no valid requester record", ObservedGeneration: generation,
		})
	case o.User.Found:
		setRequestGranted(&st, generation, o)
	}

	res := result{Status: st, Retired: retired}
	for _, t := range wake {
		if d := t.Sub(now); d > 0 && (res.RequeueAfter == 0 || d < res.RequeueAfter) {
			res.RequeueAfter = d
		}
	}
	return res
}

// withLastUsed fills in the recorded last use of each rotated-out hash from
// the status: its own entry's, or, for the token rotated out just now, the
// current token's.
func withLastUsed(prev []tokenstate.Previous, st *keymintv1alpha1.ApiTokenStatus) []tokenstate.Previous {
	for i := range prev {
		p := &prev[i]
		if p.Hash == st.TokenHash && st.TokenLastUsedAt != nil && st.TokenLastUsedAt.After(p.LastUsed) {
			p.LastUsed = st.TokenLastUsedAt.Time
		}
		for _, q := range st.PreviousTokens {
			if q.TokenHash == p.Hash && q.LastUsedAt != nil && q.LastUsedAt.After(p.LastUsed) {
				p.LastUsed = q.LastUsedAt.Time
			}
		}
	}
	return prev
}

// setRequestGranted says whether the token gets what its spec asks for: what
// admission warned about, kept on record. The token never gets more.
func setRequestGranted(st *keymintv1alpha1.ApiTokenStatus, generation int64, o observation) {
	scopes, capped := tokenstate.NotGranted(o.Spec, &o.User, o.Now)
	var why []string
	reason := keymintv1alpha1.ApiTokenReasonAsRequested
	if capped {
		reason = keymintv1alpha1.ApiTokenReasonLifetimeCapped
		why = append(why, fmt.Sprintf("the lifetime asked for exceeds ServiceUser %q's tokenPolicy.maxLifetime (%s), which caps it", o.Spec.ServiceUser, o.User.MaxLifetime))
	}
	if len(scopes) > 0 {
		reason = keymintv1alpha1.ApiTokenReasonScopesNotHeld
		why = append(why, fmt.Sprintf("scopes %s are not among ServiceUser %q's permissions and are not granted", strings.Join(scopes, ", "), o.Spec.ServiceUser))
	}
	message := "The token gets all its spec asks for"
	if len(why) > 0 {
		message = strings.ToUpper(why[0][:1]) + strings.Join(why, "; ")[1:]
	}
	setCondition(st, generation, keymintv1alpha1.ApiTokenConditionRequestGranted, len(why) == 0, reason, message)
}

func revokeMessage(reason, user string) string {
	switch reason {
	case keymintv1alpha1.ApiTokenReasonRevokedBySpec:
		return "The token is revoked by spec.revoked"
	case keymintv1alpha1.ApiTokenReasonServiceUserDisabled:
		return fmt.Sprintf("ServiceUser %q is disabled", user)
	case keymintv1alpha1.ApiTokenReasonServiceUserNotFound:
		return fmt.Sprintf("ServiceUser %q does not exist (yet: a token is issued once it does), is being deleted, or was deleted since the token was minted", user)
	case keymintv1alpha1.ApiTokenReasonDeleting:
		return "The ApiToken is being deleted"
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

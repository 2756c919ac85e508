// Status: the ApiToken status after a reconcile, its fields and each condition built by an ordered chain of rules, as pure functions.

package controllers

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/tokenstate"
)

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
	// Leaks are the leak reports this reconcile acted on: their hashes are
	// gone from the status.
	Leaks []keymintv1alpha1.LeakReport
}

// desiredStatus computes the status from the state after the action, with
// its verdict. It starts from the current status so that fields other
// writers own (lastUsedAt) and condition transition times are kept.
func desiredStatus(current keymintv1alpha1.ApiTokenStatus, generation int64, secretName string,
	o observation, a after) result {
	st, wake, retired := statusFields(current, generation, secretName, &o, &a)
	leaks := leakRecord(&st, &current, &o, &a)
	st.Approval = approvalRecord(current.Approval, &o, &a)
	in := newStatusInput(&o, &a, secretName, &st)
	if !in.warn.Soon && in.warn.OK {
		wake = append(wake, in.warn.Opens)
	}
	for _, c := range conditionChains {
		if cond, ok := c.rules.first(in); ok {
			meta.SetStatusCondition(&st.Conditions, metav1.Condition{
				Type: c.condType, Status: cond.Status, Reason: cond.Reason, Message: cond.Message, ObservedGeneration: generation,
			})
		}
	}
	if !o.User.RequireApproval {
		meta.RemoveStatusCondition(&st.Conditions, keymintv1alpha1.ApiTokenConditionApproved)
	}
	return result{Status: st, Retired: retired, Leaks: leaks, RequeueAfter: soonest(o.Now, wake)}
}

// leakRecord keeps the leak reports whose hashes the status st still names
// (a replacement not yet issued), and records the ones acted on: their
// hashes are gone, refused for good. It returns those, and sets
// st.LastLeak to the latest of them.
func leakRecord(st, current *keymintv1alpha1.ApiTokenStatus, o *observation, a *after) []keymintv1alpha1.LeakReport {
	named := StatusHashes(st)
	var pending, acted []keymintv1alpha1.LeakReport
	for _, r := range current.LeakReports {
		if st.TokenHash != "" && slices.Contains(named, r.TokenHash) {
			pending = append(pending, r)
		} else {
			acted = append(acted, r)
		}
	}
	st.LeakReports = pending
	for _, r := range acted {
		if st.LastLeak != nil && r.ReportedAt.Before(&st.LastLeak.ReportedAt) {
			continue
		}
		last := &keymintv1alpha1.LastLeak{LeakReport: r, CurrentSerial: st.Serial}
		if r.TokenHash == o.Hash {
			last.TokenPrefix = o.Display
		}
		st.LastLeak = last
	}
	return acted
}

// statusFields fills in everything but the conditions: the token's record,
// and what the status keeps of a revoked one. It returns when the token's
// state next changes by the clock, and the rotated-out hashes
// retireWhenIdle ends now.
func statusFields(current keymintv1alpha1.ApiTokenStatus, generation int64, secretName string, o *observation, a *after) (
	st keymintv1alpha1.ApiTokenStatus, wake []time.Time, retired []tokenstate.Previous) {
	st = *current.DeepCopy()
	st.ObservedGeneration = generation
	st.SecretName = secretName
	// The serial never goes back: an action decided on a stale cache (a
	// revocation that did not see the token minted just before it) knows an
	// older serial than the status it writes over.
	st.Serial = max(current.Serial, a.Serial)
	st.TokenPrefix = a.Display
	st.LastRotationRequest = a.RotationRequest
	v := &a.Verdict
	switch {
	case v.Revoked == keymintv1alpha1.ApiTokenReasonIdle:
		if st.IdleRevokedAt == nil {
			st.IdleRevokedAt = timePtr(&o.Now)
		}
	case v.Revoked == keymintv1alpha1.ApiTokenReasonRevokedBySpec, a.Token.Issued && v.Revoked == "":
		// Revoking by spec is a decision of its own: un-revoking asks for
		// a new token, as after any revocation.
		st.IdleRevokedAt = nil
	}
	if !a.Token.Issued || v.Revoked != "" {
		// No token is accepted: keep the serial and display prefix, so
		// humans can tell which token was revoked and no older record is
		// ever adopted.
		st.TokenHash, st.ServiceUserUID = "", ""
		st.IssuedAt, st.RotatedAt, st.ExpiresAt, st.NextRotationAt = nil, nil, nil, nil
		st.PreviousTokens, st.TokenLastUsedAt, st.IdleSince = nil, nil, nil
		return st, nil, nil
	}
	since := idleSince(&a.Token)
	st.IdleSince = timePtr(&since)
	if v.Idles {
		wake = append(wake, v.IdleAt)
	}
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
	prev := withLastUsed(tokenstate.StillAccepted(&a.Token, &o.User, v, o.Now), &current)
	var next time.Time
	prev, retired, next = tokenstate.Retire(&a.Token, prev, o.Now)
	if !next.IsZero() {
		wake = append(wake, next)
	}
	st.PreviousTokens = previousTokens(prev)
	for _, p := range prev {
		wake = append(wake, p.ValidUntil)
	}
	return st, wake, retired
}

// soonest is how long from now until the earliest of the times after now;
// zero when none is.
func soonest(now time.Time, times []time.Time) time.Duration {
	var d time.Duration
	for _, t := range times {
		if w := t.Sub(now); w > 0 && (d == 0 || w < d) {
			d = w
		}
	}
	return d
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

func previousTokens(prev []tokenstate.Previous) []keymintv1alpha1.PreviousToken {
	if len(prev) == 0 {
		return nil
	}
	out := make([]keymintv1alpha1.PreviousToken, len(prev))
	for i, p := range prev {
		out[i] = keymintv1alpha1.PreviousToken{
			TokenHash: p.Hash, IssuedAt: metav1.NewTime(p.IssuedAt.UTC()), ValidUntil: metav1.NewTime(p.ValidUntil.UTC()),
		}
		if !p.LastUsed.IsZero() {
			out[i].LastUsedAt = timePtr(&p.LastUsed)
		}
	}
	return out
}

// statusInput is what the conditions are built from: the observation, the
// state after the action, and what follows from them for every condition.
type statusInput struct {
	o          *observation
	a          *after
	v          *tokenstate.Verdict // a's
	secretName string
	// reveal is whether the status may tell of the ServiceUser: whether it
	// exists, is disabled, which permissions it lacks. That is for those
	// keymint acted for: a token it minted (still, or until this
	// reconcile revoked it), or one a requester it trusts asked for.
	// Anyone may write a revoked ApiToken (no admission runs), so its
	// status tells nothing of the user.
	reveal bool
	// revoked is the revocation the status tells: the verdict's, less what
	// is hidden when not reveal.
	revoked string
	// auth is the Authorized answer: the one asked at this reconcile's mint,
	// else, when nothing could be asked, why; nil when neither.
	auth *authorization
	// warn is the token's warning window: of expiry or of idleness.
	warn tokenstate.Warning
	// st is the status written, less its conditions.
	st *keymintv1alpha1.ApiTokenStatus
}

func newStatusInput(o *observation, a *after, secretName string, st *keymintv1alpha1.ApiTokenStatus) *statusInput {
	in := &statusInput{o: o, a: a, v: &a.Verdict, secretName: secretName, auth: o.Auth, st: st}
	in.reveal = !o.Spec.Revoked && (o.trusted() || o.Current.Issued || a.Token.Issued)
	in.revoked = in.v.Revoked
	if !in.reveal && in.revoked != keymintv1alpha1.ApiTokenReasonRevokedBySpec && in.revoked != keymintv1alpha1.ApiTokenReasonDeleting {
		in.revoked = ""
	}
	if in.auth == nil && !in.reveal && !o.Spec.Revoked {
		// Nothing was asked (the user is missing or disabled, say), and
		// nothing could be: there is no requester to ask about.
		in.auth = distrust(o.Trust, o.Namespace, o.Name)
	}
	in.warn = tokenstate.ExpiringSoon(in.v, o.ExpiryWarning, o.Now)
	return in
}

// condition is what a rule sets a condition to.
type condition struct {
	Status          metav1.ConditionStatus
	Reason, Message string
}

func conditionOf(status bool, reason, message string) condition {
	if status {
		return condition{Status: metav1.ConditionTrue, Reason: reason, Message: message}
	}
	return condition{Status: metav1.ConditionFalse, Reason: reason, Message: message}
}

// rule is one step of a condition's chain: the condition when the rule
// applies, and whether it does.
type rule func(in *statusInput) (condition, bool)

// chain is an ordered list of rules: the first that applies sets the
// condition; when none does, the condition is left as it was.
type chain []rule

func (c chain) first(in *statusInput) (condition, bool) {
	for _, r := range c {
		if cond, ok := r(in); ok {
			return cond, true
		}
	}
	return condition{}, false
}

// conditionChains builds each condition, in the order the status lists them.
var conditionChains = []struct {
	condType string
	rules    chain
}{
	{keymintv1alpha1.ApiTokenConditionExpiringSoon, chain{withinWarningWindow, notExpiringSoon}},
	{keymintv1alpha1.ApiTokenConditionRevoked, chain{revokedAsTold, notRevoked}},
	{keymintv1alpha1.ApiTokenConditionExpired, chain{expired, notExpired}},
	{keymintv1alpha1.ApiTokenConditionAuthorized, chain{authorizationAnswered}},
	// Set only for users that require approval.
	{keymintv1alpha1.ApiTokenConditionApproved, chain{approvalAnswered, approvalRecorded}},
	{keymintv1alpha1.ApiTokenConditionReady, chain{
		readySecretConflict, readyRevoked, readyRequesterRefused, readyUnapproved, readyExpired, readyLeaked, readyWriteFailed, readyPending, readyIssued,
	}},
	// Set only once a token of the ApiToken was reported: the others gain
	// no condition, and no status write, from the feature.
	{keymintv1alpha1.ApiTokenConditionLeaked, chain{leakPending, leakReplaced, leakPast}},
	{keymintv1alpha1.ApiTokenConditionRequestGranted, chain{requestNotEvaluated, requestGranted}},
}

func withinWarningWindow(in *statusInput) (condition, bool) {
	if !in.warn.Soon {
		return condition{}, false
	}
	if in.warn.Idle {
		idle, slack := shortDuration(tokenstate.MaxIdle(in.o.Spec, &in.o.User)), shortDuration(tokenstate.UseRecordingSlack)
		since, wait := "it was issued", fmt.Sprintf("maxIdle %s, and %s for flushes", idle, slack)
		if held := tokenstate.HeldBackUntil(&in.a.Token, &in.o.User); held.After(idleSince(&in.a.Token)) {
			since = "its last recorded use, at " + in.a.Token.AnyLastUsed.UTC().Format(time.RFC3339)
			wait = fmt.Sprintf("maxIdle %s, plus the %s recording gap of that use and %s for flushes",
				idle, shortDuration(tokenstate.HeldBackGap(&in.a.Token, &in.o.User)), slack)
		}
		return conditionOf(true, keymintv1alpha1.ApiTokenReasonIdleWithinWarningWindow,
			fmt.Sprintf("Token %s… is revoked for idleness at %s unless a check accepts it before: no check has been recorded since %s (%s)",
				in.a.Display, in.warn.Ends.UTC().Format(time.RFC3339), since, wait)), true
	}
	return conditionOf(true, keymintv1alpha1.ApiTokenReasonWithinWarningWindow,
		fmt.Sprintf("Token %s… expires at %s, within the %s warning window, and no scheduled rotation replaces it first: "+
			"rotate it (annotation %s), or set a later expiresAt or lifetime", in.a.Display, in.v.Expiry.UTC().Format(time.RFC3339),
			in.o.ExpiryWarning, keymintv1alpha1.RotateAnnotation)), true
}

func notExpiringSoon(*statusInput) (condition, bool) {
	return conditionOf(false, keymintv1alpha1.ApiTokenReasonNotExpiringSoon, "The token is not inside its expiry warning window"), true
}

func revokedAsTold(in *statusInput) (condition, bool) {
	if in.revoked == "" {
		return condition{}, false
	}
	return conditionOf(true, in.revoked, revokeMessage(in.revoked, in.o.Spec.ServiceUser)), true
}

func notRevoked(in *statusInput) (condition, bool) {
	return conditionOf(false, keymintv1alpha1.ApiTokenReasonNotRevoked, revokeMessage("", in.o.Spec.ServiceUser)), true
}

func expired(in *statusInput) (condition, bool) {
	if !in.v.Expired {
		return condition{}, false
	}
	return conditionOf(true, keymintv1alpha1.ApiTokenReasonExpired, "The token expired at "+in.v.Expiry.UTC().Format(time.RFC3339)), true
}

func notExpired(*statusInput) (condition, bool) {
	return conditionOf(false, keymintv1alpha1.ApiTokenReasonNotExpired, "The token has not expired"), true
}

func authorizationAnswered(in *statusInput) (condition, bool) {
	if in.auth == nil {
		return condition{}, false
	}
	return conditionOf(in.auth.Allowed, in.auth.Reason, in.auth.Message), true
}

// readySecretConflict: hidden when not reveal, as a revoked ApiToken naming
// any secretName would tell its writer whether a Secret of that name exists.
func readySecretConflict(in *statusInput) (condition, bool) {
	if !in.o.Conflict || !in.reveal {
		return condition{}, false
	}
	return conditionOf(false, keymintv1alpha1.ApiTokenReasonSecretConflict, fmt.Sprintf(
		"Secret %q exists and is not owned by this ApiToken; delete it or set spec.secretName on a new ApiToken", in.secretName)), true
}

func readyRevoked(in *statusInput) (condition, bool) {
	if in.revoked == "" {
		return condition{}, false
	}
	return conditionOf(false, in.revoked, revokeMessage(in.revoked, in.o.Spec.ServiceUser)), true
}

// readyRequesterRefused: no token for want of a requester keymint trusts,
// or of one who may have it.
func readyRequesterRefused(in *statusInput) (condition, bool) {
	if in.auth == nil || (in.reveal && (in.v.Accepted || !in.a.Denied)) {
		return condition{}, false
	}
	return conditionOf(false, in.auth.Reason, in.auth.Message), true
}

func readyExpired(in *statusInput) (condition, bool) {
	if !in.v.Expired {
		return condition{}, false
	}
	return conditionOf(false, keymintv1alpha1.ApiTokenReasonExpired, "The token has expired; a later expiresAt or lifetime mints a new one"), true
}

func readyLeaked(in *statusInput) (condition, bool) {
	if !in.v.Leaked {
		return condition{}, false
	}
	return conditionOf(false, keymintv1alpha1.ApiTokenReasonLeaked, fmt.Sprintf(
		"Token %s… was reported leaked and is refused; its replacement is not issued yet", in.a.Display)), true
}

// leakPending: a report names the current token, not replaced yet.
func leakPending(in *statusInput) (condition, bool) {
	if len(in.st.LeakReports) == 0 {
		return condition{}, false
	}
	r := &in.st.LeakReports[len(in.st.LeakReports)-1]
	why := "its replacement is not issued yet"
	if in.auth != nil && !in.auth.Allowed {
		why += " (" + in.auth.Reason + ": see condition Authorized)"
	}
	return conditionOf(true, keymintv1alpha1.ApiTokenReasonReported, fmt.Sprintf(
		"A token of this ApiToken was reported leaked (%s) and is refused; %s", leakWhere(r), why)), true
}

// leakReplaced: keymint acted on the last leak, and the token current
// then is current still.
func leakReplaced(in *statusInput) (condition, bool) {
	l := in.st.LastLeak
	if l == nil || l.CurrentSerial != in.st.Serial || in.st.TokenHash == "" {
		return condition{}, false
	}
	what := "A rotated-out token"
	if l.TokenPrefix != "" {
		what = "Token " + l.TokenPrefix + "…"
	}
	return conditionOf(true, keymintv1alpha1.ApiTokenReasonReported, fmt.Sprintf(
		"%s was reported leaked (%s) and is no longer accepted; the current token is %s…", what, leakWhere(&l.LeakReport), in.a.Display)), true
}

// leakPast: the last leak is behind a later rotation.
func leakPast(in *statusInput) (condition, bool) {
	if in.st.LastLeak == nil {
		return condition{}, false
	}
	return conditionOf(false, keymintv1alpha1.ApiTokenReasonNotReported, "No current token of this ApiToken was reported leaked"), true
}

// leakWhere says where a leak was found and who told, never the token.
func leakWhere(r *keymintv1alpha1.LeakReport) string {
	where := "reported through the " + r.Source + " endpoint at " + r.ReportedAt.UTC().Format(time.RFC3339)
	if r.Location != "" {
		where = "found at " + r.Location + ", " + where
	}
	return where
}

func readyWriteFailed(in *statusInput) (condition, bool) {
	if in.v.Accepted || in.a.Failed == "" {
		return condition{}, false
	}
	return conditionOf(false, keymintv1alpha1.ApiTokenReasonPending, "No token is issued: "+in.a.Failed), true
}

func readyPending(in *statusInput) (condition, bool) {
	return conditionOf(false, keymintv1alpha1.ApiTokenReasonPending, "No token is issued yet"), !in.v.Accepted
}

func readyIssued(in *statusInput) (condition, bool) {
	return conditionOf(true, keymintv1alpha1.ApiTokenReasonIssued, fmt.Sprintf("Token %s… is in Secret %q", in.a.Display, in.secretName)), true
}

func requestNotEvaluated(in *statusInput) (condition, bool) {
	return condition{Status: metav1.ConditionUnknown, Reason: keymintv1alpha1.ApiTokenReasonNotEvaluated,
		Message: "Not evaluated while the token is revoked by its spec or has no valid requester record"}, !in.reveal
}

// requestGranted says whether the token gets what its spec asks for: what
// admission warned about, kept on record. The token never gets more.
func requestGranted(in *statusInput) (condition, bool) {
	o := in.o
	if !o.User.Found {
		return condition{}, false
	}
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
	return conditionOf(len(why) == 0, reason, message), true
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
	case keymintv1alpha1.ApiTokenReasonIdle:
		return "No check accepted the token for longer than its maxIdle: it was revoked; a new keymint.io/rotate value (kubectl keymint rotate) issues a new one"
	}
	return "The token is not revoked"
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

// shortDuration is d as people write it: "1h", "15m", "1h30m", "90h".
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2] // "1h30m0s" → "1h30m", "15m0s" → "15m"
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2] // "1h0m" → "1h"
	}
	return s
}

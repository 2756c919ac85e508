// Events: what an ApiToken reconcile tells of its actions and of the conditions they changed.

package controllers

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/secretrecord"
	"github.com/keymint/keymint/internal/tokenstate"
)

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
	eventLeaked            = "Leaked"
	eventReissued          = "Reissued"
	eventApprovalPending   = "ApprovalPending"
	eventApproved          = "Approved"
	eventApprovalDenied    = "ApprovalDenied"
)

// leakedTotal counts the leak reports the controller acted on.
var leakedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "keymint_leaked_tokens_total",
	Help: "Tokens reported leaked that keymint refused for good and replaced (current) or dropped (rotated-out), by the endpoint that received the report (github, gitlab).",
}, []string{"source"})

func init() {
	metrics.Registry.MustRegister(leakedTotal)
	// Both series exist from the start, so that an alert on their
	// increase sees the first leak.
	for _, source := range []string{"github", "gitlab"} {
		leakedTotal.WithLabelValues(source)
	}
}

// actionEvent emits an Event for the action a reconcile took, and for an
// adopted record. Events name tokens only by their display prefix.
func (r *ApiTokenReconciler) actionEvent(tok *keymintv1alpha1.ApiToken, obs *observation, d decision, rec *secretrecord.Record) {
	secretName := tok.SecretNameOrDefault()
	if obs.Adopted {
		r.Recorder.Eventf(tok, nil, corev1.EventTypeNormal, eventAdopted, "Recover",
			"Recovered token %s… (serial %d) from the record keymint signed in Secret %s before its status was written", obs.Display, obs.Serial, secretName)
	}
	switch d.Reason {
	case eventIssued:
		r.Recorder.Eventf(tok, nil, corev1.EventTypeNormal, eventIssued, "Issue", "Issued token %s… into Secret %s", rec.Display, secretName)
	case eventHashConflict:
		r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventHashConflict, "Issue",
			"Another ApiToken's status names a hash of token %s…: a hash belongs to one ApiToken, so it is never accepted again; issued token %s…", obs.Display, rec.Display)
	case eventSecretChanged:
		r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventSecretChanged, "Issue",
			"Secret %s was changed outside keymint: it held a token or record keymint did not write there, which is never accepted; issued token %s… in its place", secretName, rec.Display)
	case eventTokenLost:
		r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventTokenLost, "Issue",
			"Secret %s no longer held token %s…, which is no longer accepted; issued token %s…", secretName, obs.Display, rec.Display)
	case eventRenewed:
		r.Recorder.Eventf(tok, nil, corev1.EventTypeNormal, eventRenewed, "Issue",
			"The expiry was extended, and a token's expiry never moves later: issued token %s…%s; %s", rec.Display, expiresText(rec.ExpiresAt), graceText(rec))
	case eventRotationRequested, eventRotationScheduled:
		how := "on schedule"
		if d.Reason == eventRotationRequested {
			how = fmt.Sprintf("as requested by %s=%q", keymintv1alpha1.RotateAnnotation, truncate(obs.RotateRequest, 64))
		}
		r.Recorder.Eventf(tok, nil, corev1.EventTypeNormal, "Rotated", "Rotate", "Rotated %s to token %s…; %s", how, rec.Display, graceText(rec))
	case eventLeaked:
		r.Recorder.Eventf(tok, nil, corev1.EventTypeNormal, "Rotated", "Rotate",
			"Replaced leaked token %s… with token %s… in Secret %s; the leaked one is never accepted again", obs.Display, rec.Display, secretName)
	case eventReissued:
		r.Recorder.Eventf(tok, nil, corev1.EventTypeNormal, eventReissued, "Issue",
			"Issued token %s… into Secret %s as requested by %s=%q, after an idle revocation", rec.Display, secretName,
			keymintv1alpha1.RotateAnnotation, truncate(obs.RotateRequest, 64))
	case eventRevoked:
		r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventRevoked, "Revoke",
			"%s; removed the token from Secret %s", revokeMessage(obs.Verdict.Revoked, tok.Spec.ServiceUser), secretName)
	}
}

// truncate keeps user-set text in an Event short: the API server refuses an
// Event whose note is too long.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func graceText(rec *secretrecord.Record) string {
	if n := len(rec.Previous); n > 0 {
		return "the previous token is accepted until " + rec.Previous[n-1].ValidUntil.UTC().Format(time.RFC3339)
	}
	return "the previous token is no longer accepted"
}

func expiresText(t *time.Time) string {
	if t == nil {
		return ", which does not expire"
	}
	return ", expiring at " + t.UTC().Format(time.RFC3339)
}

// conditionEvents emits an Event for each condition the status write changed
// without an action: expiry by the clock, a Secret conflict, a denial.
func (r *ApiTokenReconciler) conditionEvents(tok *keymintv1alpha1.ApiToken, before *keymintv1alpha1.ApiTokenStatus) {
	st := tok.Status
	secretName := tok.SecretNameOrDefault()
	if shortened(before, &st) {
		was := "no expiry"
		if before.ExpiresAt != nil {
			was = before.ExpiresAt.UTC().Format(time.RFC3339)
		}
		r.Recorder.Eventf(tok, nil, corev1.EventTypeNormal, eventExpiryShortened, "Expire", "Token %s… now expires at %s (was %s): the spec or the user's policy shortened it",
			st.TokenPrefix, st.ExpiresAt.UTC().Format(time.RFC3339), was)
	}
	if becameTrue(before.Conditions, st.Conditions, keymintv1alpha1.ApiTokenConditionExpired) {
		r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventExpired, "Expire", "Token %s… expired at %s", st.TokenPrefix, st.ExpiresAt.UTC().Format(time.RFC3339))
	}
	// Once per token: when the window opens, or when a new token is
	// already inside it (a lifetime shorter than the warning).
	if becameTrue(before.Conditions, st.Conditions, keymintv1alpha1.ApiTokenConditionExpiringSoon) ||
		(meta.IsStatusConditionTrue(st.Conditions, keymintv1alpha1.ApiTokenConditionExpiringSoon) && before.TokenHash != st.TokenHash) {
		r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventExpiringSoon, "Warn", "%s",
			meta.FindStatusCondition(st.Conditions, keymintv1alpha1.ApiTokenConditionExpiringSoon).Message)
	}
	if c := meta.FindStatusCondition(st.Conditions, keymintv1alpha1.ApiTokenConditionAuthorized); c != nil {
		// Once per denial (a retry that is denied again says nothing new),
		// and once when a right granted since lets keymint mint.
		prev := meta.FindStatusCondition(before.Conditions, keymintv1alpha1.ApiTokenConditionAuthorized)
		switch {
		case c.Status == metav1.ConditionFalse && (prev == nil || prev.Status != c.Status || prev.Message != c.Message):
			r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventMintDenied, "Authorize", "%s", c.Message)
		case c.Status == metav1.ConditionTrue && prev != nil && prev.Status == metav1.ConditionFalse:
			r.Recorder.Eventf(tok, nil, corev1.EventTypeNormal, keymintv1alpha1.ApiTokenReasonAuthorized, "Authorize", "%s", c.Message)
		}
	}
	r.approvalEvents(tok, before, &st)
	// A leak whose replacement waits (a denied mint): said now, not once
	// it is replaced.
	if becameTrue(before.Conditions, st.Conditions, keymintv1alpha1.ApiTokenConditionLeaked) && len(st.LeakReports) > 0 {
		r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventLeaked, "Refuse", "%s",
			meta.FindStatusCondition(st.Conditions, keymintv1alpha1.ApiTokenConditionLeaked).Message)
	}
	if hasReason(st.Conditions, keymintv1alpha1.ApiTokenConditionReady, keymintv1alpha1.ApiTokenReasonSecretConflict) &&
		!hasReason(before.Conditions, keymintv1alpha1.ApiTokenConditionReady, keymintv1alpha1.ApiTokenReasonSecretConflict) {
		r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventSecretConflict, "Issue",
			"Secret %s exists and is not owned by this ApiToken; no token was written", secretName)
	}
}

// leakEvents tells of each leak report acted on: where the token was
// found, never the token.
func (r *ApiTokenReconciler) leakEvents(tok *keymintv1alpha1.ApiToken, obs *observation, leaks []keymintv1alpha1.LeakReport) {
	for i := range leaks {
		l := &leaks[i]
		leakedTotal.WithLabelValues(l.Source).Inc()
		what := "A rotated-out token"
		if l.TokenHash == obs.Hash {
			what = "Token " + obs.Display + "…"
		}
		r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventLeaked, "Refuse",
			"%s was reported leaked (%s): it is never accepted again", what, truncate(leakWhere(l), 600))
	}
}

// retiredEvents tells of each rotated-out token retireWhenIdle ended.
func (r *ApiTokenReconciler) retiredEvents(tok *keymintv1alpha1.ApiToken, retired []tokenstate.Previous) {
	for _, p := range retired {
		r.Recorder.Eventf(tok, nil, corev1.EventTypeNormal, eventRetiredIdle, "Retire",
			"The rotated-out token issued at %s is no longer accepted: the current token %s… is in use and the old one went unused for %s (rotation.retireWhenIdle)",
			p.IssuedAt.UTC().Format(time.RFC3339), tok.Status.TokenPrefix, tokenstate.RetireWhenIdle(&tok.Spec))
	}
}

// rateLimitedEvent tells why a due mint waits.
func (r *ApiTokenReconciler) rateLimitedEvent(tok *keymintv1alpha1.ApiToken, wait time.Duration, d decision) {
	r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventMintRateLimited, "Issue",
		"keymint minted %d tokens for this ApiToken within a minute: the next waits %s (%s)", mintBurst, wait.Round(time.Second), d.Reason)
}

// writeFailedEvent tells why the Secret could not be written.
func (r *ApiTokenReconciler) writeFailedEvent(tok *keymintv1alpha1.ApiToken, err error) {
	r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventSecretWriteFailed, "Write", "%s", err.Error())
}

// shortened reports whether the same token's expiry moved earlier.
func shortened(before, after *keymintv1alpha1.ApiTokenStatus) bool {
	if before.TokenHash == "" || before.TokenHash != after.TokenHash || after.ExpiresAt == nil {
		return false
	}
	return before.ExpiresAt == nil || after.ExpiresAt.Before(before.ExpiresAt)
}

func becameTrue(before, after []metav1.Condition, condType string) bool {
	return meta.IsStatusConditionTrue(after, condType) && !meta.IsStatusConditionTrue(before, condType)
}

func hasReason(conds []metav1.Condition, condType, reason string) bool {
	c := meta.FindStatusCondition(conds, condType)
	return c != nil && c.Reason == reason
}

// approvalEvents tells each step of an approval: a request waiting (once
// per request and reason), approved, denied.
func (r *ApiTokenReconciler) approvalEvents(tok *keymintv1alpha1.ApiToken, before, st *keymintv1alpha1.ApiTokenStatus) {
	c := meta.FindStatusCondition(st.Conditions, keymintv1alpha1.ApiTokenConditionApproved)
	if c == nil {
		return
	}
	if prev := meta.FindStatusCondition(before.Conditions, keymintv1alpha1.ApiTokenConditionApproved); prev != nil &&
		prev.Status == c.Status && prev.Reason == c.Reason && prev.Message == c.Message {
		return
	}
	switch c.Reason {
	case keymintv1alpha1.ApiTokenReasonApproved:
		r.Recorder.Eventf(tok, nil, corev1.EventTypeNormal, eventApproved, "Approve", "%s", c.Message)
	case keymintv1alpha1.ApiTokenReasonDenied:
		r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventApprovalDenied, "Approve", "%s", c.Message)
	default:
		r.Recorder.Eventf(tok, nil, corev1.EventTypeNormal, eventApprovalPending, "Approve", "%s", c.Message)
	}
}

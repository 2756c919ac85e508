// Approval: whether a token of a ServiceUser with tokenPolicy.requireApproval may be minted and accepted now, asked at the moment keymint acts.

package controllers

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/approval"
	"github.com/keymint/keymint/internal/authz"
	"github.com/keymint/keymint/internal/requester"
	"github.com/keymint/keymint/internal/tokenstate"
)

// grandfathered is who the status names as approving a token that was
// issued before its ServiceUser required approval.
const grandfathered = "keymint (issued before the ServiceUser required approval)"

// approvalAnswer answers "is the token, as requested now, approved?".
type approvalAnswer struct {
	Approved bool
	// Reason is the Approved condition's: Approved, Pending or Denied.
	Reason  string
	Message string
	// Decision is the decision that answers the request, when it counts:
	// it goes into the status. nil while pending.
	Decision *approval.Record
	// Grant is the grant of the spec the decision answered, taken when it
	// was asked: the spec may change before the status is written, and a
	// changed spec is not what was approved.
	Grant string
	// Retry is true when only a right granted since can change the answer
	// (an approver who may no longer approve): RBAC sends no event.
	Retry bool
}

// needsApproval reports whether a reconcile of tok must ask whether it is
// approved before deciding: its user requires approval and the status
// records no approval of its spec as it is.
func needsApproval(tok *keymintv1alpha1.ApiToken, user *keymintv1alpha1.ServiceUser) bool {
	return user != nil && user.Spec.TokenPolicy.RequireApproval && !tok.Spec.Revoked && !tokenstate.Approved(&tok.Spec, &tok.Status)
}

// askApproval asks whether tok's request, as trust reads it, is approved
// now: a decision keymint signed on exactly this request, by a user who may
// still approve ServiceUser and who did not ask for it.
func (r *ApiTokenReconciler) askApproval(ctx context.Context, tok *keymintv1alpha1.ApiToken, trust *requester.Trust) (approvalAnswer, error) {
	user := tok.Spec.ServiceUser
	grant := tokenstate.GrantDigest(&tok.Spec)
	if a := distrust(trust, tok.Namespace, tok.Name); a != nil {
		return approvalAnswer{Reason: keymintv1alpha1.ApiTokenReasonPending, Message: "There is no request to approve: " + a.Message}, nil
	}
	req := trust.Record
	asked := fmt.Sprintf("user %q asked for this token at %s", req.Requester.Username, req.RequestedAt.UTC().Format(time.RFC3339))
	dec := approval.Read(r.Keyring, tok, req)
	switch {
	case dec == nil:
		return approvalAnswer{Reason: keymintv1alpha1.ApiTokenReasonPending, Message: fmt.Sprintf(
			"Waiting for approval: %s. A user who may approve ServiceUser %q (verb %q on serviceusers), other than them, approves it with `kubectl keymint approve -n %s %s`",
			asked, user, authz.ApproveVerb, tok.Namespace, tok.Name)}, nil
	case !dec.Approved():
		why := ""
		if dec.Message != "" {
			why = fmt.Sprintf(" (%q)", dec.Message)
		}
		return approvalAnswer{Reason: keymintv1alpha1.ApiTokenReasonDenied, Decision: dec, Grant: grant, Message: fmt.Sprintf(
			"Denied by %q at %s%s: %s. A denial is final for this request; a changed spec is a new request",
			dec.By.Username, dec.At.UTC().Format(time.RFC3339), why, asked)}, nil
	case approval.SameUser(dec.By, req.Requester):
		// Admission refuses it; a record that says so anyway is not one
		// keymint acts on.
		return approvalAnswer{Reason: keymintv1alpha1.ApiTokenReasonPending, Message: fmt.Sprintf(
			"Waiting for approval: %s, and may not approve it themselves", asked)}, nil
	}
	denial, err := authz.MayApprove(ctx, r.Authorizer, dec.By, tok.Namespace, user)
	if err != nil {
		return approvalAnswer{}, err
	}
	if denial != nil {
		return approvalAnswer{Reason: keymintv1alpha1.ApiTokenReasonPending, Retry: true, Message: fmt.Sprintf(
			"Approved by %q at %s, who may no longer approve: %s. keymint asks again after %s, then less often",
			dec.By.Username, dec.At.UTC().Format(time.RFC3339), denial.Sentence(dec.By.Username, ""), r.authorizationRetry())}, nil
	}
	return approvalAnswer{Approved: true, Reason: keymintv1alpha1.ApiTokenReasonApproved, Decision: dec, Grant: grant, Message: fmt.Sprintf(
		"Approved by %q at %s: %s", dec.By.Username, dec.At.UTC().Format(time.RFC3339), asked)}, nil
}

// approvalRecord is the status's record of the decision on the token
// after a reconcile: the decision the answer acted on, a grandfathered
// token's, or the one recorded before. None when the user requires no
// approval, or once the token is revoked (un-revoking is a new request).
func approvalRecord(current *keymintv1alpha1.ApprovalStatus, o *observation, a *after) *keymintv1alpha1.ApprovalStatus {
	switch {
	case !o.User.RequireApproval, a.Verdict.Revoked != "":
		return nil
	case o.Approval != nil && o.Approval.Decision != nil && (o.Approval.Approved || o.Approval.Reason == keymintv1alpha1.ApiTokenReasonDenied):
		d := o.Approval.Decision
		return &keymintv1alpha1.ApprovalStatus{Decision: d.Decision, By: d.By.Username, At: d.At, Message: d.Message, Grant: o.Approval.Grant}
	case current == nil && a.Token.Issued && !o.Adopted && o.Current.Issued:
		// Only a token the status already named: one adopted from a
		// Secret record was minted by a reconcile whose status was lost,
		// maybe under the policy, and is never grandfathered.
		return &keymintv1alpha1.ApprovalStatus{Decision: keymintv1alpha1.DecisionApproved, By: grandfathered,
			At: metav1.NewTime(o.Now.UTC().Truncate(time.Second)), Grant: tokenstate.GrantDigest(o.Spec)}
	}
	return current
}

// The Approved condition's rules, for users that require approval.

func approvalAnswered(in *statusInput) (condition, bool) {
	if in.o.Approval == nil || !in.o.User.RequireApproval {
		return condition{}, false
	}
	return conditionOf(in.o.Approval.Approved, in.o.Approval.Reason, in.o.Approval.Message), true
}

func approvalRecorded(in *statusInput) (condition, bool) {
	ap := in.st.Approval
	if !in.o.User.RequireApproval || ap == nil || !tokenstate.Approved(in.o.Spec, in.st) {
		return condition{}, false
	}
	return conditionOf(true, keymintv1alpha1.ApiTokenReasonApproved, fmt.Sprintf("Approved by %q at %s", ap.By, ap.At.UTC().Format(time.RFC3339))), true
}

// readyUnapproved: no token, or none accepted, for want of an approval.
func readyUnapproved(in *statusInput) (condition, bool) {
	ans := in.o.Approval
	// An accepted token whose next mint (a rotation) waits stays Ready:
	// Approved says what waits, as Authorized does for a denied mint.
	if !in.o.User.RequireApproval || !(in.v.Unapproved || (in.a.Denied && ans != nil && !ans.Approved && !in.v.Accepted)) {
		return condition{}, false
	}
	reason, msg := keymintv1alpha1.ApiTokenReasonAwaitingApproval, "The token's spec, as it is, waits for approval: see condition Approved"
	if ans != nil && !ans.Approved {
		msg = ans.Message
		if ans.Reason == keymintv1alpha1.ApiTokenReasonDenied {
			reason = keymintv1alpha1.ApiTokenReasonApprovalDenied
		}
	}
	return conditionOf(false, reason, msg), true
}

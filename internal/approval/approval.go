// Package approval keeps the decision on a token of a ServiceUser with
// tokenPolicy.requireApproval: who approved or denied which request, signed
// by keymint's mutating admission webhook, the one place that sees who
// decides. An approver writes annotation keymint.io/decision ("approve" or
// "deny"); the webhook checks that they may approve the ServiceUser (RBAC
// verb "approve") and did not ask for the token, then replaces it with the
// signed record. The record answers one request (requester.Record.ID): any
// change that needs the right to mint is a new request, which the old
// decision does not answer.
//
// The record is never taken from the object a writer sends: the webhook
// keeps only the record of the stored object (which passed it), so a
// signature obtained by calling the webhook port directly never reaches
// etcd, as with the requester record.
package approval

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/authz"
	"github.com/keymint/keymint/internal/recordkey"
	"github.com/keymint/keymint/internal/requester"
)

// version starts every signed message, so that no other record keymint
// signs (a requester record, a Secret's) can verify as an approval.
const version = "keymint.io/approval/v1"

// MaxMessage bounds the reason an approver may give.
const MaxMessage = 256

// Decision values of keymint.io/decision.
const (
	Approve = "approve"
	Deny    = "deny"
)

// Record is a decision on one request.
type Record struct {
	// Decision is Approved or Denied.
	Decision string `json:"decision"`
	// By is the user who decided, as kube-apiserver authenticated them.
	By      authenticationv1.UserInfo `json:"by"`
	At      metav1.Time               `json:"at"`
	Message string                    `json:"message,omitempty"`
	// Request is the requester.Record.ID of the request decided.
	Request string `json:"request"`
}

// Approved reports whether the record approves.
func (r *Record) Approved() bool { return r.Decision == keymintv1alpha1.DecisionApproved }

func signedFields(tok *keymintv1alpha1.ApiToken, raw string) []string {
	return []string{version, tok.Namespace, tok.Name, string(tok.UID), raw}
}

// Read returns the decision keymint signed on request req of tok; nil when
// there is none (none written, edited, copied from another ApiToken, or
// for an earlier request).
func Read(ring *recordkey.Keyring, tok *keymintv1alpha1.ApiToken, req *requester.Record) *Record {
	raw, ok := tok.Annotations[keymintv1alpha1.ApprovalAnnotation]
	if !ok || req == nil || tok.UID == "" {
		return nil
	}
	if !ring.Verify(tok.Annotations[keymintv1alpha1.ApprovalSignatureAnnotation], signedFields(tok, raw)...) {
		return nil
	}
	rec := &Record{}
	if err := json.Unmarshal([]byte(raw), rec); err != nil || rec.Request != req.ID() {
		return nil
	}
	return rec
}

// sign writes rec into tok's annotations.
func sign(ring *recordkey.Keyring, tok *keymintv1alpha1.ApiToken, rec *Record) {
	raw, err := json.Marshal(rec)
	if err != nil {
		panic(err)
	}
	tok.Annotations[keymintv1alpha1.ApprovalAnnotation] = string(raw)
	tok.Annotations[keymintv1alpha1.ApprovalSignatureAnnotation] = ring.Sign(signedFields(tok, string(raw))...)
}

// Refusal is a decision the webhook does not record, worded for the
// person who sent it.
type Refusal struct{ Message string }

func (r *Refusal) Error() string { return r.Message }

func refuse(format string, args ...any) error { return &Refusal{Message: fmt.Sprintf(format, args...)} }

// Admit carries the approval through an admitted write of after (before:
// the stored object, nil on create) by who, at now, once requester.Admit
// has recorded after's request. user is the token's ServiceUser (nil when
// missing). It removes whatever approval annotations the writer sent, keeps
// the stored decision while it answers after's request, and turns a
// keymint.io/decision into a signed decision when who may make it. A
// decision keymint does not record is a *Refusal; other errors are the
// authorizer's.
func Admit(ctx context.Context, ring *recordkey.Keyring, az authz.Authorizer, user *keymintv1alpha1.ServiceUser,
	before, after *keymintv1alpha1.ApiToken, who authenticationv1.UserInfo, now time.Time) error {
	decision, hasDecision := after.Annotations[keymintv1alpha1.DecisionAnnotation]
	message := after.Annotations[keymintv1alpha1.DecisionMessageAnnotation]
	answers, pinned := after.Annotations[keymintv1alpha1.DecisionRequestAnnotation]
	if stored, ok := annotation(before, keymintv1alpha1.DecisionAnnotation); ok && stored == decision {
		// Stored while the webhook was skipped, and carried along by
		// this write: nobody's decision now.
		hasDecision = false
	}
	for _, k := range []string{keymintv1alpha1.DecisionAnnotation, keymintv1alpha1.DecisionMessageAnnotation, keymintv1alpha1.DecisionRequestAnnotation,
		keymintv1alpha1.ApprovalAnnotation, keymintv1alpha1.ApprovalSignatureAnnotation} {
		delete(after.Annotations, k)
	}
	req, p := requester.Read(ring, after)
	if p != "" {
		return fmt.Errorf("reading the requester record just written: %s", p)
	}
	var prev *Record
	if before != nil && !before.Spec.Revoked {
		// A revoked token's decisions end with it: un-revoking is a new
		// request.
		if prev = Read(ring, before, req); prev != nil {
			after.Annotations[keymintv1alpha1.ApprovalAnnotation] = before.Annotations[keymintv1alpha1.ApprovalAnnotation]
			after.Annotations[keymintv1alpha1.ApprovalSignatureAnnotation] = before.Annotations[keymintv1alpha1.ApprovalSignatureAnnotation]
		}
	}
	if !hasDecision {
		return nil
	}
	if decision != Approve && decision != Deny {
		return refuse("annotation %s must be %q or %q, not %q", keymintv1alpha1.DecisionAnnotation, Approve, Deny, decision)
	}
	if n := utf8.RuneCountInString(message); n > MaxMessage {
		return refuse("annotation %s is %d characters long; at most %d", keymintv1alpha1.DecisionMessageAnnotation, n, MaxMessage)
	}
	if before == nil {
		return refuse("a token cannot be approved or denied as it is created: %s is for a user who may approve its ServiceUser, once it exists", keymintv1alpha1.DecisionAnnotation)
	}
	name := after.Spec.ServiceUser
	switch {
	case user == nil:
		return refuse("ServiceUser %q does not exist: there is nothing to approve", name)
	case !user.Spec.TokenPolicy.RequireApproval:
		return refuse("ServiceUser %q does not require approval (tokenPolicy.requireApproval): its tokens need none", name)
	case prev != nil && !prev.Approved():
		return refuse("this request was denied by %q at %s, and a denial is final for it: a changed spec is a new request, which may be approved",
			prev.By.Username, prev.At.UTC().Format(time.RFC3339))
	case prev != nil && decision == Approve:
		return nil // approving again changes nothing
	case prev != nil:
		return refuse("this request was approved by %q at %s: to stop the token, revoke it (spec.revoked: true)",
			prev.By.Username, prev.At.UTC().Format(time.RFC3339))
	case pinned && answers != req.ID():
		return refuse("the request changed since it was read (annotation %s names another request): read the ApiToken again and decide on it as it is now",
			keymintv1alpha1.DecisionRequestAnnotation)
	case SameUser(req.Requester, who):
		return refuse("user %q asked for this token (admitted %s) and may not decide on it: another user who may approve ServiceUser %q must",
			who.Username, req.RequestedAt.UTC().Format(time.RFC3339), name)
	}
	denial, err := authz.MayApprove(ctx, az, who, after.Namespace, name)
	if err != nil {
		return err
	}
	if denial != nil {
		return refuse("%s", denial.Sentence(who.Username, ""))
	}
	rec := &Record{Decision: keymintv1alpha1.DecisionApproved, By: who, At: metav1.NewTime(now.UTC().Truncate(time.Second)), Message: message, Request: req.ID()}
	if decision == Deny {
		rec.Decision = keymintv1alpha1.DecisionDenied
	}
	sign(ring, after, rec)
	return nil
}

// annotation returns annotation k of tok, which may be nil.
func annotation(tok *keymintv1alpha1.ApiToken, k string) (string, bool) {
	if tok == nil {
		return "", false
	}
	v, ok := tok.Annotations[k]
	return v, ok
}

// SameUser reports whether two users are one to kube-apiserver's
// authorizers: the same name. UIDs, groups and extra do not matter: the
// same name under another UID (a ServiceAccount created again) or group is
// still the one who asked.
func SameUser(a, b authenticationv1.UserInfo) bool {
	return a.Username == b.Username
}

package approval

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/recordkey"
	"github.com/keymint/keymint/internal/recordkey/recordkeytest"
	"github.com/keymint/keymint/internal/requester"
)

// approvers allows verb approve on the ServiceUsers each user is listed
// with, and nothing else.
type approvers map[string][]string

func (a approvers) Allowed(_ context.Context, u authenticationv1.UserInfo, attrs authorizationv1.ResourceAttributes) (bool, error) {
	if attrs.Verb != "approve" || attrs.Resource != "serviceusers" {
		return false, nil
	}
	for _, name := range a[u.Username] {
		if name == attrs.Name {
			return true, nil
		}
	}
	return false, nil
}

var (
	t0    = time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	carol = authenticationv1.UserInfo{Username: "carol", UID: "c-1"}
	erin  = authenticationv1.UserInfo{Username: "erin", UID: "e-1"}
	dave  = authenticationv1.UserInfo{Username: "dave", UID: "d-1"}
	rules = approvers{"erin": {"billing"}, "carol": {"billing"}, "dave": {"payroll"}}
)

func strict() *keymintv1alpha1.ServiceUser {
	return &keymintv1alpha1.ServiceUser{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "billing"},
		Spec: keymintv1alpha1.ServiceUserSpec{TokenPolicy: keymintv1alpha1.TokenPolicy{RequireApproval: true}}}
}

// keyring is the key keymint signs with in a test: one per test.
func keyring(t *testing.T) *recordkey.Keyring {
	t.Helper()
	if ring, ok := rings[t.Name()]; ok {
		return ring
	}
	rings[t.Name()] = recordkeytest.Keyring(t, "k")
	return rings[t.Name()]
}

var rings = map[string]*recordkey.Keyring{}

// requested is carol's admitted ApiToken, as stored.
func requested(t *testing.T, scopes ...string) *keymintv1alpha1.ApiToken {
	t.Helper()
	ring := keyring(t)
	tok := &keymintv1alpha1.ApiToken{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "t", UID: "uid-t"},
		Spec: keymintv1alpha1.ApiTokenSpec{ServiceUser: "billing", Scopes: scopes}}
	requester.Admit(ring, nil, tok, carol, t0, time.Time{})
	return tok
}

// write admits an update of stored, changed by change, by who.
func write(t *testing.T, stored *keymintv1alpha1.ApiToken, who authenticationv1.UserInfo, user *keymintv1alpha1.ServiceUser,
	change func(*keymintv1alpha1.ApiToken)) (*keymintv1alpha1.ApiToken, error) {
	t.Helper()
	ring := keyring(t)
	after := stored.DeepCopy()
	change(after)
	requester.Admit(ring, stored, after, who, t0.Add(time.Minute), time.Time{})
	err := Admit(context.Background(), ring, rules, user, stored, after, who, t0.Add(time.Minute))
	return after, err
}

func decision(d, msg string) func(*keymintv1alpha1.ApiToken) {
	return func(t *keymintv1alpha1.ApiToken) {
		t.Annotations[keymintv1alpha1.DecisionAnnotation] = d
		if msg != "" {
			t.Annotations[keymintv1alpha1.DecisionMessageAnnotation] = msg
		}
	}
}

func decided(t *testing.T, tok *keymintv1alpha1.ApiToken) *Record {
	t.Helper()
	req, p := requester.Read(keyring(t), tok)
	if p != "" {
		t.Fatalf("requester record: %s", p)
	}
	return Read(keyring(t), tok, req)
}

// TestAdmitDecisions: who may decide on carol's request, and what is
// recorded.
func TestAdmitDecisions(t *testing.T) {
	tests := map[string]struct {
		who    authenticationv1.UserInfo
		user   *keymintv1alpha1.ServiceUser
		change func(*keymintv1alpha1.ApiToken)
		// refused is part of the refusal's message; "" when recorded.
		refused string
		want    string // the decision recorded
	}{
		"an approver approves":              {who: erin, change: decision("approve", "ok"), want: keymintv1alpha1.DecisionApproved},
		"an approver denies":                {who: erin, change: decision("deny", ""), want: keymintv1alpha1.DecisionDenied},
		"the requester, though an approver": {who: carol, change: decision("approve", ""), refused: `user "carol" asked for this token`},
		"the requester under another group": {who: authenticationv1.UserInfo{Username: "carol", UID: "c-1", Groups: []string{"ops"}}, change: decision("approve", ""), refused: "asked for this token"},
		"the requester under another UID":   {who: authenticationv1.UserInfo{Username: "carol", UID: "c-2"}, change: decision("approve", ""), refused: "asked for this token"},
		"a decision on a request read before it changed": {who: erin, change: func(t *keymintv1alpha1.ApiToken) {
			decision("approve", "")(t)
			t.Annotations[keymintv1alpha1.DecisionRequestAnnotation] = "sha256:the-narrower-request"
		}, refused: "the request changed since it was read"},
		"an approver of another user":      {who: dave, change: decision("approve", ""), refused: `verbs: ["approve"], resourceNames: ["billing"]`},
		"a user that requires no approval": {who: erin, user: &keymintv1alpha1.ServiceUser{}, change: decision("approve", ""), refused: "does not require approval"},
		"a missing user":                   {who: erin, change: decision("approve", ""), refused: "does not exist"},
		"not a decision":                   {who: erin, change: decision("yes", ""), refused: `must be "approve" or "deny"`},
		"a long reason":                    {who: erin, change: decision("approve", strings.Repeat("x", MaxMessage+1)), refused: "at most 256"},
		"an approver who widens in the same write": {who: erin, change: func(t *keymintv1alpha1.ApiToken) {
			decision("approve", "")(t)
			t.Spec.Scopes = []string{"invoices:write"}
		}, refused: `user "erin" asked for this token`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			user := strict()
			switch {
			case tc.user != nil && tc.user.Name == "":
				user = &keymintv1alpha1.ServiceUser{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "billing"}}
			case name == "a missing user":
				user = nil
			}
			after, err := write(t, requested(t), tc.who, user, tc.change)
			var refusal *Refusal
			if tc.refused != "" {
				if !errors.As(err, &refusal) || !strings.Contains(refusal.Message, tc.refused) {
					t.Fatalf("err = %v, want a refusal containing %q", err, tc.refused)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := after.Annotations[keymintv1alpha1.DecisionAnnotation]; ok {
				t.Error("the decision annotation is stored")
			}
			rec := decided(t, after)
			if rec == nil || rec.Decision != tc.want || rec.By.Username != tc.who.Username {
				t.Errorf("recorded %+v, want %s by %s", rec, tc.want, tc.who.Username)
			}
		})
	}
}

// TestAdmitKeepsAndDropsDecisions: a decision lasts while its request
// stands: kept across writes that change nothing that mints, dropped by a
// new request or an un-revoke; a writer's own approval annotations never
// count; a denial is final; approving twice is a no-op.
func TestAdmitKeepsAndDropsDecisions(t *testing.T) {
	approved, err := write(t, requested(t, "invoices:read"), erin, strict(), decision("approve", ""))
	if err != nil {
		t.Fatal(err)
	}
	same, err := write(t, approved, carol, strict(), func(t *keymintv1alpha1.ApiToken) {
		t.Spec.Description = "re-applied"
		delete(t.Annotations, keymintv1alpha1.ApprovalAnnotation)
	})
	if err != nil || decided(t, same) == nil {
		t.Errorf("a write that changes no request lost the approval (err %v)", err)
	}
	if _, err := write(t, approved, erin, strict(), decision("approve", "")); err != nil {
		t.Errorf("approving again: %v", err)
	}
	if _, err := write(t, approved, erin, strict(), decision("deny", "")); err == nil || !strings.Contains(err.Error(), "revoke") {
		t.Errorf("denying an approved request: %v, want a refusal pointing at revoke", err)
	}
	widened, err := write(t, approved, carol, strict(), func(t *keymintv1alpha1.ApiToken) { t.Spec.Scopes = []string{"invoices:write"} })
	if err != nil || decided(t, widened) != nil {
		t.Errorf("a widened spec kept the approval of another request (err %v)", err)
	}
	rotated, _ := write(t, approved, carol, strict(), func(t *keymintv1alpha1.ApiToken) { t.Annotations[keymintv1alpha1.RotateAnnotation] = "1" })
	if decided(t, rotated) != nil {
		t.Error("a rotation request kept the approval: it is a new request")
	}
	revoked := approved.DeepCopy()
	revoked.Spec.Revoked = true // written with no admission, as revoking is
	unrevoked, _ := write(t, revoked, carol, strict(), func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = false })
	if decided(t, unrevoked) != nil {
		t.Error("un-revoking kept the approval")
	}

	// What a writer sends is dropped, even a record keymint signed for this
	// very request (say, obtained by calling the webhook port directly).
	pending := requested(t, "invoices:read")
	planted, _ := write(t, pending, carol, strict(), func(t *keymintv1alpha1.ApiToken) {
		t.Annotations[keymintv1alpha1.ApprovalAnnotation] = approved.Annotations[keymintv1alpha1.ApprovalAnnotation]
		t.Annotations[keymintv1alpha1.ApprovalSignatureAnnotation] = approved.Annotations[keymintv1alpha1.ApprovalSignatureAnnotation]
	})
	if _, ok := planted.Annotations[keymintv1alpha1.ApprovalAnnotation]; ok {
		t.Error("an approval record sent by a writer was kept")
	}

	denied, err := write(t, requested(t), erin, strict(), decision("deny", "no"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := write(t, denied, erin, strict(), decision("approve", "")); err == nil || !strings.Contains(err.Error(), "final") {
		t.Errorf("approving a denied request: %v, want a refusal", err)
	}
	// Another ApiToken (or the same name created again) cannot use it.
	copied := requested(t)
	copied.UID = "uid-other"
	copied.Annotations[keymintv1alpha1.ApprovalAnnotation] = approved.Annotations[keymintv1alpha1.ApprovalAnnotation]
	copied.Annotations[keymintv1alpha1.ApprovalSignatureAnnotation] = approved.Annotations[keymintv1alpha1.ApprovalSignatureAnnotation]
	if decided(t, copied) != nil {
		t.Error("an approval copied to an ApiToken of another UID verifies")
	}
}

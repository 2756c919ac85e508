package controllers_test

import (
	"context"
	"encoding/json"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/testenv"
)

// approver gives user the right to approve tokens of ServiceUser
// serviceUser in ns (verb approve, by resourceNames) and to record the
// decision (patch on ApiTokens), nothing else, and returns a client acting
// as user.
func approver(ns, user, serviceUser string) client.Client {
	GinkgoHelper()
	name := user + "-approves-" + serviceUser
	Expect(k8sClient.Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{"keymint.io"}, Resources: []string{"apitokens"}, Verbs: []string{"get", "patch"}},
			{APIGroups: []string{"keymint.io"}, Resources: []string{"serviceusers"}, Verbs: []string{"approve"}, ResourceNames: []string{serviceUser}},
		},
	})).To(Succeed())
	Expect(k8sClient.Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
	})).To(Succeed())
	return actingAs(user)
}

func actingAs(user string) client.Client {
	GinkgoHelper()
	userCfg := rest.CopyConfig(cfg)
	userCfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: []string{"system:authenticated"}}
	c, err := client.New(userCfg, client.Options{Scheme: testenv.Scheme})
	Expect(err).NotTo(HaveOccurred())
	return c
}

// decide writes keymint.io/decision as c's user, as kubectl keymint
// approve|deny does.
func decide(c client.Client, ns, name, decision, message string) error {
	annotations := map[string]any{keymintv1alpha1.DecisionAnnotation: decision}
	if message != "" {
		annotations[keymintv1alpha1.DecisionMessageAnnotation] = message
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": annotations}})
	Expect(err).NotTo(HaveOccurred())
	tok := &keymintv1alpha1.ApiToken{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	return c.Patch(context.Background(), tok, client.RawPatch(types.MergePatchType, patch))
}

// updateAs changes an ApiToken as c's user would with kubectl edit.
func updateAs(c client.Client, ns, name string, mutate func(*keymintv1alpha1.ApiToken)) {
	GinkgoHelper()
	Eventually(func() error {
		t := getToken(ns, name)
		mutate(t)
		return c.Update(ctx, t)
	}).Should(Succeed())
}

func conditionMessage(t *keymintv1alpha1.ApiToken, condType string) string {
	c := meta.FindStatusCondition(t.Status.Conditions, condType)
	if c == nil {
		return ""
	}
	return c.Message
}

var _ = Describe("A ServiceUser that requires approval", func() {
	It("mints nothing until another user who may approve it does; a widened spec waits again; revoking needs no approval", func() {
		ns := newNamespace()
		createUser(ns, "billing", testenv.WithPermissions("invoices:read", "invoices:write"), testenv.WithRequireApproval())
		createUser(ns, "payroll", testenv.WithRequireApproval())
		carol, _ := minter(ns, "carol", "billing")
		erin := approver(ns, "erin", "billing")
		dave := approver(ns, "dave", "payroll")

		By("carol asks for a token: Pending, no Secret, no hash")
		Expect(carol.Create(ctx, testenv.ApiToken(ns, "t", "billing", testenv.WithScopes("invoices:read")))).To(Succeed())
		t := expectCondition(ns, "t", keymintv1alpha1.ApiTokenConditionApproved, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonPending)
		Expect(conditionMessage(t, keymintv1alpha1.ApiTokenConditionApproved)).To(And(
			ContainSubstring(`user "carol" asked for this token`), ContainSubstring("kubectl keymint approve -n "+ns+" t")))
		t = expectCondition(ns, "t", keymintv1alpha1.ApiTokenConditionReady, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonAwaitingApproval)
		Expect(t.Status.TokenHash).To(BeEmpty())
		_, err := getSecret(ns, "t")
		Expect(isNotFound(err)).To(BeTrue(), "no Secret before approval: %v", err)

		By("carol may not approve her own request, even with the right to approve")
		approver(ns, "carol", "billing")
		err = decide(carol, ns, "t", "approve", "")
		Expect(err).To(MatchError(ContainSubstring(`user "carol" asked for this token`)))

		By("dave may approve payroll's tokens, not billing's")
		err = decide(dave, ns, "t", "approve", "")
		Expect(err).To(MatchError(And(ContainSubstring(`may not approve tokens of ServiceUser "billing"`),
			ContainSubstring(`verbs: ["approve"], resourceNames: ["billing"]`))))

		By("an approval annotation written by hand is not one")
		updateAs(carol, ns, "t", func(t *keymintv1alpha1.ApiToken) {
			t.Annotations[keymintv1alpha1.ApprovalAnnotation] = `{"decision":"Approved","by":{"username":"erin"}}`
			t.Annotations[keymintv1alpha1.ApprovalSignatureAnnotation] = "k1.forged"
		})
		Expect(getToken(ns, "t").Annotations).NotTo(HaveKey(keymintv1alpha1.ApprovalAnnotation), "the webhook drops approval annotations a writer sends")

		By("erin approves: the token is minted")
		Expect(decide(erin, ns, "t", "approve", "ticket OPS-1")).To(Succeed())
		plain, t := issued(ns, "t")
		Expect(t.Annotations).NotTo(HaveKey(keymintv1alpha1.DecisionAnnotation))
		Expect(t.Status.Approval).NotTo(BeNil())
		Expect(t.Status.Approval.By).To(Equal("erin"))
		Expect(t.Status.Approval.Message).To(Equal("ticket OPS-1"))
		expectCondition(ns, "t", keymintv1alpha1.ApiTokenConditionApproved, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonApproved)
		expectCondition(ns, "t", keymintv1alpha1.ApiTokenConditionReady, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonIssued)
		Eventually(func() []string { return eventsFor(ns, "t") }).Should(ContainElements("ApprovalPending", "Approved"))

		By("re-applying the same spec keeps the approval (GitOps)")
		updateAs(carol, ns, "t", func(t *keymintv1alpha1.ApiToken) {
			delete(t.Annotations, keymintv1alpha1.ApprovalAnnotation)
			delete(t.Annotations, keymintv1alpha1.ApprovalSignatureAnnotation)
			t.Spec.Description = "re-applied"
		})
		t = getToken(ns, "t")
		Expect(t.Annotations).To(HaveKey(keymintv1alpha1.ApprovalAnnotation), "kept from the stored object")
		Consistently(func() string { now, _ := issued(ns, "t"); return now }, "1s").Should(Equal(plain))
		expectCondition(ns, "t", keymintv1alpha1.ApiTokenConditionApproved, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonApproved)

		By("carol widens the scopes: Pending again, and the token is not accepted meanwhile")
		updateAs(carol, ns, "t", func(t *keymintv1alpha1.ApiToken) { t.Spec.Scopes = []string{"invoices:read", "invoices:write"} })
		expectCondition(ns, "t", keymintv1alpha1.ApiTokenConditionApproved, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonPending)
		t = expectCondition(ns, "t", keymintv1alpha1.ApiTokenConditionReady, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonAwaitingApproval)
		Expect(t.Annotations).NotTo(HaveKey(keymintv1alpha1.ApprovalAnnotation), "the old decision answered another request")

		By("erin approves the widened spec: the same token is accepted again")
		Expect(decide(erin, ns, "t", "approve", "")).To(Succeed())
		expectCondition(ns, "t", keymintv1alpha1.ApiTokenConditionReady, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonIssued)
		now, _ := issued(ns, "t")
		Expect(now).To(Equal(plain), "approving a change mints nothing")

		By("carol revokes it, with nobody's approval")
		updateAs(carol, ns, "t", func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = true })
		expectCondition(ns, "t", keymintv1alpha1.ApiTokenConditionRevoked, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonRevokedBySpec)
		Eventually(func() string { return getToken(ns, "t").Status.TokenHash }).Should(BeEmpty())

		By("un-revoking is a new request")
		updateAs(carol, ns, "t", func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = false })
		expectCondition(ns, "t", keymintv1alpha1.ApiTokenConditionApproved, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonPending)
		Consistently(func() string { return getToken(ns, "t").Status.TokenHash }, "1s").Should(BeEmpty())
	})

	It("keeps a denial final for its request; a changed spec may be approved", func() {
		ns := newNamespace()
		createUser(ns, "billing", testenv.WithPermissions("invoices:read", "invoices:write"), testenv.WithRequireApproval())
		carol, _ := minter(ns, "carol", "billing")
		erin := approver(ns, "erin", "billing")
		frank := approver(ns, "frank", "billing")
		Expect(carol.Create(ctx, testenv.ApiToken(ns, "t", "billing", testenv.WithScopes("invoices:write")))).To(Succeed())
		expectCondition(ns, "t", keymintv1alpha1.ApiTokenConditionApproved, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonPending)

		Expect(decide(erin, ns, "t", "deny", "write is not for exporters")).To(Succeed())
		t := expectCondition(ns, "t", keymintv1alpha1.ApiTokenConditionApproved, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonDenied)
		Expect(conditionMessage(t, keymintv1alpha1.ApiTokenConditionApproved)).To(ContainSubstring(`"write is not for exporters"`))
		expectCondition(ns, "t", keymintv1alpha1.ApiTokenConditionReady, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonApprovalDenied)
		Eventually(func() []string { return eventsFor(ns, "t") }).Should(ContainElement("ApprovalDenied"))

		Expect(decide(frank, ns, "t", "approve", "")).To(MatchError(ContainSubstring("a denial is final")))
		Expect(getToken(ns, "t").Status.TokenHash).To(BeEmpty())

		updateAs(carol, ns, "t", func(t *keymintv1alpha1.ApiToken) { t.Spec.Scopes = []string{"invoices:read"} })
		expectCondition(ns, "t", keymintv1alpha1.ApiTokenConditionApproved, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonPending)
		Expect(decide(frank, ns, "t", "approve", "")).To(Succeed())
		issued(ns, "t")
	})

	It("lets tokens issued before the policy work on, and any change to them waits", func() {
		ns := newNamespace()
		createUser(ns, "billing", testenv.WithPermissions("invoices:read", "invoices:write"))
		carol, _ := minter(ns, "carol", "billing")
		Expect(carol.Create(ctx, testenv.ApiToken(ns, "t", "billing", testenv.WithScopes("invoices:read")))).To(Succeed())
		plain, _ := issued(ns, "t")

		mutateUser(ns, "billing", func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.RequireApproval = true })
		t := expectCondition(ns, "t", keymintv1alpha1.ApiTokenConditionApproved, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonApproved)
		Expect(t.Status.Approval.By).To(ContainSubstring("issued before"))
		expectCondition(ns, "t", keymintv1alpha1.ApiTokenConditionReady, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonIssued)
		now, _ := issued(ns, "t")
		Expect(now).To(Equal(plain))

		updateAs(carol, ns, "t", func(t *keymintv1alpha1.ApiToken) { t.Spec.Scopes = []string{"invoices:read", "invoices:write"} })
		expectCondition(ns, "t", keymintv1alpha1.ApiTokenConditionReady, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonAwaitingApproval)
	})
})

package controllers_test

import (
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/testenv"
)

// minter gives user the right to write ApiTokens and mint tokens of
// ServiceUser serviceUser in ns, and returns a client acting as user and
// the RoleBinding that grants it (to delete, and create again).
func minter(ns, user, serviceUser string) (client.Client, func() *rbacv1.RoleBinding) {
	GinkgoHelper()
	name := user + "-mints-" + serviceUser
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{"keymint.io"}, Resources: []string{"apitokens"}, Verbs: []string{"get", "create", "update", "patch"}},
			{APIGroups: []string{"keymint.io"}, Resources: []string{"serviceusers"}, Verbs: []string{"mint"}, ResourceNames: []string{serviceUser}},
		},
	}
	Expect(k8sClient.Create(ctx, role)).To(Succeed())
	binding := func() *rbacv1.RoleBinding {
		return &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
		}
	}
	Expect(k8sClient.Create(ctx, binding())).To(Succeed())
	userCfg := rest.CopyConfig(cfg)
	userCfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: []string{"system:authenticated"}}
	c, err := client.New(userCfg, client.Options{Scheme: testenv.Scheme})
	Expect(err).NotTo(HaveOccurred())
	return c, binding
}

var _ = Describe("A requester who loses the right to mint", func() {
	It("keeps the issued token; its next rotation waits, and happens once the right is back", func() {
		ns := newNamespace()
		createUser(ns, "billing")
		carol, binding := minter(ns, "carol", "billing")

		tok := &keymintv1alpha1.ApiToken{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "t"}, Spec: keymintv1alpha1.ApiTokenSpec{ServiceUser: "billing"}}
		testenv.WithRotation(time.Hour, 0)(tok)
		Expect(carol.Create(ctx, tok)).To(Succeed())
		plain, _ := issued(ns, "t")
		expectCondition(ns, "t", keymintv1alpha1.ApiTokenConditionAuthorized, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonAuthorized)

		Expect(k8sClient.Delete(ctx, binding())).To(Succeed())
		fakeClock.Step(61 * time.Minute)
		poke(ns, "t")
		t := expectCondition(ns, "t", keymintv1alpha1.ApiTokenConditionAuthorized, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonNotAllowed)
		Expect(meta.FindStatusCondition(t.Status.Conditions, keymintv1alpha1.ApiTokenConditionAuthorized).Message).To(And(
			ContainSubstring(`user "carol", who asked for this token`),
			ContainSubstring(`verbs: ["mint"], resourceNames: ["billing"]`),
		))
		// The token minted while carol could still works: losing a right
		// stops new tokens, revoking stops a token.
		Consistently(func(g Gomega) {
			now, tok := issued(ns, "t")
			g.Expect(now).To(Equal(plain))
			g.Expect(meta.IsStatusConditionTrue(tok.Status.Conditions, keymintv1alpha1.ApiTokenConditionReady)).To(BeTrue())
		}, time.Second).Should(Succeed())

		Expect(eventsFor(ns, "t")).NotTo(ContainElement("Rotated"), "no Event tells of a rotation that did not happen")

		// Granted again: rotated by itself, on the next retry.
		Expect(k8sClient.Create(ctx, binding())).To(Succeed())
		rotatedFrom(ns, "t", plain)
		expectCondition(ns, "t", keymintv1alpha1.ApiTokenConditionAuthorized, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonAuthorized)
		reasons := eventsFor(ns, "t")
		Expect(reasons).To(ContainElement("MintDenied"))
		n := 0
		for _, r := range reasons {
			if r == "MintDenied" {
				n++
			}
		}
		Expect(n).To(Equal(1), "one Event per denial, not one per retry: %v", reasons)
	})
})

var _ = Describe("A leak reported while the requester may not mint", func() {
	It("refuses the token and says so at once: Leaked=True, a Leaked Event, and the replacement once the right is back", func() {
		ns := newNamespace()
		createUser(ns, "billing")
		dave, binding := minter(ns, "dave", "billing")
		Expect(dave.Create(ctx, &keymintv1alpha1.ApiToken{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "t"}, Spec: keymintv1alpha1.ApiTokenSpec{ServiceUser: "billing"}})).To(Succeed())
		plain, _ := issued(ns, "t")

		Expect(k8sClient.Delete(ctx, binding())).To(Succeed())
		reportLeak(ns, "t", plain, "")
		// Ready says what to fix; Leaked, what happened.
		expectCondition(ns, "t", keymintv1alpha1.ApiTokenConditionReady, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonNotAllowed)
		t := expectCondition(ns, "t", keymintv1alpha1.ApiTokenConditionLeaked, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonReported)
		Expect(meta.FindStatusCondition(t.Status.Conditions, keymintv1alpha1.ApiTokenConditionLeaked).Message).To(ContainSubstring(keymintv1alpha1.ApiTokenReasonNotAllowed))
		Eventually(func() []string { return eventsFor(ns, "t") }).Should(ContainElements("Leaked", "MintDenied"))
		Expect(t.Status.LeakReports).To(HaveLen(1), "the report stays until keymint acts on it")

		Expect(k8sClient.Create(ctx, binding())).To(Succeed())
		_, t = rotatedFrom(ns, "t", plain)
		Expect(t.Status.LeakReports).To(BeEmpty())
		Expect(countOf(eventsFor(ns, "t"), "Leaked")).To(Equal(2), "one Event when refused, one when replaced")
	})
})

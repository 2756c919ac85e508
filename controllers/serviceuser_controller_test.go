package controllers_test

import (
	"fmt"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/controllers"
	"github.com/keymint/keymint/internal/testenv"
)

func getUserStatus(ns, name string) keymintv1alpha1.ServiceUserStatus {
	GinkgoHelper()
	u := &keymintv1alpha1.ServiceUser{}
	Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, u)).To(Succeed())
	return u.Status
}

var _ = Describe("ServiceUser status", func() {
	It("counts the user's tokens and the active ones, and reports being disabled", func() {
		ns := newNamespace()
		createUser(ns, "ci")
		createToken(ns, "a", "ci")
		createToken(ns, "b", "ci")
		createToken(ns, "c", "ci")
		issued(ns, "a")
		issued(ns, "b")
		issued(ns, "c")
		mutateToken(ns, "c", func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = true })

		Eventually(func(g Gomega) {
			st := getUserStatus(ns, "ci")
			g.Expect(st.Tokens).To(Equal(int32(3)))
			g.Expect(st.ActiveTokens).To(Equal(int32(2)))
			g.Expect(meta.IsStatusConditionTrue(st.Conditions, keymintv1alpha1.ServiceUserConditionReady)).To(BeTrue())
		}).Should(Succeed())

		mutateUser(ns, "ci", func(u *keymintv1alpha1.ServiceUser) { u.Spec.Disabled = true })
		Eventually(func(g Gomega) {
			u := &keymintv1alpha1.ServiceUser{}
			g.Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "ci"}, u)).To(Succeed())
			c := meta.FindStatusCondition(u.Status.Conditions, keymintv1alpha1.ServiceUserConditionReady)
			g.Expect(c).NotTo(BeNil())
			g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(c.Reason).To(Equal(keymintv1alpha1.ServiceUserReasonDisabled))
			g.Expect(c.ObservedGeneration).To(Equal(u.Generation))
			g.Expect(u.Status.ObservedGeneration).To(Equal(u.Generation))
			g.Expect(u.Status.ActiveTokens).To(BeZero())
		}).Should(Succeed())
		Eventually(func() []string { return eventsFor(ns, "ci") }).Should(ContainElement(keymintv1alpha1.ServiceUserReasonDisabled))
	})
})

var _ = Describe("ServiceUser counts under a burst of tokens", func() {
	It("reaches the right counts with far fewer status writes than tokens", func() {
		ns := newNamespace()
		createUser(ns, "batch")
		wc, err := client.NewWithWatch(cfg, client.Options{Scheme: testenv.Scheme})
		Expect(err).NotTo(HaveOccurred())
		w, err := wc.Watch(ctx, &keymintv1alpha1.ServiceUserList{}, client.InNamespace(ns))
		Expect(err).NotTo(HaveOccurred())
		defer w.Stop()
		const n = 40
		for i := range n {
			createToken(ns, fmt.Sprintf("t%d", i), "batch")
		}
		Eventually(func(g Gomega) {
			st := getUserStatus(ns, "batch")
			g.Expect(st.Tokens).To(Equal(int32(n)))
			g.Expect(st.ActiveTokens).To(Equal(int32(n)))
		}).WithTimeout(time.Minute).Should(Succeed())
		// Every status write is one MODIFIED event of the ServiceUser.
		writes := 0
		for drained := false; !drained; {
			select {
			case ev := <-w.ResultChan():
				if ev.Type == watch.Modified {
					writes++
				}
			case <-time.After(2 * time.Second):
				drained = true
			}
		}
		Expect(writes).To(BeNumerically("<", n/2), "ServiceUser status writes for %d tokens", n)
	})
})

var _ = Describe("Deleting a ServiceUser", func() {
	It("revokes its tokens, then removes them, then goes", func() {
		ns := newNamespace()
		user := createUser(ns, "ci")
		createToken(ns, "a", "ci")
		createToken(ns, "b", "ci")
		issued(ns, "a")
		issued(ns, "b")
		Eventually(func() []string {
			u := &keymintv1alpha1.ServiceUser{}
			Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "ci"}, u)).To(Succeed())
			return u.Finalizers
		}).Should(ContainElement(controllers.TokensFinalizer))

		Expect(k8sClient.Delete(ctx, user)).To(Succeed())

		By("the Secrets are emptied before the tokens go")
		for _, name := range []string{"a", "b"} {
			Eventually(func(g Gomega) {
				sec, err := getSecret(ns, name)
				g.Expect(err).NotTo(HaveOccurred(), "the Secret stays until garbage collection, which envtest does not run")
				g.Expect(sec.Data).NotTo(HaveKey(keymintv1alpha1.SecretTokenKey))
			}).Should(Succeed())
		}
		Eventually(func(g Gomega) {
			var tokens keymintv1alpha1.ApiTokenList
			g.Expect(k8sClient.List(ctx, &tokens)).To(Succeed())
			for _, t := range tokens.Items {
				g.Expect(t.Namespace).NotTo(Equal(ns), "token %s still exists", t.Name)
			}
			err := k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "ci"}, &keymintv1alpha1.ServiceUser{})
			g.Expect(isNotFound(err)).To(BeTrue(), "the ServiceUser is gone")
		}).Should(Succeed())
	})
})

package check_test

import (
	"net/http"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/webhook/check"
)

// userCounts returns keymint_checks_by_service_user_total of one
// ServiceUser as the registry exports it, by result.
func userCounts(namespace, user string) map[string]float64 {
	GinkgoHelper()
	families, err := registry.Gather()
	Expect(err).NotTo(HaveOccurred())
	out := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "keymint_checks_by_service_user_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["namespace"] == namespace && labels["service_user"] == user {
				out[labels["result"]] = m.GetCounter().GetValue()
			}
		}
	}
	return out
}

// byUser returns one ServiceUser's count of one result, and whether the
// series exists.
func byUser(namespace, user, result string) (float64, bool) {
	GinkgoHelper()
	v, ok := userCounts(namespace, user)[result]
	return v, ok
}

// userSeries counts the series of one ServiceUser.
func userSeries(namespace, user string) int {
	GinkgoHelper()
	return len(userCounts(namespace, user))
}

var _ = Describe("Checks counted by ServiceUser", func() {
	It("counts each /check answer under the token's ServiceUser and result, and drops the user's series once it is gone", func() {
		const ns = "by-user"
		plain := issue(ns, "deployer") // ServiceUser "ci"

		before, ok := byUser(ns, "ci", "ok")
		Expect(ok).To(BeTrue(), "issue's accepted checks are counted")
		status, _ := get(plain)
		Expect(status).To(Equal(http.StatusOK))
		after, _ := byUser(ns, "ci", "ok")
		Expect(after).To(Equal(before + 1))

		// A refusal of a known token is the user's too.
		tok := &keymintv1alpha1.ApiToken{}
		Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "deployer"}, tok)).To(Succeed())
		patch := client.MergeFrom(tok.DeepCopy())
		tok.Spec.Revoked = true
		Expect(k8sClient.Patch(ctx, tok, patch)).To(Succeed())
		calls := 0
		Eventually(func() any {
			calls++
			_, body := get(plain)
			return body["error"]
		}).Should(Equal(string(check.RevokedToken)))
		revoked, ok := byUser(ns, "ci", string(check.RevokedToken))
		Expect(ok).To(BeTrue())
		Expect(revoked).To(BeNumerically(">=", 1))
		okNow, _ := byUser(ns, "ci", "ok")
		// Calls before the revocation reached the index were still good.
		Expect(okNow+revoked).To(Equal(after+float64(calls)), "each call counted once, as ok or revoked_token")

		// Once neither the user nor any of its tokens is indexed, its series
		// go: a user deleted is not exported for the life of the process.
		Expect(k8sClient.Delete(ctx, tok)).To(Succeed())
		Expect(k8sClient.Delete(ctx, &keymintv1alpha1.ServiceUser{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ci"}})).To(Succeed())
		Eventually(func() int { return userSeries(ns, "ci") }).Should(BeZero())
	})
})

package check_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/common/expfmt"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/token"
)

// The plaintext sweep: a token's whole life through the manager (issue,
// check, rotate, revoke, a second token expiring), then a search of all the
// manager logged, every Event, every status and every metric for any of the
// tokens it minted beyond their 12-character display prefix.
var _ = Describe("A plaintext sweep", func() {
	It("finds no token in logs, Events, status or metrics after a full life", func() {
		const ns = "sweep"
		seen := map[string]bool{}
		remember := func(name string) string {
			GinkgoHelper()
			var plain string
			Eventually(func(g Gomega) {
				sec := &corev1.Secret{}
				g.Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, sec)).To(Succeed())
				plain = string(sec.Data[keymintv1alpha1.SecretTokenKey])
				_, err := token.Parse(plain)
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(seen).NotTo(HaveKey(plain), "wait for a token not seen before")
			}).Should(Succeed())
			seen[plain] = true
			return plain
		}
		tokenOf := func(name string) *keymintv1alpha1.ApiToken {
			GinkgoHelper()
			t := &keymintv1alpha1.ApiToken{}
			Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, t)).To(Succeed())
			return t
		}

		By("issue, then check with it")
		first := issue(ns, "life")
		seen[first] = true
		status, _ := get(first)
		Expect(status).To(Equal(http.StatusOK))

		By("rotate, with a grace period, and check with both")
		Eventually(func() error {
			t := tokenOf("life")
			t.Annotations = map[string]string{keymintv1alpha1.RotateAnnotation: "sweep"}
			t.Spec.Rotation = &keymintv1alpha1.Rotation{GracePeriod: &metav1.Duration{Duration: time.Hour}}
			return k8sClient.Update(ctx, t)
		}).Should(Succeed())
		second := remember("life")
		Eventually(func() int { s, _ := get(first); return s }).Should(Equal(http.StatusOK), "in its grace period")
		Eventually(func() int { s, _ := get(second); return s }).Should(Equal(http.StatusOK))

		By("revoke, and check again")
		Eventually(func() error { t := tokenOf("life"); t.Spec.Revoked = true; return k8sClient.Update(ctx, t) }).Should(Succeed())
		Eventually(func() any { _, body := get(second); return body["error"] }).Should(Equal("revoked_token"))

		By("a second token that expires by the clock")
		Expect(k8sClient.Create(ctx, &keymintv1alpha1.ApiToken{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "short"},
			Spec:       keymintv1alpha1.ApiTokenSpec{ServiceUser: "ci", Lifetime: &metav1.Duration{Duration: 2 * time.Second}},
		})).To(Succeed())
		short := remember("short")
		Eventually(func() bool {
			return meta.IsStatusConditionTrue(tokenOf("short").Status.Conditions, keymintv1alpha1.ApiTokenConditionExpired)
		}).Should(BeTrue())
		Eventually(func() any { _, body := get(short); return body["error"] }).Should(Equal("expired_token"))

		By("search everything the manager wrote")
		var where []string
		var statuses, events, records bytes.Buffer
		var tokens keymintv1alpha1.ApiTokenList
		Expect(k8sClient.List(ctx, &tokens, client.InNamespace(ns))).To(Succeed())
		for _, t := range tokens.Items {
			b, _ := json.Marshal(t.Status)
			statuses.Write(b)
		}
		var evs eventsv1.EventList
		Expect(k8sClient.List(ctx, &evs, client.InNamespace(ns))).To(Succeed())
		Expect(evs.Items).NotTo(BeEmpty())
		for _, e := range evs.Items {
			events.WriteString(e.Note + "\n" + e.Reason + "\n")
		}
		var secrets corev1.SecretList
		Expect(k8sClient.List(ctx, &secrets, client.InNamespace(ns))).To(Succeed())
		for _, s := range secrets.Items {
			for k, v := range s.Annotations {
				records.WriteString(k + "=" + v + "\n")
			}
		}
		families, err := registry.Gather()
		Expect(err).NotTo(HaveOccurred())
		var metrics bytes.Buffer
		for _, f := range families {
			_, err := expfmt.MetricFamilyToText(&metrics, f)
			Expect(err).NotTo(HaveOccurred())
		}
		Expect(managerLogs.String()).To(ContainSubstring("Wrote token to Secret"), "the logs were captured")
		Expect(metrics.String()).To(ContainSubstring("keymint_checks_total"), "the metrics were gathered")

		for plain := range seen {
			secret := plain[token.DisplayLen:] // the part never shown
			for name, text := range map[string]string{
				"logs": managerLogs.String(), "Events": events.String(), "ApiToken status": statuses.String(),
				"metrics": metrics.String(), "Secret annotations (the record)": records.String(),
			} {
				if strings.Contains(text, secret) {
					where = append(where, name+" hold token "+plain[:token.DisplayLen]+"…")
				}
			}
		}
		Expect(where).To(BeEmpty())
		Expect(len(seen)).To(Equal(3), "issued, rotated and a second token were all searched for")
	})
})

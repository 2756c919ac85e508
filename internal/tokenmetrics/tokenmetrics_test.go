package tokenmetrics_test

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/controllers"
	"github.com/keymint/keymint/internal/testenv"
	"github.com/keymint/keymint/internal/tokenmetrics"
)

// series is one exported sample: its labels and value.
type series struct {
	labels map[string]string
	value  float64
}

// gather returns the samples of one metric.
func gather(g Gomega, reg *prometheus.Registry, name string) []series {
	families, err := reg.Gather()
	g.Expect(err).NotTo(HaveOccurred())
	var out []series
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			s := series{labels: map[string]string{}, value: m.GetGauge().GetValue()}
			for _, l := range m.GetLabel() {
				s.labels[l.GetName()] = l.GetValue()
			}
			out = append(out, s)
		}
	}
	return out
}

// byState returns keymint_apitokens as state → count.
func byState(g Gomega, reg *prometheus.Registry) map[string]float64 {
	out := map[string]float64{}
	for _, s := range gather(g, reg, tokenmetrics.TokensName) {
		out[s.labels["state"]] = s.value
	}
	return out
}

// TestTokenMetrics runs the real controllers against kube-apiserver and
// scrapes the collector as Prometheus would: each token's expiry with its
// labels, gone once the token is; counts by state that follow a revocation.
func TestTokenMetrics(t *testing.T) {
	g := NewWithT(t)
	g.SetDefaultEventuallyTimeout(20 * time.Second)
	g.SetDefaultEventuallyPollingInterval(100 * time.Millisecond)
	reg := prometheus.NewRegistry()
	e := testenv.RunT(t, testenv.RunInput{
		SetupReconcilers: func(ctx context.Context, e *testenv.Environment) error {
			if err := reg.Register(tokenmetrics.New(e.Manager.GetCache(), clock.RealClock{})); err != nil {
				return err
			}
			return controllers.Setup(ctx, e.Manager, controllers.Options{RequesterWebhook: testenv.RequesterWebhookName, Clock: clock.RealClock{}, Keyring: e.Keyring})
		},
	})
	c, ctx := e.Client, t.Context()

	const ns = "metrics"
	g.Expect(c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
	g.Expect(c.Create(ctx, testenv.ServiceUser(ns, "exporter", testenv.WithPermissions("invoices:read")))).To(Succeed())
	expiry := time.Now().Add(72 * time.Hour).Truncate(time.Second)
	nightly := testenv.ApiToken(ns, "nightly", "exporter", testenv.WithExpiresAt(expiry))
	forever := testenv.ApiToken(ns, "forever", "exporter")
	stray := testenv.ApiToken(ns, "stray", "nobody")
	daily := testenv.ApiToken(ns, "daily", "exporter", testenv.WithLifetime(72*time.Hour), testenv.WithRotation(24*time.Hour, 0))
	for _, tok := range []*keymintv1alpha1.ApiToken{nightly, forever, stray, daily} {
		g.Expect(c.Create(ctx, tok)).To(Succeed())
	}

	// The expiring token has one series, with its expiry and nothing else
	// about it; the one that never expires and the one never issued, none.
	// The rotating one has its expiry and its next rotation, from its status.
	g.Eventually(func(g Gomega) {
		got := map[string]series{}
		for _, s := range gather(g, reg, tokenmetrics.ExpirationName) {
			got[s.labels["name"]] = s
		}
		g.Expect(got).To(HaveLen(2))
		g.Expect(got["nightly"].labels).To(Equal(map[string]string{"namespace": ns, "name": "nightly", "service_user": "exporter"}))
		g.Expect(got["nightly"].value).To(Equal(float64(expiry.Unix())))

		g.Expect(c.Get(ctx, client.ObjectKeyFromObject(daily), daily)).To(Succeed())
		g.Expect(daily.Status.ExpiresAt).NotTo(BeNil())
		g.Expect(got["daily"].value).To(Equal(float64(daily.Status.ExpiresAt.Unix())))
		rot := gather(g, reg, tokenmetrics.NextRotationName)
		g.Expect(rot).To(HaveLen(1))
		g.Expect(rot[0].labels["name"]).To(Equal("daily"))
		g.Expect(rot[0].value).To(Equal(float64(daily.Status.NextRotationAt.Unix())))
	}).Should(Succeed())
	g.Eventually(func(g Gomega) map[string]float64 { return byState(g, reg) }).Should(Equal(map[string]float64{
		"active": 3, "orphaned": 1,
		"rotating": 0, "expired": 0, "revoked": 0, "disabled": 0, "conflict": 0, "pending": 0, "idle": 0, "leaked": 0, "awaiting_approval": 0, "approval_denied": 0,
	}))

	// Revoking one moves it from active to revoked.
	patch := client.MergeFrom(forever.DeepCopy())
	forever.Spec.Revoked = true
	g.Expect(c.Patch(ctx, forever, patch)).To(Succeed())
	g.Eventually(func(g Gomega) {
		s := byState(g, reg)
		g.Expect(s["active"]).To(Equal(2.0))
		g.Expect(s["revoked"]).To(Equal(1.0))
	}).Should(Succeed())

	// Deleting the expiring token removes its series, and only its.
	g.Expect(c.Delete(ctx, nightly)).To(Succeed())
	g.Eventually(func(g Gomega) {
		got := gather(g, reg, tokenmetrics.ExpirationName)
		g.Expect(got).To(HaveLen(1))
		g.Expect(got[0].labels["name"]).To(Equal("daily"))
		g.Expect(byState(g, reg)["active"]).To(Equal(1.0))
	}).Should(Succeed())
}

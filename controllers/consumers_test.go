package controllers_test

// Specs for what reaches a token's consumers: expiry warnings, workloads
// restarted onto a rotated token, and a rotated-out token retired once idle.

import (
	"context"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/testenv"
	"github.com/keymint/keymint/internal/token"
	"github.com/keymint/keymint/webhook/check"
)

// countOf returns how many times reason occurs in reasons.
func countOf(reasons []string, reason string) int {
	n := 0
	for _, r := range reasons {
		if r == reason {
			n++
		}
	}
	return n
}

// rotateTo asks for a rotation and waits for the token that replaces old.
func rotateTo(ns, name, value, old string) (string, *keymintv1alpha1.ApiToken) {
	GinkgoHelper()
	rotateToken(ns, name, value)
	return rotatedFrom(ns, name, old)
}

var _ = Describe("Expiry warnings", func() {
	It("sets ExpiringSoon and emits one Warning Event once the token is inside its ServiceUser's warning window", func() {
		ns := newNamespace()
		createUser(ns, "batch", func(u *keymintv1alpha1.ServiceUser) {
			u.Spec.TokenPolicy.ExpiryWarning = &metav1.Duration{Duration: 2 * time.Hour}
		})
		createToken(ns, "nightly", "batch", testenv.WithLifetime(3*time.Hour))
		first, _ := issued(ns, "nightly")
		expectCondition(ns, "nightly", keymintv1alpha1.ApiTokenConditionExpiringSoon, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonNotExpiringSoon)

		By("an hour and a minute later, 1h59m before expiry")
		fakeClock.Step(61 * time.Minute)
		poke(ns, "nightly")
		tok := expectCondition(ns, "nightly", keymintv1alpha1.ApiTokenConditionExpiringSoon, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonWithinWarningWindow)
		Expect(meta.FindStatusCondition(tok.Status.Conditions, keymintv1alpha1.ApiTokenConditionExpiringSoon).Message).To(
			ContainSubstring(tok.Status.ExpiresAt.UTC().Format(time.RFC3339)))
		Expect(meta.IsStatusConditionTrue(tok.Status.Conditions, keymintv1alpha1.ApiTokenConditionReady)).To(BeTrue(), "a warning does not stop the token")
		Eventually(func() []string { return eventsFor(ns, "nightly") }).Should(ContainElement("ExpiringSoon"))

		By("later reconciles do not warn again")
		poke(ns, "nightly")
		poke(ns, "nightly")
		Consistently(func() int { return countOf(eventsFor(ns, "nightly"), "ExpiringSoon") }, "2s").Should(Equal(1))

		By("a rotation gives a new token, outside the window")
		rotateTo(ns, "nightly", "renew", first)
		expectCondition(ns, "nightly", keymintv1alpha1.ApiTokenConditionExpiringSoon, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonNotExpiringSoon)
	})

	It("warns once per token: a new token inside the window from the start gets its own Event", func() {
		ns := newNamespace()
		createUser(ns, "batch", func(u *keymintv1alpha1.ServiceUser) {
			u.Spec.TokenPolicy.ExpiryWarning = &metav1.Duration{Duration: 2 * time.Hour}
		})
		createToken(ns, "short", "batch", testenv.WithLifetime(time.Hour))
		first, _ := issued(ns, "short")
		expectCondition(ns, "short", keymintv1alpha1.ApiTokenConditionExpiringSoon, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonWithinWarningWindow)
		Eventually(func() int { return countOf(eventsFor(ns, "short"), "ExpiringSoon") }).Should(Equal(1))
		rotateTo(ns, "short", "renew", first)
		Eventually(func() int { return countOf(eventsFor(ns, "short"), "ExpiringSoon") }).Should(Equal(2))
		poke(ns, "short")
		Consistently(func() int { return countOf(eventsFor(ns, "short"), "ExpiringSoon") }, "2s").Should(Equal(2))
	})

	It("uses the manager's 7-day default when the ServiceUser sets none, and 0s turns warnings off", func() {
		ns := newNamespace()
		createUser(ns, "batch")
		createUser(ns, "quiet", func(u *keymintv1alpha1.ServiceUser) {
			u.Spec.TokenPolicy.ExpiryWarning = &metav1.Duration{}
		})
		createToken(ns, "weekly", "batch", testenv.WithLifetime(8*24*time.Hour))
		createToken(ns, "silent", "quiet", testenv.WithLifetime(8*24*time.Hour))
		issued(ns, "weekly")
		issued(ns, "silent")
		expectCondition(ns, "weekly", keymintv1alpha1.ApiTokenConditionExpiringSoon, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonNotExpiringSoon)

		fakeClock.Step(25 * time.Hour)
		poke(ns, "weekly")
		poke(ns, "silent")
		expectCondition(ns, "weekly", keymintv1alpha1.ApiTokenConditionExpiringSoon, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonWithinWarningWindow)
		Eventually(func() []string { return eventsFor(ns, "weekly") }).Should(ContainElement("ExpiringSoon"))
		expectCondition(ns, "silent", keymintv1alpha1.ApiTokenConditionExpiringSoon, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonNotExpiringSoon)
		Expect(eventsFor(ns, "silent")).NotTo(ContainElement("ExpiringSoon"))
	})

	It("does not warn about a token a scheduled rotation replaces before it expires", func() {
		ns := newNamespace()
		createUser(ns, "ci", func(u *keymintv1alpha1.ServiceUser) {
			u.Spec.TokenPolicy.ExpiryWarning = &metav1.Duration{Duration: 2 * time.Hour}
		})
		createToken(ns, "deploy", "ci", testenv.WithLifetime(3*time.Hour), testenv.WithRotation(150*time.Minute, 0))
		issued(ns, "deploy")
		fakeClock.Step(61 * time.Minute)
		poke(ns, "deploy")
		Consistently(func(g Gomega) {
			tok := getToken(ns, "deploy")
			g.Expect(meta.IsStatusConditionTrue(tok.Status.Conditions, keymintv1alpha1.ApiTokenConditionExpiringSoon)).To(BeFalse())
		}, "2s").Should(Succeed())
		Expect(eventsFor(ns, "deploy")).NotTo(ContainElement("ExpiringSoon"))
	})
})

var _ = Describe("Restart targets", func() {
	It("stamps the pod template of each target after a rotation, and skips a missing one with a Warning", func() {
		ns := newNamespace()
		createUser(ns, "web")
		web := &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"},
			Spec: appsv1.DeploymentSpec{
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}},
					Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "example.com/web:1"}}},
				},
			},
		}
		Expect(k8sClient.Create(ctx, web)).To(Succeed())
		createToken(ns, "api", "web", testenv.WithRotation(0, time.Hour), func(t *keymintv1alpha1.ApiToken) {
			t.Spec.Rotation.RestartTargets = []keymintv1alpha1.RestartTarget{{Kind: "Deployment", Name: "web"}, {Kind: "StatefulSet", Name: "gone"}}
		})
		first, _ := issued(ns, "api")
		Eventually(func() int64 { return getToken(ns, "api").Status.RestartedSerial }).Should(Equal(int64(1)))
		template := func() map[string]string {
			d := &appsv1.Deployment{}
			Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(web), d)).To(Succeed())
			return d.Spec.Template.Annotations
		}
		Expect(template()).NotTo(HaveKey(keymintv1alpha1.RestartedAtAnnotation), "the first token restarts nothing: the pods already mount it")

		_, tok := rotateTo(ns, "api", "one", first)
		Expect(tok.Status.Serial).To(Equal(int64(2)))
		Eventually(template).Should(HaveKeyWithValue(keymintv1alpha1.RestartedAtAnnotation, fakeClock.Now().UTC().Format(time.RFC3339)))
		Eventually(func() int64 { return getToken(ns, "api").Status.RestartedSerial }).Should(Equal(int64(2)))
		Eventually(func() []string { return eventsFor(ns, "api") }).Should(ContainElements("Restarted", "RestartTargetNotFound"))

		By("nothing more happens until the next token")
		stamp := template()[keymintv1alpha1.RestartedAtAnnotation]
		fakeClock.Step(time.Minute)
		poke(ns, "api")
		Consistently(func() string { return template()[keymintv1alpha1.RestartedAtAnnotation] }, "2s").Should(Equal(stamp))
	})
})

var _ = Describe("retireWhenIdle", func() {
	// use records checks the way the check server does, with its flusher
	// writing them to the status.
	use := func(ns, name string, plains ...string) {
		GinkgoHelper()
		usage := check.NewUsage()
		for _, p := range plains {
			usage.Record(types.NamespacedName{Namespace: ns, Name: name}, token.Hash(p), fakeClock.Now())
		}
		flusher := &check.UsageFlusher{Usage: usage, Client: k8sClient, Clock: fakeClock, Interval: time.Second}
		now := fakeClock.Now().Truncate(time.Second)
		Eventually(func(g Gomega) {
			flusher.Flush(context.Background())
			tok := getToken(ns, name)
			for _, p := range plains {
				at := tok.Status.TokenLastUsedAt
				for _, prev := range tok.Status.PreviousTokens {
					if prev.TokenHash == token.HashString(p) {
						at = prev.LastUsedAt
					}
				}
				g.Expect(at).NotTo(BeNil(), "the use of %s… is recorded under its own hash", token.Display(p))
				g.Expect(at.Time).To(BeTemporally(">=", now))
			}
		}).Should(Succeed())
	}
	retiring := func(t *keymintv1alpha1.ApiToken) {
		t.Spec.Rotation = &keymintv1alpha1.Rotation{
			GracePeriod:    &metav1.Duration{Duration: time.Hour},
			RetireWhenIdle: &metav1.Duration{Duration: 10 * time.Minute},
		}
	}

	It("keeps a rotated-out token while it is in use, and retires it once the new one is used and it has been idle", func() {
		ns := newNamespace()
		createUser(ns, "ci")
		createToken(ns, "deploy", "ci", retiring)
		first, _ := issued(ns, "deploy")
		second, tok := rotateTo(ns, "deploy", "one", first)
		Expect(tok.Status.PreviousTokens).To(HaveLen(1))

		By("the old token is used; the new one is not yet")
		fakeClock.Step(11 * time.Minute)
		use(ns, "deploy", first)
		poke(ns, "deploy")
		Consistently(func() []keymintv1alpha1.PreviousToken { return getToken(ns, "deploy").Status.PreviousTokens }, "2s").Should(HaveLen(1))

		By("the new one is used too, and the old one was used under 10m ago")
		use(ns, "deploy", second, first)
		Consistently(func() []keymintv1alpha1.PreviousToken { return getToken(ns, "deploy").Status.PreviousTokens }, "2s").Should(HaveLen(1))

		By("10 minutes after the old token's last use")
		fakeClock.Step(10 * time.Minute)
		poke(ns, "deploy")
		Eventually(func() []keymintv1alpha1.PreviousToken { return getToken(ns, "deploy").Status.PreviousTokens }).Should(BeEmpty())
		Eventually(func() []string { return eventsFor(ns, "deploy") }).Should(ContainElement("RetiredIdleToken"))
		tok = getToken(ns, "deploy")
		Expect(tok.Status.TokenHash).To(Equal(token.HashString(second)), "the current token stays")
		Expect(meta.IsStatusConditionTrue(tok.Status.Conditions, keymintv1alpha1.ApiTokenConditionReady)).To(BeTrue())
	})

	It("retires an old token unused since the rotation on the new token's first use, with no other trigger", func() {
		ns := newNamespace()
		createUser(ns, "ci")
		createToken(ns, "deploy", "ci", retiring)
		first, _ := issued(ns, "deploy")
		second, _ := rotateTo(ns, "deploy", "one", first)
		fakeClock.Step(11 * time.Minute)
		poke(ns, "deploy")
		Consistently(func() []keymintv1alpha1.PreviousToken { return getToken(ns, "deploy").Status.PreviousTokens }, "1s").Should(HaveLen(1),
			"idle alone does not retire it: the new token was never used")

		use(ns, "deploy", second)
		Eventually(func() []keymintv1alpha1.PreviousToken { return getToken(ns, "deploy").Status.PreviousTokens }).Should(BeEmpty())
	})
})

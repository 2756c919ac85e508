package controllers_test

// Specs for the two ways a token ends without anyone editing its spec: a
// leak report (the check server writes it into the status; the controller
// replaces the token at once) and idleness (tokenPolicy.maxIdle).

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
	"github.com/keymint/keymint/internal/tokenstate"
	"github.com/keymint/keymint/webhook/check"
)

// reportLeak writes a leak report into the status, as the check server
// that received it does.
func reportLeak(ns, name, plain, location string) {
	GinkgoHelper()
	Eventually(func() error {
		tok := getToken(ns, name)
		patch := client.MergeFromWithOptions(tok.DeepCopy(), client.MergeFromWithOptimisticLock{})
		tok.Status.LeakReports = append(tok.Status.LeakReports, keymintv1alpha1.LeakReport{
			TokenHash: token.HashString(plain), ReportedAt: metav1.NewTime(fakeClock.Now().Truncate(time.Second)), Source: "gitlab", Location: location,
		})
		return k8sClient.Status().Patch(ctx, tok, patch)
	}).Should(Succeed())
}

// namesHash reports whether the status names hash as current or in grace.
func namesHash(tok *keymintv1alpha1.ApiToken, plain string) bool {
	h := token.HashString(plain)
	if tok.Status.TokenHash == h {
		return true
	}
	for _, p := range tok.Status.PreviousTokens {
		if p.TokenHash == h {
			return true
		}
	}
	return false
}

var _ = Describe("Leaked tokens", func() {
	const where = "https://git.example.com/acme/app/-/blob/main/.env#L3"

	It("replaces a reported token at once, rolls its consumers, tells where it was found, and never brings it back", func() {
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
			t.Spec.Rotation.RestartTargets = []keymintv1alpha1.RestartTarget{{Kind: "Deployment", Name: "web"}}
		})
		first, _ := issued(ns, "api")
		Eventually(func() int64 { return getToken(ns, "api").Status.RestartedSerial }).Should(Equal(int64(1)))
		second, _ := rotateTo(ns, "api", "one", first)
		Eventually(func() int64 { return getToken(ns, "api").Status.RestartedSerial }).Should(Equal(int64(2)))
		applied := getToken(ns, "api").Spec.DeepCopy()

		By("a report of the current token")
		fakeClock.Step(time.Minute)
		reportLeak(ns, "api", second, where)
		third, tok := rotatedFrom(ns, "api", second)
		Expect(third).NotTo(Equal(first))
		Expect(tok.Status.Serial).To(Equal(int64(3)))
		Expect(namesHash(tok, second)).To(BeFalse(), "the leaked token is in no grace period")
		Expect(namesHash(tok, first)).To(BeFalse(), "a leak ends the grace of the tokens before it too")
		Expect(tok.Status.LeakReports).To(BeEmpty())
		Expect(tok.Status.LastLeak).NotTo(BeNil())
		Expect(tok.Status.LastLeak.CurrentSerial).To(Equal(int64(3)))
		Expect(tok.Status.LastLeak.TokenPrefix).To(Equal(token.Display(second)))
		c := expectCondition(ns, "api", keymintv1alpha1.ApiTokenConditionLeaked, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonReported)
		Expect(meta.FindStatusCondition(c.Status.Conditions, keymintv1alpha1.ApiTokenConditionLeaked).Message).To(ContainSubstring(where))
		Expect(meta.IsStatusConditionTrue(c.Status.Conditions, keymintv1alpha1.ApiTokenConditionReady)).To(BeTrue(), "the new token is ready")

		By("its consumers roll onto the new token, and the Event says where it was found, never the token")
		Eventually(func() string {
			d := &appsv1.Deployment{}
			Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(web), d)).To(Succeed())
			return d.Spec.Template.Annotations[keymintv1alpha1.RestartedAtAnnotation]
		}).Should(Equal(fakeClock.Now().UTC().Format(time.RFC3339)))
		Eventually(func() int64 { return getToken(ns, "api").Status.RestartedSerial }).Should(Equal(int64(3)))
		Eventually(func() []string { return eventsFor(ns, "api") }).Should(ContainElement("Leaked"))
		Eventually(func() []string { return eventNotes(ns) }).Should(ContainElement(And(ContainSubstring(where), ContainSubstring(token.Display(second)))))
		for _, note := range eventNotes(ns) {
			Expect(note).NotTo(Or(ContainSubstring(second), ContainSubstring(third)))
		}
		Expect(statusJSON(getToken(ns, "api"))).NotTo(Or(ContainSubstring(second), ContainSubstring(third)))

		By("a GitOps sync re-applying the old spec does not revive it")
		mutateToken(ns, "api", func(t *keymintv1alpha1.ApiToken) {
			t.Spec = *applied.DeepCopy()
			t.Labels = map[string]string{"argocd.argoproj.io/instance": "api"}
		})
		poke(ns, "api")
		Consistently(func(g Gomega) {
			tok := getToken(ns, "api")
			g.Expect(namesHash(tok, second)).To(BeFalse())
			g.Expect(tok.Status.TokenHash).To(Equal(token.HashString(third)))
		}, "2s").Should(Succeed())

		By("a replayed report of the replaced token changes nothing")
		reportLeak(ns, "api", second, where)
		Consistently(func(g Gomega) {
			g.Expect(getToken(ns, "api").Status.TokenHash).To(Equal(token.HashString(third)))
		}, "2s").Should(Succeed())
		Eventually(func() []keymintv1alpha1.LeakReport { return getToken(ns, "api").Status.LeakReports }).Should(BeEmpty(),
			"a report of a hash the status no longer names is dropped")

		By("the next rotation ends the Leaked condition")
		rotateTo(ns, "api", "two", third)
		expectCondition(ns, "api", keymintv1alpha1.ApiTokenConditionLeaked, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonNotReported)
	})

	It("drops a reported rotated-out token from its grace period without a new token", func() {
		ns := newNamespace()
		createUser(ns, "batch")
		createToken(ns, "job", "batch", testenv.WithRotation(0, time.Hour))
		first, _ := issued(ns, "job")
		second, tok := rotateTo(ns, "job", "one", first)
		Expect(namesHash(tok, first)).To(BeTrue(), "the first token is in its grace period")

		reportLeak(ns, "job", first, "")
		Eventually(func() bool { return namesHash(getToken(ns, "job"), first) }).Should(BeFalse())
		tok = expectCondition(ns, "job", keymintv1alpha1.ApiTokenConditionLeaked, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonReported)
		Expect(tok.Status.TokenHash).To(Equal(token.HashString(second)), "the current token was not reported: it stays")
		Expect(tok.Status.Serial).To(Equal(int64(2)))
		Expect(meta.FindStatusCondition(tok.Status.Conditions, keymintv1alpha1.ApiTokenConditionLeaked).Message).To(ContainSubstring("gitlab"))
		Eventually(func() []string { return eventsFor(ns, "job") }).Should(ContainElement("Leaked"))
	})
})

var _ = Describe("maxIdle", func() {
	// use records a check of the token the way the check server does.
	use := func(ns, name, plain string) {
		GinkgoHelper()
		usage := check.NewUsage()
		usage.Record(types.NamespacedName{Namespace: ns, Name: name}, token.Hash(plain), fakeClock.Now())
		flusher := &check.UsageFlusher{Usage: usage, Client: k8sClient, Clock: fakeClock, Interval: time.Second}
		Eventually(func(g Gomega) {
			flusher.Flush(context.Background())
			g.Expect(getToken(ns, name).Status.LastUsedAt).NotTo(BeNil())
		}).Should(Succeed())
	}
	idleUser := func(u *keymintv1alpha1.ServiceUser) {
		u.Spec.TokenPolicy.MaxIdle = &metav1.Duration{Duration: 2 * time.Hour}
		u.Spec.TokenPolicy.ExpiryWarning = &metav1.Duration{Duration: time.Hour}
	}

	It("warns within the warning window, revokes an unused token with reason Idle, and issues a new one only when asked", func() {
		ns := newNamespace()
		createUser(ns, "cron", idleUser)
		createToken(ns, "nightly", "cron")
		plain, tok := issued(ns, "nightly")
		// Never used: a first use would be written at the next flush, so
		// only the slack is waited past maxIdle.
		idleAt := tok.Status.IssuedAt.Add(2*time.Hour + tokenstate.UseRecordingSlack)
		expectCondition(ns, "nightly", keymintv1alpha1.ApiTokenConditionExpiringSoon, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonNotExpiringSoon)

		By("inside the hour before it goes idle")
		fakeClock.SetTime(idleAt.Add(-59 * time.Minute))
		poke(ns, "nightly")
		tok = expectCondition(ns, "nightly", keymintv1alpha1.ApiTokenConditionExpiringSoon, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonIdleWithinWarningWindow)
		Expect(meta.FindStatusCondition(tok.Status.Conditions, keymintv1alpha1.ApiTokenConditionExpiringSoon).Message).To(ContainSubstring(idleAt.UTC().Format(time.RFC3339)))
		Expect(meta.IsStatusConditionTrue(tok.Status.Conditions, keymintv1alpha1.ApiTokenConditionReady)).To(BeTrue())
		Eventually(func() []string { return eventsFor(ns, "nightly") }).Should(ContainElement("ExpiringSoon"))

		By("at its idle time")
		fakeClock.SetTime(idleAt)
		poke(ns, "nightly")
		tok = expectCondition(ns, "nightly", keymintv1alpha1.ApiTokenConditionRevoked, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonIdle)
		Expect(meta.FindStatusCondition(tok.Status.Conditions, keymintv1alpha1.ApiTokenConditionReady).Reason).To(Equal(keymintv1alpha1.ApiTokenReasonIdle))
		Expect(tok.Status.TokenHash).To(BeEmpty())
		Expect(tok.Status.IdleRevokedAt).NotTo(BeNil())
		Eventually(func() []byte {
			s, err := getSecret(ns, "nightly")
			Expect(err).NotTo(HaveOccurred())
			return s.Data[keymintv1alpha1.SecretTokenKey]
		}).Should(BeEmpty())
		Eventually(func() []string { return eventsFor(ns, "nightly") }).Should(ContainElement("Revoked"))

		By("it stays revoked: nothing is issued by itself")
		fakeClock.Step(time.Minute)
		poke(ns, "nightly")
		Consistently(func() string { return getToken(ns, "nightly").Status.TokenHash }, "2s").Should(BeEmpty())

		By("a rotation request issues a new token, with a fresh idle count")
		rotateToken(ns, "nightly", "back")
		fresh, tok := rotatedFrom(ns, "nightly", plain)
		Expect(tok.Status.IdleRevokedAt).To(BeNil())
		Expect(tok.Status.IdleSince.Time).To(BeTemporally(">=", fakeClock.Now().Add(-time.Second)))
		expectCondition(ns, "nightly", keymintv1alpha1.ApiTokenConditionReady, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonIssued)
		Eventually(func() []string { return eventsFor(ns, "nightly") }).Should(ContainElement("Reissued"))
		Expect(fresh).NotTo(Equal(plain))
	})

	It("keeps a token used within its maxIdle, and counts on from the use", func() {
		ns := newNamespace()
		createUser(ns, "web", idleUser)
		createToken(ns, "busy", "web", testenv.WithRotation(0, time.Hour))
		plain, tok := issued(ns, "busy")
		idleAt := tok.Status.IssuedAt.Add(2*time.Hour + tokenstate.UseRecordingSlack)

		By("used inside the warning window (55 minutes before it would go idle), then rotated: a rotation does not restart the count, a use does")
		fakeClock.SetTime(idleAt.Add(-55 * time.Minute))
		poke(ns, "busy")
		expectCondition(ns, "busy", keymintv1alpha1.ApiTokenConditionExpiringSoon, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonIdleWithinWarningWindow)
		use(ns, "busy", plain)
		// The recorded use alone (no edit) ends the warning.
		expectCondition(ns, "busy", keymintv1alpha1.ApiTokenConditionExpiringSoon, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonNotExpiringSoon)
		rotateTo(ns, "busy", "one", plain)
		st := getToken(ns, "busy").Status
		usedAt := st.LastUsedAt.Time
		// The flusher records the gap it wrote the use under: a quarter of
		// maxIdle. Later uses within it are held back, so it is waited.
		Expect(tokenstate.RecordedGap(&st)).To(Equal(30 * time.Minute))
		usedIdleAt := usedAt.Add(2*time.Hour + 30*time.Minute + tokenstate.UseRecordingSlack)

		By("at the first idle time, it stays")
		fakeClock.SetTime(idleAt)
		poke(ns, "busy")
		Consistently(func(g Gomega) {
			tok := getToken(ns, "busy")
			g.Expect(meta.IsStatusConditionTrue(tok.Status.Conditions, keymintv1alpha1.ApiTokenConditionReady)).To(BeTrue())
			g.Expect(tok.Status.IdleRevokedAt).To(BeNil())
		}, "2s").Should(Succeed())

		By("1s before maxIdle, the recorded gap and the slack after the use, it stays")
		fakeClock.SetTime(usedIdleAt.Add(-time.Second))
		poke(ns, "busy")
		Consistently(func(g Gomega) {
			g.Expect(getToken(ns, "busy").Status.IdleRevokedAt).To(BeNil())
		}, "2s").Should(Succeed())

		By("maxIdle, the recorded gap and the slack after the use, it is revoked")
		fakeClock.SetTime(usedIdleAt)
		poke(ns, "busy")
		expectCondition(ns, "busy", keymintv1alpha1.ApiTokenConditionRevoked, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonIdle)
	})
})

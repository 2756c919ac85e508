package controllers_test

import (
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/testenv"
	"github.com/keymint/keymint/internal/token"
)

var _ = Describe("Issuing a token", func() {
	It("writes a fresh token into a Secret and only its hash into the status", func() {
		ns := newNamespace()
		createUser(ns, "exporter", testenv.WithPrefix("acme"))
		createToken(ns, "exporter-prod", "exporter")

		plain, tok := issued(ns, "exporter-prod")

		By("the token has the user's prefix and a valid checksum")
		prefix, err := token.Parse(plain)
		Expect(err).NotTo(HaveOccurred())
		Expect(prefix).To(Equal("acme"))

		By("the Secret is named after the token, labelled, annotated and owned by it")
		sec, err := getSecret(ns, "exporter-prod")
		Expect(err).NotTo(HaveOccurred())
		Expect(sec.Labels).To(HaveKeyWithValue(keymintv1alpha1.TokenLabel, "exporter-prod"))
		Expect(sec.Annotations).To(HaveKey(keymintv1alpha1.RecordAnnotation))
		Expect(sec.Annotations[keymintv1alpha1.RecordAnnotation]).To(ContainSubstring(token.HashString(plain)))
		Expect(sec.Annotations).To(HaveKey(keymintv1alpha1.RecordSignatureAnnotation))
		owner := metav1.GetControllerOf(sec)
		Expect(owner).NotTo(BeNil())
		Expect(owner.Kind).To(Equal("ApiToken"))
		Expect(owner.UID).To(Equal(tok.UID))
		Expect(owner.BlockOwnerDeletion).To(Equal(ptr.To(true)), "deleting the ApiToken deletes its Secret")

		By("the status describes the token without holding it")
		Expect(tok.Status.TokenHash).To(MatchRegexp(`^sha256:[0-9a-f]{64}$`))
		Expect(tok.Status.TokenPrefix).To(Equal(plain[:12]))
		Expect(tok.Status.SecretName).To(Equal("exporter-prod"))
		Expect(tok.Status.IssuedAt).NotTo(BeNil())
		Expect(tok.Status.ExpiresAt).To(BeNil(), "no lifetime and no policy: the token does not expire")
		Expect(tok.Status.ObservedGeneration).To(Equal(tok.Generation))
		Expect(statusJSON(tok)).NotTo(ContainSubstring(plain[12:]))
		expectCondition(ns, "exporter-prod", keymintv1alpha1.ApiTokenConditionRevoked, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonNotRevoked)
		expectCondition(ns, "exporter-prod", keymintv1alpha1.ApiTokenConditionExpired, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonNotExpired)

		By("an Event says so, naming the token only by its prefix")
		Eventually(func() []string { return eventsFor(ns, "exporter-prod") }).Should(ContainElement("Issued"))
		Consistently(func() []string { return eventsFor(ns, "exporter-prod") }, "1s").ShouldNot(ContainElement("Adopted"),
			"no crash happened: the reconcile that sees its own Secret before its status recovers nothing")
		for _, note := range eventNotes(ns) {
			Expect(note).NotTo(ContainSubstring(plain[12:]))
		}
	})

	It("uses spec.secretName when set", func() {
		ns := newNamespace()
		createUser(ns, "ci")
		createToken(ns, "ci-deploy", "ci", testenv.WithSecretName("ci-credentials"))
		_, tok := issued(ns, "ci-deploy")
		Expect(tok.Status.SecretName).To(Equal("ci-credentials"))
		_, err := getSecret(ns, "ci-deploy")
		Expect(isNotFound(err)).To(BeTrue())
	})

	It("never overwrites a Secret it does not own", func() {
		ns := newNamespace()
		createUser(ns, "ci")
		foreign := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ci-deploy"},
			StringData: map[string]string{"password": "hunter2"},
		}
		Expect(k8sClient.Create(ctx, foreign)).To(Succeed())
		createToken(ns, "ci-deploy", "ci")

		expectCondition(ns, "ci-deploy", keymintv1alpha1.ApiTokenConditionReady, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonSecretConflict)
		Eventually(func() []string { return eventsFor(ns, "ci-deploy") }).Should(ContainElement("SecretConflict"))
		sec, err := getSecret(ns, "ci-deploy")
		Expect(err).NotTo(HaveOccurred())
		Expect(sec.Data).To(Equal(map[string][]byte{"password": []byte("hunter2")}))
		Expect(sec.OwnerReferences).To(BeEmpty())
	})
})

var _ = Describe("Expiry", func() {
	It("flips the conditions once the clock passes the lifetime", func() {
		ns := newNamespace()
		createUser(ns, "batch")
		createToken(ns, "nightly", "batch", testenv.WithLifetime(time.Hour))
		_, tok := issued(ns, "nightly")
		Expect(tok.Status.ExpiresAt).NotTo(BeNil())
		Expect(tok.Status.ExpiresAt.Time).To(Equal(tok.Status.IssuedAt.Add(time.Hour)))

		fakeClock.Step(61 * time.Minute)
		poke(ns, "nightly")

		expectCondition(ns, "nightly", keymintv1alpha1.ApiTokenConditionExpired, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonExpired)
		expectCondition(ns, "nightly", keymintv1alpha1.ApiTokenConditionReady, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonExpired)
		Eventually(func() []string { return eventsFor(ns, "nightly") }).Should(ContainElement("Expired"))
	})

	It("caps a token's lifetime at the user's maxLifetime", func() {
		ns := newNamespace()
		createUser(ns, "batch", testenv.WithMaxLifetime(30*time.Minute))
		createToken(ns, "weekly", "batch", testenv.WithLifetime(7*24*time.Hour))
		_, tok := issued(ns, "weekly")
		Expect(tok.Status.ExpiresAt.Time).To(Equal(tok.Status.IssuedAt.Add(30 * time.Minute)))
	})

	It("applies a later change of the user's maxLifetime to issued tokens", func() {
		ns := newNamespace()
		createUser(ns, "batch")
		createToken(ns, "forever", "batch")
		_, tok := issued(ns, "forever")
		Expect(tok.Status.ExpiresAt).To(BeNil())

		mutateUser(ns, "batch", func(u *keymintv1alpha1.ServiceUser) {
			u.Spec.TokenPolicy.MaxLifetime = &metav1.Duration{Duration: 2 * time.Hour}
		})
		Eventually(func(g Gomega) {
			t := getToken(ns, "forever")
			g.Expect(t.Status.ExpiresAt).NotTo(BeNil())
			g.Expect(t.Status.ExpiresAt.Time).To(Equal(t.Status.IssuedAt.Add(2 * time.Hour)))
		}).Should(Succeed())
		Eventually(func() []string { return eventsFor(ns, "forever") }).Should(ContainElement("ExpiryShortened"))
	})
})

var _ = Describe("Revocation", func() {
	// expectRevoked checks the three things a revocation means for a user.
	expectRevoked := func(ns, name, reason string) {
		GinkgoHelper()
		tok := expectCondition(ns, name, keymintv1alpha1.ApiTokenConditionRevoked, metav1.ConditionTrue, reason)
		expectCondition(ns, name, keymintv1alpha1.ApiTokenConditionReady, metav1.ConditionFalse, reason)
		Expect(tok.Status.TokenHash).To(BeEmpty(), "no hash is accepted for a revoked token")
		Eventually(func(g Gomega) {
			sec, err := getSecret(ns, tok.Status.SecretName)
			if isNotFound(err) {
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(sec.Data).NotTo(HaveKey(keymintv1alpha1.SecretTokenKey), "pods no longer see the token")
			g.Expect(sec.Annotations).NotTo(HaveKey(keymintv1alpha1.RecordAnnotation))
		}).Should(Succeed())
	}

	It("revokes by spec.revoked, and un-revoking mints a new token", func() {
		ns := newNamespace()
		createUser(ns, "ci")
		createToken(ns, "ci-deploy", "ci")
		first, _ := issued(ns, "ci-deploy")

		mutateToken(ns, "ci-deploy", func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = true })
		expectRevoked(ns, "ci-deploy", keymintv1alpha1.ApiTokenReasonRevokedBySpec)
		Eventually(func() []string { return eventsFor(ns, "ci-deploy") }).Should(ContainElement("Revoked"))

		mutateToken(ns, "ci-deploy", func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = false })
		second, tok := issued(ns, "ci-deploy")
		Expect(second).NotTo(Equal(first), "the revoked token never comes back")
		Expect(tok.Status.PreviousTokens).To(BeEmpty())
	})

	It("revokes every token of a disabled user, and re-enabling mints new ones", func() {
		ns := newNamespace()
		createUser(ns, "ci")
		createToken(ns, "a", "ci")
		createToken(ns, "b", "ci")
		firstA, _ := issued(ns, "a")
		issued(ns, "b")

		mutateUser(ns, "ci", func(u *keymintv1alpha1.ServiceUser) { u.Spec.Disabled = true })
		expectRevoked(ns, "a", keymintv1alpha1.ApiTokenReasonServiceUserDisabled)
		expectRevoked(ns, "b", keymintv1alpha1.ApiTokenReasonServiceUserDisabled)

		mutateUser(ns, "ci", func(u *keymintv1alpha1.ServiceUser) { u.Spec.Disabled = false })
		secondA, _ := issued(ns, "a")
		issued(ns, "b")
		Expect(secondA).NotTo(Equal(firstA))
	})

	It("revokes a token whose user is missing, and issues once the user exists", func() {
		ns := newNamespace()
		createToken(ns, "orphan", "not-yet")
		expectCondition(ns, "orphan", keymintv1alpha1.ApiTokenConditionRevoked, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonServiceUserNotFound)
		_, err := getSecret(ns, "orphan")
		Expect(isNotFound(err)).To(BeTrue(), "no token is minted for a missing user")

		createUser(ns, "not-yet")
		issued(ns, "orphan")
	})
})

var _ = Describe("Rotation", func() {
	rotate := func(ns, name, value string) {
		GinkgoHelper()
		mutateToken(ns, name, func(t *keymintv1alpha1.ApiToken) {
			if t.Annotations == nil {
				t.Annotations = map[string]string{}
			}
			t.Annotations[keymintv1alpha1.RotateAnnotation] = value
		})
	}

	It("rotates once per new annotation value, dropping the old token at once without grace", func() {
		ns := newNamespace()
		createUser(ns, "ci")
		createToken(ns, "ci-deploy", "ci")
		first, _ := issued(ns, "ci-deploy")

		rotate(ns, "ci-deploy", "2026-11-23")
		second, tok := rotatedFrom(ns, "ci-deploy", first)
		Expect(tok.Status.LastRotationRequest).To(Equal("2026-11-23"))
		Expect(tok.Status.RotatedAt).NotTo(BeNil())
		Expect(tok.Status.PreviousTokens).To(BeEmpty(), "gracePeriod 0: the old hash stops at once")
		Eventually(func() []string { return eventsFor(ns, "ci-deploy") }).Should(ContainElement("Rotated"))

		By("the same value again does not rotate")
		poke(ns, "ci-deploy")
		Consistently(func() string { p, _ := issued(ns, "ci-deploy"); return p }, "2s").Should(Equal(second))
	})

	It("keeps the old hash for the grace period, then drops it", func() {
		ns := newNamespace()
		createUser(ns, "ci")
		createToken(ns, "ci-deploy", "ci", testenv.WithRotation(0, time.Hour))
		first, _ := issued(ns, "ci-deploy")

		rotate(ns, "ci-deploy", "one")
		_, tok := rotatedFrom(ns, "ci-deploy", first)
		Expect(tok.Status.PreviousTokens).To(HaveLen(1))
		Expect(tok.Status.PreviousTokens[0].TokenHash).To(Equal(token.HashString(first)))
		Expect(tok.Status.PreviousTokens[0].ValidUntil.Time).To(Equal(tok.Status.RotatedAt.Add(time.Hour)))

		fakeClock.Step(61 * time.Minute)
		poke(ns, "ci-deploy")
		Eventually(func() []keymintv1alpha1.PreviousToken { return getToken(ns, "ci-deploy").Status.PreviousTokens }).Should(BeEmpty())
	})

	It("rotates on schedule", func() {
		ns := newNamespace()
		createUser(ns, "ci")
		createToken(ns, "ci-deploy", "ci", testenv.WithRotation(time.Hour, 0))
		first, tok := issued(ns, "ci-deploy")
		Expect(tok.Status.NextRotationAt).NotTo(BeNil())
		Expect(tok.Status.NextRotationAt.Time).To(Equal(tok.Status.IssuedAt.Add(time.Hour)))

		fakeClock.Step(61 * time.Minute)
		poke(ns, "ci-deploy")
		_, tok = rotatedFrom(ns, "ci-deploy", first)
		Expect(tok.Status.NextRotationAt.Time).To(Equal(tok.Status.IssuedAt.Add(time.Hour)))
	})
})

var _ = Describe("A deleted Secret", func() {
	It("counts as a lost token: a new one is minted and the old hash stops at once", func() {
		ns := newNamespace()
		createUser(ns, "ci")
		createToken(ns, "ci-deploy", "ci", testenv.WithRotation(0, time.Hour))
		first, _ := issued(ns, "ci-deploy")

		sec, err := getSecret(ns, "ci-deploy")
		Expect(err).NotTo(HaveOccurred())
		Expect(k8sClient.Delete(ctx, sec)).To(Succeed())

		var second string
		var tok *keymintv1alpha1.ApiToken
		Eventually(func(g Gomega) {
			second, tok = issued(ns, "ci-deploy")
			g.Expect(second).NotTo(Equal(first))
		}).Should(Succeed())
		Expect(tok.Status.PreviousTokens).To(BeEmpty(), "a lost token gets no grace period")
		Eventually(func() []string { return eventsFor(ns, "ci-deploy") }).Should(ContainElement("TokenLost"))
	})
})

var _ = Describe("Crash safety", func() {
	It("adopts the Secret written before a failed status write instead of minting again", func() {
		ns := newNamespace()
		createUser(ns, "ci")
		faults.failNextStatusWrite("crashy")
		tok := createToken(ns, "crashy", "ci")

		plain, _ := issued(ns, "crashy")
		sec, err := getSecret(ns, "crashy")
		Expect(err).NotTo(HaveOccurred())
		Expect(writes.of(sec)).To(Equal(1), "the Secret was written once: one token was minted")
		Expect(writes.of(tok)).To(BeNumerically(">=", 2), "the first status write failed and a later one succeeded")
		Expect(faults.take("crashy")).To(BeFalse(), "the injected failure happened")
		Eventually(func() []string { return eventsFor(ns, "crashy") }).Should(ConsistOf("Issued", "Adopted"))
		Expect(sec.Annotations[keymintv1alpha1.RecordAnnotation]).To(ContainSubstring(token.HashString(plain)))
	})

	It("rebuilds a lost status from the Secret without minting a new token", func() {
		ns := newNamespace()
		createUser(ns, "ci")
		createToken(ns, "restored", "ci", testenv.WithLifetime(24*time.Hour))
		plain, before := issued(ns, "restored")

		// As after restoring the ApiToken from a backup that had no status.
		wiped := before.DeepCopy()
		wiped.Status = keymintv1alpha1.ApiTokenStatus{}
		Expect(k8sClient.Status().Update(ctx, wiped)).To(Succeed())

		Eventually(func(g Gomega) {
			after, tok := issued(ns, "restored")
			g.Expect(after).To(Equal(plain))
			g.Expect(tok.Status.IssuedAt.Time).To(Equal(before.Status.IssuedAt.Time), "the rebuild does not extend the token's life")
			g.Expect(tok.Status.ExpiresAt.Time).To(Equal(before.Status.ExpiresAt.Time))
		}).Should(Succeed())
	})
})

var _ = Describe("GitOps", func() {
	It("makes no writes at all when an unchanged manifest is applied again", func() {
		ns := newNamespace()
		createUser(ns, "ci")
		createToken(ns, "ci-deploy", "ci", testenv.WithLifetime(24*time.Hour), testenv.WithRotation(12*time.Hour, time.Hour))
		issued(ns, "ci-deploy")
		Eventually(func() int32 { return getUserStatus(ns, "ci").ActiveTokens }).Should(Equal(int32(1)))
		// Let the controllers settle, then count from here.
		settled := writes.inNamespace(ns)
		Consistently(func() int { return writes.inNamespace(ns) }, "1s").Should(Equal(settled))

		tok := getToken(ns, "ci-deploy")
		sec, err := getSecret(ns, "ci-deploy")
		Expect(err).NotTo(HaveOccurred())

		manifest := &keymintv1alpha1.ApiToken{
			TypeMeta:   metav1.TypeMeta{APIVersion: keymintv1alpha1.GroupVersion.String(), Kind: "ApiToken"},
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ci-deploy"},
			Spec:       tok.Spec,
		}
		Expect(k8sClient.Patch(ctx, manifest, client.Apply, client.FieldOwner("argocd"), client.ForceOwnership)).To(Succeed()) //nolint:staticcheck
		// A label change reaches the controllers like any other edit would.
		mutateToken(ns, "ci-deploy", func(t *keymintv1alpha1.ApiToken) {
			if t.Labels == nil {
				t.Labels = map[string]string{}
			}
			t.Labels["team"] = "payments"
		})

		Consistently(func() int { return writes.inNamespace(ns) }, "3s").Should(Equal(settled))
		after, err := getSecret(ns, "ci-deploy")
		Expect(err).NotTo(HaveOccurred())
		Expect(after.ResourceVersion).To(Equal(sec.ResourceVersion))
		Expect(getToken(ns, "ci-deploy").Status).To(Equal(tok.Status))
	})
})

var _ = Describe("Events and logs", func() {
	It("never carry a token beyond its display prefix", func() {
		ns := newNamespace()
		createUser(ns, "ci")
		createToken(ns, "ci-deploy", "ci")
		first, _ := issued(ns, "ci-deploy")
		mutateToken(ns, "ci-deploy", func(t *keymintv1alpha1.ApiToken) {
			t.Annotations = map[string]string{keymintv1alpha1.RotateAnnotation: "x"}
		})
		var second string
		Eventually(func(g Gomega) {
			second, _ = issued(ns, "ci-deploy")
			g.Expect(second).NotTo(Equal(first))
		}).Should(Succeed())
		Eventually(func() []string { return eventsFor(ns, "ci-deploy") }).Should(ContainElement("Rotated"))
		for _, note := range eventNotes(ns) {
			Expect(strings.Contains(note, first[12:]) || strings.Contains(note, second[12:])).To(BeFalse(), note)
		}
		logs := controllerLogs.String()
		Expect(logs).To(ContainSubstring(second[:12]), "the controller logged the rotation")
		Expect(logs).NotTo(ContainSubstring(first[12:]))
		Expect(logs).NotTo(ContainSubstring(second[12:]))
	})
})

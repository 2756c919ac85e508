package controllers_test

import (
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/testenv"
	"github.com/keymint/keymint/internal/token"
)

// The trust specs play someone with ordinary rights in a namespace: they may
// read and write token Secrets and ApiTokens, never ApiToken status. What
// they try must never make a token valid that keymint did not issue to that
// ApiToken, or bring back one it refused.

// statusHashes watches an ApiToken from now on and returns, in order, every
// hash its status named (current or in a grace period) in each version the
// API server stored, so a spec can assert a hash never came back, even
// briefly.
func statusHashes(ns, name string) func() [][]string {
	GinkgoHelper()
	wc, err := client.NewWithWatch(cfg, client.Options{Scheme: k8sClient.Scheme()})
	Expect(err).NotTo(HaveOccurred())
	w, err := wc.Watch(ctx, &keymintv1alpha1.ApiTokenList{}, client.InNamespace(ns),
		client.MatchingFieldsSelector{Selector: fields.OneTermEqualSelector("metadata.name", name)})
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(w.Stop)
	var mu sync.Mutex
	var seen [][]string
	go func() {
		for ev := range w.ResultChan() {
			t, ok := ev.Object.(*keymintv1alpha1.ApiToken)
			if !ok || ev.Type == watch.Deleted {
				continue
			}
			hashes := []string{t.Status.TokenHash}
			for _, p := range t.Status.PreviousTokens {
				hashes = append(hashes, p.TokenHash)
			}
			mu.Lock()
			seen = append(seen, hashes)
			mu.Unlock()
		}
	}()
	return func() [][]string {
		mu.Lock()
		defer mu.Unlock()
		return append([][]string(nil), seen...)
	}
}

// namedAfter reports whether hash appears in any version after the first
// version that named marker.
func namedAfter(versions [][]string, marker, hash string) bool {
	after := false
	for _, v := range versions {
		if after {
			for _, h := range v {
				if h == hash {
					return true
				}
			}
		}
		if v[0] == marker {
			after = true
		}
	}
	return false
}

// restoreSecret writes a saved copy of a token Secret back over the live
// one, as `kubectl apply` of a backup would: its data and keymint's
// annotations.
func restoreSecret(saved *corev1.Secret) {
	GinkgoHelper()
	Eventually(func() error {
		live, err := getSecret(saved.Namespace, saved.Name)
		if err != nil {
			return err
		}
		live.Data = saved.Data
		for k := range live.Annotations {
			if strings.HasPrefix(k, "keymint.io/") {
				delete(live.Annotations, k)
			}
		}
		for k, v := range saved.Annotations {
			if strings.HasPrefix(k, "keymint.io/") {
				if live.Annotations == nil {
					live.Annotations = map[string]string{}
				}
				live.Annotations[k] = v
			}
		}
		return k8sClient.Update(ctx, live)
	}).Should(Succeed())
}

// replacedBy waits until the token's Secret holds a token none of old, with
// the status naming it, and returns it.
func replacedBy(ns, name string, old ...string) string {
	GinkgoHelper()
	var plain string
	Eventually(func(g Gomega) {
		plain, _ = issued(ns, name)
		g.Expect(old).NotTo(ContainElement(plain))
	}).Should(Succeed())
	return plain
}

func rotateToken(ns, name, value string) {
	GinkgoHelper()
	mutateToken(ns, name, func(t *keymintv1alpha1.ApiToken) {
		if t.Annotations == nil {
			t.Annotations = map[string]string{}
		}
		t.Annotations[keymintv1alpha1.RotateAnnotation] = value
	})
}

var _ = Describe("A restored copy of a token Secret", func() {
	// issuedAndSaved issues token "app" in a new namespace and returns it,
	// a copy of its Secret as a backup would hold it, and a watch of the
	// hashes its status names from now on.
	issuedAndSaved := func() (ns, first string, saved *corev1.Secret, seen func() [][]string) {
		GinkgoHelper()
		ns = newNamespace()
		createUser(ns, "ci")
		createToken(ns, "app", "ci")
		first, _ = issued(ns, "app")
		saved, err := getSecret(ns, "app")
		Expect(err).NotTo(HaveOccurred())
		return ns, first, saved, statusHashes(ns, "app")
	}

	It("never brings back a token rotated out since: keymint issues a fresh one and says so", func() {
		ns, first, saved, seen := issuedAndSaved()

		rotateToken(ns, "app", "r1")
		second := replacedBy(ns, "app", first)

		restoreSecret(saved)
		third := replacedBy(ns, "app", first, second)
		Expect(token.HashString(third)).To(Equal(getToken(ns, "app").Status.TokenHash))
		Eventually(func() []string { return eventsFor(ns, "app") }).Should(ContainElement("SecretChanged"))
		Expect(namedAfter(seen(), token.HashString(second), token.HashString(first))).To(BeFalse(),
			"the status named the rotated-out token again after the restore: %v", seen())
	})

	It("never brings back a revoked token, before or after un-revoking", func() {
		ns, first, saved, seen := issuedAndSaved()

		mutateToken(ns, "app", func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = true })
		expectCondition(ns, "app", keymintv1alpha1.ApiTokenConditionRevoked, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonRevokedBySpec)

		By("restored while revoked: emptied again")
		restoreSecret(saved)
		Eventually(func(g Gomega) {
			sec, err := getSecret(ns, "app")
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(sec.Data).NotTo(HaveKey(keymintv1alpha1.SecretTokenKey))
		}).Should(Succeed())

		By("restored after un-revoking: replaced, never adopted")
		mutateToken(ns, "app", func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = false })
		second := replacedBy(ns, "app", first)
		restoreSecret(saved)
		replacedBy(ns, "app", first, second)

		Expect(namedAfter(seen(), "", token.HashString(first))).To(BeFalse(), "the revoked token came back: %v", seen())
	})

	It("is adopted only when keymint signed it and the status has not moved past it", func() {
		ns := newNamespace()
		createUser(ns, "ci")
		createToken(ns, "app", "ci")
		plain, before := issued(ns, "app")

		By("a status lost after the Secret was written: the signed record is adopted, nothing is minted")
		wiped := before.DeepCopy()
		wiped.Status = keymintv1alpha1.ApiTokenStatus{}
		Expect(k8sClient.Status().Update(ctx, wiped)).To(Succeed())
		Eventually(func(g Gomega) {
			after, tok := issued(ns, "app")
			g.Expect(after).To(Equal(plain))
			g.Expect(tok.Status.Serial).To(Equal(before.Status.Serial))
		}).Should(Succeed())

		By("the same, with a record edited by hand: refused with an Event, a fresh token issued")
		sec, err := getSecret(ns, "app")
		Expect(err).NotTo(HaveOccurred())
		sec.Annotations[keymintv1alpha1.RecordAnnotation] = strings.Replace(sec.Annotations[keymintv1alpha1.RecordAnnotation], `"serial":1`, `"serial":7`, 1)
		Expect(k8sClient.Update(ctx, sec)).To(Succeed())
		wiped = getToken(ns, "app")
		wiped.Status = keymintv1alpha1.ApiTokenStatus{}
		Expect(k8sClient.Status().Update(ctx, wiped)).To(Succeed())
		replacedBy(ns, "app", plain)
		Eventually(func() []string { return eventsFor(ns, "app") }).Should(ContainElement("SecretChanged"))
	})
})

var _ = Describe("A token planted in another user's Secret", func() {
	It("never authenticates as that user: keymint replaces it and says so", func() {
		ns := newNamespace()
		createUser(ns, "intern")
		createUser(ns, "admin")
		createToken(ns, "intern-token", "intern")
		createToken(ns, "admin-token", "admin")
		internPlain, _ := issued(ns, "intern-token")
		adminPlain, _ := issued(ns, "admin-token")
		internSecret, err := getSecret(ns, "intern-token")
		Expect(err).NotTo(HaveOccurred())
		seen := statusHashes(ns, "admin-token")

		// The intern's token, with its genuine record, in the admin's Secret.
		planted := internSecret.DeepCopy()
		planted.Name = "admin-token"
		restoreSecret(planted)

		replacedBy(ns, "admin-token", adminPlain, internPlain)
		Eventually(func() []string { return eventsFor(ns, "admin-token") }).Should(ContainElement("SecretChanged"))
		for _, v := range seen() {
			Expect(v).NotTo(ContainElement(token.HashString(internPlain)), "the admin's status named the intern's token: %v", seen())
		}
		Expect(getToken(ns, "intern-token").Status.TokenHash).To(Equal(token.HashString(internPlain)), "the intern's own token is untouched")
	})

	It("claimed by two ApiTokens' status is replaced in both", func() {
		ns := newNamespace()
		createUser(ns, "ci")
		createToken(ns, "a", "ci")
		createToken(ns, "b", "ci")
		aPlain, _ := issued(ns, "a")
		bPlain, _ := issued(ns, "b")

		// Only a status writer can do this: keymint itself, or an admin.
		Eventually(func() error {
			b := getToken(ns, "b")
			b.Status.TokenHash = token.HashString(aPlain)
			return k8sClient.Status().Update(ctx, b)
		}).Should(Succeed())

		replacedBy(ns, "a", aPlain)
		replacedBy(ns, "b", aPlain, bPlain)
		Eventually(func() []string { return eventsFor(ns, "a") }).Should(ContainElement("HashConflict"))
	})
})

var _ = Describe("A token refused for expiry", func() {
	It("never comes back when its lifetime is extended: a new token is minted", func() {
		ns := newNamespace()
		createUser(ns, "batch")
		createToken(ns, "nightly", "batch", testenv.WithLifetime(time.Hour))
		first, _ := issued(ns, "nightly")
		fakeClock.Step(61 * time.Minute)
		poke(ns, "nightly")
		expectCondition(ns, "nightly", keymintv1alpha1.ApiTokenConditionExpired, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonExpired)
		seen := statusHashes(ns, "nightly")

		mutateToken(ns, "nightly", func(t *keymintv1alpha1.ApiToken) { t.Spec.Lifetime = &metav1.Duration{Duration: 3 * time.Hour} })

		second := replacedBy(ns, "nightly", first)
		tok := getToken(ns, "nightly")
		Expect(tok.Status.ExpiresAt.Time).To(Equal(tok.Status.IssuedAt.Add(3 * time.Hour)))
		Expect(tok.Status.PreviousTokens).To(BeEmpty(), "an expired token gets no grace period")
		Eventually(func() []string { return eventsFor(ns, "nightly") }).Should(ContainElement("Renewed"))
		Expect(namedAfter(seen(), token.HashString(second), token.HashString(first))).To(BeFalse())
	})

	It("keeps its minted expiry when the lifetime grows before it expires, and is replaced", func() {
		ns := newNamespace()
		createUser(ns, "batch")
		createToken(ns, "weekly", "batch", testenv.WithLifetime(time.Hour), testenv.WithRotation(0, 10*time.Minute))
		first, before := issued(ns, "weekly")

		mutateToken(ns, "weekly", func(t *keymintv1alpha1.ApiToken) { t.Spec.Lifetime = &metav1.Duration{Duration: 2 * time.Hour} })

		replacedBy(ns, "weekly", first)
		tok := getToken(ns, "weekly")
		Expect(tok.Status.PreviousTokens).To(HaveLen(1))
		Expect(tok.Status.PreviousTokens[0].TokenHash).To(Equal(token.HashString(first)))
		Expect(tok.Status.PreviousTokens[0].ValidUntil.Time).To(Equal(tok.Status.IssuedAt.Add(10 * time.Minute)))
		Expect(tok.Status.PreviousTokens[0].ValidUntil.Time).NotTo(BeTemporally(">", before.Status.ExpiresAt.Time),
			"the old token's grace never outlives the expiry it was minted with")
	})
})

var _ = Describe("Grace-period hashes", func() {
	It("are cut short when the user's maxLifetime is shortened after the rotation", func() {
		ns := newNamespace()
		createUser(ns, "ci")
		createToken(ns, "app", "ci", testenv.WithRotation(0, time.Hour))
		first, before := issued(ns, "app")
		fakeClock.Step(30 * time.Minute)
		rotateToken(ns, "app", "r1")
		replacedBy(ns, "app", first)
		Expect(getToken(ns, "app").Status.PreviousTokens).To(HaveLen(1))

		mutateUser(ns, "ci", func(u *keymintv1alpha1.ServiceUser) {
			u.Spec.TokenPolicy.MaxLifetime = &metav1.Duration{Duration: 45 * time.Minute}
		})
		Eventually(func(g Gomega) {
			prev := getToken(ns, "app").Status.PreviousTokens
			g.Expect(prev).To(HaveLen(1))
			g.Expect(prev[0].ValidUntil.Time).To(Equal(before.Status.IssuedAt.Add(45 * time.Minute)))
		}).Should(Succeed())
	})
})

var _ = Describe("ApiToken names", func() {
	It("up to the Kubernetes limit of 253 characters issue normally", func() {
		ns := newNamespace()
		createUser(ns, "ci")
		label := strings.Repeat("x", 62)
		name := label + "." + label + "." + label + "." + label + ".a"
		Expect(name).To(HaveLen(253))
		createToken(ns, name, "ci")
		issued(ns, name)
		sec, err := getSecret(ns, name)
		Expect(err).NotTo(HaveOccurred())
		Expect(metav1.GetControllerOf(sec).Name).To(Equal(name), "the owner reference names the ApiToken")
	})
})

var _ = Describe("A token Secret keymint cannot write", func() {
	It("does not keep the old token alive: the status drops it at once and says why", func() {
		ns := newNamespace()
		createUser(ns, "ci")
		createToken(ns, "app", "ci")
		first, _ := issued(ns, "app")

		// Garbage in the Secret, made immutable so no replacement can land.
		Eventually(func() error {
			sec, err := getSecret(ns, "app")
			if err != nil {
				return err
			}
			sec.Data[keymintv1alpha1.SecretTokenKey] = []byte("not a token")
			sec.Immutable = ptr.To(true)
			return k8sClient.Update(ctx, sec)
		}).Should(Succeed())

		tok := expectCondition(ns, "app", keymintv1alpha1.ApiTokenConditionReady, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonPending)
		Expect(tok.Status.TokenHash).To(BeEmpty(), "the token the Secret no longer delivers is refused")
		Expect(tok.Status.TokenHash).NotTo(Equal(token.HashString(first)))
		Expect(meta.FindStatusCondition(tok.Status.Conditions, keymintv1alpha1.ApiTokenConditionReady).Message).To(ContainSubstring("immutable"))
		Eventually(func() []string { return eventsFor(ns, "app") }).Should(ContainElement("SecretWriteFailed"))
	})
})

var _ = Describe("An ApiToken being deleted", func() {
	It("is revoked even while a finalizer holds it", func() {
		ns := newNamespace()
		createUser(ns, "ci")
		createToken(ns, "app", "ci")
		issued(ns, "app")
		mutateToken(ns, "app", func(t *keymintv1alpha1.ApiToken) { t.Finalizers = append(t.Finalizers, "example.com/hold") })
		Expect(k8sClient.Delete(ctx, getToken(ns, "app"))).To(Succeed())
		DeferCleanup(func() {
			mutateToken(ns, "app", func(t *keymintv1alpha1.ApiToken) { t.Finalizers = nil })
		})

		tok := expectCondition(ns, "app", keymintv1alpha1.ApiTokenConditionRevoked, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonDeleting)
		Expect(tok.Status.TokenHash).To(BeEmpty())
		Eventually(func(g Gomega) {
			sec, err := getSecret(ns, "app")
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(sec.Data).NotTo(HaveKey(keymintv1alpha1.SecretTokenKey))
		}).Should(Succeed())
	})
})

var _ = Describe("A token replaced because its Secret lost it", func() {
	It("keeps the life it had: same issue time and expiry, and an expired one is not replaced at all", func() {
		ns := newNamespace()
		createUser(ns, "ci")
		createToken(ns, "app", "ci", testenv.WithLifetime(time.Hour))
		first, before := issued(ns, "app")

		fakeClock.Step(30 * time.Minute)
		sec, err := getSecret(ns, "app")
		Expect(err).NotTo(HaveOccurred())
		Expect(k8sClient.Delete(ctx, sec)).To(Succeed())
		replacedBy(ns, "app", first)
		after := getToken(ns, "app")
		Expect(after.Status.IssuedAt.Time).To(Equal(before.Status.IssuedAt.Time), "a replacement is not a renewal")
		Expect(after.Status.ExpiresAt.Time).To(Equal(before.Status.ExpiresAt.Time))

		By("past its expiry, deleting the Secret brings nothing back")
		fakeClock.Step(31 * time.Minute)
		poke(ns, "app")
		expectCondition(ns, "app", keymintv1alpha1.ApiTokenConditionExpired, metav1.ConditionTrue, keymintv1alpha1.ApiTokenReasonExpired)
		sec, err = getSecret(ns, "app")
		Expect(err).NotTo(HaveOccurred())
		Expect(k8sClient.Delete(ctx, sec)).To(Succeed())
		Consistently(func() bool {
			return meta.IsStatusConditionTrue(getToken(ns, "app").Status.Conditions, keymintv1alpha1.ApiTokenConditionReady)
		}, "2s").Should(BeFalse(), "the expired token stays expired")
		_, err = getSecret(ns, "app")
		Expect(isNotFound(err)).To(BeTrue(), "no token was minted for it")
	})
})

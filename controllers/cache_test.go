package controllers_test

import (
	"bytes"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/testenv"
	"github.com/keymint/keymint/internal/token"
)

// caches are the two a replica keeps: the manager's (every replica: the
// admission webhooks' reads) and the controllers' (the leader).
func caches() map[string]client.Reader {
	return map[string]client.Reader{"manager's": testEnv.Manager.GetCache(), "controllers'": ctrlCache}
}

// What kubectl apply (client-side) leaves on an object, and keymint never
// reads, stays out of the manager's cache: read back from the cache.
var _ = Describe("The manager's cache of ApiTokens and ServiceUsers", func() {
	It("holds no last-applied configuration, which the API server keeps", func() {
		ns := newNamespace()
		applied := map[string]string{corev1.LastAppliedConfigAnnotation: `{"apiVersion":"keymint.io/v1alpha1"}`, "team": "payments"}
		u := testenv.ServiceUser(ns, "applied", testenv.WithPermissions("links:read"))
		u.Annotations = applied
		Expect(k8sClient.Create(ctx, u)).To(Succeed())
		tok := testenv.ApiToken(ns, "applied", "applied")
		tok.Annotations = applied
		Expect(k8sClient.Create(ctx, tok)).To(Succeed())
		issued(ns, "applied") // keymint's patches keep the annotation on the API server

		key := types.NamespacedName{Namespace: ns, Name: "applied"}
		Eventually(func(g Gomega) {
			for name, cache := range caches() {
				for _, obj := range []client.Object{&keymintv1alpha1.ServiceUser{}, &keymintv1alpha1.ApiToken{}} {
					g.Expect(cache.Get(ctx, key, obj)).To(Succeed())
					g.Expect(obj.GetAnnotations()).NotTo(HaveKey(corev1.LastAppliedConfigAnnotation), "%T in the %s cache", obj, name)
					g.Expect(obj.GetAnnotations()).To(HaveKeyWithValue("team", "payments"), "%T: other annotations stay", obj)
					g.Expect(obj.GetManagedFields()).To(BeEmpty())
				}
			}
		}).Should(Succeed())
		for _, obj := range []client.Object{&keymintv1alpha1.ServiceUser{}, &keymintv1alpha1.ApiToken{}} {
			Expect(k8sClient.Get(ctx, key, obj)).To(Succeed())
			Expect(obj.GetAnnotations()).To(HaveKey(corev1.LastAppliedConfigAnnotation), "%T on the API server, after keymint's writes", obj)
		}
	})
})

// The manager's cache holds token Secrets by the hash of their token,
// never the token: read back from the cache itself, not the API server.
var _ = Describe("The manager's cache of token Secrets", func() {
	It("holds no plaintext token, before and after a rotation, and the controllers still recognise their tokens", func() {
		ns := newNamespace()
		createUser(ns, "cached")
		createToken(ns, "cached", "cached")
		plain, tok := issued(ns, "cached")

		noPlaintext := func(tokens ...string) {
			GinkgoHelper()
			Eventually(func(g Gomega) {
				for name, cache := range caches() {
					sec := &corev1.Secret{}
					g.Expect(cache.Get(ctx, types.NamespacedName{Namespace: ns, Name: tok.SecretNameOrDefault()}, sec)).To(Succeed())
					cached := string(sec.Data[keymintv1alpha1.SecretTokenKey])
					// Not vacuous: the cache has the Secret, with the
					// current token's hash where the token was.
					g.Expect(cached).To(ContainSubstring(token.HashString(tokens[len(tokens)-1])))
					list := &corev1.SecretList{}
					g.Expect(cache.List(ctx, list, client.InNamespace(ns))).To(Succeed())
					g.Expect(list.Items).NotTo(BeEmpty())
					for _, s := range list.Items {
						for key, v := range s.Data {
							for _, p := range tokens {
								secretPart := p[len(token.Display(p)):]
								g.Expect(bytes.Contains(v, []byte(secretPart))).To(BeFalse(), "Secret %s key %s holds a token", s.Name, key)
							}
						}
						for key, v := range s.Annotations {
							for _, p := range tokens {
								g.Expect(strings.Contains(v, p[len(token.Display(p)):])).To(BeFalse(), "Secret %s annotation %s holds a token (%s cache)", s.Name, key, name)
							}
						}
					}
				}
			}).Should(Succeed())
		}
		noPlaintext(plain)

		By("a rotation: the controller writes the new token from the cached Secret, and the cache holds neither")
		mutateToken(ns, "cached", func(t *keymintv1alpha1.ApiToken) {
			if t.Annotations == nil {
				t.Annotations = map[string]string{}
			}
			t.Annotations[keymintv1alpha1.RotateAnnotation] = "cache-test"
		})
		next, _ := rotatedFrom(ns, "cached", plain)
		noPlaintext(plain, next)
		// The API server's Secret holds the token itself: pods read that.
		sec, err := getSecret(ns, tok.SecretNameOrDefault())
		Expect(err).NotTo(HaveOccurred())
		Expect(string(sec.Data[keymintv1alpha1.SecretTokenKey])).To(Equal(next))
		expectCondition(ns, "cached", keymintv1alpha1.ApiTokenConditionReady, "True", keymintv1alpha1.ApiTokenReasonIssued)
	})
})

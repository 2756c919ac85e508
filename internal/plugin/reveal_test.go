package plugin_test

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/plugin"
	"github.com/keymint/keymint/internal/token"
)

func TestReveal(t *testing.T) {
	g := NewWithT(t)
	cl := startCluster(t)
	ctx := context.Background()
	const ns = "reveal"
	newNamespace(t, cl, ns)
	createUser(t, cl, ns, "billing")
	now := time.Now()

	// The token lives in the Secret its spec and status name; a Secret
	// named after the ApiToken holds a decoy that must never be printed.
	web := createToken(t, cl, ns, "web", "billing", func(tok *keymintv1alpha1.ApiToken) { tok.Spec.SecretName = "web-creds" })
	plain := issue(t, cl, web, "web-creds", now, keymintv1alpha1.ApiTokenStatus{})
	decoy, err := token.Mint(token.DefaultPrefix)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(cl.c.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"},
		Data:       map[string][]byte{keymintv1alpha1.SecretTokenKey: []byte(decoy)},
	})).To(Succeed())

	t.Run("refuses without --show-secret", func(t *testing.T) {
		r := cl.run(t, plugin.Options{}, "reveal", "web", "-n", ns)
		g.Expect(r.code).To(Equal(1))
		g.Expect(r.stdout).To(BeEmpty())
		g.Expect(r.stderr).To(ContainSubstring("add --show-secret to print it"))
		g.Expect(r.stderr).NotTo(ContainSubstring(plain))
	})

	t.Run("prints the status's token with a warning", func(t *testing.T) {
		r := cl.run(t, plugin.Options{}, "reveal", "web", "-n", ns, "--show-secret")
		g.Expect(r.code).To(Equal(0), r.stderr)
		g.Expect(r.stdout).To(Equal(plain + "\n"))
		g.Expect(r.stderr).To(HavePrefix("Warning: printing a live bearer token of service user billing (apitoken reveal/web, " + token.Display(plain) + "...)"))
		g.Expect(r.stderr).NotTo(ContainSubstring(plain))
	})

	t.Run("refuses a Secret that does not hold the status's token", func(t *testing.T) {
		tampered := createToken(t, cl, ns, "tampered", "billing")
		genuine := issue(t, cl, tampered, "tampered", now, keymintv1alpha1.ApiTokenStatus{})
		var sec corev1.Secret
		g.Expect(cl.c.Get(ctx, objectKey(ns, "tampered"), &sec)).To(Succeed())
		planted, err := token.Mint(token.DefaultPrefix)
		g.Expect(err).NotTo(HaveOccurred())
		sec.Data[keymintv1alpha1.SecretTokenKey] = []byte(planted)
		g.Expect(cl.c.Update(ctx, &sec)).To(Succeed())

		r := cl.run(t, plugin.Options{}, "reveal", "tampered", "-n", ns, "--show-secret")
		g.Expect(r.code).To(Equal(1))
		g.Expect(r.stdout).To(BeEmpty())
		g.Expect(r.stderr).To(ContainSubstring("is not the one apitoken tampered's status records"))
		g.Expect(r.stderr).NotTo(ContainSubstring(planted))
		g.Expect(r.stderr).NotTo(ContainSubstring(genuine))
	})

	t.Run("a token with none issued", func(t *testing.T) {
		revoked := createToken(t, cl, ns, "gone", "billing", func(tok *keymintv1alpha1.ApiToken) { tok.Spec.Revoked = true })
		setStatus(t, cl, revoked, keymintv1alpha1.ApiTokenStatus{TokenPrefix: "km_abcdefghi", Serial: 1})
		r := cl.run(t, plugin.Options{}, "reveal", "gone", "-n", ns, "--show-secret")
		g.Expect(r.code).To(Equal(1))
		g.Expect(r.stderr).To(Equal("error: apitoken \"gone\" holds no token now (state Revoked): nothing to reveal\n"))
	})

	t.Run("a Secret that is missing", func(t *testing.T) {
		lost := createToken(t, cl, ns, "lost", "billing")
		issue(t, cl, lost, "lost", now, keymintv1alpha1.ApiTokenStatus{})
		g.Expect(cl.c.Delete(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "lost"}})).To(Succeed())
		r := cl.run(t, plugin.Options{}, "reveal", "lost", "-n", ns, "--show-secret")
		g.Expect(r.code).To(Equal(1))
		g.Expect(r.stderr).To(ContainSubstring(`names Secret "lost", which does not exist`))
	})
}

package plugin_test

import (
	"context"
	"regexp"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/plugin"
	"github.com/keymint/keymint/internal/testenv"
	"github.com/keymint/keymint/internal/token"
)

// issued waits for keymint's controller to issue name's token.
func issued(t *testing.T, cl cluster, ns, name string) *keymintv1alpha1.ApiToken {
	t.Helper()
	_, tok, err := testenv.WaitIssued(context.Background(), cl.c, ns, name, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func secretToken(t *testing.T, cl cluster, ns, name string) string {
	t.Helper()
	var sec corev1.Secret
	if err := cl.c.Get(context.Background(), objectKey(ns, name), &sec); err != nil {
		t.Fatal(err)
	}
	return string(sec.Data[keymintv1alpha1.SecretTokenKey])
}

// rotate against keymint's real controllers.
func TestRotate(t *testing.T) {
	g := NewWithT(t)
	cl := startCluster(t)
	ctx := context.Background()
	ns := nsRotate
	createUser(t, cl, ns, "billing")

	t.Run("rotates and keeps the old token for the grace period", func(t *testing.T) {
		createToken(t, cl, ns, "graceful", "billing", func(tok *keymintv1alpha1.ApiToken) {
			tok.Spec.Rotation = &keymintv1alpha1.Rotation{GracePeriod: &metav1.Duration{Duration: 3600e9}}
		})
		before := issued(t, cl, ns, "graceful")

		r := cl.run(t, plugin.Options{}, "rotate", "graceful", "-n", ns)
		g.Expect(r.code).To(Equal(0), r.stderr)

		var after keymintv1alpha1.ApiToken
		g.Expect(cl.c.Get(ctx, objectKey(ns, "graceful"), &after)).To(Succeed())
		g.Expect(after.Status.Serial).To(Equal(before.Status.Serial + 1))
		g.Expect(after.Status.TokenHash).NotTo(Equal(before.Status.TokenHash))
		g.Expect(after.Status.PreviousTokens).To(ContainElement(HaveField("TokenHash", before.Status.TokenHash)))
		g.Expect(token.Matches(secretToken(t, cl, ns, "graceful"), after.Status.TokenHash)).To(BeTrue(), "the Secret holds the new token")
		g.Expect(r.stdout).To(MatchRegexp(`^apitoken.keymint.io/graceful rotated: serial 1 -> 2, prefix %s -> %s, in Secret graceful\n`+
			`The old token %s\.\.\. is accepted until \S+ \(in 59m(\d+s)?\)\.\n$`,
			regexp.QuoteMeta(before.Status.TokenPrefix), regexp.QuoteMeta(after.Status.TokenPrefix), regexp.QuoteMeta(before.Status.TokenPrefix)))

		// status reads the same state back.
		r = cl.run(t, plugin.Options{}, "status", "graceful", "-n", ns)
		g.Expect(r.code).To(Equal(0), r.stderr)
		row := table(t, r.stdout)["graceful"]
		g.Expect(row).To(HaveKeyWithValue("STATE", "Ready"))
		g.Expect(row).To(HaveKeyWithValue("PREFIX", after.Status.TokenPrefix))
		g.Expect(row["ROTATION"]).To(MatchRegexp(`^old token accepted for 59m\d*s?$`))
	})

	t.Run("without a grace period the old token stops", func(t *testing.T) {
		createToken(t, cl, ns, "abrupt", "billing")
		before := issued(t, cl, ns, "abrupt")
		r := cl.run(t, plugin.Options{}, "rotate", "abrupt", "-n", ns)
		g.Expect(r.code).To(Equal(0), r.stderr)
		g.Expect(r.stdout).To(HaveSuffix("The old token " + before.Status.TokenPrefix + "... is refused from now on (no rotation.gracePeriod).\n"))
	})

	t.Run("--wait=false only asks", func(t *testing.T) {
		createToken(t, cl, ns, "async", "billing")
		issued(t, cl, ns, "async")
		r := cl.run(t, plugin.Options{}, "rotate", "async", "-n", ns, "--wait=false")
		g.Expect(r.code).To(Equal(0), r.stderr)
		g.Expect(r.stdout).To(MatchRegexp(`^apitoken.keymint.io/async rotation requested \(keymint.io/rotate=\S+\)\n$`))
		var tok keymintv1alpha1.ApiToken
		eventually(t, "keymint handles the request", func() bool {
			return cl.c.Get(ctx, objectKey(ns, "async"), &tok) == nil && tok.Status.Serial == 2 &&
				tok.Status.LastRotationRequest == tok.Annotations[keymintv1alpha1.RotateAnnotation]
		})
	})

	t.Run("bad input", func(t *testing.T) {
		createToken(t, cl, ns, "revoked", "billing", func(tok *keymintv1alpha1.ApiToken) { tok.Spec.Revoked = true })
		r := cl.run(t, plugin.Options{}, "rotate", "revoked", "-n", ns)
		g.Expect(r.code).To(Equal(1))
		g.Expect(r.stderr).To(ContainSubstring(`apitoken "revoked" is revoked, so there is nothing to rotate`))
		var tok keymintv1alpha1.ApiToken
		g.Expect(cl.c.Get(ctx, objectKey(ns, "revoked"), &tok)).To(Succeed())
		g.Expect(tok.Annotations).NotTo(HaveKey(keymintv1alpha1.RotateAnnotation))

		r = cl.run(t, plugin.Options{}, "rotate", "missing", "-n", ns)
		g.Expect(r.code).To(Equal(1))
		g.Expect(r.stderr).To(Equal("error: apitoken \"missing\" not found in namespace \"rotate\"\n"))

		r = cl.run(t, plugin.Options{}, "rotate")
		g.Expect(r.code).To(Equal(1))
		g.Expect(r.stderr).To(ContainSubstring("rotate takes exactly one ApiToken NAME (got 0 arguments)"))
	})
}

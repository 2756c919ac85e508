package e2e

import (
	"os"
	"os/exec"
	"path/filepath"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

var _ = Describe("make run's metrics", func() {
	It("are served at KEYMINT_METRICS_URL to a plain curl, with the token metrics and no token material", func() {
		_, err := exec.LookPath("curl")
		Expect(err).NotTo(HaveOccurred(), "the README reads metrics with curl; put curl on PATH")
		Expect(env).To(HaveKey("KEYMINT_METRICS_URL"))
		Expect(env["KEYMINT_METRICS_URL"]).To(HavePrefix("http://127.0.0.1:"), "loopback only")

		// A token of its own: the samples' are revoked and rotated by other
		// specs, in an order Ginkgo randomizes.
		manifest := filepath.Join(GinkgoT().TempDir(), "metrics-token.yaml")
		Expect(os.WriteFile(manifest, []byte(`apiVersion: keymint.io/v1alpha1
kind: ServiceUser
metadata: {name: metrics-e2e, namespace: default}
spec: {permissions: ["links:read"]}
---
apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: metrics-e2e, namespace: default}
spec: {serviceUser: metrics-e2e}
`), 0o600)).To(Succeed())
		mustKubectl("apply", "-f", manifest)
		tok := secretToken("metrics-e2e")
		Eventually(func(g Gomega) {
			out, err := exec.Command("curl", "-sS", "--fail", env["KEYMINT_METRICS_URL"]).CombinedOutput()
			g.Expect(err).NotTo(HaveOccurred(), string(out))
			body := string(out)
			g.Expect(body).To(ContainSubstring(`keymint_apitokens{state="active"}`))
			g.Expect(body).To(ContainSubstring("keymint_index_stale 0"))
			g.Expect(body).To(ContainSubstring("controller_runtime_reconcile_errors_total"))
			g.Expect(body).NotTo(ContainSubstring(tok))
		}).Should(Succeed())
	})
})

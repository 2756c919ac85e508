package e2e

import (
	"os/exec"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

var _ = Describe("make run's metrics", func() {
	It("are served at KEYMINT_METRICS_URL to a plain curl, with the token metrics and no token material", func() {
		_, err := exec.LookPath("curl")
		Expect(err).NotTo(HaveOccurred(), "the README reads metrics with curl; put curl on PATH")
		Expect(env).To(HaveKey("KEYMINT_METRICS_URL"))
		Expect(env["KEYMINT_METRICS_URL"]).To(HavePrefix("http://127.0.0.1:"), "loopback only")

		mustKubectl("apply", "-k", "config/samples")
		tok := secretToken("billing-exporter-token")
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

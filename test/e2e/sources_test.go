package e2e

// Tokens restricted to client addresses (allowedSourceCIDRs) behind real
// nginx running config/nginx/keymint.conf, with keymint started as
// `make run RUN_ARGS="-trusted-proxy-cidrs 127.0.0.1/32"` starts it: nginx
// (on 127.0.0.1) is trusted to name the client in X-Forwarded-For. The
// untrusted case is the nginx spec's last: there make run trusts nobody.

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

var _ = Describe("nginx, trusted by keymint, in front of tokens restricted to client addresses", Ordered, func() {
	var (
		nginxURL string
		pinned   string // allowed from 127.0.0.5 only
	)
	// get asks nginx for /reports with tok, from the loopback address from,
	// with extra headers; it returns the status, keymint's error code and
	// what the application saw (nil when it saw nothing).
	get := func(from, tok string, headers ...string) (int, string, *appView) {
		GinkgoHelper()
		req, err := http.NewRequest(http.MethodGet, nginxURL+"/reports", nil)
		Expect(err).NotTo(HaveOccurred())
		req.Header.Set("Authorization", "Bearer "+tok)
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header.Set(headers[i], headers[i+1])
		}
		resp, err := clientFrom(from).Do(req)
		Expect(err).NotTo(HaveOccurred())
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		Expect(err).NotTo(HaveOccurred())
		if resp.StatusCode != http.StatusOK {
			return resp.StatusCode, resp.Header.Get("X-Keymint-Error"), nil
		}
		var seen appView
		Expect(json.Unmarshal(body, &seen)).To(Succeed())
		return resp.StatusCode, "", &seen
	}

	BeforeAll(func() {
		By("starting keymint as make run RUN_ARGS=\"-trusted-proxy-cidrs 127.0.0.1/32\" does")
		run := startRun(filepath.Join(binDir, "dev-sources"), "-trusted-proxy-cidrs", "127.0.0.1/32")
		skubectl := run.kubectl
		dir := run.dir

		By("a ServiceUser whose token is allowed from 127.0.0.5 only")
		manifest := filepath.Join(dir, "pinned.yaml")
		Expect(os.WriteFile(manifest, []byte(`apiVersion: keymint.io/v1alpha1
kind: ServiceUser
metadata: {name: reporter, namespace: default}
spec: {permissions: [reports:write]}
---
apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: pinned, namespace: default}
spec: {serviceUser: reporter, allowedSourceCIDRs: ["127.0.0.5/32"]}
`), 0o600)).To(Succeed())
		skubectl("apply", "-f", manifest)
		skubectl("wait", "--for=condition=Ready", "apitoken/pinned", "--timeout=60s")
		raw, err := base64.StdEncoding.DecodeString(skubectl("get", "secret", "pinned", "-o", "jsonpath={.data.token}"))
		Expect(err).NotTo(HaveOccurred())
		pinned = string(raw)

		app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(appView{User: r.Header.Get("X-Keymint-User"), Token: r.Header.Get("X-Keymint-Token"), Path: r.URL.RequestURI(),
				MetaTeam: r.Header.Get("X-Keymint-Meta-Team")})
		}))
		DeferCleanup(app.Close)
		nginxURL = startNginx(run.env["KEYMINT_CHECK_URL"], run.env["KEYMINT_CA_FILE"], app.URL).url
	})

	It("lets the token through from its address: nginx names the client, keymint believes nginx", func() {
		var seen *appView
		Eventually(func() int {
			var status int
			status, _, seen = get("127.0.0.5", pinned, "X-Keymint-Meta-Team", "admins")
			return status
		}).Should(Equal(http.StatusOK))
		Expect(seen.User).To(Equal("keymint:default:reporter"))
		Expect(seen.Token).To(Equal("default/pinned"))
		Expect(seen.MetaTeam).To(BeEmpty(), "a token without that metadata key: the client's own header is dropped")
	})

	It("refuses it from any other address: 403 source_not_allowed, and the application sees nothing", func() {
		for _, from := range []string{"127.0.0.6", "127.0.0.1"} {
			status, code, seen := get(from, pinned)
			Expect(status).To(Equal(http.StatusForbidden), "from %s", from)
			Expect(code).To(Equal("source_not_allowed"), "from %s", from)
			Expect(seen).To(BeNil())
		}
	})

	It("ignores what the client says of itself: nginx replaces the client's X-Forwarded-For", func() {
		status, code, _ := get("127.0.0.6", pinned, "X-Forwarded-For", "127.0.0.5")
		Expect(status).To(Equal(http.StatusForbidden))
		Expect(code).To(Equal("source_not_allowed"))
		status, _, _ = get("127.0.0.5", pinned, "X-Forwarded-For", "127.0.0.6")
		Expect(status).To(Equal(http.StatusOK), "the client's own header changes nothing either way")
	})
})

package e2e

// Leak reports to two keymint replicas, started as `make run REPLICAS=2`
// starts them: a reported token is refused by both within a second and
// replaced, its Deployment rolled, and nothing a reporter sends can learn
// which tokens are live or make keymint write more.

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/keymint/keymint/internal/token"
	checkserver "github.com/keymint/keymint/webhook/check"
)

var _ = Describe("Leak reports on two replicas", Ordered, func() {
	var (
		run         *devRun
		urls        []string
		metricsURLs []string
		httpc       *http.Client
		gitlabToken string
	)
	const where = "https://git.example.com/acme/shop/-/blob/main/deploy/.env#L7"
	lkubectl := func(args ...string) string {
		GinkgoHelper()
		return run.kubectl(args...)
	}
	apply := func(name, manifest string) {
		GinkgoHelper()
		path := filepath.Join(run.dir, name+".yaml")
		Expect(os.WriteFile(path, []byte(manifest), 0o600)).To(Succeed())
		lkubectl("apply", "-f", path)
	}
	secretToken := func(name string) string {
		GinkgoHelper()
		raw, err := base64.StdEncoding.DecodeString(lkubectl("get", "secret", name, "-o", "jsonpath={.data.token}"))
		Expect(err).NotTo(HaveOccurred())
		return string(raw)
	}
	// checkStatus is replica i's /check answer for tok.
	checkStatus := func(i int, tok string) int {
		req, err := http.NewRequest(http.MethodGet, urls[i]+checkserver.CheckPath, nil)
		Expect(err).NotTo(HaveOccurred())
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := httpc.Do(req)
		if err != nil {
			return 0
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	acceptedByBoth := func(tok string) {
		GinkgoHelper()
		for i := range urls {
			Eventually(func() int { return checkStatus(i, tok) }).Should(Equal(http.StatusOK), "replica %d does not accept %s… yet", i+1, token.Display(tok))
		}
	}
	// issuedToken applies a ServiceUser and an ApiToken of that name and
	// returns its token once both replicas accept it.
	issuedToken := func(name, extraSpec string) string {
		GinkgoHelper()
		apply(name, fmt.Sprintf(`apiVersion: keymint.io/v1alpha1
kind: ServiceUser
metadata: {name: %[1]s, namespace: default}
spec: {permissions: ["orders:read"]}
---
apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: %[1]s, namespace: default}
spec: {serviceUser: %[1]s%[2]s}
`, name, extraSpec))
		lkubectl("wait", "--for=condition=Ready", "apitoken/"+name, "--timeout=60s")
		tok := secretToken(name)
		acceptedByBoth(tok)
		return tok
	}
	post := func(url, path, contentType, body string, header map[string]string) (int, http.Header, string) {
		GinkgoHelper()
		req, err := http.NewRequest(http.MethodPost, url+path, strings.NewReader(body))
		Expect(err).NotTo(HaveOccurred())
		req.Header.Set("Content-Type", contentType)
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := httpc.Do(req)
		Expect(err).NotTo(HaveOccurred())
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		Expect(err).NotTo(HaveOccurred())
		return resp.StatusCode, resp.Header, string(b)
	}
	github := func(replica int, credentials ...string) (int, string) {
		GinkgoHelper()
		body, err := json.Marshal(map[string][]string{"credentials": credentials})
		Expect(err).NotTo(HaveOccurred())
		code, _, answer := post(urls[replica], checkserver.LeakReportPath, "application/json", string(body), nil)
		return code, answer
	}
	// refusedByBothWithin reports how long after start both replicas
	// refused tok, failing past limit.
	refusedByBothWithin := func(tok string, start time.Time, limit time.Duration) time.Duration {
		GinkgoHelper()
		var last time.Duration
		for i := range urls {
			Eventually(func() int { return checkStatus(i, tok) }, limit, 10*time.Millisecond).Should(Equal(http.StatusUnauthorized),
				"replica %d still accepts the reported token %s…", i+1, token.Display(tok))
			last = max(last, time.Since(start))
		}
		return last
	}
	// leakWrites is how many status writes the replicas' leak writers
	// attempted, whatever came of them (written, unchanged, gone, failed),
	// and how many reports they queued, summed from their metrics.
	leakWrites := func() (writes, queued float64) {
		GinkgoHelper()
		for _, u := range metricsURLs {
			resp, err := http.Get(u)
			Expect(err).NotTo(HaveOccurred())
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			for _, line := range strings.Split(string(b), "\n") {
				name, v, ok := strings.Cut(line, " ")
				if !ok || strings.HasPrefix(line, "#") {
					continue
				}
				f, err := strconv.ParseFloat(v, 64)
				Expect(err).NotTo(HaveOccurred())
				switch {
				case strings.HasPrefix(name, "keymint_leak_report_status_updates_total{"):
					writes += f
				case strings.HasPrefix(name, "keymint_leak_reports_total{") && strings.Contains(name, `outcome="queued"`):
					queued += f
				}
			}
		}
		return writes, queued
	}
	// leakRecord is what the ApiToken's status says of leaks.
	leakRecord := func(name string) string {
		GinkgoHelper()
		return lkubectl("get", "apitoken", name, "-n", "default", "-o", "jsonpath={.metadata.generation} {.status.serial} {.status.lastLeak} {.status.leakReports}")
	}

	BeforeAll(func() {
		By("starting keymint as make run REPLICAS=2 does: leak reports on, both forms")
		run = startRun(filepath.Join(binDir, "dev-leaks"), "-replicas", "2")
		urls, metricsURLs = run.list("KEYMINT_CHECK_URLS"), run.list("KEYMINT_METRICS_URLS")
		Expect(urls).To(HaveLen(2))
		Expect(metricsURLs).To(HaveLen(2))
		httpc = run.httpsClient()
		b, err := os.ReadFile(run.env["KEYMINT_LEAK_REPORT_GITLAB_TOKEN_FILE"])
		Expect(err).NotTo(HaveOccurred(), "make run writes the GitLab token to the file keymint.env names")
		gitlabToken = strings.TrimSpace(string(b))
		Expect(gitlabToken).NotTo(BeEmpty())
		Expect(run.log.String()).NotTo(ContainSubstring(gitlabToken), "make run prints where the GitLab token is, never the token")
	})

	var leaked string
	It("refuses a token reported through POST /credentials/revoke on both replicas within a second, replaces it and rolls its Deployment", func() {
		apply("shop-web", `apiVersion: apps/v1
kind: Deployment
metadata: {name: shop-web, namespace: default}
spec:
  selector: {matchLabels: {app: shop-web}}
  template:
    metadata: {labels: {app: shop-web}}
    spec: {containers: [{name: web, image: example.com/shop-web:1}]}
`)
		leaked = issuedToken("shop", `, rotation: {restartTargets: [{kind: Deployment, name: shop-web}]}`)

		start := time.Now()
		code, _ := github(0, leaked)
		Expect(code).To(Equal(http.StatusAccepted))
		took := refusedByBothWithin(leaked, start, time.Second)
		GinkgoWriter.Printf("a token reported to replica 1 was refused by both replicas %v after the report was sent\n", took)

		By("a new token in the Secret, accepted by both, and the Deployment rolled")
		var fresh string
		Eventually(func() string { fresh = secretToken("shop"); return fresh }).ShouldNot(Equal(leaked))
		acceptedByBoth(fresh)
		Eventually(func() string {
			return lkubectl("get", "deployment", "shop-web", "-n", "default", "-o", `jsonpath={.spec.template.metadata.annotations.keymint\.io/restartedAt}`)
		}).ShouldNot(BeEmpty())
		Expect(lkubectl("get", "apitoken", "shop", "-n", "default", "-o", `jsonpath={.status.conditions[?(@.type=="Leaked")].status}`)).To(Equal("True"))
		Eventually(func() string {
			return lkubectl("get", "events", "-n", "default", "--field-selector", "reason=Leaked", "-o", "jsonpath={.items[*].message}")
		}).Should(And(ContainSubstring("github"), ContainSubstring(token.Display(leaked))))
		for _, out := range []string{
			lkubectl("get", "events", "-n", "default", "-o", "yaml"),
			lkubectl("get", "apitoken", "shop", "-n", "default", "-o", "yaml"),
		} {
			Expect(out).NotTo(Or(ContainSubstring(leaked), ContainSubstring(fresh)), "no token in Events or status")
		}
	})

	It("changes nothing when the report is replayed, or when GitOps re-applies the same manifest", func() {
		writes, queued := leakWrites()
		Expect(writes).To(BeNumerically(">=", 1), "the report above was written, and counted")
		record := leakRecord("shop")
		code, _ := github(1, leaked)
		Expect(code).To(Equal(http.StatusAccepted))
		code, _ = github(0, leaked)
		Expect(code).To(Equal(http.StatusAccepted))
		lkubectl("apply", "-f", filepath.Join(run.dir, "shop.yaml"))
		Consistently(func(g Gomega) {
			g.Expect(checkStatus(0, leaked)).To(Equal(http.StatusUnauthorized))
			g.Expect(checkStatus(1, leaked)).To(Equal(http.StatusUnauthorized))
		}, "2s", "200ms").Should(Succeed())
		writesAfter, queuedAfter := leakWrites()
		Expect(writesAfter).To(Equal(writes), "a replayed report writes nothing")
		Expect(queuedAfter).To(Equal(queued), "a replayed report is not even queued")
		Expect(leakRecord("shop")).To(Equal(record), "neither the replay nor the re-apply changed the token or its record")
	})

	It("answers a valid, an unknown, a revoked and a rotated-out token alike", func() {
		valid := issuedToken("bystander", "")
		revoked := issuedToken("retired", "")
		lkubectl("patch", "apitoken", "retired", "-n", "default", "--type=merge", "-p", `{"spec":{"revoked":true}}`)
		Eventually(func() int { return checkStatus(0, revoked) }).Should(Equal(http.StatusUnauthorized))
		unknown, err := token.Mint("km")
		Expect(err).NotTo(HaveOccurred())

		answers := map[string]string{}
		for what, tok := range map[string]string{"valid": valid, "unknown": unknown, "revoked": revoked, "rotated-out": leaked} {
			code, body := github(1, tok)
			answers[what] = fmt.Sprintf("%d %s", code, body)
		}
		Expect(answers).To(HaveLen(4))
		for what, a := range answers {
			Expect(a).To(Equal(answers["unknown"]), "the answer for the %s token differs from the unknown one's", what)
			Expect(a).To(HavePrefix("202 "))
		}
		refusedByBothWithin(valid, time.Now(), 5*time.Second)
	})

	It("makes no API write for 1,000 strings that are not live keymint tokens", func() {
		garbage := make([]string, 0, 1000)
		for i := range 1000 {
			switch i % 4 {
			case 0:
				garbage = append(garbage, fmt.Sprintf("ghp_%036d", i))
			case 1:
				t, err := token.Mint("km")
				Expect(err).NotTo(HaveOccurred())
				garbage = append(garbage, t[:len(t)-1]+string("0123456789"[i%10])) // a checksum that fails, mostly
			case 2:
				t, err := token.Mint("km")
				Expect(err).NotTo(HaveOccurred())
				garbage = append(garbage, t) // well-formed, unknown
			default:
				garbage = append(garbage, strings.Repeat("x", i%200))
			}
		}
		writes, queued := leakWrites()
		code, body := github(0, garbage...)
		Expect(code).To(Equal(http.StatusAccepted), body)
		Consistently(func() []float64 { w, q := leakWrites(); return []float64{w, q} }, "2s", "250ms").Should(Equal([]float64{writes, queued}),
			"1,000 strings that are not live keymint tokens are neither queued nor written")
	})

	It("takes GitLab's Token Revocation API calls with the shared token only, and refuses the reported token on both replicas", func() {
		tok := issuedToken("warehouse", "")
		auth := map[string]string{"Authorization": gitlabToken} // as GitLab sends it: no "Bearer"

		req, err := http.NewRequest(http.MethodGet, urls[1]+checkserver.RevocableTokenTypesPath, nil)
		Expect(err).NotTo(HaveOccurred())
		req.Header.Set("Authorization", gitlabToken)
		resp, err := httpc.Do(req)
		Expect(err).NotTo(HaveOccurred())
		var types struct{ Types []string }
		Expect(json.NewDecoder(resp.Body).Decode(&types)).To(Succeed())
		resp.Body.Close()
		Expect(resp.StatusCode).To(Equal(http.StatusOK))
		Expect(types.Types).To(ContainElement(checkserver.GitLabTokenType))

		body := fmt.Sprintf(`[{"type":%q,"token":%q,"location":%q}]`, checkserver.GitLabTokenType, tok, where)
		code, _, _ := post(urls[1], checkserver.RevokeTokensPath, "application/json", body, map[string]string{"Authorization": "wrong"})
		Expect(code).To(Equal(http.StatusUnauthorized))
		Expect(checkStatus(0, tok)).To(Equal(http.StatusOK), "a report without the shared token does nothing")

		start := time.Now()
		code, _, _ = post(urls[1], checkserver.RevokeTokensPath, "application/json", body, auth)
		Expect(code).To(Equal(http.StatusNoContent))
		took := refusedByBothWithin(tok, start, time.Second)
		GinkgoWriter.Printf("a token reported through GitLab's API to replica 2 was refused by both replicas %v after the report was sent\n", took)
		Eventually(func() string { return secretToken("warehouse") }).ShouldNot(Equal(tok))
		Eventually(func() string {
			return lkubectl("get", "events", "-n", "default", "--field-selector", "reason=Leaked,involvedObject.name=warehouse", "-o", "jsonpath={.items[*].message}")
		}).Should(ContainSubstring(where))

		By("a replay is idempotent: 204, and nothing written")
		Eventually(func() string { return leakRecord("warehouse") }).Should(ContainSubstring(where))
		record := leakRecord("warehouse")
		writes, _ := leakWrites()
		code, _, _ = post(urls[1], checkserver.RevokeTokensPath, "application/json", body, auth)
		Expect(code).To(Equal(http.StatusNoContent))
		Consistently(func() float64 { w, _ := leakWrites(); return w }, "1s", "250ms").Should(Equal(writes))
		Expect(leakRecord("warehouse")).To(Equal(record))
	})

	It("answers 429 with Retry-After past a client's rate", func() {
		// make run keeps the default: 10 reports a minute from one address,
		// some of which the specs above spent.
		var code int
		var header http.Header
		for range 12 {
			if code, header, _ = post(urls[1], checkserver.LeakReportPath, "application/json", `{"credentials":[]}`, nil); code == http.StatusTooManyRequests {
				break
			}
		}
		Expect(code).To(Equal(http.StatusTooManyRequests))
		retry, err := strconv.Atoi(header.Get("Retry-After"))
		Expect(err).NotTo(HaveOccurred(), "a 429 without Retry-After")
		Expect(retry).To(BeNumerically(">=", 1))
		Expect(header.Get("Content-Type")).To(HavePrefix("application/json"))
	})
})

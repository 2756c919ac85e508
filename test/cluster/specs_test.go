package cluster

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

// The specs share one cluster and one keymint release, in this order: the
// last one uninstalls it.
var _ = Describe("keymint installed with helm in a one-node cluster", Ordered, func() {
	const ns = "shop"
	// prober's token keeps working through failover and upgrade.
	var proberToken string

	BeforeAll(func() {
		apply(`apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: keymint.io/v1alpha1
kind: ServiceUser
metadata: {name: frontend, namespace: shop}
spec:
  permissions: [orders:read]
  groups: [shop-readers]
  tokenPolicy: {requestsPerMinute: 60000}
---
apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: prober, namespace: shop}
spec: {serviceUser: frontend, secretName: prober-token}
`)
		proberToken = tokenOf(ns, "prober", "prober-token")
	})

	It("runs both replicas Ready with one leader, admission reached through the Service, metrics for the metrics reader only", func() {
		By("both replicas Ready, one of them holding the Lease")
		Eventually(func() (string, error) {
			return kubectl("-n", keymintNS, "get", "deployment", "keymint-manager", "-o", "jsonpath={.status.readyReplicas}")
		}).Should(Equal("2"))
		pods := strings.Fields(mustKubectl("-n", keymintNS, "get", "pods", "-l", "app.kubernetes.io/name=keymint", "-o", "jsonpath={.items[*].metadata.name}"))
		Expect(pods).To(HaveLen(2))
		holder := strings.TrimSpace(mustKubectl("-n", keymintNS, "get", "lease", "keymint.keymint.io", "-o", "jsonpath={.spec.holderIdentity}"))
		Expect(holder).To(SatisfyAny(HavePrefix(pods[0]+"_"), HavePrefix(pods[1]+"_")))

		By("kube-apiserver trusting the CA keymint injected into its webhook configurations")
		for _, kind := range []string{"validatingwebhookconfiguration/keymint-validating-webhook-configuration", "mutatingwebhookconfiguration/keymint-mutating-webhook-configuration"} {
			bundle := mustKubectl("get", kind, "-o", "jsonpath={.webhooks[0].clientConfig.caBundle}")
			Expect(base64Decode(bundle)).To(Equal(secretData(keymintNS, "keymint-serving-certs", "ca.crt")), kind)
		}

		By("a user who may create ApiTokens but not mint this ServiceUser's is denied by keymint's webhook")
		apply(`apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: eve-edits-tokens, namespace: shop}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: keymint-editor}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: eve}]
`)
		out, err := kubectlIn([]byte(`apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: eves, namespace: shop}
spec: {serviceUser: frontend}
`), "--as=eve", "create", "-f", "-")
		Expect(err).To(HaveOccurred(), out)
		Expect(out).To(ContainSubstring("admission webhook"))
		Expect(out).To(ContainSubstring(`user "eve" may not`))

		By("metrics over HTTPS for a ServiceAccount bound to keymint-metrics-reader, refused without a token")
		apply(`apiVersion: v1
kind: ServiceAccount
metadata: {name: scraper, namespace: shop}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: shop-scraper-reads-metrics}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: keymint-metrics-reader}
subjects: [{kind: ServiceAccount, name: scraper, namespace: shop}]
`)
		saToken := strings.TrimSpace(mustKubectl("-n", ns, "create", "token", "scraper"))
		// The metrics server's certificate is self-signed by controller-runtime
		// (as kubebuilder's ServiceMonitor expects): identity is the token's job.
		metrics := serviceClient(nil, map[string]string{"metrics.keymint": clusterIP(keymintNS, "keymint-webhook")})
		metrics.Transport.(*http.Transport).TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // see above
		scrape := func(token string) (int, string) {
			req, _ := http.NewRequest(http.MethodGet, "https://metrics.keymint:8080/metrics", nil)
			if token != "" {
				req.Header.Set("Authorization", "Bearer "+token)
			}
			resp, err := metrics.Do(req)
			if err != nil {
				return 0, err.Error()
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(body)
		}
		Eventually(func() int { code, _ := scrape(saToken); return code }).Should(Equal(http.StatusOK))
		_, body := scrape(saToken)
		Expect(body).To(ContainSubstring("keymint_"))
		code, _ := scrape("")
		Expect(code).To(Equal(http.StatusUnauthorized))
	})

	It("delivers the token to a Deployment that calls a protected service through /check; revocation, rotation and its rollout", func() {
		ca := secretData(keymintNS, "keymint-serving-certs", "ca.crt")
		apply(fmt.Sprintf(`apiVersion: v1
kind: ConfigMap
metadata: {name: keymint-ca, namespace: shop}
data:
  ca.crt: %q
---
apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: client, namespace: shop}
spec:
  serviceUser: frontend
  secretName: client-token
  rotation:
    gracePeriod: 10m
    restartTargets: [{kind: Deployment, name: client}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: protected, namespace: shop}
spec:
  selector: {matchLabels: {app: protected}}
  template:
    metadata: {labels: {app: protected}}
    spec:
      containers:
      - name: protected
        image: keymint.local/testapp:dev
        imagePullPolicy: Never
        args: [protected, -check-url, %s, -ca, /etc/keymint-ca/ca.crt]
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
        volumeMounts: [{name: ca, mountPath: /etc/keymint-ca}]
      volumes: [{name: ca, configMap: {name: keymint-ca}}]
---
apiVersion: v1
kind: Service
metadata: {name: protected, namespace: shop}
spec:
  selector: {app: protected}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      containers:
      - name: client
        image: keymint.local/testapp:dev
        imagePullPolicy: Never
        args: [client, -target, http://protected.shop.svc/, -listen, ":8081"]
        readinessProbe: {httpGet: {path: /healthz, port: 8081}, periodSeconds: 1}
        volumeMounts: [{name: token, mountPath: /var/run/secrets/keymint, readOnly: true}]
      volumes: [{name: token, secret: {secretName: client-token}}]
`, string(ca), env["KEYMINT_IN_CLUSTER_CHECK_URL"]))
		token := tokenOf(ns, "client", "client-token")
		mustKubectl("-n", ns, "rollout", "status", "deployment/protected", "--timeout=2m")
		mustKubectl("-n", ns, "rollout", "status", "deployment/client", "--timeout=2m")
		protected := serviceClient(nil, nil)
		statsURL := "http://" + clusterIP(ns, "protected") + "/stats"

		By("the pods present the token from their Secret, and keymint passes it, by the Service's DNS name")
		Eventually(seen(protected, statsURL, token)).Should(BeNumerically(">", 10))
		Expect(stats(protected, statsURL).Status).To(HaveKey("200"))
		Expect(stats(protected, statsURL).Status).To(HaveLen(1), "every call so far passed")

		By("rotating: the Deployment rolls and its new pods present the new token, with no failed call")
		generation := strings.TrimSpace(mustKubectl("-n", ns, "get", "deployment", "client", "-o", "jsonpath={.metadata.generation}"))
		mustKubectl("-n", ns, "annotate", "apitoken", "client", "keymint.io/rotate="+time.Now().Format(time.RFC3339Nano), "--overwrite")
		var newToken string
		Eventually(func() string { // fingerprints: a failure message never shows a token
			newToken = string(secretData(ns, "client-token", "token"))
			return fingerprint(newToken)
		}).ShouldNot(Equal(fingerprint(token)))
		Eventually(func() string {
			return strings.TrimSpace(mustKubectl("-n", ns, "get", "deployment", "client", "-o", "jsonpath={.metadata.generation}"))
		}).ShouldNot(Equal(generation), "keymint restarted the Deployment")
		mustKubectl("-n", ns, "rollout", "status", "deployment/client", "--timeout=2m")
		Eventually(seen(protected, statsURL, newToken)).Should(BeNumerically(">", 10))
		Expect(stats(protected, statsURL).Status).To(HaveLen(1), "a call failed during the rotation: %v", stats(protected, statsURL).Status)
		// The new pods' own counts: no call failed before it reached the service.
		for _, ip := range livePodIPs(ns, "app=client") {
			Expect(stats(protected, "http://"+ip+":8081/stats").Status).To(HaveKey("200"))
			Expect(stats(protected, "http://"+ip+":8081/stats").Status).To(HaveLen(1), "client pod %s saw failures", ip)
		}

		By("revoking: refused within a second")
		call := func() int {
			req, _ := http.NewRequest(http.MethodGet, "http://"+clusterIP(ns, "protected")+"/", nil)
			req.Header.Set("Authorization", "Bearer "+newToken)
			resp, err := protected.Do(req)
			Expect(err).NotTo(HaveOccurred())
			resp.Body.Close()
			return resp.StatusCode
		}
		Expect(call()).To(Equal(http.StatusOK))
		revoked := time.Now()
		mustKubectl("-n", ns, "patch", "apitoken", "client", "--type=merge", "-p", `{"spec":{"revoked":true}}`)
		Eventually(call).WithTimeout(5 * time.Second).WithPolling(20 * time.Millisecond).Should(Equal(http.StatusUnauthorized))
		took := time.Since(revoked)
		GinkgoWriter.Printf("revocation reached the protected service %s after the patch returned\n", took)
		Expect(took).To(BeNumerically("<", time.Second))
	})

	It("authenticates kubectl with a keymint token: kube-apiserver asks keymint through the Service, and stops accepting it once revoked", func() {
		apply(`apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: kubectl-user, namespace: shop}
spec: {serviceUser: frontend, secretName: kubectl-user-token}
`)
		token := tokenOf(ns, "kubectl-user", "kubectl-user-token")
		kubeconfig := tokenKubeconfig(token)
		out, err := exec.Command("kubectl", "--kubeconfig", kubeconfig, "auth", "whoami", "-o", "json").CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), string(out))
		Expect(jsonField(string(out), "status", "userInfo", "username")).To(Equal("keymint:shop:frontend"))
		Expect(jsonField(string(out), "status", "userInfo", "groups")).To(ContainElement("shop-readers"))

		out, err = exec.Command("kubectl", "--kubeconfig", tokenKubeconfig(token+"x"), "auth", "whoami").CombinedOutput()
		Expect(err).To(HaveOccurred())
		Expect(string(out)).To(ContainSubstring("Unauthorized"))

		By("revoked: kube-apiserver refuses it once its caches expire")
		revoked := time.Now()
		mustKubectl("-n", ns, "patch", "apitoken", "kubectl-user", "--type=merge", "-p", `{"spec":{"revoked":true}}`)
		Eventually(func() string {
			out, _ := exec.Command("kubectl", "--kubeconfig", kubeconfig, "auth", "whoami").CombinedOutput()
			return string(out)
		}).WithTimeout(30 * time.Second).WithPolling(200 * time.Millisecond).Should(ContainSubstring("Unauthorized"))
		took := time.Since(revoked)
		GinkgoWriter.Printf("kube-apiserver refused the revoked token %s after the patch\n", took)
		// Its token webhook cache (--authentication-token-webhook-cache-ttl=5s)
		// and its own 10 s cache of successes: docs/checks.md.
		Expect(took).To(BeNumerically("<", 16*time.Second))
	})

	It("fails over when the leader's pod is evicted, checks never stop, and the PodDisruptionBudget keeps the other", func() {
		lease := func() string {
			return strings.TrimSpace(mustKubectl("-n", keymintNS, "get", "lease", "keymint.keymint.io", "-o", "jsonpath={.spec.holderIdentity}"))
		}
		leaseSeconds := strings.TrimSpace(mustKubectl("-n", keymintNS, "get", "lease", "keymint.keymint.io", "-o", "jsonpath={.spec.leaseDurationSeconds}"))
		leaseDuration, err := time.ParseDuration(leaseSeconds + "s")
		Expect(err).NotTo(HaveOccurred())
		leader, _, _ := strings.Cut(lease(), "_")
		pods := strings.Fields(mustKubectl("-n", keymintNS, "get", "pods", "-l", "app.kubernetes.io/name=keymint", "-o", "jsonpath={.items[*].metadata.name}"))
		Expect(pods).To(ContainElement(leader))
		other := pods[0]
		if other == leader {
			other = pods[1]
		}

		p := startProber(proberToken)
		By("evicting the leader (allowed) and then the other replica (refused: 429)")
		Expect(evict(leader)).To(Equal(http.StatusCreated))
		evicted := time.Now()
		Expect(evict(other)).To(Equal(http.StatusTooManyRequests))

		By("a remaining replica takes the Lease and reconciles a new ApiToken within one lease duration")
		// The evicted leader keeps working through its preStop pause, then
		// hands the Lease over as it stops.
		Eventually(lease).WithTimeout(2 * leaseDuration).ShouldNot(HavePrefix(leader + "_"))
		handover := time.Since(evicted)
		apply(`apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: after-failover, namespace: shop}
spec: {serviceUser: frontend}
`)
		Eventually(func() (string, error) {
			return kubectl("-n", ns, "get", "apitoken", "after-failover", "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		}).WithTimeout(2 * leaseDuration).WithPolling(100 * time.Millisecond).Should(Equal("True"))
		took := time.Since(evicted)
		GinkgoWriter.Printf("failover: Lease handed over %s after the leader's eviction, a new ApiToken issued after %s (lease %s)\n", handover, took, leaseDuration)
		mustKubectl("-n", keymintNS, "rollout", "status", "deployment/keymint-manager", "--timeout=2m")
		ok, failures := p.finish()
		GinkgoWriter.Printf("checks during failover: %d passed, %d failed\n", ok, len(failures))
		Expect(failures).To(BeEmpty())
		Expect(ok).To(BeNumerically(">", 20))
		Expect(took).To(BeNumerically("<", leaseDuration))
	})

	It("rolls the pods on helm upgrade with no failed check, and helm uninstall leaves only what docs/helm.md says", func() {
		p := startProber(proberToken)
		before := mustKubectl("-n", keymintNS, "get", "pods", "-l", "app.kubernetes.io/name=keymint", "-o", "jsonpath={.items[*].metadata.name}")
		helm("upgrade", "keymint", filepath.Join(root, "dist/chart"), "--namespace", keymintNS, "--reuse-values", "--set", "logLevel=debug", "--wait", "--timeout", "3m")
		mustKubectl("-n", keymintNS, "rollout", "status", "deployment/keymint-manager", "--timeout=2m")
		// The old pods go once their preStop pause is over.
		Eventually(func() []string {
			return strings.Fields(mustKubectl("-n", keymintNS, "get", "pods", "-l", "app.kubernetes.io/name=keymint", "-o", "jsonpath={.items[*].metadata.name}"))
		}).ShouldNot(ContainElement(BeElementOf(strings.Fields(before))), "helm upgrade rolls every pod")
		Expect(mustKubectl("-n", keymintNS, "get", "deployment", "keymint-manager", "-o", "jsonpath={.spec.template.spec.containers[0].args}")).To(ContainSubstring("--zap-log-level=debug"))
		ok, failures := p.finish()
		GinkgoWriter.Printf("checks during helm upgrade: %d passed, %d failed\n", ok, len(failures))
		Expect(failures).To(BeEmpty())
		Expect(ok).To(BeNumerically(">", 20))

		By("helm uninstall")
		helm("uninstall", "keymint", "--namespace", keymintNS, "--wait", "--timeout", "3m")
		Expect(mustKubectl("get", "crd", "apitokens.keymint.io", "serviceusers.keymint.io", "-o", "name")).To(ContainSubstring("apitokens"))
		// The pods go once their preStop pause is over.
		Eventually(func() []string {
			return strings.Fields(mustKubectl("-n", keymintNS, "get", "all,secrets,configmaps,serviceaccounts,roles,rolebindings,leases,networkpolicies,poddisruptionbudgets", "-o", "name"))
		}).Should(ConsistOf("secret/keymint-serving-certs", "secret/keymint-record-key", "configmap/kube-root-ca.crt", "serviceaccount/default", "lease.coordination.k8s.io/keymint.keymint.io"))
		cluster := mustKubectl("get", "clusterroles,clusterrolebindings,validatingwebhookconfigurations,mutatingwebhookconfigurations", "-o", "name")
		Expect(cluster).NotTo(ContainSubstring("keymint"))
	})
})

func base64Decode(s string) []byte {
	GinkgoHelper()
	out, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	Expect(err).NotTo(HaveOccurred())
	return out
}

// protectedStats is what testapp protected counts.
type protectedStats struct {
	Status       map[string]int `json:"status"`
	Fingerprints map[string]int `json:"fingerprints"`
}

func stats(client *http.Client, url string) protectedStats {
	GinkgoHelper()
	s, err := tryStats(client, url)
	Expect(err).NotTo(HaveOccurred())
	return s
}

func tryStats(client *http.Client, url string) (protectedStats, error) {
	var s protectedStats
	resp, err := client.Get(url)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	return s, json.NewDecoder(resp.Body).Decode(&s)
}

// seen returns how many calls presented token, for Eventually.
func seen(client *http.Client, url, token string) func() (int, error) {
	return func() (int, error) {
		s, err := tryStats(client, url)
		return s.Fingerprints[fingerprint(token)], err
	}
}

func fingerprint(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:6])
}

// evict asks the Eviction API to evict a keymint pod and returns its status.
func evict(pod string) int {
	GinkgoHelper()
	body := fmt.Sprintf(`{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":%q,"namespace":%q}}`, pod, keymintNS)
	out, err := kubectlIn([]byte(body), "create", "--raw", fmt.Sprintf("/api/v1/namespaces/%s/pods/%s/eviction", keymintNS, pod), "-f", "-")
	if err == nil {
		return http.StatusCreated
	}
	if strings.Contains(out, "disruption budget") || strings.Contains(out, "TooManyRequests") {
		return http.StatusTooManyRequests
	}
	Fail("eviction of " + pod + ": " + out)
	return 0
}

// livePodIPs returns the addresses of the running pods that select, less
// those terminating.
func livePodIPs(ns, selector string) []string {
	GinkgoHelper()
	var list struct {
		Items []struct {
			Metadata struct {
				DeletionTimestamp *string `json:"deletionTimestamp"`
			} `json:"metadata"`
			Status struct {
				Phase string `json:"phase"`
				PodIP string `json:"podIP"`
			} `json:"status"`
		} `json:"items"`
	}
	Expect(json.Unmarshal([]byte(mustKubectl("-n", ns, "get", "pods", "-l", selector, "-o", "json")), &list)).To(Succeed())
	var ips []string
	for _, p := range list.Items {
		if p.Metadata.DeletionTimestamp == nil && p.Status.Phase == "Running" {
			ips = append(ips, p.Status.PodIP)
		}
	}
	Expect(ips).NotTo(BeEmpty())
	return ips
}

// tokenKubeconfig writes the cluster's credential-less kubeconfig with token
// as its user's, in a file only root reads: a token on kubectl's command
// line would show in every process listing.
func tokenKubeconfig(token string) string {
	GinkgoHelper()
	b, err := os.ReadFile(env["KEYMINT_TOKEN_KUBECONFIG"])
	Expect(err).NotTo(HaveOccurred())
	withToken := strings.Replace(string(b), "user: {}", fmt.Sprintf("user: {token: %q}", token), 1)
	Expect(withToken).NotTo(Equal(string(b)))
	path := filepath.Join(GinkgoT().TempDir(), "kubeconfig")
	Expect(os.WriteFile(path, []byte(withToken), 0o600)).To(Succeed())
	return path
}

func helm(args ...string) {
	GinkgoHelper()
	cmd := exec.Command(filepath.Join(root, "bin/helm"), append(args, "--kubeconfig", env["KUBECONFIG"])...)
	out, err := cmd.CombinedOutput()
	Expect(err).NotTo(HaveOccurred(), "helm %s: %s", strings.Join(args, " "), out)
}

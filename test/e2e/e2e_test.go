// Package e2e drives keymint as a user would: it starts it the way `make run`
// does (a local kube-apiserver and etcd, keymint as a separate process) and
// talks to it only through kubectl and HTTPS.
package e2e

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/keymint/keymint/internal/testenv"
	"github.com/keymint/keymint/internal/token"
)

func TestE2E(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "End-to-end Suite")
}

var (
	root     string
	devDir   string
	runCmd   *exec.Cmd
	runLog   *bytes.Buffer
	exited   chan error
	env      map[string]string
	checkTLS *http.Client
	// binDir holds the keymint and keymint-run binaries the suite built.
	binDir string
)

var _ = BeforeSuite(func() {
	SetDefaultEventuallyTimeout(30 * time.Second)
	SetDefaultEventuallyPollingInterval(200 * time.Millisecond)
	var err error
	root, err = testenv.RepoRoot()
	Expect(err).NotTo(HaveOccurred())
	_, err = exec.LookPath("kubectl")
	Expect(err).NotTo(HaveOccurred(), "the end-to-end suite drives keymint with kubectl; put kubectl on PATH")

	tmp := GinkgoT().TempDir()
	binDir = tmp
	devDir = filepath.Join(tmp, "dev")
	By("building keymint and the make run launcher")
	for pkg, out := range map[string]string{"./cmd/keymint": filepath.Join(tmp, "keymint"), "./hack/run": filepath.Join(tmp, "keymint-run")} {
		build := exec.Command("go", "build", "-o", out, pkg)
		build.Dir = root
		b, err := build.CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), string(b))
	}

	By("starting keymint as make run does, with no kubeconfig around")
	runLog = &bytes.Buffer{}
	runCmd = exec.Command(filepath.Join(tmp, "keymint-run"), "-dir", devDir, "-keymint", filepath.Join(tmp, "keymint"), "-check-port", "0")
	runCmd.Dir = root
	runCmd.Env = append(withoutKubeconfig(os.Environ()), "HOME="+tmp)
	runCmd.Stdout = io.MultiWriter(runLog, GinkgoWriter)
	runCmd.Stderr = runCmd.Stdout
	Expect(runCmd.Start()).To(Succeed())
	exited = make(chan error, 1)
	go func() { exited <- runCmd.Wait() }()

	envFile := filepath.Join(devDir, "keymint.env")
	Eventually(func() error {
		select {
		case err := <-exited:
			exited <- err
			StopTrying(fmt.Sprintf("make run exited before it was ready: %v\n%s", err, runLog)).Now()
		default:
		}
		_, err := os.Stat(envFile)
		return err
	}, 3*time.Minute).Should(Succeed())
	env = readEnv(envFile)
	Expect(env).To(HaveKey("KUBECONFIG"))
	Expect(env).To(HaveKey("KEYMINT_CHECK_URL"))
	Expect(env).To(HaveKey("KEYMINT_CA_FILE"))

	ca, err := os.ReadFile(env["KEYMINT_CA_FILE"])
	Expect(err).NotTo(HaveOccurred())
	pool := x509.NewCertPool()
	Expect(pool.AppendCertsFromPEM(ca)).To(BeTrue())
	checkTLS = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
})

var _ = AfterSuite(func() {
	if runCmd == nil || runCmd.Process == nil {
		return
	}
	By("stopping make run with SIGINT, as Ctrl-C does")
	Expect(runCmd.Process.Signal(syscall.SIGINT)).To(Succeed())
	Eventually(exited, time.Minute).Should(Receive(BeNil()))
	Expect(processesUsing(devDir)).To(BeEmpty(), "processes left behind after Ctrl-C")
	Expect(filepath.Join(devDir, "keymint.env")).NotTo(BeAnExistingFile())
})

func withoutKubeconfig(environ []string) []string {
	var out []string
	for _, kv := range environ {
		if !strings.HasPrefix(kv, "KUBECONFIG=") && !strings.HasPrefix(kv, "HOME=") {
			out = append(out, kv)
		}
	}
	return out
}

func readEnv(path string) map[string]string {
	f, err := os.Open(path)
	Expect(err).NotTo(HaveOccurred())
	defer f.Close()
	out := map[string]string{}
	scan := bufio.NewScanner(f)
	for scan.Scan() {
		if k, v, ok := strings.Cut(scan.Text(), "="); ok {
			out[k] = v
		}
	}
	return out
}

// processesUsing lists running processes whose command line mentions dir:
// keymint, kube-apiserver and etcd all do (certificates, data directory).
func processesUsing(dir string) []string {
	var found []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || e.Name() == fmt.Sprint(os.Getpid()) {
			continue
		}
		if args := strings.ReplaceAll(string(cmdline), "\x00", " "); strings.Contains(args, dir) {
			found = append(found, e.Name()+": "+args)
		}
	}
	return found
}

// kubectl runs kubectl with the KUBECONFIG make run wrote, as the admin.
func kubectl(args ...string) (string, error) {
	cmd := exec.Command("kubectl", args...)
	cmd.Dir = root
	cmd.Env = append(withoutKubeconfig(os.Environ()), "KUBECONFIG="+env["KUBECONFIG"], "HOME="+devDir)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mustKubectl(args ...string) string {
	GinkgoHelper()
	out, err := kubectl(args...)
	Expect(err).NotTo(HaveOccurred(), "kubectl %s: %s", redact(args), out)
	return out
}

// redact shows kubectl arguments with any token cut to its display prefix,
// so a failure message never carries a whole token.
func redact(args []string) string {
	shown := make([]string, len(args))
	for i, a := range args {
		shown[i] = a
		if _, err := token.Parse(a); err == nil {
			shown[i] = token.Display(a) + "…"
		}
	}
	return strings.Join(shown, " ")
}

// secretToken reads a token from its Secret as a user would.
func secretToken(secret string) string {
	GinkgoHelper()
	var tok string
	Eventually(func(g Gomega) {
		out, err := kubectl("get", "secret", secret, "-o", "jsonpath={.data.token}")
		g.Expect(err).NotTo(HaveOccurred(), out)
		g.Expect(out).NotTo(BeEmpty())
		b, err := base64.StdEncoding.DecodeString(out)
		g.Expect(err).NotTo(HaveOccurred())
		tok = string(b)
	}).Should(Succeed())
	return tok
}

// check calls /check with a token and optional query, as a proxy would.
func check(tok, query string) (int, map[string]any) {
	GinkgoHelper()
	req, err := http.NewRequest(http.MethodGet, env["KEYMINT_CHECK_URL"]+"/check"+query, nil)
	Expect(err).NotTo(HaveOccurred())
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := checkTLS.Do(req)
	Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	var body map[string]any
	Expect(json.NewDecoder(resp.Body).Decode(&body)).To(Succeed())
	return resp.StatusCode, body
}

var _ = Describe("keymint, driven with kubectl and HTTPS", Ordered, func() {
	var prodToken, backfillToken string

	It("issues the sample tokens into Secrets", func() {
		mustKubectl("apply", "-k", "config/samples")
		mustKubectl("wait", "--for=condition=Ready", "apitoken/billing-exporter-prod", "apitoken/billing-backfill", "--timeout=60s")
		prodToken = secretToken("billing-exporter-token")
		backfillToken = secretToken("billing-backfill")
		Expect(prodToken).To(HavePrefix("billing_"))
		Expect(mustKubectl("get", "apitoken", "billing-exporter-prod", "-o", "jsonpath={.status.tokenPrefix}")).To(Equal(prodToken[:12]))
	})

	It("authenticates kubectl --token as the ServiceUser through TokenReview", func() {
		out := mustKubectl("--token", prodToken, "auth", "whoami", "-o", "json")
		var review struct {
			Status struct {
				UserInfo struct {
					Username string              `json:"username"`
					Groups   []string            `json:"groups"`
					Extra    map[string][]string `json:"extra"`
				} `json:"userInfo"`
			} `json:"status"`
		}
		Expect(json.Unmarshal([]byte(out), &review)).To(Succeed(), out)
		Expect(review.Status.UserInfo.Username).To(Equal("keymint:default:billing-exporter"))
		Expect(review.Status.UserInfo.Groups).To(ContainElements("keymint:serviceusers", "keymint:serviceusers:default", "payments"))
		Expect(review.Status.UserInfo.Extra["keymint.io/token"]).To(Equal([]string{"default/billing-exporter-prod"}))
	})

	It("lets ordinary RBAC bind the ServiceUser's group", func() {
		mustKubectl("create", "configmap", "invoices-config", "--from-literal=region=eu")
		mustKubectl("create", "role", "configmap-reader", "--verb=get,list", "--resource=configmaps")
		mustKubectl("create", "rolebinding", "payments-read-configmaps", "--role=configmap-reader", "--group=payments")

		Eventually(func() (string, error) { return kubectl("--token", prodToken, "get", "configmaps", "-o", "name") }).
			Should(ContainSubstring("configmap/invoices-config"))
		out, err := kubectl("--token", prodToken, "delete", "configmap", "invoices-config")
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring("Forbidden"))
		Expect(out).To(ContainSubstring("keymint:default:billing-exporter"))
	})

	It("answers /check with scopes", func() {
		status, body := check(prodToken, "?scope=invoices:read")
		Expect(status).To(Equal(http.StatusOK))
		Expect(body["user"]).To(Equal("keymint:default:billing-exporter"))

		status, body = check(backfillToken, "?scope=reports:write")
		Expect(status).To(Equal(http.StatusForbidden), "the backfill token is scoped to invoices:read")
		Expect(body["error"]).To(Equal("insufficient_scope"))

		status, body = check("km_not-a-token", "")
		Expect(status).To(Equal(http.StatusUnauthorized))
		Expect(body["error"]).To(Equal("malformed_token"))
	})

	It("rotates a token on the keymint.io/rotate annotation", func() {
		mustKubectl("annotate", "apitoken", "billing-backfill", "keymint.io/rotate=e2e-1")
		var rotated string
		Eventually(func() string { rotated = secretToken("billing-backfill"); return rotated }).ShouldNot(Equal(backfillToken))
		Eventually(func() int { s, _ := check(rotated, ""); return s }).Should(Equal(http.StatusOK))
		Eventually(func() any { _, b := check(backfillToken, ""); return b["error"] }).Should(Equal("invalid_token"), "no grace period: the old token stops")
		Expect(mustKubectl("get", "apitoken", "billing-backfill", "-o", "jsonpath={.status.lastRotationRequest}")).To(Equal("e2e-1"))
	})

	It("revokes with kubectl patch: /check and kube-apiserver both refuse", func() {
		mustKubectl("patch", "apitoken", "billing-exporter-prod", "--type=merge", "-p", `{"spec":{"revoked":true}}`)
		revoked := time.Now()
		Eventually(func() any { _, b := check(prodToken, ""); return b["error"] }, 5*time.Second).Should(Equal("revoked_token"))
		GinkgoWriter.Printf("/check refused the revoked token %v after the patch\n", time.Since(revoked))
		// kube-apiserver caches a successful authentication for 10 s, beyond
		// the 5 s webhook cache make run configures.
		Eventually(func() string { out, _ := kubectl("--token", prodToken, "auth", "whoami"); return out }, 20*time.Second).
			Should(ContainSubstring("Unauthorized"))
		GinkgoWriter.Printf("kube-apiserver refused the revoked token %v after the patch\n", time.Since(revoked))
		Expect(secretTokenOrEmpty("billing-exporter-token")).To(BeEmpty(), "the Secret no longer holds the token")
	})

	It("lets a short-lived token expire", func() {
		manifest := `apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata:
  name: short-lived
spec:
  serviceUser: billing-exporter
  lifetime: 4s
`
		path := filepath.Join(devDir, "short-lived.yaml")
		Expect(os.WriteFile(path, []byte(manifest), 0o600)).To(Succeed())
		mustKubectl("apply", "-f", path)
		tok := secretToken("short-lived")
		mustKubectl("wait", "--for=condition=Expired", "apitoken/short-lived", "--timeout=60s")
		status, body := check(tok, "")
		Expect(status).To(Equal(http.StatusUnauthorized))
		Expect(body["error"]).To(Equal("expired_token"))
		Expect(mustKubectl("get", "apitoken", "short-lived", "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].reason}`)).To(Equal("Expired"))
	})
})

func secretTokenOrEmpty(secret string) string {
	out, _ := kubectl("get", "secret", secret, "-o", "jsonpath={.data.token}")
	return out
}

var _ = Describe("Minting through kube-apiserver's admission webhook, as the README shows", func() {
	It("denies alice without mint and admits her with mint on that ServiceUser", func() {
		mustKubectl("apply", "-f", "docs/examples/alice-edits-tokens.yaml")
		out, err := kubectl("--as=alice", "apply", "-f", "docs/examples/alice-token.yaml")
		Expect(err).To(HaveOccurred(), out)
		Expect(out).To(And(ContainSubstring("Forbidden"), ContainSubstring(`user "alice" may not mint tokens of ServiceUser "billing-exporter"`)))

		mustKubectl("apply", "-f", "docs/examples/alice-mints-billing.yaml")
		Eventually(func() (string, error) { return kubectl("--as=alice", "apply", "-f", "docs/examples/alice-token.yaml") }).
			Should(ContainSubstring("apitoken.keymint.io/alice-export created"))
		Eventually(func() string { return secretTokenOrEmpty("alice-export") }).ShouldNot(BeEmpty())
	})
})

var _ = Describe("The installer", func() {
	It("passes kube-apiserver's validation: kubectl apply --dry-run=server of config/default", func() {
		rendered := mustKubectl("kustomize", "config/default")
		path := filepath.Join(devDir, "install.yaml")
		Expect(os.WriteFile(path, []byte(rendered), 0o600)).To(Succeed())
		out := mustKubectl("apply", "--dry-run=server", "--server-side", "--force-conflicts", "-f", path)
		for _, kind := range []string{"customresourcedefinition", "deployment", "clusterrole", "service", "namespace"} {
			Expect(out).To(ContainSubstring(kind), "config/default renders a %s", kind)
		}
	})
})

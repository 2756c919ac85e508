package check_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/controllers"
	"github.com/keymint/keymint/internal/selfsigned"
	"github.com/keymint/keymint/internal/testenv"
	"github.com/keymint/keymint/internal/token"
	"github.com/keymint/keymint/internal/tokenstate"
	"github.com/keymint/keymint/webhook/check"
)

// This suite runs the manager as cmd/keymint does (controllers, informers,
// check server over TLS on a loopback port) against a real kube-apiserver,
// and talks to the check server over HTTPS as a proxy would.
var (
	env        *testenv.Environment
	k8sClient  client.Client
	ctx        context.Context
	cancel     context.CancelFunc
	checkURL   string
	httpClient *http.Client
	probeURL   string
	// managerLogs and registry keep everything the manager logged and
	// exported, for the plaintext sweep.
	managerLogs = &testenv.LogBuffer{}
	registry    = prometheus.NewRegistry()
)

func TestCheckServer(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Check Server Suite")
}

var _ = BeforeSuite(func() {
	logf.SetLogger(zap.New(zap.WriteTo(io.MultiWriter(GinkgoWriter, managerLogs)), zap.UseDevMode(true), zap.Level(zapcore.Level(-5))))
	SetDefaultEventuallyTimeout(15 * time.Second)
	SetDefaultEventuallyPollingInterval(50 * time.Millisecond)
	ctx, cancel = context.WithCancel(context.Background())

	certDir, err := os.MkdirTemp("", "keymint-check-test-")
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(os.RemoveAll, certDir)
	files, err := selfsigned.Write(certDir, "127.0.0.1")
	Expect(err).NotTo(HaveOccurred())
	caPEM, err := os.ReadFile(files.CAFile)
	Expect(err).NotTo(HaveOccurred())
	pool := x509.NewCertPool()
	Expect(pool.AppendCertsFromPEM(caPEM)).To(BeTrue())
	httpClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}

	// The check server takes its listener bound. The health probes bind a
	// port number when the manager is made: one taken meanwhile is picked
	// again.
	Expect(testenv.OnFreePorts(1, func(ports []int) error {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		checkURL = "https://" + ln.Addr().String()
		probeAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
		probeURL = "http://" + probeAddr
		env, err = testenv.Run(ctx, testenv.RunInput{
			ManagerOptions: func(o *ctrl.Options) {
				o.HealthProbeBindAddress = probeAddr
				// Note each kind the manager's own cache makes an informer
				// for: the check server, its flusher and leak writer must
				// never make one of ApiTokens or Secrets (AfterSuite).
				next := o.Cache.NewInformer
				if next == nil {
					next = toolscache.NewSharedIndexInformer
				}
				o.Cache.NewInformer = func(lw toolscache.ListerWatcher, obj runtime.Object, resync time.Duration, ix toolscache.Indexers) toolscache.SharedIndexInformer {
					managerInformers.Store(fmt.Sprintf("%T", obj), true)
					return next(lw, obj, resync, ix)
				}
			},
			SetupReconcilers: func(ctx context.Context, e *testenv.Environment) error {
				if err := controllers.Setup(ctx, e.Manager, controllers.Options{RequesterWebhook: testenv.RequesterWebhookName, Clock: clock.RealClock{}, Keyring: e.Keyring}); err != nil {
					return err
				}
				return check.Setup(ctx, e.Manager, check.Options{
					Listener: ln, CertFile: files.CertFile, KeyFile: files.KeyFile,
					DefaultRequestsPerMinute: 500, FlushInterval: 100 * time.Millisecond, FlushMinGap: 100 * time.Millisecond,
					Clock: clock.RealClock{}, Registerer: registry,
				})
			},
		})
		if err != nil {
			_ = ln.Close()
		}
		return err
	})).To(Succeed())
	k8sClient = env.Client
})

// managerInformers holds the Go type of each object the manager's cache
// made an informer for.
var managerInformers sync.Map

var _ = AfterSuite(func() {
	if cancel != nil {
		cancel()
	}
	if env != nil {
		Expect(env.Stop()).To(Succeed())
	}
	// Every spec has run: checks, flushes, leak reports. A replica that
	// is not the leader holds no ApiToken or Secret object: the check
	// server's index has a watch of its own, and the controllers a cache.
	for _, kind := range []string{"*v1alpha1.ApiToken", "*v1.Secret"} {
		_, made := managerInformers.Load(kind)
		Expect(made).To(BeFalse(), "the manager's cache made an informer of %s", kind)
	}
	_, users := managerInformers.Load("*v1alpha1.ServiceUser")
	Expect(users).To(BeTrue(), "not vacuous: the manager's cache has the ServiceUsers' informer")
})

// get calls /check with a bearer token and returns the status and JSON body.
func get(tok string) (int, map[string]any) {
	GinkgoHelper()
	req, err := http.NewRequest(http.MethodGet, checkURL+check.CheckPath, nil)
	Expect(err).NotTo(HaveOccurred())
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := httpClient.Do(req)
	Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	Expect(err).NotTo(HaveOccurred())
	var body map[string]any
	Expect(json.Unmarshal(raw, &body)).To(Succeed())
	return resp.StatusCode, body
}

// issue creates a ServiceUser and an ApiToken and returns the token from its
// Secret once the check server accepts it.
func issue(ns, name string) string {
	GinkgoHelper()
	Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
	Expect(k8sClient.Create(ctx, &keymintv1alpha1.ServiceUser{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ci"},
		Spec:       keymintv1alpha1.ServiceUserSpec{Permissions: []string{"deploy:write"}},
	})).To(Succeed())
	Expect(k8sClient.Create(ctx, &keymintv1alpha1.ApiToken{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       keymintv1alpha1.ApiTokenSpec{ServiceUser: "ci"},
	})).To(Succeed())
	var plain string
	Eventually(func(g Gomega) {
		sec := &corev1.Secret{}
		g.Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, sec)).To(Succeed())
		plain = string(sec.Data[keymintv1alpha1.SecretTokenKey])
		status, _ := get(plain)
		g.Expect(status).To(Equal(http.StatusOK))
	}).Should(Succeed())
	return plain
}

var _ = Describe("The check server in the manager", func() {
	It("is ready once its index has synced and it listens", func() {
		Eventually(func(g Gomega) {
			resp, err := http.Get(probeURL + "/readyz/check-server")
			g.Expect(err).NotTo(HaveOccurred())
			resp.Body.Close()
			g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
		}).Should(Succeed())
	})

	It("refuses a token within 1 s of revoked: true being applied", func() {
		plain := issue("revoke-check", "deployer")

		tok := &keymintv1alpha1.ApiToken{}
		Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: "revoke-check", Name: "deployer"}, tok)).To(Succeed())
		patch := client.MergeFrom(tok.DeepCopy())
		tok.Spec.Revoked = true
		applied := time.Now()
		Expect(k8sClient.Patch(ctx, tok, patch)).To(Succeed())

		Eventually(func() any {
			_, body := get(plain)
			return body["error"]
		}, time.Second, 10*time.Millisecond).Should(Equal(string(check.RevokedToken)))
		GinkgoWriter.Printf("revocation reached the check server %v after the patch returned\n", time.Since(applied))
	})

	It("refuses a token within 1 s of its ServiceUser being disabled", func() {
		plain := issue("disable-check", "deployer")
		user := &keymintv1alpha1.ServiceUser{}
		Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: "disable-check", Name: "ci"}, user)).To(Succeed())
		patch := client.MergeFrom(user.DeepCopy())
		user.Spec.Disabled = true
		Expect(k8sClient.Patch(ctx, user, patch)).To(Succeed())
		Eventually(func() any {
			_, body := get(plain)
			return body["error"]
		}, time.Second, 10*time.Millisecond).Should(Equal(string(check.RevokedToken)))
	})

	It("records lastUsedAt in the ApiToken status after a successful check", func() {
		plain := issue("last-used", "deployer")
		before := time.Now().Add(-time.Second)
		status, _ := get(plain)
		Expect(status).To(Equal(http.StatusOK))
		Eventually(func(g Gomega) {
			tok := &keymintv1alpha1.ApiToken{}
			g.Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: "last-used", Name: "deployer"}, tok)).To(Succeed())
			g.Expect(tok.Status.LastUsedAt).NotTo(BeNil())
			g.Expect(tok.Status.LastUsedAt.Time).To(BeTemporally(">=", before.Truncate(time.Second)))
			g.Expect(meta.IsStatusConditionTrue(tok.Status.Conditions, keymintv1alpha1.ApiTokenConditionReady)).To(BeTrue(), "the controller's status is intact")
		}).Should(Succeed())
	})

	It("never moves lastUsedAt backwards", func() {
		plain := issue("last-used-forward", "deployer")
		key := types.NamespacedName{Namespace: "last-used-forward", Name: "deployer"}
		// Another replica recorded a later use.
		later := metav1.NewTime(time.Now().Add(time.Hour).Truncate(time.Second))
		Eventually(func() error {
			tok := &keymintv1alpha1.ApiToken{}
			if err := k8sClient.Get(ctx, key, tok); err != nil {
				return err
			}
			tok.Status.LastUsedAt = &later
			return k8sClient.Status().Update(ctx, tok)
		}).Should(Succeed())
		status, _ := get(plain)
		Expect(status).To(Equal(http.StatusOK))
		// The flusher runs every 100 ms here: give it ten chances.
		Consistently(func(g Gomega) {
			tok := &keymintv1alpha1.ApiToken{}
			g.Expect(k8sClient.Get(ctx, key, tok)).To(Succeed())
			g.Expect(tok.Status.LastUsedAt.Time).To(Equal(later.Time))
		}, time.Second, 50*time.Millisecond).Should(Succeed())
	})

	It("records the uses of the current and of a rotated-out token apart, for retireWhenIdle", func() {
		const ns, name = "uses-per-hash", "deployer"
		key := types.NamespacedName{Namespace: ns, Name: name}
		old := issue(ns, name)
		tok := &keymintv1alpha1.ApiToken{}
		Expect(k8sClient.Get(ctx, key, tok)).To(Succeed())
		patch := client.MergeFrom(tok.DeepCopy())
		tok.Spec.Rotation = &keymintv1alpha1.Rotation{GracePeriod: &metav1.Duration{Duration: time.Hour}}
		tok.Annotations = map[string]string{keymintv1alpha1.RotateAnnotation: "1"}
		Expect(k8sClient.Patch(ctx, tok, patch)).To(Succeed())
		var current string
		Eventually(func(g Gomega) {
			sec := &corev1.Secret{}
			g.Expect(k8sClient.Get(ctx, key, sec)).To(Succeed())
			current = string(sec.Data[keymintv1alpha1.SecretTokenKey])
			g.Expect(current).NotTo(Equal(old))
			status, _ := get(current)
			g.Expect(status).To(Equal(http.StatusOK))
		}).Should(Succeed())
		usedOld := time.Now().Truncate(time.Second)
		status, _ := get(old)
		Expect(status).To(Equal(http.StatusOK), "the rotated-out token is in its grace period")

		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, key, tok)).To(Succeed())
			g.Expect(tok.Status.TokenHash).To(Equal(token.HashString(current)))
			g.Expect(tok.Status.TokenLastUsedAt).NotTo(BeNil(), "the current token's use")
			g.Expect(tok.Status.TokenLastUsedAt.Time).To(BeTemporally(">=", tok.Status.IssuedAt.Time))
			g.Expect(tok.Status.PreviousTokens).To(HaveLen(1))
			g.Expect(tok.Status.PreviousTokens[0].TokenHash).To(Equal(token.HashString(old)))
			g.Expect(tok.Status.PreviousTokens[0].LastUsedAt).NotTo(BeNil(), "the rotated-out token's use")
			g.Expect(tok.Status.PreviousTokens[0].LastUsedAt.Time).To(BeTemporally(">=", usedOld))
			g.Expect(tok.Status.LastUsedAt.Time).To(BeTemporally(">=", usedOld))
		}).Should(Succeed())
	})

	It("writes a token's uses about once per its recording gap (3 hours, no idle rule) whatever the number of replicas", func() {
		const ns, name = "uses-bounded", "deployer"
		key := types.NamespacedName{Namespace: ns, Name: name}
		plain := issue(ns, name)
		// Three replicas' flushers, on one clock, each having seen its own
		// checks of the token; the suite's own flusher writes the first.
		clk := clocktesting.NewFakeClock(time.Now().Add(time.Hour))
		replicas := make([]*check.UsageFlusher, 3)
		for i := range replicas {
			replicas[i] = &check.UsageFlusher{Usage: check.NewUsage(), Client: k8sClient, Clock: clk, Interval: time.Second, MinGap: time.Minute}
		}
		resourceVersion := func() string {
			tok := &keymintv1alpha1.ApiToken{}
			Expect(k8sClient.Get(ctx, key, tok)).To(Succeed())
			return tok.ResourceVersion
		}
		// flushAll has the first n replicas see a check now, then every
		// replica flush.
		flushAll := func(n int) {
			for _, r := range replicas[:n] {
				r.Usage.Record(key, token.Hash(plain), clk.Now())
			}
			for _, r := range replicas {
				r.Flush(ctx)
			}
		}
		flushAll(1)
		Eventually(func(g Gomega) {
			replicas[0].Flush(ctx) // again, if the first met a controller's write
			tok := &keymintv1alpha1.ApiToken{}
			g.Expect(k8sClient.Get(ctx, key, tok)).To(Succeed())
			g.Expect(tok.Status.TokenLastUsedAt.Time).To(BeTemporally("==", clk.Now().Truncate(time.Second)))
		}).Should(Succeed())
		written := resourceVersion()

		By("uses less than the gap after the recorded one write nothing, also on replicas that have not written yet")
		gap := tokenstate.DefaultUseRecordingGap
		for i, step := range []time.Duration{gap / 3, gap / 3, gap/3 - time.Second} {
			clk.Step(step)
			flushAll(min(i+2, len(replicas)))
		}
		Consistently(resourceVersion, time.Second, 100*time.Millisecond).Should(Equal(written))

		By("the gap after it, one write")
		clk.Step(time.Second)
		flushAll(3)
		Eventually(func(g Gomega) {
			for _, r := range replicas {
				r.Flush(ctx)
			}
			tok := &keymintv1alpha1.ApiToken{}
			g.Expect(k8sClient.Get(ctx, key, tok)).To(Succeed())
			g.Expect(tok.Status.TokenLastUsedAt.Time).To(BeTemporally("==", clk.Now().Truncate(time.Second)))
		}).Should(Succeed())
	})

	It("shows a quota's remaining uses in the status, a flush late, and refuses past it", func() {
		const ns, name = "quota-status", "deployer"
		key := types.NamespacedName{Namespace: ns, Name: name}
		plain := issue(ns, name)
		tok := &keymintv1alpha1.ApiToken{}
		Expect(k8sClient.Get(ctx, key, tok)).To(Succeed())
		patch := client.MergeFrom(tok.DeepCopy())
		tok.Spec.Quota = &keymintv1alpha1.Quota{Uses: 3, Refill: &keymintv1alpha1.QuotaRefill{Every: metav1.Duration{Duration: 24 * time.Hour}}}
		Expect(k8sClient.Patch(ctx, tok, patch)).To(Succeed())
		// The first check under the quota: once the index has the spec.
		Eventually(func() string {
			req, _ := http.NewRequest(http.MethodGet, checkURL+check.CheckPath, nil)
			req.Header.Set("Authorization", "Bearer "+plain)
			resp, err := httpClient.Do(req)
			Expect(err).NotTo(HaveOccurred())
			resp.Body.Close()
			return resp.Header.Get(check.HeaderQuotaLimit)
		}).Should(Equal("3"))
		// The status moves by a recording gap or more (the suite's is
		// 100ms): once the first use shows, the next comes a gap later.
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, key, tok)).To(Succeed())
			g.Expect(tok.Status.Quota).NotTo(BeNil())
			g.Expect(tok.Status.Quota.Remaining).To(Equal(int64(2)))
		}).Should(Succeed())
		time.Sleep(200 * time.Millisecond)
		status, _ := get(plain)
		Expect(status).To(Equal(http.StatusOK))
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, key, tok)).To(Succeed())
			g.Expect(tok.Status.Quota).NotTo(BeNil())
			g.Expect(tok.Status.Quota.Uses).To(Equal(int64(3)))
			g.Expect(tok.Status.Quota.Remaining).To(Equal(int64(1)))
			g.Expect(tok.Status.Quota.RefillsAt).NotTo(BeNil())
			g.Expect(tok.Status.Quota.RefillsAt.Time).To(BeTemporally("==", time.Now().UTC().Truncate(24*time.Hour).Add(24*time.Hour)))
		}).Should(Succeed())
		status, _ = get(plain)
		Expect(status).To(Equal(http.StatusOK))
		status, body := get(plain)
		Expect(status).To(Equal(http.StatusTooManyRequests))
		Expect(body["error"]).To(Equal(string(check.QuotaExceeded)))
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, key, tok)).To(Succeed())
			g.Expect(tok.Status.Quota.Remaining).To(BeZero())
		}).Should(Succeed())
		Expect(meta.IsStatusConditionTrue(tok.Status.Conditions, keymintv1alpha1.ApiTokenConditionReady)).To(BeTrue(), "a spent quota is not a revocation")
	})

	It("speaks HTTP/1.1 only unless HTTP/2 is turned on", func() {
		conn, err := tls.Dial("tcp", checkURL[len("https://"):], &tls.Config{
			RootCAs: httpClient.Transport.(*http.Transport).TLSClientConfig.RootCAs, NextProtos: []string{"h2", "http/1.1"},
		})
		Expect(err).NotTo(HaveOccurred())
		defer conn.Close()
		Expect(conn.ConnectionState().NegotiatedProtocol).To(Equal("http/1.1"), fmt.Sprintf("%+v", conn.ConnectionState().NegotiatedProtocol))
	})
})

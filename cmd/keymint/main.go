// Command keymint runs the keymint manager: the ApiToken and ServiceUser
// controllers and, on every replica, the token check server.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/controllers"
	"github.com/keymint/keymint/internal/authz"
	"github.com/keymint/keymint/internal/freshness"
	"github.com/keymint/keymint/internal/recordkey"
	"github.com/keymint/keymint/internal/selfsigned"
	"github.com/keymint/keymint/internal/servingcert"
	"github.com/keymint/keymint/webhook/admission"
	"github.com/keymint/keymint/webhook/check"
)

func main() {
	o := newOptions()
	o.bind(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&o.zap)))
	log := ctrl.Log.WithName("setup")
	if err := o.validate(); err != nil {
		log.Error(err, "Invalid flags")
		os.Exit(2)
	}
	if err := run(ctrl.SetupSignalHandler(), o); err != nil {
		var flagErr invalidFlags
		if errors.As(err, &flagErr) {
			log.Error(err, "Invalid flags")
			os.Exit(2)
		}
		log.Error(err, "keymint stopped")
		os.Exit(1)
	}
}

// options are the manager's flags.
type options struct {
	metricsAddr, probeAddr, pprofAddr string
	leaderElect, metricsAuth          bool
	check                             check.Options
	// certDir takes a self-signed pair when no certificate is given.
	certDir                              string
	recordKey                            string
	webhookAddr, webhookCert, webhookKey string
	selfCerts                            bool
	certs                                servingcert.Options
	certSecret                           string
	maxStale, expiryWarning, authzRetry  time.Duration
	rateLimit                            rateLimitFlags
	zap                                  zap.Options
}

func newOptions() options {
	return options{check: check.Options{Clock: clock.RealClock{}, Registerer: metrics.Registry}, zap: zap.Options{Development: false}}
}

// invalidFlags is a flag error found only while starting (the rate-limit
// backend's URL): main exits 2 for it, as for validate's.
type invalidFlags struct{ error }

func (o *options) bind(fs *flag.FlagSet) {
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", ":8080", "address the Prometheus metrics endpoint binds to; 0 turns it off")
	fs.BoolVar(&o.metricsAuth, "metrics-secure", true, "serve metrics over HTTPS to callers kube-apiserver authenticates and RBAC allows (get on nonResourceURL /metrics: ClusterRole keymint-metrics-reader); false serves plain HTTP to anyone")
	fs.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081", "address the /healthz and /readyz endpoints bind to")
	fs.StringVar(&o.pprofAddr, "pprof-bind-address", "0", "address Go's /debug/pprof endpoints bind to, plain HTTP and unauthenticated: bind it to loopback (kubectl port-forward); 0 turns it off")
	fs.BoolVar(&o.leaderElect, "leader-elect", false, "elect a leader so only one replica runs the controllers")
	fs.StringVar(&o.check.Addr, "check-bind-address", ":8443", "address the token check server (TokenReview and /check) listens on, over TLS")
	fs.StringVar(&o.check.CertFile, "check-tls-cert-file", "", "serving certificate of the check server, reloaded when it changes; with neither file set, a self-signed pair is written to --check-self-signed-dir")
	fs.StringVar(&o.check.KeyFile, "check-tls-key-file", "", "private key of --check-tls-cert-file")
	fs.StringVar(&o.certDir, "check-self-signed-dir", filepath.Join(os.TempDir(), "keymint-check-certs"), "where to write a self-signed CA (ca.crt) and serving pair when no certificate is given")
	fs.BoolVar(&o.check.EnableHTTP2, "check-enable-http2", false, "serve HTTP/2 on the check server (off by default, as for Kubernetes webhooks)")
	fs.IntVar(&o.check.DefaultRequestsPerMinute, "default-requests-per-minute", 500, "checks a token may pass per minute when neither it nor its ServiceUser sets a rate")
	fs.DurationVar(&o.check.FlushInterval, "last-used-flush-interval", 10*time.Second, "how often lastUsedAt is written to ApiToken status (at most 1m); each token at most once per its recording gap (3 hours, shorter under maxIdle; docs/api.md)")
	fs.StringVar(&o.webhookAddr, "webhook-bind-address", ":9443", "address the admission webhooks (who may mint tokens and claim groups) listen on, over TLS")
	fs.StringVar(&o.webhookCert, "webhook-tls-cert-file", "", "serving certificate of the admission webhooks, reloaded when it changes; unset: the check server's")
	fs.StringVar(&o.webhookKey, "webhook-tls-key-file", "", "private key of --webhook-tls-cert-file")
	fs.BoolVar(&o.selfCerts, "self-managed-certs", false, "keep a CA and a serving certificate for keymint's Service in --serving-certs-secret, rotated before expiry, for the check server and the admission webhooks, and put the CA into --validating-webhook-configuration and --mutating-webhook-configuration (off: certificates from files, as cert-manager mounts them)")
	fs.StringVar(&o.certSecret, "serving-certs-secret", defaultInOwnNamespace("keymint-serving-certs"), "namespace/name of the Secret --self-managed-certs keeps")
	fs.StringVar(&o.certs.Dir, "serving-certs-dir", "/etc/keymint/serving-certs", "where --serving-certs-secret is mounted as a volume (config/manager does)")
	fs.StringVar(&o.certs.Service, "serving-certs-service", "keymint-webhook", "the Service, in that namespace, the certificate is for")
	fs.StringVar(&o.certs.WebhookConfiguration, "validating-webhook-configuration", "keymint-validating-webhook-configuration", "the ValidatingWebhookConfiguration whose caBundle --self-managed-certs fills")
	fs.StringVar(&o.certs.MutatingWebhookConfiguration, "mutating-webhook-configuration", "keymint-mutating-webhook-configuration", "the MutatingWebhookConfiguration that records who asks for each ApiToken: keymint mints nothing while it is missing or lets writes skip it, and --self-managed-certs fills its caBundle")
	fs.DurationVar(&o.authzRetry, "mint-authorization-retry", controllers.DefaultAuthorizationRetry, "how often a mint whose requester lacks the right (condition Authorized=False) is tried again: RBAC changes send no event")
	fs.StringVar(&o.rateLimit.backend, "rate-limit-backend", "local", "where rate-limit budgets live: local (each replica its own; behind N replicas a token gets N times its rate) or redis (shared by every replica, --redis-url)")
	fs.StringVar(&o.rateLimit.url, "redis-url", "", "the Redis that --rate-limit-backend=redis shares budgets through: redis://[user:password@]host:port/db, rediss:// for TLS; unset: environment variable KEYMINT_REDIS_URL, which keeps a password out of the command line")
	fs.StringVar(&o.rateLimit.failure, "rate-limit-redis-failure", "open", "what checks do while Redis cannot be reached: open (each replica counts on its own until it is back) or closed (every check gets 429)")
	fs.DurationVar(&o.expiryWarning, "expiry-warning", controllers.DefaultExpiryWarning, "how long before expiry a token gets condition ExpiringSoon and a Warning Event, when its ServiceUser sets no tokenPolicy.expiryWarning; 0 turns such warnings off")
	fs.DurationVar(&o.maxStale, "max-index-staleness", 10*time.Second, "readiness fails once the check server's index has been out of touch with the API server (its watch of ApiTokens or ServiceUsers down) for longer than this; checks go on being answered from the index")
	fs.StringVar(&o.recordKey, "record-key-secret", defaultRecordKeySecret(), "namespace/name of the Secret holding the keys that sign token records, created on first start; only keymint should read it (docs/security.md)")
	fs.BoolVar(&o.check.LeakReports, "leak-reports", false, "serve the leak report endpoints (POST "+check.LeakReportPath+", GitLab's "+check.RevocableTokenTypesPath+" and "+check.RevokeTokensPath+") on the check server")
	fs.StringVar(&o.check.GitLabTokenFile, "leak-report-gitlab-token-file", "", "file holding the token GitLab's Token Revocation API calls authenticate with (a mounted Secret), read again when it changes; unset: GitLab's endpoints are not served")
	fs.BoolVar(&o.check.TokenReviewIgnoresSources, "tokenreview-ignores-source-cidrs", false, "accept, in TokenReview, tokens restricted to allowedSourceCIDRs: TokenReview carries no client address, so they are refused there unless the cluster's callers (kube-apiserver) are trusted to stand for the client")
	fs.IntVar(&o.check.LeakReportRate, "leak-report-requests-per-minute", 600, "leak report requests per minute from all clients together, on each replica, and as much again for GitLab calls with the shared token")
	fs.IntVar(&o.check.LeakReportClientRate, "leak-report-client-requests-per-minute", 10, "leak report requests per minute from one client address (an IPv6 /64) to POST "+check.LeakReportPath+", and GitLab calls without the shared token, on each replica; GitLab calls with it have a budget of their own, --leak-report-requests-per-minute")
	fs.Func("trusted-proxy-cidrs", "comma-separated CIDRs of the proxies in front of the check server (a load balancer, an ingress): only a connection from one of them has its X-Forwarded-For read for the client address (what leak report rates count against, and what allowedSourceCIDRs admit on /check); unset: the connection's own address", o.addTrustedProxies)
	o.zap.BindFlags(fs)
}

// addTrustedProxies reads a --trusted-proxy-cidrs value: CIDRs (or single
// addresses), comma separated; the flag may be given more than once.
func (o *options) addTrustedProxies(value string) error {
	for cidr := range strings.SplitSeq(value, ",") {
		if cidr = strings.TrimSpace(cidr); cidr == "" {
			continue
		}
		p, err := netip.ParsePrefix(cidr)
		if a, aerr := netip.ParseAddr(cidr); err != nil && aerr == nil {
			p, err = a.Prefix(a.BitLen()) // one proxy's address
		}
		if err != nil {
			return fmt.Errorf("%q is not a CIDR such as 10.0.0.0/8 or fd00::/8", cidr)
		}
		o.check.TrustedProxies = append(o.check.TrustedProxies, p.Masked())
	}
	return nil
}

// validate checks the flags against each other, touching nothing: every
// error names the flag and what it takes.
func (o *options) validate() error {
	if err := o.check.Validate(); err != nil {
		return err
	}
	switch {
	case o.maxStale <= 0:
		return fmt.Errorf("--max-index-staleness must be positive, not %s", o.maxStale)
	case o.certs.MutatingWebhookConfiguration == "":
		return errors.New("--mutating-webhook-configuration names the requester webhook keymint checks before it mints; it cannot be empty")
	case o.authzRetry <= 0:
		return fmt.Errorf("--mint-authorization-retry must be positive, not %s", o.authzRetry)
	case o.expiryWarning < 0:
		return fmt.Errorf("--expiry-warning must not be negative, not %s", o.expiryWarning)
	}
	if _, ok := parseNamespacedName(o.recordKey); !ok {
		return fmt.Errorf("--record-key-secret must be namespace/name, not %q", o.recordKey)
	}
	if _, ok := parseNamespacedName(o.certSecret); o.selfCerts && !ok {
		return fmt.Errorf("--serving-certs-secret must be namespace/name, not %q", o.certSecret)
	}
	if o.selfCerts && (o.check.CertFile != "" || o.webhookCert != "") {
		return errors.New("--self-managed-certs makes its own certificate; drop --check-tls-cert-file and --webhook-tls-cert-file")
	}
	if (o.webhookCert == "") != (o.webhookKey == "") || filepath.Dir(o.webhookCert) != filepath.Dir(o.webhookKey) {
		return errors.New("set both --webhook-tls-cert-file and --webhook-tls-key-file, in one directory, or neither")
	}
	if _, _, err := splitHostPort(o.webhookAddr); err != nil {
		return fmt.Errorf("--webhook-bind-address %q: %w", o.webhookAddr, err)
	}
	return nil
}

// run starts keymint with validated options and returns when ctx ends or
// the manager fails.
func run(ctx context.Context, o options) error {
	log := ctrl.Log.WithName("setup")
	setMemoryLimit(os.DirFS("/sys/fs/cgroup"), log)
	checkOpts, certOpts := o.check, o.certs
	limiter, err := o.rateLimit.limiter(ctx, metrics.Registry, log)
	if err != nil {
		return invalidFlags{err}
	}
	checkOpts.Limiter = limiter
	recordKeyRef, _ := parseNamespacedName(o.recordKey)
	certOpts.Secret, _ = parseNamespacedName(o.certSecret)
	if o.selfCerts {
		checkOpts.CertFile, checkOpts.KeyFile = certOpts.CertFile(), certOpts.KeyFile()
	}
	if checkOpts.CertFile == "" {
		files, err := selfsigned.Write(o.certDir, "localhost", "127.0.0.1", "::1")
		if err != nil {
			return fmt.Errorf("writing a self-signed certificate to %s: %w", o.certDir, err)
		}
		checkOpts.CertFile, checkOpts.KeyFile = files.CertFile, files.KeyFile
		log.Info("Serving token checks with a self-signed certificate", "ca", files.CAFile)
	}
	webhookCert, webhookKey := o.webhookCert, o.webhookKey
	if webhookCert == "" {
		webhookCert, webhookKey = checkOpts.CertFile, checkOpts.KeyFile
	}
	webhookHost, webhookPort, _ := splitHostPort(o.webhookAddr)

	scheme := runtime.NewScheme()
	if err := errors.Join(clientgoscheme.AddToScheme(scheme), keymintv1alpha1.AddToScheme(scheme)); err != nil {
		return err
	}

	// The check index is fed by its own ApiToken reflector and the cache's
	// ServiceUser informer: follow whether their watches are up, and while
	// the API server refuses connections, retry them every second or so
	// rather than on client-go's backoff (up to 60 s), so the index is
	// current again within seconds of its return.
	fresh := freshness.New(clock.RealClock{}, ctrl.Log.WithName("check-index"), &keymintv1alpha1.ApiToken{}, &keymintv1alpha1.ServiceUser{})
	fresh.RetryRefused = time.Second
	cacheOpts := controllers.CacheOptions()
	cacheOpts.NewInformer = fresh.NewInformer(cacheOpts.NewInformer)

	cfg, err := ctrl.GetConfig()
	if err != nil {
		return err
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Cache:                  cacheOpts,
		Metrics:                metricsOptions(o.metricsAddr, o.metricsAuth),
		HealthProbeBindAddress: o.probeAddr,
		PprofBindAddress:       o.pprofAddr,
		LeaderElection:         o.leaderElect,
		LeaderElectionID:       "keymint.keymint.io",
		// A replica that stops (a rollout, a drain, an eviction) hands the
		// Lease over at once instead of leaving the others to wait out its
		// 15 s. Safe because main returns as soon as the manager stops.
		LeaderElectionReleaseOnCancel: true,
		// Within the pod's 15 s grace: 5 s of preStop pause, then this, so
		// that the Lease is released before the kubelet kills the process.
		GracefulShutdownTimeout: ptr.To(8 * time.Second),
		// In a pod, controller-runtime finds its namespace itself; outside
		// one (make run, tests), the Lease goes to keymint's own namespace.
		LeaderElectionNamespace: ownNamespace(),
		WebhookServer: webhook.NewServer(webhook.Options{
			Host: webhookHost, Port: webhookPort, TLSOpts: []func(*tls.Config){http1Only},
			CertDir: filepath.Dir(webhookCert), CertName: filepath.Base(webhookCert),
			KeyName: filepath.Base(webhookKey),
		}),
	})
	if err != nil {
		return fmt.Errorf("creating the manager: %w", err)
	}
	if o.selfCerts {
		if checkOpts.CertReady, err = servingcert.Setup(ctx, mgr, certOpts); err != nil {
			return fmt.Errorf("setting up serving certificates: %w", err)
		}
	}
	keyring, err := recordkey.LoadOrCreate(ctx, mgr.GetAPIReader(), mgr.GetClient(), recordKeyRef)
	if err != nil {
		return fmt.Errorf("loading the record key %s: %w", o.recordKey, err)
	}
	// The controllers watch a cache of their own, filled on the leader only.
	ctrlCache, err := controllers.NewCache(mgr)
	if err != nil {
		return err
	}
	checkOpts.TrackTokens = fresh.Tracking(&keymintv1alpha1.ApiToken{})
	checkOpts.IndexSynced = ctrlCache.StartAfter
	if err := errors.Join(
		controllers.Setup(ctx, mgr, controllers.Options{Clock: clock.RealClock{}, Keyring: keyring, ExpiryWarning: o.expiryWarning,
			AuthorizationRetry: o.authzRetry, RequesterWebhook: certOpts.MutatingWebhookConfiguration, Cache: ctrlCache}),
		check.Setup(ctx, mgr, checkOpts),
		registerMetrics(metrics.Registry, ctrlCache, fresh, o.maxStale),
		mgr.AddReadyzCheck("index-fresh", fresh.Checker(o.maxStale)),
		mgr.AddHealthzCheck("healthz", healthz.Ping),
		mgr.AddReadyzCheck("readyz", healthz.Ping),
		mgr.AddReadyzCheck("webhooks", serveWebhooks(ctx, mgr, checkOpts.CertReady, keyring, certOpts.MutatingWebhookConfiguration)),
	); err != nil {
		return fmt.Errorf("setting up: %w", err)
	}
	log.Info("Starting manager")
	return mgr.Start(ctx)
}

// http1Only turns HTTP/2 off, as for the check server: it keeps the HTTP/2
// rapid-reset attacks away from servers any pod can reach.
func http1Only(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }

// metricsOptions serves metrics at addr; secure, only to callers with a
// token kube-apiserver accepts and RBAC lets read /metrics.
func metricsOptions(addr string, secure bool) metricsserver.Options {
	o := metricsserver.Options{BindAddress: addr, TLSOpts: []func(*tls.Config){http1Only}}
	if secure {
		o.SecureServing, o.FilterProvider = true, filters.WithAuthenticationAndAuthorization
	}
	return o
}

// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

// serveWebhooks registers the admission webhooks once their certificate
// exists (the webhook server reads it when it starts), and returns the
// readiness check that passes once they are served.
func serveWebhooks(ctx context.Context, mgr ctrl.Manager, certReady <-chan struct{}, ring *recordkey.Keyring, requesterWebhook string) healthz.Checker {
	var started atomic.Pointer[healthz.Checker]
	register := func() {
		checker := mgr.GetWebhookServer().StartedChecker()
		admission.Setup(mgr, mgr.GetClient(), authz.SubjectAccessReviewer{Client: mgr.GetClient()}, ring, requesterWebhook)
		started.Store(&checker)
	}
	if certReady == nil {
		register()
	} else {
		go func() {
			select {
			case <-certReady:
				register()
			case <-ctx.Done():
			}
		}()
	}
	return func(req *http.Request) error {
		if c := started.Load(); c != nil {
			return (*c)(req)
		}
		return errors.New("waiting for the serving certificate")
	}
}

// defaultRecordKeySecret is keymint-record-key in keymint's own namespace.
func defaultRecordKeySecret() string { return defaultInOwnNamespace("keymint-record-key") }

// defaultInOwnNamespace names a Secret in keymint's own namespace.
func defaultInOwnNamespace(name string) string { return ownNamespace() + "/" + name }

// ownNamespace is keymint's namespace: POD_NAMESPACE (set by
// config/manager) or keymint-system.
func ownNamespace() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	return "keymint-system"
}

func parseNamespacedName(s string) (types.NamespacedName, bool) {
	ns, name, ok := strings.Cut(s, "/")
	return types.NamespacedName{Namespace: ns, Name: name}, ok && ns != "" && name != "" && !strings.Contains(name, "/")
}

func splitHostPort(addr string) (string, int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", 0, fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	return host, n, nil
}

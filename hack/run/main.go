// Command run is `make run`: it runs keymint against the cluster in your
// kubeconfig if one answers, and otherwise against a local control plane it
// starts itself (the kube-apiserver and etcd the tests use), with
// kube-apiserver authenticating bearer tokens through keymint's TokenReview
// endpoint. It stays in the foreground; Ctrl-C (SIGINT) or SIGTERM stops
// everything it started.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/keymint/keymint/internal/recordkey"
	"github.com/keymint/keymint/internal/selfsigned"
	"github.com/keymint/keymint/internal/testenv"
	"github.com/keymint/keymint/webhook/check"
)

type options struct {
	dir        string
	keymintBin string
	checkPort  int
	local      bool
	noKeymint  bool
	replicas   int
	// rateLimitBackend is keymint's --rate-limit-backend; with "redis" and
	// no redisURL, make run starts a redis-server of its own.
	rateLimitBackend string
	redisURL         string
	// trustedProxies is keymint's --trusted-proxy-cidrs: none unless set.
	trustedProxies string
}

func main() {
	var o options
	flag.StringVar(&o.dir, "dir", ".dev", "where the local control plane keeps its data, certificates, kubeconfig and keymint.env")
	flag.StringVar(&o.keymintBin, "keymint", "bin/keymint", "the keymint binary to run")
	flag.IntVar(&o.checkPort, "check-port", 8443, "port of keymint's check server on 127.0.0.1 (0 picks a free one)")
	flag.BoolVar(&o.local, "local", false, "start a local control plane even when a kubeconfig points at a reachable cluster")
	flag.BoolVar(&o.noKeymint, "no-keymint", false, "start the local control plane only, without keymint: to repair what keeps keymint from starting (with -local)")
	flag.IntVar(&o.replicas, "replicas", 1, "keymint replicas to run, electing a leader for the controllers; every one answers checks (make run REPLICAS=2)")
	flag.StringVar(&o.rateLimitBackend, "rate-limit-backend", "local", "keymint's --rate-limit-backend: local, or redis to share budgets across replicas (make run RATE_LIMIT_BACKEND=redis)")
	flag.StringVar(&o.redisURL, "redis-url", "", "with -rate-limit-backend=redis, the Redis to use; unset: a redis-server of make run's own, data in -dir")
	flag.StringVar(&o.trustedProxies, "trusted-proxy-cidrs", "", "keymint's --trusted-proxy-cidrs: proxies (a local nginx on 127.0.0.1/32, say) whose X-Forwarded-For names the client, for tokens restricted to allowedSourceCIDRs; unset: none")
	flag.Parse()
	if o.replicas < 1 || (o.rateLimitBackend != "local" && o.rateLimitBackend != "redis") {
		fmt.Fprintln(os.Stderr, "keymint run: -replicas must be at least 1, and -rate-limit-backend local or redis")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintf(os.Stderr, "\nkeymint run: %v\n", err)
		os.Exit(1)
	}
}

func say(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

func run(ctx context.Context, o options) error {
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return err
	}
	if o.keymintBin, err = filepath.Abs(o.keymintBin); err != nil {
		return err
	}
	envFile := filepath.Join(dir, "keymint.env")
	_ = os.Remove(envFile) // it appears again only once keymint is serving

	if !o.local {
		if cfg, kubeconfig, ok := reachableCluster(); ok {
			return runAgainstCluster(ctx, o, dir, envFile, cfg, kubeconfig)
		}
	}
	return runLocal(ctx, o, dir, envFile)
}

// reachableCluster returns the kubeconfig's cluster, and the kubeconfig's
// path (as KUBECONFIG would say it), if the cluster answers within a few
// seconds.
func reachableCluster() (*rest.Config, string, bool) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if len(rules.Precedence) == 0 {
		return nil, "", false
	}
	loader := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{})
	cfg, err := loader.ClientConfig()
	if err != nil {
		return nil, "", false
	}
	probe := rest.CopyConfig(cfg)
	probe.Timeout = 3 * time.Second
	dc, err := discovery.NewDiscoveryClientForConfig(probe)
	if err != nil {
		return nil, "", false
	}
	if _, err := dc.ServerVersion(); err != nil {
		say("No reachable cluster in your kubeconfig (%s): starting a local control plane", firstLine(err.Error()))
		return nil, "", false
	}
	return cfg, strings.Join(rules.GetLoadingPrecedence(), string(os.PathListSeparator)), true
}

func runAgainstCluster(ctx context.Context, o options, dir, envFile string, cfg *rest.Config, kubeconfig string) error {
	say("Using the cluster in your kubeconfig: %s", cfg.Host)
	root, err := testenv.RepoRoot()
	if err != nil {
		return err
	}
	say("Installing the CRDs")
	if _, err := envtest.InstallCRDs(cfg, envtest.CRDInstallOptions{Paths: []string{filepath.Join(root, "config", "crd", "bases")}, ErrorIfPathMissing: true}); err != nil {
		return fmt.Errorf("installing the CRDs: %w", err)
	}
	if _, err := writeCerts(dir); err != nil {
		return err
	}
	if err := ensureNamespace(ctx, cfg, keymintNamespace); err != nil {
		return err
	}
	if err := ensureLeakReportToken(ctx, cfg, leakReportTokenFile(dir)); err != nil {
		return err
	}
	say("This cluster's kube-apiserver does not ask keymint about tokens unless you configure it (docs/checks.md); /check works as is")
	awaitKey, err := recordKeyWaiter(cfg, "")
	if err != nil {
		return err
	}
	return serveKeymint(ctx, o, root, dir, envFile, kubeconfig, kubeconfig, nil, awaitKey)
}

func runLocal(ctx context.Context, o options, dir, envFile string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// The tests' environment (binaries, CRDs, scheme), so make run exercises
	// what they do.
	env, err := testenv.New()
	if err != nil {
		return err
	}
	root, err := testenv.RepoRoot()
	if err != nil {
		return err
	}
	// kube-apiserver is told the check server's address before keymint runs,
	// so pick the port now and keep it.
	checkPort, err := port(o.checkPort)
	if err != nil {
		return fmt.Errorf("port %d for the check server: %w (pass -check-port 0 for a free one)", o.checkPort, err)
	}
	o.checkPort = checkPort
	checkURL := fmt.Sprintf("https://127.0.0.1:%d", checkPort)

	say("Writing certificates and configuration to %s", dir)
	certs, err := writeCerts(dir)
	if err != nil {
		return err
	}
	// The admin identity is a bearer token, not a client certificate:
	// kube-apiserver tries certificates first, so with one in the kubeconfig
	// `kubectl --token <keymint token>` would still act as the admin.
	// keymint itself runs as its own user, bound to the ClusterRole generated
	// from its RBAC markers, so a missing permission shows here, not in a
	// real cluster.
	adminToken, managerToken := randomHex(24), randomHex(24)
	tokenFile := filepath.Join(dir, "static-tokens.csv")
	tokens := adminToken + `,keymint-dev-admin,keymint-dev-admin,"system:masters"` + "\n" +
		managerToken + `,` + managerUser + `,` + managerUser + "\n"
	if err := os.WriteFile(tokenFile, []byte(tokens), 0o600); err != nil {
		return err
	}
	webhookConfig := filepath.Join(dir, "token-webhook.kubeconfig")
	if err := clientcmd.WriteToFile(clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"keymint": {Server: checkURL + "/apis/authentication.k8s.io/v1/tokenreviews", CertificateAuthority: certs.CAFile}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{"kube-apiserver": {}},
		Contexts:       map[string]*clientcmdapi.Context{"keymint": {Cluster: "keymint", AuthInfo: "kube-apiserver"}},
		CurrentContext: "keymint",
	}, webhookConfig); err != nil {
		return err
	}

	say("Starting etcd and kube-apiserver %s (data in %s)", testenv.KubernetesVersion, filepath.Join(dir, "etcd"))
	if err := configureLocal(env, dir, webhookConfig, tokenFile); err != nil {
		return err
	}
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("starting the control plane: %w", err)
	}
	defer func() {
		say("Stopping kube-apiserver and etcd")
		if err := env.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stopping the control plane: %v\n", err)
		}
		_ = os.Remove(envFile)
	}()

	kubeconfig := filepath.Join(dir, "kubeconfig")
	managerKubeconfig := filepath.Join(dir, "manager.kubeconfig")
	for path, token := range map[string]string{kubeconfig: adminToken, managerKubeconfig: managerToken} {
		if err := clientcmd.WriteToFile(clientcmdapi.Config{
			Clusters:       map[string]*clientcmdapi.Cluster{"keymint-local": {Server: cfg.Host, CertificateAuthorityData: cfg.CAData}},
			AuthInfos:      map[string]*clientcmdapi.AuthInfo{"user": {Token: token}},
			Contexts:       map[string]*clientcmdapi.Context{"keymint-local": {Cluster: "keymint-local", AuthInfo: "user", Namespace: "default"}},
			CurrentContext: "keymint-local",
		}, path); err != nil {
			return err
		}
	}
	if err := ensureNamespace(ctx, cfg, keymintNamespace); err != nil {
		return err
	}
	if err := ensureLeakReportToken(ctx, cfg, leakReportTokenFile(dir)); err != nil {
		return err
	}
	if err := bindManagerRole(ctx, cfg, root); err != nil {
		return err
	}
	if o.noKeymint {
		say("The control plane is up without keymint (Ctrl-C stops it). In a second terminal:\n\n  export KUBECONFIG=%s\n", kubeconfig)
		<-ctx.Done()
		return nil
	}

	awaitKey, err := recordKeyWaiter(cfg, kubeconfig)
	if err != nil {
		return err
	}
	return serveKeymint(ctx, o, root, dir, envFile, kubeconfig, managerKubeconfig, cfg, awaitKey)
}

// recordKey is the Secret keymint keeps its record key in under make run:
// --record-key-secret's default outside a pod.
var recordKey = testenv.RecordKeySecret

// recordKeyWaiter returns awaitUsableRecordKey for the cluster at cfg;
// kubeconfig, if set, is what the user's kubectl needs to reach it.
func recordKeyWaiter(cfg *rest.Config, kubeconfig string) (func(context.Context) error, error) {
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) error {
		return awaitUsableRecordKey(ctx, c, kubeconfig, os.Stderr, 2*time.Second)
	}, nil
}

// awaitUsableRecordKey returns once keymint can start with the record key
// Secret: it is usable, or gone (keymint then creates a new one). keymint
// refuses a Secret it cannot use and never replaces it, since token records
// signed with its keys would stop verifying; started anyway, it would exit
// and stop make run, and the control plane with it. So while the Secret is
// unusable, make run says what is wrong and how to fix it from a second
// terminal, and checks again every so often with the control plane up. It
// returns an error only if the Secret cannot be read or ctx ends first.
func awaitUsableRecordKey(ctx context.Context, c client.Reader, kubeconfig string, out io.Writer, every time.Duration) error {
	told := ""
	for {
		err := recordkey.Check(ctx, c, recordKey)
		var unusable *recordkey.UnusableError
		switch {
		case err == nil:
			if told != "" {
				say("Record key Secret %s is usable now (or gone: keymint creates a new one); starting keymint", recordKey)
			}
			return nil
		case !errors.As(err, &unusable):
			return err
		case unusable.Err.Error() != told:
			// Once per problem, not at every check.
			told = unusable.Err.Error()
			fmt.Fprint(out, recordKeyHelp(unusable, kubeconfig))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stopped while record key Secret %s was unusable: %v", recordKey, unusable.Err)
		case <-time.After(every):
		}
	}
}

// recordKeyHelp says why keymint cannot start with the record key Secret,
// and the commands that fix it.
func recordKeyHelp(e *recordkey.UnusableError, kubeconfig string) string {
	ns, name := e.Secret.Namespace, e.Secret.Name
	export := ""
	if kubeconfig != "" {
		export = "\n  export KUBECONFIG=" + kubeconfig + "\n"
	}
	return fmt.Sprintf(`
==> keymint cannot start: record key Secret %[1]s is unusable: %[2]v.
keymint never replaces a record key by itself: token records signed with its keys would stop
verifying. Fix it from a second terminal; make run waits and starts keymint once the Secret is
usable or gone (Ctrl-C stops make run):
%[3]s
  # Repair it: %[4]q names the signing key; every other entry is a key of at least %[5]d bytes
  # (values are base64; a new key: head -c 32 /dev/urandom | base64). docs/security.md#the-record-key
  kubectl -n %[6]s edit secret %[7]s

  # Or delete it: keymint creates a new key. Records signed with the old keys no longer verify,
  # so a token keymint would have recovered from its record after a crash is minted anew.
  kubectl -n %[6]s delete secret %[7]s
`, e.Secret, e.Err, export, recordkey.ActiveKey, recordkey.MinKeyLen, ns, name)
}

// configureLocal keeps etcd's data in dir/etcd, so objects outlive a run,
// and has kube-apiserver accept the static tokens in tokenFile and ask
// keymint's TokenReview endpoint (webhookConfig) about every other token.
func configureLocal(env *envtest.Environment, dir, webhookConfig, tokenFile string) error {
	// Both are added to whatever testenv configured, not in place of it.
	if env.ControlPlane.Etcd == nil {
		env.ControlPlane.Etcd = &envtest.Etcd{}
	}
	env.ControlPlane.Etcd.DataDir = filepath.Join(dir, "etcd")
	if err := os.MkdirAll(env.ControlPlane.Etcd.DataDir, 0o700); err != nil {
		return err
	}
	args := env.ControlPlane.GetAPIServer().Configure()
	args.Set("authentication-token-webhook-config-file", webhookConfig)
	args.Set("authentication-token-webhook-version", "v1")
	args.Set("authentication-token-webhook-cache-ttl", "5s")
	args.Set("token-auth-file", tokenFile)
	return nil
}

// installWebhooks creates (or updates) config/webhook's admission webhook
// configurations, pointed at keymint on 127.0.0.1:port and trusting caFile.
func installWebhooks(ctx context.Context, cfg *rest.Config, port int, caFile string) error {
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	return testenv.InstallWebhooks(ctx, cfg, localWebhooks, port, ca, true)
}

// managerUser is who keymint runs as on the local control plane.
const managerUser = "keymint-manager"

// localWebhooks names the admission webhook configurations make run
// installs.
const localWebhooks = "keymint-local"

// keymintNamespace is keymint's own namespace, as config/default installs
// it: keymint keeps its record key Secret there (--record-key-secret).
const keymintNamespace = "keymint-system"

// ensureNamespace creates a namespace unless it exists.
func ensureNamespace(ctx context.Context, cfg *rest.Config, name string) error {
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		return err
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := c.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s for keymint's record key: %w", name, err)
	}
	return nil
}

// bindManagerRole creates config/rbac/role.yaml's ClusterRole and binds it to
// managerUser: keymint gets exactly the permissions a deployment grants.
func bindManagerRole(ctx context.Context, cfg *rest.Config, root string) error {
	raw, err := os.ReadFile(filepath.Join(root, "config", "rbac", "role.yaml"))
	if err != nil {
		return err
	}
	role := &rbacv1.ClusterRole{}
	if err := yaml.Unmarshal(raw, role); err != nil {
		return fmt.Errorf("reading config/rbac/role.yaml: %w", err)
	}
	role.Name = "keymint-manager-role"
	// The webhook configurations make run installs are named apart from a
	// deployment's (config/default can be dry-run against this control
	// plane): the same rights, on those.
	for i := range role.Rules {
		for j, n := range role.Rules[i].ResourceNames {
			if strings.HasSuffix(n, "-webhook-configuration") {
				role.Rules[i].ResourceNames[j] = localWebhooks
			}
		}
	}
	// Leader election (make run REPLICAS=2) needs Leases in keymint's
	// namespace: the Role config/rbac gives the manager there.
	raw, err = os.ReadFile(filepath.Join(root, "config", "rbac", "leader_election_role.yaml"))
	if err != nil {
		return err
	}
	election := &rbacv1.Role{}
	if err := yaml.Unmarshal(raw, election); err != nil {
		return fmt.Errorf("reading config/rbac/leader_election_role.yaml: %w", err)
	}
	election.Name, election.Namespace = "keymint-leader-election", keymintNamespace
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		return err
	}
	manager := []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: managerUser}}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "keymint-manager"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   manager,
	}
	electionBinding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "keymint-leader-election", Namespace: keymintNamespace},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: election.Name},
		Subjects:   manager,
	}
	// .dev/etcd outlives a run: replace what an earlier run created, so the
	// role is always the one generated now.
	for _, obj := range []client.Object{role, binding, election, electionBinding} {
		if err := c.Delete(ctx, obj); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("replacing %s: %w", obj.GetName(), err)
		}
		if err := c.Create(ctx, obj); err != nil {
			return fmt.Errorf("creating %s: %w", obj.GetName(), err)
		}
	}
	return nil
}

// serveKeymint runs o.replicas keymint processes against managerKubeconfig
// (kubeconfig is what keymint.env tells the user), with a self-signed check
// server certificate, writes envFile once they are ready, and stops them on
// SIGINT or SIGTERM. With admin (the local control plane), kube-apiserver is
// also pointed at the first replica's admission webhooks; a cluster's
// kube-apiserver cannot reach this machine, so there they stay off. With
// more than one replica, one that exits is started again, as a Deployment
// would.
//
// awaitKey, if set, returns once keymint can start with its record key
// Secret (awaitUsableRecordKey); it is asked before keymint starts, and
// again before a replica that exited starts again.
func serveKeymint(ctx context.Context, o options, root, dir, envFile, kubeconfig, managerKubeconfig string, admin *rest.Config, awaitKey func(context.Context) error) error {
	certs := certFiles(dir)
	o.replicas = max(o.replicas, 1)
	// The requester webhook make run installs (installWebhooks): keymint
	// mints nothing while it is missing.
	extra := append([]string{"--mutating-webhook-configuration=" + localWebhooks}, leakReportArgs(leakReportTokenFile(dir))...)
	if o.replicas > 1 {
		extra = append(extra, "--leader-elect")
	}
	if o.trustedProxies != "" {
		extra = append(extra, "--trusted-proxy-cidrs="+o.trustedProxies)
	}
	var redisURL string
	var childEnv []string
	if o.rateLimitBackend == "redis" {
		url := o.redisURL
		if url == "" {
			if err := os.MkdirAll(filepath.Join(dir, "redis"), 0o700); err != nil {
				return err
			}
			say("Starting redis-server for the shared rate-limit budgets")
			// A password, so that another user of this machine cannot
			// change the budgets; it is in keymint.env (0600) only.
			rdb, err := testenv.StartRedisWithPassword(filepath.Join(dir, "redis"), randomHex(16))
			if err != nil {
				return err
			}
			stopRedis := superviseRedis(ctx, rdb)
			defer stopRedis()
			redisURL, url = rdb.URL(), rdb.URL()
		}
		// In the environment, as the chart passes it: not in the arguments.
		childEnv = append(childEnv, "KEYMINT_REDIS_URL="+url)
		extra = append(extra, "--rate-limit-backend=redis")
	}

	replicas := make([]*replica, o.replicas)
	for i := range replicas {
		replicas[i] = &replica{n: i + 1, opts: keymintOptions(o.keymintBin, managerKubeconfig, certs, childEnv, extra)}
		if o.replicas > 1 {
			replicas[i].opts.Log = &prefixWriter{prefix: fmt.Sprintf("[replica %d] ", i+1), w: os.Stdout}
		}
	}
	// kube-apiserver was told the first replica's check port.
	replicas[0].opts.Ports.Check = o.checkPort
	defer func() {
		for _, r := range replicas {
			r.stop()
		}
	}()

	if awaitKey != nil {
		if err := awaitKey(ctx); err != nil {
			return err
		}
	}
	say("Starting %s; their logs follow", plural(o.replicas, "keymint replica", "keymint replicas"))
	exits := make(chan *replica, len(replicas))
	for _, r := range replicas {
		if err := r.start(ctx, exits); err != nil {
			return err
		}
	}
	if admin != nil {
		if err := installWebhooks(ctx, admin, replicas[0].k.Ports.Webhook, certs.CAFile); err != nil {
			return err
		}
		say("kube-apiserver asks keymint's admission webhooks who may mint tokens and claim groups")
	} else {
		say("Admission webhooks are off: this cluster's kube-apiserver cannot reach keymint here, so no ApiToken gets the requester record keymint mints for: tokens stay Authorized=False (NoRequesterRecord). Install keymint in the cluster (docs/helm.md), or run make run RUN_ARGS=-local (see docs/security.md)")
	}
	writeEnv := func() error {
		var ps []testenv.KeymintPorts
		var pids []int
		for _, r := range replicas {
			ps, pids = append(ps, r.k.Ports), append(pids, r.k.Pid())
		}
		return os.WriteFile(envFile, []byte(envVars(kubeconfig, certs, ps, pids, redisURL, leakReportTokenFile(dir))), 0o600)
	}
	if err := writeEnv(); err != nil {
		return err
	}
	defer os.Remove(envFile)
	fmt.Print(nextSteps(root, envFile, o.replicas > 1 || redisURL != "", fmt.Sprintf("https://127.0.0.1:%d", replicas[0].k.Ports.Check), leakReportTokenFile(dir)))

	// With one replica, its exit ends make run, as before; with more, it
	// is started again after a second.
	for {
		select {
		case <-ctx.Done():
			say("Stopping keymint")
			return nil
		case r := <-exits:
			if o.replicas == 1 {
				return fmt.Errorf("keymint exited: %v", r.k.Err())
			}
			why := "exit status 0"
			if err := r.k.Err(); err != nil {
				why = err.Error()
			}
			say("keymint replica %d exited (%s); starting it again in 1s", r.n, why)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
			if awaitKey != nil {
				if err := awaitKey(ctx); err != nil {
					return err
				}
			}
			if err := r.start(ctx, exits); err != nil {
				return err
			}
			say("keymint replica %d is ready again", r.n)
			if err := writeEnv(); err != nil {
				return err
			}
		}
	}
}

// superviseRedis starts make run's redis-server again, on the same port,
// two seconds after it exits (stopped by hand, to see keymint fail open and
// recover). The returned func stops it for good.
func superviseRedis(ctx context.Context, rdb *testenv.Redis) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-rdb.Exited():
			}
			say("redis-server exited; keymint decides as --rate-limit-redis-failure says until it is back; starting it again in 2s")
			select {
			case <-ctx.Done():
				return
			case <-time.After(2 * time.Second):
			}
			if err := rdb.Start(); err != nil {
				say("redis-server did not start again: %v", err)
				return
			}
			say("redis-server is back on %s", rdb.Addr)
		}
	}()
	return func() {
		cancel()
		<-done
		say("Stopping redis-server")
		_ = rdb.Stop()
	}
}

// replica is one keymint process of make run.
type replica struct {
	n    int
	opts testenv.KeymintOptions
	// k is the process started last.
	k        *testenv.Keymint
	stopping atomic.Bool
}

// start starts the process and waits until it is ready; when it exits, r
// goes to exits. Started again, it keeps its ports: keymint.env and
// kube-apiserver name them.
func (r *replica) start(ctx context.Context, exits chan<- *replica) error {
	k, err := testenv.StartKeymint(ctx, r.opts)
	if err != nil {
		return fmt.Errorf("replica %d: %w", r.n, err)
	}
	r.k, r.opts.Ports = k, k.Ports
	go func() {
		<-k.Exited()
		if !r.stopping.Load() {
			exits <- r
		}
	}()
	return nil
}

func (r *replica) stop() {
	r.stopping.Store(true)
	if r.k != nil {
		_ = r.k.Stop()
	}
}

// prefixWriter prefixes each line a replica writes with its number.
type prefixWriter struct {
	mu     sync.Mutex
	prefix string
	w      io.Writer
	mid    bool
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []byte
	for _, c := range b {
		if !p.mid {
			out = append(out, p.prefix...)
		}
		out = append(out, c)
		p.mid = c != '\n'
	}
	if _, err := p.w.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}

// keymintOptions are how make run starts keymint: its output on the
// terminal, its metrics over plain HTTP on loopback, so a plain curl reads
// them (only this machine reaches them, unlike in a cluster, where
// config/manager keeps them behind authentication and RBAC).
func keymintOptions(bin, kubeconfig string, certs selfsigned.Files, env, extra []string) testenv.KeymintOptions {
	return testenv.KeymintOptions{
		Binary: bin, Kubeconfig: kubeconfig, Env: env, Metrics: true, Log: os.Stdout,
		Args: append([]string{"--zap-devel", "--check-tls-cert-file", certs.CertFile, "--check-tls-key-file", certs.KeyFile}, extra...),
	}
}

// envVars is keymint.env: what the second terminal needs. The first
// replica's URLs stand alone for scripts that know one; KEYMINT_CHECK_URLS
// and KEYMINT_PIDS list every replica's, in order.
// KEYMINT_LEAK_REPORT_GITLAB_TOKEN_FILE is where the token GitLab's leak
// report endpoints ask for is: the file, not the token.
func envVars(kubeconfig string, certs selfsigned.Files, replicas []testenv.KeymintPorts, pidList []int, redisURL, leakTokenFile string) string {
	var urls, pids, metrics []string
	for i, r := range replicas {
		urls = append(urls, fmt.Sprintf("https://127.0.0.1:%d", r.Check))
		metrics = append(metrics, fmt.Sprintf("http://127.0.0.1:%d/metrics", r.Metrics))
		pids = append(pids, strconv.Itoa(pidList[i]))
	}
	vars := fmt.Sprintf("KUBECONFIG=%s\nKEYMINT_CHECK_URL=%s\nKEYMINT_CA_FILE=%s\nKEYMINT_METRICS_URL=%s\nKEYMINT_LEAK_REPORT_GITLAB_TOKEN_FILE=%s\n",
		kubeconfig, urls[0], certs.CAFile, metrics[0], leakTokenFile)
	if len(replicas) > 1 || redisURL != "" {
		vars += fmt.Sprintf("KEYMINT_CHECK_URLS=%q\nKEYMINT_METRICS_URLS=%q\nKEYMINT_PIDS=%q\n", strings.Join(urls, " "), strings.Join(metrics, " "), strings.Join(pids, " "))
	}
	if redisURL != "" {
		vars += "KEYMINT_REDIS_URL=" + redisURL + "\n"
	}
	return vars
}

func certFiles(dir string) selfsigned.Files {
	d := filepath.Join(dir, "certs")
	return selfsigned.Files{CAFile: filepath.Join(d, "ca.crt"), CertFile: filepath.Join(d, "tls.crt"), KeyFile: filepath.Join(d, "tls.key")}
}

// writeCerts writes the check server's CA and serving pair into dir/certs.
func writeCerts(dir string) (selfsigned.Files, error) {
	return selfsigned.Write(filepath.Join(dir, "certs"), "127.0.0.1", "localhost")
}

// nextSteps is the banner make run prints once keymint is ready: what to
// run in a second terminal. checkURL is the first replica's check server;
// leakTokenFile holds the token of GitLab's leak report endpoints, which
// the banner names, never prints.
func nextSteps(root, envFile string, replicas bool, checkURL, leakTokenFile string) string {
	rel := func(p string) string {
		if r, err := filepath.Rel(root, p); err == nil {
			return r
		}
		return p
	}
	var b strings.Builder
	fmt.Fprintf(&b, `
==> keymint is ready. In a second terminal, from %s:

  source %s && export KUBECONFIG KEYMINT_CHECK_URL KEYMINT_CA_FILE KEYMINT_METRICS_URL
  kubectl apply -k config/samples
  kubectl get serviceusers,apitokens
  TOKEN=$(kubectl get secret billing-exporter-token -o jsonpath='{.data.token}' | base64 -d)
  kubectl --token "$TOKEN" auth whoami
  curl --cacert "$KEYMINT_CA_FILE" -H "Authorization: Bearer $TOKEN" "$KEYMINT_CHECK_URL/check?scope=invoices:read"
  curl -s "$KEYMINT_METRICS_URL" | grep ^keymint_

`, root, rel(envFile))
	if replicas {
		fmt.Fprintf(&b, `With several replicas or Redis, keymint.env also has KEYMINT_CHECK_URLS and KEYMINT_METRICS_URLS
(every replica's, the first one's in KEYMINT_CHECK_URL and KEYMINT_METRICS_URL), KEYMINT_PIDS and,
with Redis, KEYMINT_REDIS_URL; Ctrl-C stops the replicas and redis-server too:

  source %s && for url in $KEYMINT_CHECK_URLS; do
    curl -s --cacert "$KEYMINT_CA_FILE" -H "Authorization: Bearer $TOKEN" "$url/check?scope=invoices:read"; echo
  done

`, rel(envFile))
	}
	tokenFile := rel(leakTokenFile)
	fmt.Fprintf(&b, `Leak reports are on (--leak-reports; docs/helm.md#leak-reports), on every replica's check server:

  GitHub's form, unauthenticated:  %[1]s%[2]s
  GitLab's Token Revocation API:   %[1]s%[3]s
                                   %[1]s%[4]s
  GitLab's token (the Authorization header): Secret %[5]s (key token), and its copy
  %[6]s (--leak-report-gitlab-token-file; KEYMINT_LEAK_REPORT_GITLAB_TOKEN_FILE in keymint.env)

Report $TOKEN as leaked: keymint refuses it at once and puts a new token in Secret billing-exporter-token
(202, or 204 from GitLab's form, whether keymint knew the token or not):

  curl --cacert "$KEYMINT_CA_FILE" -H 'Content-Type: application/json' -d '{"credentials": ["'"$TOKEN"'"]}' "$KEYMINT_CHECK_URL%[2]s"
  echo "$TOKEN" | bin/kubectl-keymint scan --report "$KEYMINT_CHECK_URL" --report-ca-file "$KEYMINT_CA_FILE" -

Or as GitLab does, with its token (read by bash's printf, so it is never on a command line):

  curl --cacert "$KEYMINT_CA_FILE" -H @<(printf 'Authorization: %%s\n' "$(<%[6]s)") "$KEYMINT_CHECK_URL%[3]s"
  curl --cacert "$KEYMINT_CA_FILE" -H @<(printf 'Authorization: %%s\n' "$(<%[6]s)") -H 'Content-Type: application/json' \
    -d '[{"type": "%[7]s", "token": "'"$TOKEN"'", "location": "https://example.test/leak"}]' "$KEYMINT_CHECK_URL%[4]s"

`, checkURL, check.LeakReportPath, check.RevocableTokenTypesPath, check.RevokeTokensPath, leakReportSecret, tokenFile, check.GitLabTokenType)
	b.WriteString("Ctrl-C here stops keymint, kube-apiserver and etcd.\n\n")
	return b.String()
}

// leakReportSecret is where make run keeps the token GitLab's leak report
// endpoints ask for, in keymint's namespace, as the chart's
// leakReports.gitlab.tokenSecret names one.
var leakReportSecret = types.NamespacedName{Namespace: keymintNamespace, Name: "keymint-leak-report-gitlab"}

// leakReportTokenFile is the copy of leakReportSecret's token keymint reads
// (--leak-report-gitlab-token-file), as the kubelet would mount it.
func leakReportTokenFile(dir string) string { return filepath.Join(dir, "leak-report-gitlab-token") }

// leakReportArgs turns both forms of leak reports on: GitHub's, and
// GitLab's with the token in tokenFile.
func leakReportArgs(tokenFile string) []string {
	return []string{"--leak-reports", "--leak-report-gitlab-token-file=" + tokenFile}
}

// ensureLeakReportToken makes sure Secret leakReportSecret holds a token
// (key token), keeping the one an earlier run made (.dev/etcd outlives a
// run, and a GitLab configured with it keeps working) and making a random
// one otherwise, and copies it into file, readable by its owner only.
func ensureLeakReportToken(ctx context.Context, cfg *rest.Config, file string) error {
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		return err
	}
	return syncLeakReportToken(ctx, c, file)
}

func syncLeakReportToken(ctx context.Context, c client.Client, file string) error {
	secret := &corev1.Secret{}
	err := c.Get(ctx, leakReportSecret, secret)
	switch {
	case apierrors.IsNotFound(err):
		secret = &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: leakReportSecret.Namespace, Name: leakReportSecret.Name},
			Data:       map[string][]byte{"token": []byte(randomHex(32))},
		}
		if err := c.Create(ctx, secret); err != nil {
			return fmt.Errorf("creating Secret %s for GitLab's leak reports: %w", leakReportSecret, err)
		}
	case err != nil:
		return fmt.Errorf("reading Secret %s: %w", leakReportSecret, err)
	case len(secret.Data["token"]) == 0:
		if secret.Data == nil {
			secret.Data = map[string][]byte{}
		}
		secret.Data["token"] = []byte(randomHex(32))
		if err := c.Update(ctx, secret); err != nil {
			return fmt.Errorf("putting a token into Secret %s: %w", leakReportSecret, err)
		}
	}
	return writePrivate(file, secret.Data["token"])
}

// writePrivate replaces file with data, readable by its owner only,
// whatever the mode of the file it replaces.
func writePrivate(file string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}

// port returns p if it is free on 127.0.0.1, or a free port when p is 0:
// the check port, which kube-apiserver's token webhook names before keymint
// starts, so it is the one port StartKeymint cannot pick again if someone
// takes it meanwhile; make run then fails, saying so.
func port(p int) (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

package admission_test

import (
	"context"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/keymint/keymint/controllers"
	"github.com/keymint/keymint/internal/authz"
	"github.com/keymint/keymint/internal/testenv"
	"github.com/keymint/keymint/webhook/admission"
)

// The webhooks run in a real manager, registered with a real kube-apiserver
// from config/webhook (envtest points it at this process). Users act
// through impersonation, so RBAC and SubjectAccessReviews are
// kube-apiserver's own.
var (
	testEnv   *testenv.Environment
	cfg       *rest.Config
	k8sClient client.Client // the admin
	ctx       context.Context
	cancel    context.CancelFunc
)

func TestAdmission(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Admission Suite")
}

var _ = BeforeSuite(func() {
	logf.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))
	ctx, cancel = context.WithCancel(context.Background())
	SetDefaultEventuallyTimeout(15 * time.Second)
	SetDefaultEventuallyPollingInterval(100 * time.Millisecond)

	var err error
	testEnv, err = testenv.Run(ctx, testenv.RunInput{
		AdmissionWebhooks: true,
		SetupReconcilers: func(ctx context.Context, e *testenv.Environment) error {
			mgr := e.Manager
			admission.Setup(mgr, mgr.GetClient(), authz.SubjectAccessReviewer{Client: mgr.GetClient()}, e.Keyring, testenv.RequesterWebhookName)
			return controllers.Setup(ctx, mgr, controllers.Options{RequesterWebhook: testenv.RequesterWebhookName, Clock: clock.RealClock{}, Keyring: e.Keyring, AuthorizationRetry: 500 * time.Millisecond})
		},
	})
	Expect(err).NotTo(HaveOccurred())
	cfg, k8sClient = testEnv.Config, testEnv.Client
})

var _ = AfterSuite(func() {
	if cancel != nil {
		cancel()
	}
	if testEnv != nil {
		Expect(testEnv.Stop()).To(Succeed())
	}
})

// warnings collects the admission warnings kube-apiserver sends back, as
// kubectl prints them.
type warnings struct {
	mu   sync.Mutex
	seen []string
}

func (w *warnings) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.seen = append(w.seen, text)
}

func (w *warnings) all() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.seen...)
}

// as returns a client that acts as user (in system:authenticated), and the
// warnings it receives.
func as(user string) (client.Client, *warnings) {
	GinkgoHelper()
	w := &warnings{}
	c := rest.CopyConfig(cfg)
	c.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: []string{"system:authenticated"}}
	c.WarningHandler = w
	cl, err := client.New(c, client.Options{Scheme: testenv.Scheme})
	Expect(err).NotTo(HaveOccurred())
	return cl, w
}

func newNamespace() string {
	GinkgoHelper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "keymint-admission-"}}
	Expect(k8sClient.Create(ctx, ns)).To(Succeed())
	return ns.Name
}

// grant binds user to a Role in ns with the rules.
func grant(ns, user string, rules ...rbacv1.PolicyRule) {
	GinkgoHelper()
	name := user + "-" + ns
	Expect(k8sClient.Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Rules: rules})).To(Succeed())
	Expect(k8sClient.Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
	})).To(Succeed())
}

// grantCluster binds user to a ClusterRole with the rules.
func grantCluster(name, user string, rules ...rbacv1.PolicyRule) {
	GinkgoHelper()
	Expect(k8sClient.Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules})).To(Succeed())
	Expect(k8sClient.Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
	})).To(Succeed())
}

package controllers_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/keymint/keymint/controllers"
	"github.com/keymint/keymint/internal/recordkey"
	"github.com/keymint/keymint/internal/testenv"
)

// The controllers run in a real manager against a real kube-apiserver and
// etcd. k8sClient reads and writes past any cache, as a user's kubectl does.
var (
	testEnv   *testenv.Environment
	cfg       *rest.Config
	k8sClient client.Client
	// ctrlCache is the controllers' own cache (controllers.NewCache).
	ctrlCache *controllers.Cache
	ctx       context.Context
	cancel    context.CancelFunc
	// fakeClock is the controllers' clock: specs step it to make tokens
	// expire or rotate without waiting.
	fakeClock *clocktesting.FakeClock
	// faults and writes watch the controllers' own API calls.
	faults = &faultInjector{}
	writes = &writeCounter{counts: map[string]int{}}
	// controllerLogs keeps everything the controllers logged.
	controllerLogs = &testenv.LogBuffer{}
	// keyring is the controllers' record key, for specs that play keymint
	// writing a record (a crash) or an attacker who lacks it.
	keyring *recordkey.Keyring
)

func TestControllers(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Controllers Suite")
}

var _ = BeforeSuite(func() {
	logf.SetLogger(zap.New(zap.WriteTo(io.MultiWriter(GinkgoWriter, controllerLogs)), zap.UseDevMode(true)))
	ctx, cancel = context.WithCancel(context.Background())
	SetDefaultEventuallyTimeout(15 * time.Second)
	SetDefaultEventuallyPollingInterval(100 * time.Millisecond)
	SetDefaultConsistentlyPollingInterval(100 * time.Millisecond)

	fakeClock = clocktesting.NewFakeClock(time.Now())
	var err error
	testEnv, err = testenv.Run(ctx, testenv.RunInput{
		ManagerOptions: func(o *ctrl.Options) { o.NewClient = watchedClient },
		SetupReconcilers: func(ctx context.Context, e *testenv.Environment) (err error) {
			if ctrlCache, err = controllers.NewCache(e.Manager); err != nil {
				return err
			}
			return controllers.Setup(ctx, e.Manager, controllers.Options{Cache: ctrlCache, RequesterWebhook: testenv.RequesterWebhookName, Clock: fakeClock, Keyring: e.Keyring,
				ExpiryWarning: controllers.DefaultExpiryWarning, AuthorizationRetry: 200 * time.Millisecond})
		},
	})
	Expect(err).NotTo(HaveOccurred())
	cfg, k8sClient, keyring = testEnv.Config, testEnv.Client, testEnv.Keyring
})

var _ = AfterSuite(func() {
	if cancel != nil {
		cancel()
	}
	if testEnv != nil {
		Expect(testEnv.Stop()).To(Succeed())
	}
})

// watchedClient is the controllers' client: it counts their writes and
// fails the status writes faults is armed for.
func watchedClient(config *rest.Config, options client.Options) (client.Client, error) {
	c, err := client.NewWithWatch(config, options)
	if err != nil {
		return nil, err
	}
	return interceptor.NewClient(c, interceptor.Funcs{
		Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			writes.add(obj)
			return c.Create(ctx, obj, opts...)
		},
		Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
			writes.add(obj)
			return c.Update(ctx, obj, opts...)
		},
		Patch: func(ctx context.Context, c client.WithWatch, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
			writes.add(obj)
			return c.Patch(ctx, obj, patch, opts...)
		},
		Delete: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.DeleteOption) error {
			writes.add(obj)
			return c.Delete(ctx, obj, opts...)
		},
		SubResourcePatch: func(ctx context.Context, c client.Client, sub string, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
			writes.add(obj)
			if faults.take(obj.GetName()) {
				return errors.New("injected failure: the controller died before writing status")
			}
			return c.SubResource(sub).Patch(ctx, obj, patch, opts...)
		},
	}), nil
}

// faultInjector fails the next status write of the objects it is armed for.
type faultInjector struct{ armed sync.Map }

func (f *faultInjector) failNextStatusWrite(name string) { f.armed.Store(name, true) }
func (f *faultInjector) take(name string) bool {
	_, ok := f.armed.LoadAndDelete(name)
	return ok
}

// writeCounter counts the controllers' writes per object.
type writeCounter struct {
	mu     sync.Mutex
	counts map[string]int
}

func writeKey(obj client.Object) string {
	kind := fmt.Sprintf("%T", obj)
	if _, ok := obj.(*corev1.Secret); ok {
		kind = "Secret"
	}
	return kind + "/" + obj.GetNamespace() + "/" + obj.GetName()
}

func (w *writeCounter) add(obj client.Object) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.counts[writeKey(obj)]++
}

// of returns how many writes the controllers made to obj so far.
func (w *writeCounter) of(obj client.Object) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.counts[writeKey(obj)]
}

// inNamespace sums the writes to every object of a namespace.
func (w *writeCounter) inNamespace(ns string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for k, c := range w.counts {
		if strings.Contains(k, "/"+ns+"/") {
			n += c
		}
	}
	return n
}

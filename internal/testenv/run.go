package testenv

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/keymint/keymint/controllers"
	"github.com/keymint/keymint/internal/recordkey"
)

// RunInput says what a suite needs of its environment, as cluster-api's
// envtest.Run takes it: how the manager differs from the default, and what
// runs in it. Run does the rest the same way for every suite.
type RunInput struct {
	// AdmissionWebhooks has kube-apiserver call keymint's validating
	// webhooks (config/webhook/validating.yaml) too, and serve the
	// requester webhook, on the manager's webhook server: SetupReconcilers
	// registers them (admission.Setup), as cmd/keymint does. Without it,
	// Run serves the requester webhook itself and the manager serves none.
	AdmissionWebhooks bool
	// ManagerConfig, if set, returns the config the manager connects with,
	// from the admin's (another user agent, for field managers).
	ManagerConfig func(*rest.Config) *rest.Config
	// ManagerOptions, if set, changes the manager's options: the default
	// has controllers.CacheOptions and no metrics server.
	ManagerOptions func(*ctrl.Options)
	// SetupReconcilers adds what the suite tests to e.Manager before it
	// starts (controllers.Setup, check.Setup, ...). ctx ends when the
	// environment stops.
	SetupReconcilers func(ctx context.Context, e *Environment) error
}

// Environment is a control plane with keymint's CRDs installed whose
// kube-apiserver calls keymint's requester webhook for every ApiToken
// written, as in a cluster with keymint installed, and, made by Run, a
// manager running against it.
type Environment struct {
	// Config is the admin's.
	Config *rest.Config
	// Client is the admin's, reading and writing past any cache, as a
	// user's kubectl does.
	Client client.Client
	// Keyring is the record key in RecordKeySecret, which signs the
	// requester records: what keymint loads on start.
	Keyring *recordkey.Keyring
	// Manager is Run's manager, running once Run returns; nil in an
	// environment StartWithAPIServer starts.
	Manager ctrl.Manager

	env      *envtest.Environment
	cancel   context.CancelFunc
	stopped  chan error // the manager's Start, once it returns
	stopOnce sync.Once
	stopErr  error
}

// Run starts a control plane and a manager set up as the input says, and
// returns once the manager runs (and, with AdmissionWebhooks, kube-apiserver
// can reach its webhook server). ctx bounds the setup, its requests and
// waits (envtest bounds the control plane's own start). Once Run returns,
// ctx no longer matters: the manager runs until Stop, which stops both.
func Run(ctx context.Context, in RunInput) (*Environment, error) {
	e, err := boot(ctx, in.AdmissionWebhooks, "")
	if err != nil {
		return nil, err
	}
	if err := e.runManager(ctx, in); err != nil {
		return nil, errors.Join(err, e.Stop())
	}
	return e, nil
}

// RunT is Run for one test, set up within the test's context: stopped when
// the test ends, failing it if the manager failed.
func RunT(t testing.TB, in RunInput) *Environment {
	t.Helper()
	e, err := Run(t.Context(), in)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Stop(); err != nil {
			t.Error(err)
		}
	})
	return e
}

// runManager starts the manager, running until Stop; setup bounds the
// wait for its webhook server.
func (e *Environment) runManager(setup context.Context, in RunInput) error {
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = joinCancel(e.cancel, cancel)
	opts := ctrl.Options{
		Scheme:  Scheme,
		Cache:   controllers.CacheOptions(),
		Metrics: metricsserver.Options{BindAddress: "0"},
	}
	if in.AdmissionWebhooks {
		wh := e.env.WebhookInstallOptions
		opts.WebhookServer = webhook.NewServer(webhook.Options{Host: wh.LocalServingHost, Port: wh.LocalServingPort, CertDir: wh.LocalServingCertDir})
	}
	if in.ManagerOptions != nil {
		in.ManagerOptions(&opts)
	}
	cfg := e.Config
	if in.ManagerConfig != nil {
		cfg = in.ManagerConfig(rest.CopyConfig(cfg))
	}
	mgr, err := ctrl.NewManager(cfg, opts)
	if err != nil {
		return err
	}
	e.Manager = mgr
	if in.SetupReconcilers != nil {
		if err := in.SetupReconcilers(ctx, e); err != nil {
			return err
		}
	}
	e.stopped = make(chan error, 1)
	go func() { e.stopped <- mgr.Start(ctx) }()
	if !in.AdmissionWebhooks {
		return nil
	}
	// Ready once kube-apiserver reaches the webhooks over TLS.
	return Poll(setup, 30*time.Second, "the manager's webhook server to serve", func(context.Context) error {
		select {
		case err := <-e.stopped:
			e.stopped <- err // for Stop
			return Permanent(fmt.Errorf("the manager stopped: %v", err))
		default:
		}
		return mgr.GetWebhookServer().StartedChecker()(nil)
	})
}

// WebhookInstallOptions say where kube-apiserver calls keymint's webhooks,
// and the CA it trusts there.
func (e *Environment) WebhookInstallOptions() envtest.WebhookInstallOptions {
	return e.env.WebhookInstallOptions
}

// Stop stops the manager, then the requester webhook and the control
// plane, and returns the manager's error, if it failed.
func (e *Environment) Stop() error {
	e.stopOnce.Do(func() {
		e.cancel()
		if e.stopped != nil {
			if err := <-e.stopped; err != nil {
				e.stopErr = fmt.Errorf("the manager: %w", err)
			}
		}
		e.stopErr = errors.Join(e.stopErr, e.env.Stop())
	})
	return e.stopErr
}

// boot starts the control plane, creates the record key as keymint does on
// first start, and serves the requester webhook unless the manager will.
// certDir, if set, is where kube-apiserver keeps its serving certificate.
func boot(ctx context.Context, admissionWebhooks bool, certDir string) (*Environment, error) {
	env, err := New()
	if err != nil {
		return nil, err
	}
	if err := RecordRequesters(env); err != nil {
		return nil, err
	}
	if admissionWebhooks {
		root, err := RepoRoot()
		if err != nil {
			return nil, err
		}
		env.WebhookInstallOptions.Paths = append(env.WebhookInstallOptions.Paths, filepath.Join(root, "config", "webhook", "validating.yaml"))
	}
	if certDir != "" {
		env.ControlPlane.GetAPIServer().CertDir = certDir
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("starting the control plane: %w", err)
	}
	serveCtx, cancel := context.WithCancel(context.Background())
	e := &Environment{Config: cfg, env: env, cancel: cancel}
	fail := func(err error) (*Environment, error) { return nil, errors.Join(err, e.Stop()) }
	if e.Client, err = client.New(cfg, client.Options{Scheme: Scheme}); err != nil {
		return fail(err)
	}
	if e.Keyring, err = ClusterKeyring(ctx, e.Client); err != nil {
		return fail(err)
	}
	if !admissionWebhooks {
		// Served until Stop; ctx bounds only the wait for it to serve.
		stop := context.AfterFunc(ctx, cancel)
		err := ServeRequesters(serveCtx, env, e.Keyring)
		if !stop() && err == nil {
			err = ctx.Err()
		}
		if err != nil {
			return fail(err)
		}
	}
	return e, nil
}

func joinCancel(a, b context.CancelFunc) context.CancelFunc { return func() { b(); a() } }

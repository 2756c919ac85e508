package testenv

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/keymint/keymint/internal/authz"
	"github.com/keymint/keymint/internal/recordkey"
	"github.com/keymint/keymint/internal/requester"
	"github.com/keymint/keymint/webhook/admission"
)

// RequesterWebhookName is the MutatingWebhookConfiguration RecordRequesters
// installs (config/webhook/mutating.yaml's name): pass it to the
// controllers (controllers.Options.RequesterWebhook) and to a keymint
// binary (--mutating-webhook-configuration).
const RequesterWebhookName = "mutating-webhook-configuration"

// RecordRequesters makes env's kube-apiserver call keymint's mutating
// webhook (config/webhook/mutating.yaml) for every ApiToken written, as in a
// cluster: the controllers mint only for a requester admission recorded.
// Call it before env.Start, and ServeRequesters after (or register
// admission.RequesterPath with a manager's webhook server on env's port).
func RecordRequesters(env *envtest.Environment) error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	env.WebhookInstallOptions.Paths = append(env.WebhookInstallOptions.Paths, filepath.Join(root, "config", "webhook", "mutating.yaml"))
	return nil
}

// ServeRequesters serves the requester webhook, signing with ring, on the
// address env's kube-apiserver calls, until ctx ends.
func ServeRequesters(ctx context.Context, env *envtest.Environment, ring *recordkey.Keyring) error {
	wh := env.WebhookInstallOptions
	srv := webhook.NewServer(webhook.Options{Host: wh.LocalServingHost, Port: wh.LocalServingPort, CertDir: wh.LocalServingCertDir})
	c, err := client.New(env.Config, client.Options{Scheme: Scheme})
	if err != nil {
		return err
	}
	srv.Register(admission.RequesterPath, admission.NewRequesterWebhook(Scheme, ring, requester.Webhook{Reader: c, Name: RequesterWebhookName},
		c, authz.SubjectAccessReviewer{Client: c}))
	errs := make(chan error, 1)
	go func() { errs <- srv.Start(ctx) }()
	return Poll(ctx, 30*time.Second, "the requester webhook to serve", func(context.Context) error {
		select {
		case err := <-errs:
			return Permanent(fmt.Errorf("serving the requester webhook: %w", err))
		default:
		}
		return srv.StartedChecker()(nil)
	})
}

// RecordKeySecret is where keymint keeps its record key by default
// (--record-key-secret): the environments Run and StartWithAPIServer start
// sign requester records with the key in it, as a keymint binary started
// against them would.
var RecordKeySecret = types.NamespacedName{Namespace: "keymint-system", Name: "keymint-record-key"}

// ClusterKeyring returns the keyring in RecordKeySecret, creating its
// namespace and the Secret as keymint does on first start.
func ClusterKeyring(ctx context.Context, c client.Client) (*recordkey.Keyring, error) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: RecordKeySecret.Namespace}}
	if err := c.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	return recordkey.LoadOrCreate(ctx, c, c, RecordKeySecret)
}

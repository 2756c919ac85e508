// Package servingcert gives keymint's HTTPS servers (token checks and
// admission webhooks) a certificate kube-apiserver and in-cluster clients
// trust, without cert-manager: open-policy-agent/cert-controller keeps a CA
// and a serving certificate for the keymint Service in a Secret, rotates
// them before they expire, writes them where the servers read them, and
// puts the CA into the webhook configuration's caBundle.
package servingcert

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/open-policy-agent/cert-controller/pkg/rotator"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
)

// Options say where the certificate lives and what it is for.
type Options struct {
	// Secret holds the CA and serving pair, in keymint's namespace.
	Secret types.NamespacedName
	// Service is the name of keymint's Service in that namespace: the
	// certificate names <service>.<namespace>.svc and its longer forms.
	Service string
	// WebhookConfiguration is the ValidatingWebhookConfiguration whose
	// caBundle gets the CA.
	WebhookConfiguration string
	// MutatingWebhookConfiguration is the MutatingWebhookConfiguration
	// (the requester record) whose caBundle gets the CA; empty: none.
	MutatingWebhookConfiguration string
	// Dir is where the Secret is mounted as a volume: the kubelet writes
	// tls.crt and tls.key there, and again after each rotation.
	Dir string
	// Timing overrides cert-controller's: the serving certificate lives a
	// year, is renewed 90 days before it expires, checked every 12 hours;
	// the CA lives ten years. Tests shorten them.
	Timing Timing
}

// Timing is how long certificates live and when they are renewed; zero
// fields keep cert-controller's defaults.
type Timing struct {
	CA, Server, RenewBefore, CheckEvery time.Duration
}

// CertFile and KeyFile are the files the servers read.
func (o Options) CertFile() string { return filepath.Join(o.Dir, "tls.crt") }
func (o Options) KeyFile() string  { return filepath.Join(o.Dir, "tls.key") }

// cert-controller's cache lists every configuration; keymint writes only its own.
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=validatingwebhookconfigurations,verbs=list;watch
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=validatingwebhookconfigurations,resourceNames=keymint-validating-webhook-configuration,verbs=get;update;patch
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingwebhookconfigurations,verbs=list;watch
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingwebhookconfigurations,resourceNames=keymint-mutating-webhook-configuration,verbs=get;update;patch

// webhooks lists the configurations whose caBundle gets the CA.
func webhooks(o Options) []rotator.WebhookInfo {
	out := []rotator.WebhookInfo{{Name: o.WebhookConfiguration, Type: rotator.Validating}}
	if o.MutatingWebhookConfiguration != "" {
		out = append(out, rotator.WebhookInfo{Name: o.MutatingWebhookConfiguration, Type: rotator.Mutating})
	}
	return out
}

// Setup adds the rotator to the manager, creating its Secret (empty) if it
// does not exist yet. The returned channel closes once the certificate files
// are in place and the CA is in the webhook configuration; the servers wait
// for it.
func Setup(ctx context.Context, mgr ctrl.Manager, o Options) (ready <-chan struct{}, err error) {
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: o.Secret.Namespace, Name: o.Secret.Name}}
	if err := mgr.GetClient().Create(ctx, sec); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("creating Secret %s for the serving certificates: %w", o.Secret, err)
	}
	ch := make(chan struct{})
	ns := o.Secret.Namespace
	err = rotator.AddRotator(mgr, &rotator.CertRotator{
		SecretKey:      o.Secret,
		CertDir:        o.Dir,
		CAName:         "keymint-ca",
		CAOrganization: "keymint",
		DNSName:        fmt.Sprintf("%s.%s.svc", o.Service, ns),
		ExtraDNSNames:  []string{o.Service, fmt.Sprintf("%s.%s", o.Service, ns), fmt.Sprintf("%s.%s.svc.cluster.local", o.Service, ns)},
		IsReady:        ch,
		Webhooks:       webhooks(o),
		// Every replica serves, so every replica needs the files.
		RequireLeaderElection:  false,
		CaCertDuration:         o.Timing.CA,
		ServerCertDuration:     o.Timing.Server,
		LookaheadInterval:      o.Timing.RenewBefore,
		RotationCheckFrequency: o.Timing.CheckEvery,
	})
	if err != nil {
		return nil, fmt.Errorf("setting up serving certificates: %w", err)
	}
	return ch, nil
}

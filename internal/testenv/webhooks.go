package testenv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/yaml"
)

// InstallWebhooks creates (or updates) config/webhook's admission webhook
// configurations, both named name, pointed at a keymint process serving its
// webhooks on https://127.0.0.1:port with the certificate caPEM signs: the
// mutating one that records who asks for each ApiToken and, with
// validating set, the validating ones. keymint then needs
// --mutating-webhook-configuration=name, and get on it.
func InstallWebhooks(ctx context.Context, cfg *rest.Config, name string, port int, caPEM []byte, validating bool) error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	c, err := client.New(cfg, client.Options{Scheme: Scheme})
	if err != nil {
		return err
	}
	point := func(cc *admissionregistrationv1.WebhookClientConfig) {
		url := fmt.Sprintf("https://127.0.0.1:%d%s", port, *cc.Service.Path)
		*cc = admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: caPEM}
	}
	mutating := &admissionregistrationv1.MutatingWebhookConfiguration{}
	if err := readManifest(filepath.Join(root, "config", "webhook", "mutating.yaml"), mutating); err != nil {
		return err
	}
	for i := range mutating.Webhooks {
		point(&mutating.Webhooks[i].ClientConfig)
	}
	stored := &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := controllerutil.CreateOrUpdate(ctx, c, stored, func() error {
		stored.Labels, stored.Webhooks = mutating.Labels, mutating.Webhooks
		return nil
	}); err != nil {
		return fmt.Errorf("installing the requester webhook: %w", err)
	}
	if !validating {
		return nil
	}
	v := &admissionregistrationv1.ValidatingWebhookConfiguration{}
	if err := readManifest(filepath.Join(root, "config", "webhook", "validating.yaml"), v); err != nil {
		return err
	}
	for i := range v.Webhooks {
		point(&v.Webhooks[i].ClientConfig)
	}
	storedV := &admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := controllerutil.CreateOrUpdate(ctx, c, storedV, func() error {
		storedV.Labels, storedV.Webhooks = v.Labels, v.Webhooks
		return nil
	}); err != nil {
		return fmt.Errorf("installing the validating webhooks: %w", err)
	}
	return nil
}

func readManifest(path string, into any) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := yaml.Unmarshal(raw, into); err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	return nil
}

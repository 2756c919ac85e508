package testenv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
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
	mutating.Name = name
	for i := range mutating.Webhooks {
		point(&mutating.Webhooks[i].ClientConfig)
	}
	if err := createOrReplace(ctx, c, mutating, &admissionregistrationv1.MutatingWebhookConfiguration{}, func(got client.Object) {
		got.(*admissionregistrationv1.MutatingWebhookConfiguration).Webhooks = mutating.Webhooks
	}); err != nil {
		return err
	}
	if !validating {
		return nil
	}
	v := &admissionregistrationv1.ValidatingWebhookConfiguration{}
	if err := readManifest(filepath.Join(root, "config", "webhook", "validating.yaml"), v); err != nil {
		return err
	}
	v.Name = name
	for i := range v.Webhooks {
		point(&v.Webhooks[i].ClientConfig)
	}
	return createOrReplace(ctx, c, v, &admissionregistrationv1.ValidatingWebhookConfiguration{}, func(got client.Object) {
		got.(*admissionregistrationv1.ValidatingWebhookConfiguration).Webhooks = v.Webhooks
	})
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

// createOrReplace creates want, or copies its webhooks (set) onto the
// stored object of that name.
func createOrReplace(ctx context.Context, c client.Client, want, got client.Object, set func(client.Object)) error {
	err := c.Get(ctx, client.ObjectKeyFromObject(want), got)
	if apierrors.IsNotFound(err) {
		if err := c.Create(ctx, want); err != nil {
			return fmt.Errorf("installing the admission webhooks: %w", err)
		}
		return nil
	}
	if err != nil {
		return err
	}
	set(got)
	if err := c.Update(ctx, got); err != nil {
		return fmt.Errorf("updating the admission webhooks: %w", err)
	}
	return nil
}

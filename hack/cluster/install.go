package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// keymint's release as the chart installs it.
const (
	keymintNamespace = "keymint-system"
	keymintRelease   = "keymint"
	keymintService   = "keymint-webhook"
	servingSecret    = "keymint-serving-certs"
)

// helmValues point the chart at the image built here, which cannot be pulled.
var helmValues = []string{
	"image.repository=" + strings.Split(keymintImage, ":")[0],
	"image.tag=" + strings.Split(keymintImage, ":")[1],
	"image.pullPolicy=Never",
}

// installKeymint installs the chart as a user would, then points
// kube-apiserver's token webhook at keymint's Service, trusting the CA that
// keymint created for its serving certificate.
func (c *cluster) installKeymint(ctx context.Context) error {
	c.step("installing keymint from %s with helm", c.chart)
	// As docs/helm.md says: keymint runs under the restricted Pod Security
	// level, which only a label on its namespace enforces.
	if err := c.kubectl(ctx, nil, "create", "namespace", keymintNamespace); err != nil {
		return err
	}
	if err := c.kubectl(ctx, nil, "label", "namespace", keymintNamespace, "pod-security.kubernetes.io/enforce=restricted"); err != nil {
		return err
	}
	args := []string{"install", keymintRelease, c.chart, "--kubeconfig", c.path("admin.kubeconfig"),
		"--namespace", keymintNamespace, "--wait", "--timeout", "5m"}
	for _, v := range helmValues {
		args = append(args, "--set", v)
	}
	if out, err := exec.CommandContext(ctx, c.helm, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("helm install: %v\n%s", err, out)
	}

	c.step("pointing kube-apiserver's token webhook at keymint's Service")
	var ca []byte
	if err := c.waitFor(ctx, "keymint's serving CA", time.Minute, func() error {
		out, err := c.kubectlOutput(ctx, "-n", keymintNamespace, "get", "secret", servingSecret, "-o", `jsonpath={.data.ca\.crt}`)
		if err != nil {
			return err
		}
		if ca, err = base64.StdEncoding.DecodeString(strings.TrimSpace(out)); err != nil || len(ca) == 0 {
			return errors.New("no ca.crt yet")
		}
		return nil
	}); err != nil {
		return err
	}
	ip, err := c.kubectlOutput(ctx, "-n", keymintNamespace, "get", "service", keymintService, "-o", "jsonpath={.spec.clusterIP}")
	if err != nil {
		return err
	}
	config := tokenWebhookConfig(strings.TrimSpace(ip), keymintService+"."+keymintNamespace+".svc", ca)
	if err := os.WriteFile(c.path("token-webhook.kubeconfig"), []byte(config), 0o600); err != nil {
		return err
	}
	if err := c.restartAPIServer(ctx, []string{
		"--authentication-token-webhook-config-file=" + c.path("token-webhook.kubeconfig"),
		"--authentication-token-webhook-version=v1",
		// keymint answers at once; kube-apiserver's own cache of 10 s for
		// successes still applies (docs/checks.md).
		"--authentication-token-webhook-cache-ttl=5s",
	}); err != nil {
		return err
	}
	// The leader may have lost its lease while kube-apiserver restarted and
	// exited, as it should; the cluster is ready once both replicas are.
	return c.kubectl(ctx, nil, "-n", keymintNamespace, "wait", "pods", "-l", "app.kubernetes.io/name=keymint",
		"--for=condition=Ready", "--timeout=3m")
}

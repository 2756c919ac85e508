package helm

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/keymint/keymint/internal/testenv"
)

// TestServerDryRun pipes helm template to kubectl apply --dry-run=server
// against a real kube-apiserver: every object must pass its schema,
// defaulting and validation (the CRDs' structural schemas and CEL rules,
// the webhook configuration's matchConditions, the Deployment's pod spec).
//
// The control plane starts without keymint's CRDs, so the chart's CRDs are
// validated as new ones. Objects of cert-manager and prometheus-operator
// kinds need their CRDs to exist: testdata/crds holds stand-ins
// (testdata/crds/README.md). A dry run does not create the release
// namespace, and namespaced objects need it, so it is created for real.
func TestServerDryRun(t *testing.T) {
	_, _ = tools(t)
	assets, err := testenv.AssetsDir()
	if err != nil {
		t.Fatal(err)
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{filepath.Join("testdata", "crds")},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := testenv.WriteKubeconfig(cfg, kubeconfig); err != nil {
		t.Fatal(err)
	}

	cases := map[string]struct {
		namespace string
		args      []string
		// want are objects the dry run must report, as kind/name.
		want []string
		// wantErr, when set, is part of the error kube-apiserver must give.
		wantErr string
		// notes are lines helm install's NOTES must have.
		notes []string
	}{
		"defaults": {
			namespace: "keymint-system",
			want: []string{
				"customresourcedefinition.apiextensions.k8s.io/apitokens.keymint.io",
				"customresourcedefinition.apiextensions.k8s.io/serviceusers.keymint.io",
				"deployment.apps/keymint-manager",
				"validatingwebhookconfiguration.admissionregistration.k8s.io/keymint-validating-webhook-configuration",
				"mutatingwebhookconfiguration.admissionregistration.k8s.io/keymint-mutating-webhook-configuration",
				"clusterrole.rbac.authorization.k8s.io/keymint-manager-role",
				"poddisruptionbudget.policy/keymint-manager",
				"networkpolicy.networking.k8s.io/keymint-allow-webhook-traffic",
				"networkpolicy.networking.k8s.io/keymint-allow-check-traffic",
				"networkpolicy.networking.k8s.io/keymint-allow-metrics-traffic",
			},
		},
		"cert-manager and ServiceMonitor, another namespace": {
			namespace: "tokens",
			args:      []string{"--values", filepath.Join("testdata", "values", "cert-manager.yaml")},
			want: []string{
				"certificate.cert-manager.io/keymint-check",
				"issuer.cert-manager.io/keymint-selfsigned",
				"servicemonitor.monitoring.coreos.com/keymint-metrics",
				"deployment.apps/keymint-manager",
			},
		},
		"one replica, plain metrics, scheduling values, narrowed NetworkPolicies": {
			namespace: "keymint",
			args:      []string{"--values", filepath.Join("testdata", "values", "small.yaml")},
			want: []string{"deployment.apps/keymint-manager", "service/keymint-webhook",
				"networkpolicy.networking.k8s.io/keymint-allow-webhook-traffic", "networkpolicy.networking.k8s.io/keymint-allow-metrics-traffic"},
		},
		"leak reports in both forms behind an Ingress": {
			namespace: "leaks",
			args:      []string{"--values", filepath.Join("testdata", "values", "leak-reports.yaml")},
			want:      []string{"deployment.apps/keymint-manager", "ingress.networking.k8s.io/keymint-leak-reports"},
			notes: []string{
				"https://keymint-webhook.leaks.svc/credentials/revoke",
				"Secret keymint-leak-report-gitlab (key token), which must exist before the pods can start",
				"Ingress keymint-leak-reports routes only those paths of keymint.example.com",
			},
		},
		// The schema leaves quantities to kube-apiserver, which must
		// refuse them: the dry run is what catches this.
		"a bad quantity is refused": {
			namespace: "refused",
			args:      []string{"--set", "resources.requests.cpu=lots"},
			wantErr:   "quantities must match",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: tc.namespace}}
			if err := c.Create(context.Background(), ns); err != nil {
				t.Fatal(err)
			}
			manifest := template(t, tc.namespace, tc.args...)
			// Everything must land in the release namespace (or be
			// cluster-wide): nothing may still name the kustomize one.
			if tc.namespace != "keymint-system" && strings.Contains(string(manifest), "keymint-system") {
				t.Errorf("rendered for namespace %s, the chart still names keymint-system", tc.namespace)
			}
			out, err := command(t, manifest, "kubectl", "--kubeconfig", kubeconfig, "apply", "--dry-run=server", "-f", "-")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("kubectl apply --dry-run=server: want an error with %q, got %v:\n%s", tc.wantErr, err, out)
				}
				return
			}
			if err != nil {
				t.Fatalf("kubectl apply --dry-run=server refused the chart: %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w+" created (server dry run)") {
					t.Errorf("dry run did not create %s:\n%s", w, out)
				}
			}

			// helm install renders NOTES.txt, which helm template leaves
			// out: the first commands a user runs must name the release
			// namespace.
			_, helm := tools(t)
			install := append([]string{"install", "keymint", chartPath(t), "--kubeconfig", kubeconfig,
				"--namespace", tc.namespace, "--dry-run=server"}, tc.args...)
			notes, err := command(t, nil, helm, install...)
			if err != nil {
				t.Fatalf("helm install --dry-run=server: %v", err)
			}
			if want := "kubectl -n " + tc.namespace + " rollout status deployment/keymint-manager"; !strings.Contains(string(notes), want) {
				t.Errorf("NOTES lack %q:\n%s", want, notes)
			}
			for _, want := range tc.notes {
				if !strings.Contains(string(notes), want) {
					t.Errorf("NOTES lack %q:\n%s", want, notes)
				}
			}
			if testing.Verbose() {
				t.Logf("helm install --dry-run=server NOTES:\n%s", notes[strings.Index(string(notes), "NOTES:"):])
			}
		})
	}
}

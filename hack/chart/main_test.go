package main

import (
	"bytes"
	"strings"
	"testing"
	"text/template"

	"sigs.k8s.io/yaml"
)

// execute renders one generated template as Helm would, with stand-ins for
// Helm's include and nindent, and decodes the object (nil if none renders).
func execute(t *testing.T, text []byte, values map[string]any) map[string]any {
	t.Helper()
	tmpl, err := template.New("t").Funcs(template.FuncMap{
		"include": func(string, any) string { return "helm.sh/chart: keymint-0.1.0" },
		"nindent": func(n int, s string) string { return "\n" + strings.Repeat(" ", n) + s },
	}).Parse(string(text))
	if err != nil {
		t.Fatalf("%v in\n%s", err, text)
	}
	var out bytes.Buffer
	if err := tmpl.Execute(&out, map[string]any{"Values": values, "Release": map[string]any{"Namespace": "tokens"}}); err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	if err := yaml.Unmarshal(out.Bytes(), &obj); err != nil {
		t.Fatalf("%v in\n%s", err, out.Bytes())
	}
	return obj
}

func generate(t *testing.T, doc string) []byte {
	t.Helper()
	var obj map[string]any
	if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
		t.Fatal(err)
	}
	tgt, ok := place(str(obj, "kind"), str(obj, "metadata", "name"))
	if !ok {
		t.Fatalf("%s is not generated", str(obj, "kind"))
	}
	text, err := render(obj, tgt)
	if err != nil {
		t.Fatal(err)
	}
	return text
}

func TestRender(t *testing.T) {
	crd := generate(t, `
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: apitokens.keymint.io
  annotations: {controller-gen.kubebuilder.io/version: v0.21.0}
spec:
  description: 'Not a template: {{ .Values.x }} and }} stay as written.'
`)
	on := execute(t, crd, map[string]any{"crd": map[string]any{"enable": true, "keep": true}})
	if got := str(on, "spec", "description"); got != "Not a template: {{ .Values.x }} and }} stay as written." {
		t.Errorf("description %q", got)
	}
	if str(on, "metadata", "annotations", "helm.sh/resource-policy") != "keep" || str(on, "metadata", "annotations", "controller-gen.kubebuilder.io/version") != "v0.21.0" {
		t.Errorf("annotations %v", lookup(on, "metadata", "annotations"))
	}
	if str(on, "metadata", "labels", "helm.sh/chart") == "" {
		t.Errorf("no Helm labels: %v", lookup(on, "metadata", "labels"))
	}
	if notKept := execute(t, crd, map[string]any{"crd": map[string]any{"enable": true, "keep": false}}); lookup(notKept, "metadata", "annotations", "helm.sh/resource-policy") != nil {
		t.Error("resource-policy with crd.keep false")
	}
	if off := execute(t, crd, map[string]any{"crd": map[string]any{"enable": false}}); off != nil {
		t.Errorf("a CRD with crd.enable false: %v", off)
	}

	binding := execute(t, generate(t, `
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: keymint-leader-election, namespace: keymint-system, labels: {app.kubernetes.io/name: keymint}}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: keymint-leader-election}
subjects: [{kind: ServiceAccount, name: keymint-manager, namespace: keymint-system}]
`), nil)
	if str(binding, "metadata", "namespace") != "tokens" || str(binding["subjects"].([]any)[0], "namespace") != "tokens" {
		t.Errorf("namespaces not the release's: %v", binding)
	}
	if str(binding, "metadata", "labels", "app.kubernetes.io/name") != "keymint" {
		t.Errorf("config/'s labels lost: %v", lookup(binding, "metadata", "labels"))
	}

	hook := generate(t, `
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: keymint-validating-webhook-configuration}
webhooks: [{name: apitokens.keymint.io, clientConfig: {service: {name: keymint-webhook, namespace: keymint-system}}}]
`)
	self := execute(t, hook, map[string]any{"certs": map[string]any{"source": "self-managed"}})
	if lookup(self, "metadata", "annotations") != nil {
		t.Errorf("annotations with self-managed certificates: %v", lookup(self, "metadata", "annotations"))
	}
	if str(self["webhooks"].([]any)[0], "clientConfig", "service", "namespace") != "tokens" {
		t.Error("the webhook calls a Service outside the release namespace")
	}
	cm := execute(t, hook, map[string]any{"certs": map[string]any{"source": "cert-manager"}})
	if got := str(cm, "metadata", "annotations", "cert-manager.io/inject-ca-from"); got != "tokens/keymint-check" {
		t.Errorf("inject-ca-from %q", got)
	}
}

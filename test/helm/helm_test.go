// Package helm tests the Helm chart in dist/chart with the real helm and
// kubectl binaries: it lints, its values schema refuses bad values, it
// renders objects kube-apiserver accepts (dry_run_test.go), and it renders
// the objects config/default builds (drift_test.go).
package helm

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/keymint/keymint/internal/testenv"
)

// tools finds the repository root and the helm binary make helm installs
// (HELM overrides it).
func tools(t *testing.T) (root, helm string) {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	helm = os.Getenv("HELM")
	if helm == "" {
		helm = filepath.Join(root, "bin", "helm")
	}
	if _, err := os.Stat(helm); err != nil {
		t.Fatalf("no helm binary at %s: run make helm (make test does)", helm)
	}
	return root, helm
}

// command runs a binary and returns its output; stderr is returned with the
// error.
func command(t *testing.T, stdin []byte, name string, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, errors.New(err.Error() + ": " + stderr.String() + string(out))
	}
	return out, nil
}

// template renders the chart as release keymint in namespace ns.
func template(t *testing.T, ns string, args ...string) []byte {
	t.Helper()
	root, helm := tools(t)
	args = append([]string{"template", "keymint", filepath.Join(root, "dist", "chart"), "--namespace", ns}, args...)
	out, err := command(t, nil, helm, args...)
	if err != nil {
		t.Fatalf("helm %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// object is one Kubernetes object, as decoded JSON.
type object = map[string]any

// decode splits a YAML stream into objects.
func decode(t *testing.T, stream []byte) []object {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(stream)))
	var objs []object
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs
		}
		if err != nil {
			t.Fatal(err)
		}
		var obj object
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			t.Fatalf("%v in\n%s", err, doc)
		}
		if len(obj) > 0 {
			objs = append(objs, obj)
		}
	}
}

func get(v any, path ...string) any {
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

func str(v any, path ...string) string { s, _ := get(v, path...).(string); return s }

// find returns the object of that kind and name, or nil.
func find(objs []object, kind, name string) object {
	for _, o := range objs {
		if str(o, "kind") == kind && str(o, "metadata", "name") == name {
			return o
		}
	}
	return nil
}

func chartPath(t *testing.T) string {
	root, _ := tools(t)
	return filepath.Join(root, "dist", "chart")
}

func TestLint(t *testing.T) {
	_, helm := tools(t)
	for _, values := range []string{"", "testdata/values/cert-manager.yaml", "testdata/values/small.yaml", "testdata/values/leak-reports.yaml"} {
		for _, strict := range []bool{false, true} {
			args := []string{"lint", chartPath(t)}
			if values != "" {
				args = append(args, "--values", values)
			}
			if strict {
				args = append(args, "--strict")
			}
			out, err := command(t, nil, helm, args...)
			if err != nil {
				t.Errorf("helm %s failed: %v", strings.Join(args, " "), err)
				continue
			}
			if !strings.Contains(string(out), "0 chart(s) failed") {
				t.Errorf("helm %s: no success line in\n%s", strings.Join(args, " "), out)
			}
		}
	}
}

// TestSchemaRefusesBadValues: each bad values file fails helm lint and
// helm template, with an error naming the offending value.
func TestSchemaRefusesBadValues(t *testing.T) {
	_, helm := tools(t)
	cases := map[string]string{
		"replicas-zero.yaml":              "/replicas",
		"cert-source.yaml":                "/certs/source",
		"unknown-key.yaml":                "replica",
		"metrics-secure-string.yaml":      "/metrics/secure",
		"log-level.yaml":                  "/logLevel",
		"rate-zero.yaml":                  "/defaultRequestsPerMinute",
		"issuer-kind.yaml":                "/certs/certManager/issuerRef/kind",
		"network-policy-peer.yaml":        "/networkPolicy/webhook/from/0",
		"leak-rate-zero.yaml":             "/leakReports/requestsPerMinute",
		"leak-client-rate-string.yaml":    "/leakReports/clientRequestsPerMinute",
		"leak-reports-enabled.yaml":       "'enabled' not allowed",
		"leak-gitlab-secret.yaml":         "/leakReports/gitlab/tokenSecret",
		"trusted-proxy-cidr.yaml":         "/trustedProxyCIDRs/1",
		"trusted-proxy-cidrs-string.yaml": "/trustedProxyCIDRs",
	}
	for file, want := range cases {
		t.Run(file, func(t *testing.T) {
			values := filepath.Join("testdata", "bad", file)
			for _, verb := range []string{"lint", "template"} {
				out, err := command(t, nil, helm, verb, chartPath(t), "--values", values)
				if err == nil {
					t.Fatalf("helm %s accepted %s:\n%s", verb, file, out)
				}
				if !strings.Contains(err.Error(), "schema") || !strings.Contains(err.Error(), want) {
					t.Errorf("helm %s refused %s without naming %q in a schema error: %v", verb, file, want, err)
				}
			}
		})
	}
}

// TestIngressNeedsTrustedProxies: an Ingress for the leak reports without
// trustedProxyCIDRs would put every reporter in one client's budget; the
// chart refuses it, saying what to set.
func TestIngressNeedsTrustedProxies(t *testing.T) {
	_, helm := tools(t)
	out, err := command(t, nil, helm, "template", chartPath(t), "--set", "leakReports.enable=true", "--set", "leakReports.ingress.enable=true")
	if err == nil {
		t.Fatalf("helm template rendered an Ingress without trustedProxyCIDRs:\n%s", out)
	}
	if !strings.Contains(err.Error(), "leakReports.ingress.enable needs trustedProxyCIDRs") {
		t.Errorf("the refusal does not say what to set: %v", err)
	}
}

// TestValues renders the chart with values a user sets and checks what they
// change in the manager's Deployment and around it.
func TestValues(t *testing.T) {
	args := func(objs []object) []string {
		d := find(objs, "Deployment", "keymint-manager")
		var out []string
		for _, a := range get(d, "spec", "template", "spec", "containers").([]any)[0].(map[string]any)["args"].([]any) {
			out = append(out, a.(string))
		}
		return out
	}
	container := func(objs []object) map[string]any {
		return get(find(objs, "Deployment", "keymint-manager"), "spec", "template", "spec", "containers").([]any)[0].(map[string]any)
	}
	// leakArgs are the args of the leak report flags.
	leakArgs := func(objs []object) []string {
		var out []string
		for _, a := range args(objs) {
			if strings.HasPrefix(a, "--leak-report") || strings.HasPrefix(a, "--trusted-proxy-cidrs") {
				out = append(out, a)
			}
		}
		return out
	}
	// ingressPaths returns the leak report Ingress's paths, failing on one
	// that is not Exact or not to the check server's Service port.
	ingressPaths := func(t *testing.T, ing object) []string {
		t.Helper()
		var paths []string
		for _, rule := range get(ing, "spec", "rules").([]any) {
			for _, p := range get(rule, "http", "paths").([]any) {
				if str(p, "pathType") != "Exact" {
					t.Errorf("path %s is %s: only the leak report paths may reach the check server, not what they prefix", str(p, "path"), str(p, "pathType"))
				}
				if svc := get(p, "backend", "service"); str(svc, "name") != "keymint-webhook" || str(svc, "port", "name") != "check" {
					t.Errorf("path %s goes to %v, want port check of Service keymint-webhook", str(p, "path"), svc)
				}
				paths = append(paths, str(p, "path"))
			}
		}
		return paths
	}
	servicePorts := func(objs []object) []string {
		var names []string
		for _, p := range get(find(objs, "Service", "keymint-webhook"), "spec", "ports").([]any) {
			names = append(names, str(p, "name"))
		}
		return names
	}
	// policies maps each NetworkPolicy's allowed pod port to the sources
	// its rule names (nil: any source), and fails on a policy that does not
	// select exactly the manager's pods.
	policies := func(t *testing.T, objs []object) map[float64][]any {
		t.Helper()
		pods := get(find(objs, "Deployment", "keymint-manager"), "spec", "template", "metadata", "labels")
		out := map[float64][]any{}
		for _, o := range objs {
			if str(o, "kind") != "NetworkPolicy" {
				continue
			}
			if sel := get(o, "spec", "podSelector", "matchLabels"); fmt.Sprint(sel) != fmt.Sprint(pods) {
				t.Errorf("NetworkPolicy %s selects %v, the manager's pods are %v", str(o, "metadata", "name"), sel, pods)
			}
			if types := fmt.Sprint(get(o, "spec", "policyTypes")); types != "[Ingress]" {
				t.Errorf("NetworkPolicy %s has policyTypes %s: egress (kube-apiserver, Redis) must stay open", str(o, "metadata", "name"), types)
			}
			for _, rule := range get(o, "spec", "ingress").([]any) {
				from, _ := get(rule, "from").([]any)
				for _, p := range get(rule, "ports").([]any) {
					out[get(p, "port").(float64)] = from
				}
			}
		}
		return out
	}
	cases := map[string]struct {
		set   []string
		check func(t *testing.T, objs []object)
	}{
		"defaults: two replicas, leader election, self-managed certs, secure metrics": {
			check: func(t *testing.T, objs []object) {
				a := args(objs)
				for _, want := range []string{"--leader-elect", "--self-managed-certs", "--metrics-bind-address=:8080"} {
					if !slices.Contains(a, want) {
						t.Errorf("args %q lack %s", a, want)
					}
				}
				for _, kind := range []string{"PodDisruptionBudget/keymint-manager", "ClusterRole/keymint-metrics-reader"} {
					k, n, _ := strings.Cut(kind, "/")
					if find(objs, k, n) == nil {
						t.Errorf("no %s", kind)
					}
				}
				if find(objs, "Certificate", "keymint-check") != nil || find(objs, "ServiceMonitor", "keymint-metrics") != nil {
					t.Error("cert-manager or prometheus-operator objects rendered by default")
				}
				for _, crd := range []string{"apitokens.keymint.io", "serviceusers.keymint.io"} {
					if str(find(objs, "CustomResourceDefinition", crd), "metadata", "annotations", "helm.sh/resource-policy") != "keep" {
						t.Errorf("CRD %s is not kept on uninstall", crd)
					}
				}
				img := get(find(objs, "Deployment", "keymint-manager"), "spec", "template", "spec", "containers").([]any)[0]
				if got := str(img, "image"); got != "ghcr.io/keymint/keymint:latest" {
					t.Errorf("image %s, want the appVersion tag", got)
				}
			},
		},
		"NetworkPolicies: webhook and check ports open to kube-apiserver, metrics to labelled namespaces": {
			check: func(t *testing.T, objs []object) {
				allowed := policies(t, objs)
				// Every port the manager serves has a rule, but the
				// probes', which only the pod's own node (the kubelet)
				// reaches, and no policy can block that.
				for _, p := range get(find(objs, "Deployment", "keymint-manager"), "spec", "template", "spec", "containers").([]any)[0].(map[string]any)["ports"].([]any) {
					port, name := get(p, "containerPort").(float64), str(p, "name")
					if _, ok := allowed[port]; ok == (name == "probes") {
						t.Errorf("container port %s (%v): allowed by a NetworkPolicy %v, want every port but the probes'", name, port, ok)
					}
				}
				for _, port := range []float64{9443, 8443} {
					if from, ok := allowed[port]; !ok || from != nil {
						t.Errorf("port %v: allowed %v from %v; want any source (kube-apiserver is not a pod)", port, ok, from)
					}
				}
				if got := fmt.Sprint(allowed[8080]); got != "[map[namespaceSelector:map[matchLabels:map[metrics:enabled]]]]" {
					t.Errorf("metrics port allowed from %s, want namespaces labelled metrics: enabled", got)
				}
			},
		},
		"NetworkPolicies: the webhook port from the control plane only, metrics from one namespace": {
			set: []string{
				"networkPolicy.webhook.from[0].ipBlock.cidr=10.0.0.0/24",
				"networkPolicy.metrics.from[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring",
			},
			check: func(t *testing.T, objs []object) {
				allowed := policies(t, objs)
				if got := fmt.Sprint(allowed[9443]); got != "[map[ipBlock:map[cidr:10.0.0.0/24]]]" {
					t.Errorf("webhook port allowed from %s", got)
				}
				if got := fmt.Sprint(allowed[8080]); got != "[map[namespaceSelector:map[matchLabels:map[kubernetes.io/metadata.name:monitoring]]]]" {
					t.Errorf("metrics port allowed from %s", got)
				}
				if from, ok := allowed[8443]; !ok || from != nil {
					t.Errorf("check port allowed %v from %v, want any source", ok, from)
				}
			},
		},
		"no NetworkPolicies": {
			set: []string{"networkPolicy.enable=false"},
			check: func(t *testing.T, objs []object) {
				if n := len(policies(t, objs)); n != 0 {
					t.Errorf("%d ports in NetworkPolicies with networkPolicy.enable=false", n)
				}
			},
		},
		"one replica without leader election has no PDB": {
			set: []string{"replicas=1", "leaderElection.enable=false"},
			check: func(t *testing.T, objs []object) {
				if slices.Contains(args(objs), "--leader-elect") {
					t.Error("--leader-elect with one replica and leader election off")
				}
				if find(objs, "PodDisruptionBudget", "keymint-manager") != nil {
					t.Error("a PDB with minAvailable 1 for one replica blocks every drain")
				}
			},
		},
		"several replicas force leader election": {
			set: []string{"replicas=3", "leaderElection.enable=false"},
			check: func(t *testing.T, objs []object) {
				if !slices.Contains(args(objs), "--leader-elect") {
					t.Error("three replicas without --leader-elect would all run the controllers")
				}
			},
		},
		"rate limits shared in Redis, the URL from a Secret": {
			set: []string{"rateLimit.backend=redis", "rateLimit.redisURLSecret.name=keymint-redis", "rateLimit.redisFailure=closed"},
			check: func(t *testing.T, objs []object) {
				a := args(objs)
				for _, want := range []string{"--rate-limit-backend=redis", "--rate-limit-redis-failure=closed"} {
					if !slices.Contains(a, want) {
						t.Errorf("args %q lack %s", a, want)
					}
				}
				for _, arg := range a {
					if strings.HasPrefix(arg, "--redis-url") {
						t.Errorf("the Redis URL is in the arguments (%s): a password in it would show in the process list", arg)
					}
				}
				c := get(find(objs, "Deployment", "keymint-manager"), "spec", "template", "spec", "containers").([]any)[0]
				found := false
				for _, e := range c.(map[string]any)["env"].([]any) {
					if str(e, "name") == "KEYMINT_REDIS_URL" {
						found = str(e, "valueFrom", "secretKeyRef", "name") == "keymint-redis" && str(e, "valueFrom", "secretKeyRef", "key") == "url"
					}
				}
				if !found {
					t.Error("no KEYMINT_REDIS_URL from Secret keymint-redis, key url")
				}
			},
		},
		"the alerts as a PrometheusRule, as config/prometheus has them": {
			set: []string{"prometheusRule.enable=true"},
			check: func(t *testing.T, objs []object) {
				rule := find(objs, "PrometheusRule", "keymint-alerts")
				if rule == nil {
					t.Fatal("no PrometheusRule keymint-alerts")
				}
				if ns := str(rule, "metadata", "namespace"); ns != "tokens" {
					t.Errorf("PrometheusRule in namespace %q, want the release's", ns)
				}
				text := fmt.Sprint(get(rule, "spec", "groups"))
				for _, want := range []string{"KeymintApiTokenExpiringSoon", "{{ $labels.namespace }}", "keymint_apitoken_expiration_timestamp_seconds"} {
					if !strings.Contains(text, want) {
						t.Errorf("the rules lack %q: Prometheus's own templates must reach it as written", want)
					}
				}
			},
		},
		"a ServiceMonitor the alerts and dashboard match": {
			set: []string{"serviceMonitor.enable=true"},
			check: func(t *testing.T, objs []object) {
				sm := find(objs, "ServiceMonitor", "keymint-metrics")
				if str(sm, "spec", "jobLabel") != "app.kubernetes.io/name" {
					t.Error("jobLabel is not app.kubernetes.io/name: the alerts' job=\"keymint\" would not match")
				}
				if ep := get(sm, "spec", "endpoints").([]any)[0]; ep.(map[string]any)["honorLabels"] != true {
					t.Error("honorLabels is not true: token series would lose their namespace label")
				}
			},
		},
		"metrics off": {
			set: []string{"metrics.enable=false", "serviceMonitor.enable=true"},
			check: func(t *testing.T, objs []object) {
				if !slices.Contains(args(objs), "--metrics-bind-address=0") {
					t.Errorf("args %q do not turn metrics off", args(objs))
				}
				if slices.Contains(servicePorts(objs), "metrics") {
					t.Error("Service keeps a metrics port")
				}
				if find(objs, "ServiceMonitor", "keymint-metrics") != nil || find(objs, "ClusterRole", "keymint-metrics-reader") != nil {
					t.Error("ServiceMonitor or metrics-reader role for metrics that are off")
				}
				if find(objs, "NetworkPolicy", "keymint-allow-metrics-traffic") != nil {
					t.Error("a NetworkPolicy opening the metrics port while metrics are off")
				}
			},
		},
		"rate, log level, plain metrics and extra args": {
			set: []string{"defaultRequestsPerMinute=60", "logLevel=debug", "metrics.secure=false", "extraArgs={--max-index-staleness=30s}"},
			check: func(t *testing.T, objs []object) {
				a := args(objs)
				for _, want := range []string{"--default-requests-per-minute=60", "--zap-log-level=debug", "--metrics-secure=false", "--max-index-staleness=30s"} {
					if !slices.Contains(a, want) {
						t.Errorf("args %q lack %s", a, want)
					}
				}
				if find(objs, "ClusterRole", "keymint-metrics-reader") != nil {
					t.Error("metrics-reader role for plain-HTTP metrics")
				}
			},
		},
		"cert-manager with an issuer of the user's": {
			set: []string{"certs.source=cert-manager", "certs.certManager.issuerRef.name=corp-ca", "certs.certManager.issuerRef.kind=ClusterIssuer"},
			check: func(t *testing.T, objs []object) {
				a := args(objs)
				if slices.Contains(a, "--self-managed-certs") || !slices.Contains(a, "--check-tls-cert-file=/etc/keymint/tls/tls.crt") {
					t.Errorf("args %q do not use cert-manager's certificate", a)
				}
				if find(objs, "Issuer", "keymint-selfsigned") != nil {
					t.Error("a self-signed Issuer besides the user's")
				}
				ref := get(find(objs, "Certificate", "keymint-check"), "spec", "issuerRef")
				if str(ref, "name") != "corp-ca" || str(ref, "kind") != "ClusterIssuer" {
					t.Errorf("Certificate issuerRef %v", ref)
				}
				for kind, name := range map[string]string{
					"ValidatingWebhookConfiguration": "keymint-validating-webhook-configuration",
					"MutatingWebhookConfiguration":   "keymint-mutating-webhook-configuration",
				} {
					hook := find(objs, kind, name)
					if got := str(hook, "metadata", "annotations", "cert-manager.io/inject-ca-from"); got != "tokens/keymint-check" {
						t.Errorf("%s's inject-ca-from is %q", kind, got)
					}
				}
			},
		},
		"leak reports off by default": {
			check: func(t *testing.T, objs []object) {
				if a := leakArgs(objs); a != nil {
					t.Errorf("leak report flags %q by default", a)
				}
				if find(objs, "Ingress", "keymint-leak-reports") != nil {
					t.Error("a leak report Ingress by default")
				}
				if strings.Contains(fmt.Sprint(container(objs)["volumeMounts"]), "leak-report") {
					t.Errorf("a leak report mount by default: %v", container(objs)["volumeMounts"])
				}
			},
		},
		"leak reports, GitHub's form only, with an Ingress": {
			set: []string{"leakReports.enable=true", "leakReports.ingress.enable=true", "trustedProxyCIDRs={10.244.1.7/32}"},
			check: func(t *testing.T, objs []object) {
				want := []string{"--leak-reports", "--leak-report-requests-per-minute=600", "--leak-report-client-requests-per-minute=10", "--trusted-proxy-cidrs=10.244.1.7/32"}
				if a := leakArgs(objs); !slices.Equal(a, want) {
					t.Errorf("leak report args %q, want %q", a, want)
				}
				ing := find(objs, "Ingress", "keymint-leak-reports")
				if ing == nil {
					t.Fatal("no Ingress keymint-leak-reports")
				}
				// The GitLab endpoints are off: nothing routes to them.
				if paths := ingressPaths(t, ing); !slices.Equal(paths, []string{"/credentials/revoke"}) {
					t.Errorf("Ingress paths %q, want /credentials/revoke only", paths)
				}
				if host := str(get(ing, "spec", "rules").([]any)[0], "host"); host != "" {
					t.Errorf("Ingress host %q, want none", host)
				}
			},
		},
		"leak reports in both forms, behind a trusted Ingress": {
			set: []string{"leakReports.enable=true", "leakReports.gitlab.tokenSecret=gitlab-revocation", "leakReports.requestsPerMinute=1200",
				"leakReports.clientRequestsPerMinute=5", "trustedProxyCIDRs={10.244.0.0/16,fd00:10:244::/56}",
				"leakReports.ingress.enable=true", "leakReports.ingress.className=nginx", "leakReports.ingress.host=keymint.example.com",
				"leakReports.ingress.annotations.nginx\\.ingress\\.kubernetes\\.io/backend-protocol=HTTPS",
				"leakReports.ingress.tls[0].hosts[0]=keymint.example.com", "leakReports.ingress.tls[0].secretName=keymint-example-tls"},
			check: func(t *testing.T, objs []object) {
				const file = "/etc/keymint/leak-report-gitlab/token"
				want := []string{"--leak-reports", "--leak-report-requests-per-minute=1200", "--leak-report-client-requests-per-minute=5",
					"--leak-report-gitlab-token-file=" + file, "--trusted-proxy-cidrs=10.244.0.0/16,fd00:10:244::/56"}
				if a := leakArgs(objs); !slices.Equal(a, want) {
					t.Errorf("leak report args %q, want %q", a, want)
				}
				// The file the flag names is key token of the Secret,
				// mounted read-only, whole: a subPath mount would never
				// see the token change.
				var mount any
				for _, m := range container(objs)["volumeMounts"].([]any) {
					if str(m, "name") == "leak-report-gitlab" {
						mount = m
					}
				}
				if str(mount, "mountPath") != filepath.Dir(file) || get(mount, "readOnly") != true || get(mount, "subPath") != nil {
					t.Errorf("the GitLab token mount is %v, want %s read-only, no subPath", mount, filepath.Dir(file))
				}
				var volume any
				for _, v := range get(find(objs, "Deployment", "keymint-manager"), "spec", "template", "spec", "volumes").([]any) {
					if str(v, "name") == "leak-report-gitlab" {
						volume = v
					}
				}
				if got := fmt.Sprint(get(volume, "secret")); got != "map[items:[map[key:token path:token]] secretName:gitlab-revocation]" {
					t.Errorf("the GitLab token volume is %s, want key token of Secret gitlab-revocation as file token", got)
				}

				ing := find(objs, "Ingress", "keymint-leak-reports")
				if ing == nil {
					t.Fatal("no Ingress keymint-leak-reports")
				}
				if paths := ingressPaths(t, ing); !slices.Equal(paths, []string{"/credentials/revoke", "/v1/revocable_token_types", "/v1/revoke_tokens"}) {
					t.Errorf("Ingress paths %q", paths)
				}
				if str(ing, "metadata", "namespace") != "tokens" || str(ing, "spec", "ingressClassName") != "nginx" ||
					str(get(ing, "spec", "rules").([]any)[0], "host") != "keymint.example.com" ||
					str(ing, "metadata", "annotations", "nginx.ingress.kubernetes.io/backend-protocol") != "HTTPS" ||
					fmt.Sprint(get(ing, "spec", "tls")) != "[map[hosts:[keymint.example.com] secretName:keymint-example-tls]]" {
					t.Errorf("Ingress %v", ing)
				}
			},
		},
		"no Ingress while leak reports are off; trusted proxies still passed": {
			set: []string{"leakReports.ingress.enable=true", "leakReports.gitlab.tokenSecret=gitlab-revocation", "trustedProxyCIDRs={10.244.0.0/16}"},
			check: func(t *testing.T, objs []object) {
				if find(objs, "Ingress", "keymint-leak-reports") != nil {
					t.Error("an Ingress to leak report endpoints keymint does not serve")
				}
				if a := leakArgs(objs); !slices.Equal(a, []string{"--trusted-proxy-cidrs=10.244.0.0/16"}) {
					t.Errorf("args %q, want --trusted-proxy-cidrs only", a)
				}
				if strings.Contains(fmt.Sprint(container(objs)["volumeMounts"]), "leak-report") {
					t.Error("the GitLab token mounted while leak reports are off")
				}
			},
		},
		"CRDs not kept on uninstall": {
			set: []string{"crd.keep=false"},
			check: func(t *testing.T, objs []object) {
				if ann := get(find(objs, "CustomResourceDefinition", "apitokens.keymint.io"), "metadata", "annotations", "helm.sh/resource-policy"); ann != nil {
					t.Errorf("resource-policy %v with crd.keep=false", ann)
				}
			},
		},
		"no CRDs": {
			set: []string{"crd.enable=false"},
			check: func(t *testing.T, objs []object) {
				for _, o := range objs {
					if str(o, "kind") == "CustomResourceDefinition" {
						t.Errorf("CRD %s with crd.enable=false", str(o, "metadata", "name"))
					}
				}
			},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			var flags []string
			for _, s := range tc.set {
				flags = append(flags, "--set", s)
			}
			tc.check(t, decode(t, template(t, "tokens", flags...)))
		})
	}
}

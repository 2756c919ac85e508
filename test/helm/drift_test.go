package helm

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// helmOnly are the labels and annotations the chart adds to config/'s
// objects; nothing else may differ.
var (
	helmLabels      = []string{"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "app.kubernetes.io/version"}
	helmAnnotations = []string{"helm.sh/resource-policy"}
)

// TestChartMatchesKustomize renders the chart with values equivalent to a
// kustomize install and requires the same objects (kind, name, namespace),
// equal field for field but for Helm's own labels and annotations: the same
// CRD schemas, RBAC rules, webhook configuration, and the same Deployment
// (args, ports, probes, securityContext, volumes, resources). It fails when
// config/ changes and the chart is not regenerated (make helm-chart) or its
// hand-written templates not changed to match.
func TestChartMatchesKustomize(t *testing.T) {
	root, _ := tools(t)
	cases := map[string]struct {
		// kustomization is the install's directory; or overlay, a
		// kustomization of config/default (%s) and config/certmanager (%s).
		kustomization string
		overlay       string
		values        []string
	}{
		"config/default, self-managed certificates": {
			kustomization: filepath.Join(root, "config", "default"),
		},
		"config/default with the config/certmanager component": {
			overlay: "resources: [%s]\ncomponents: [%s]\n",
			values:  []string{"certs.source=cert-manager"},
		},
	}
	// Only kustomize makes the namespace; helm install --create-namespace
	// does (docs/helm.md).
	kustomizeOnly := map[string]bool{"Namespace//keymint-system": true}

	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			dir := tc.kustomization
			if tc.overlay != "" {
				// As config/certmanager says to use it. kustomize wants
				// relative paths to the bases.
				dir = t.TempDir()
				rel := func(p string) string {
					r, err := filepath.Rel(dir, filepath.Join(root, p))
					if err != nil {
						t.Fatal(err)
					}
					return r
				}
				overlay := fmt.Sprintf(tc.overlay, rel("config/default"), rel("config/certmanager"))
				if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(overlay), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			out, err := command(t, nil, "kubectl", "kustomize", dir)
			if err != nil {
				t.Fatalf("kubectl kustomize %s: %v", dir, err)
			}
			want := index(t, decode(t, out))

			// The install's image, whatever make build-installer set it to.
			d := want["Deployment/keymint-system/keymint-manager"]
			if d == nil {
				t.Fatal("config/default has no Deployment keymint-manager")
			}
			image := str(get(d, "spec", "template", "spec", "containers").([]any)[0], "image")
			repo, tag, _ := cutLast(image, ":")
			var flags []string
			for _, s := range append([]string{"image.repository=" + repo, "image.tag=" + tag}, tc.values...) {
				flags = append(flags, "--set", s)
			}
			got := index(t, decode(t, template(t, "keymint-system", flags...)))

			for _, key := range keys(want) {
				if kustomizeOnly[key] {
					continue
				}
				g, ok := got[key]
				if !ok {
					t.Errorf("%s is in the kustomize install but not in the chart: run make helm-chart, or add a template for it", key)
					continue
				}
				if diff := cmp.Diff(normalize(want[key]), normalize(g)); diff != "" {
					t.Errorf("%s differs between kustomize and the chart (-kustomize +helm); run make helm-chart, or change the chart's hand-written template to match:\n%s", key, diff)
				}
			}
			for _, key := range keys(got) {
				if _, ok := want[key]; !ok {
					t.Errorf("%s is in the chart but not in the kustomize install", key)
				}
			}
		})
	}
}

// index keys objects by kind, namespace and name.
func index(t *testing.T, objs []object) map[string]object {
	t.Helper()
	m := map[string]object{}
	for _, o := range objs {
		key := str(o, "kind") + "/" + str(o, "metadata", "namespace") + "/" + str(o, "metadata", "name")
		if _, dup := m[key]; dup {
			t.Fatalf("%s twice", key)
		}
		m[key] = o
	}
	return m
}

// normalize drops Helm's labels and annotations, and maps they leave empty.
func normalize(o object) object {
	meta, _ := o["metadata"].(map[string]any)
	for field, drop := range map[string][]string{"labels": helmLabels, "annotations": helmAnnotations} {
		m, _ := meta[field].(map[string]any)
		for _, k := range drop {
			delete(m, k)
		}
		if m != nil && len(m) == 0 {
			delete(meta, field)
		}
	}
	// Flags count as keymint parses them: the last of a name wins, and
	// --x is --x=true. config/certmanager appends --self-managed-certs=false
	// after config/manager's --self-managed-certs; the chart writes only the
	// latter.
	containers, _ := get(o, "spec", "template", "spec", "containers").([]any)
	for _, c := range containers {
		if c, ok := c.(map[string]any); ok && c["args"] != nil {
			c["args"] = effectiveFlags(c["args"].([]any))
		}
	}
	return o
}

func effectiveFlags(args []any) []string {
	last := map[string]string{}
	for _, a := range args {
		name, value, ok := strings.Cut(a.(string), "=")
		if !ok {
			value = "true"
		}
		last[name] = value
	}
	var flags []string
	for name, value := range last {
		flags = append(flags, name+"="+value)
	}
	sort.Strings(flags)
	return flags
}

func keys(m map[string]object) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func cutLast(s, sep string) (before, after string, found bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

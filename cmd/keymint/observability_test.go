package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/yaml"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/controllers"
	"github.com/keymint/keymint/internal/freshness"
	"github.com/keymint/keymint/internal/selfsigned"
	"github.com/keymint/keymint/internal/testenv"
	"github.com/keymint/keymint/webhook/check"
)

// targetLabels are added by Prometheus to every series it scrapes through
// config/prometheus/monitor.yaml; a query may select on them though no
// exporter writes them.
var targetLabels = []string{"job", "instance", "namespace", "pod", "service", "endpoint", "container"}

// synthesized are series Prometheus makes itself, not scraped from anyone.
var synthesized = map[string]bool{"up": true}

// exported is what a scrape yields: metric name → the label sets of its
// series. Histograms are spelled out as their _bucket, _sum and _count.
type exported map[string][]map[string]string

func (e exported) add(families []*dto.MetricFamily) {
	for _, f := range families {
		for _, m := range f.GetMetric() {
			ls := map[string]string{}
			for _, l := range m.GetLabel() {
				ls[l.GetName()] = l.GetValue()
			}
			switch f.GetType() {
			case dto.MetricType_HISTOGRAM:
				e[f.GetName()+"_sum"] = append(e[f.GetName()+"_sum"], ls)
				e[f.GetName()+"_count"] = append(e[f.GetName()+"_count"], ls)
				for _, b := range m.GetHistogram().GetBucket() {
					withLe := map[string]string{"le": fmt.Sprint(b.GetUpperBound())}
					for k, v := range ls {
						withLe[k] = v
					}
					e[f.GetName()+"_bucket"] = append(e[f.GetName()+"_bucket"], withLe)
				}
			default:
				e[f.GetName()] = append(e[f.GetName()], ls)
			}
		}
	}
}

// TestDashboardAndAlertsNameExportedMetrics runs keymint's pieces as main
// wires them (controllers, check server, admission webhooks, the collectors
// registerMetrics adds, all on controller-runtime's registry) against a
// real kube-apiserver, sends a little traffic, and then requires every
// query of the Grafana dashboard and every alert of the PrometheusRule to
// parse as PromQL and to select series that exist: names, and label values
// other than Prometheus's own target labels. kube-apiserver's metrics come
// from the real kube-apiserver, after it failed to call keymint's webhooks.
func TestDashboardAndAlertsNameExportedMetrics(t *testing.T) {
	g := NewWithT(t)
	g.SetDefaultEventuallyTimeout(30 * time.Second)
	g.SetDefaultEventuallyPollingInterval(100 * time.Millisecond)
	root, err := testenv.RepoRoot()
	g.Expect(err).NotTo(HaveOccurred())

	// What the files say, read first: a broken file fails before any
	// control plane starts.
	queries := dashboardQueries(t, filepath.Join(root, "config", "grafana", "keymint-dashboard.json"))
	alerts := ruleQueries(t, filepath.Join(root, "config", "prometheus", "rules.yaml"))

	files, err := selfsigned.Write(t.TempDir(), "127.0.0.1")
	g.Expect(err).NotTo(HaveOccurred())
	checkLn := testenv.Listen(t)
	fresh := freshness.New(clock.RealClock{}, ctrl.Log.WithName("check-index"), &keymintv1alpha1.ApiToken{}, &keymintv1alpha1.ServiceUser{})
	e := testenv.RunT(t, testenv.RunInput{
		// kube-apiserver calls the admission webhooks serveWebhooks
		// registers, as in a cluster.
		AdmissionWebhooks: true,
		ManagerOptions:    func(o *ctrl.Options) { o.Cache.NewInformer = fresh.NewInformer(o.Cache.NewInformer) },
		SetupReconcilers: func(ctx context.Context, e *testenv.Environment) error {
			mgr := e.Manager
			ctrlCache, err := controllers.NewCache(mgr)
			if err != nil {
				return err
			}
			if err := controllers.Setup(ctx, mgr, controllers.Options{RequesterWebhook: testenv.RequesterWebhookName, Clock: clock.RealClock{}, Keyring: e.Keyring, Cache: ctrlCache}); err != nil {
				return err
			}
			if err := check.Setup(ctx, mgr, check.Options{
				Listener: checkLn, CertFile: files.CertFile, KeyFile: files.KeyFile,
				DefaultRequestsPerMinute: 500, FlushInterval: time.Second, Clock: clock.RealClock{}, Registerer: metrics.Registry,
				TrackTokens: fresh.Tracking(&keymintv1alpha1.ApiToken{}),
			}); err != nil {
				return err
			}
			if err := registerMetrics(metrics.Registry, ctrlCache, fresh, 10*time.Second); err != nil {
				return err
			}
			serveWebhooks(ctx, mgr, nil, e.Keyring, testenv.RequesterWebhookName)
			return nil
		},
	})
	cfg, c, ctx := e.Config, e.Client, t.Context()

	// Traffic: a token checked once as good and once short of a scope.
	const ns = "observed"
	g.Expect(c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
	g.Expect(c.Create(ctx, testenv.ServiceUser(ns, "exporter", testenv.WithPermissions("invoices:read"), func(u *keymintv1alpha1.ServiceUser) {
		u.Spec.TokenPolicy.MaxIdle = &metav1.Duration{Duration: time.Hour} // before its expiry: the idle series exists
	}))).To(Succeed())
	g.Expect(c.Create(ctx, testenv.ApiToken(ns, "nightly", "exporter",
		testenv.WithExpiresAt(time.Now().Add(72*time.Hour).Truncate(time.Second)), testenv.WithRotation(24*time.Hour, 0),
		func(t *keymintv1alpha1.ApiToken) { t.Spec.Quota = &keymintv1alpha1.Quota{Uses: 2} }))).To(Succeed())
	ca, err := os.ReadFile(files.CAFile)
	g.Expect(err).NotTo(HaveOccurred())
	pool := x509.NewCertPool()
	g.Expect(pool.AppendCertsFromPEM(ca)).To(BeTrue())
	httpc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	checkOnce := func(tok, scope string) int {
		req, err := http.NewRequest(http.MethodGet, "https://"+checkLn.Addr().String()+"/check?scope="+scope, nil)
		g.Expect(err).NotTo(HaveOccurred())
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := httpc.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	g.Eventually(func(g Gomega) {
		sec := &corev1.Secret{}
		g.Expect(c.Get(ctx, types.NamespacedName{Namespace: ns, Name: "nightly"}, sec)).To(Succeed())
		g.Expect(checkOnce(string(sec.Data[keymintv1alpha1.SecretTokenKey]), "invoices:read")).To(Equal(http.StatusOK))
		g.Expect(checkOnce(string(sec.Data[keymintv1alpha1.SecretTokenKey]), "invoices:write")).To(Equal(http.StatusForbidden))
		// Its quota of two is spent: the third check is refused for it.
		g.Expect(checkOnce(string(sec.Data[keymintv1alpha1.SecretTokenKey]), "invoices:read")).To(Equal(http.StatusTooManyRequests))
	}).Should(Succeed())

	// kube-apiserver failing to call keymint's webhooks, as when no replica
	// answers: config/webhook/validating.yaml pointed at a closed port.
	raw, err := os.ReadFile(filepath.Join(root, "config", "webhook", "validating.yaml"))
	g.Expect(err).NotTo(HaveOccurred())
	vwc := &admissionregistrationv1.ValidatingWebhookConfiguration{}
	g.Expect(yaml.Unmarshal(raw, vwc)).To(Succeed())
	vwc.Name = "unanswered"
	closed := "https://127.0.0.1:1/validate" // a port nothing listens on
	for i := range vwc.Webhooks {
		vwc.Webhooks[i].ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &closed, CABundle: ca}
	}
	g.Expect(c.Create(ctx, vwc)).To(Succeed())
	g.Eventually(func() error {
		return c.Create(ctx, &keymintv1alpha1.ServiceUser{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "refused"}})
	}).Should(MatchError(ContainSubstring("failed calling webhook")))

	// What a scrape of keymint (controller-runtime's registry, as its
	// metrics endpoint serves it) and of kube-apiserver yields. Token
	// metrics are computed from the cache: wait until they show the token.
	have := exported{}
	g.Eventually(func(g Gomega) {
		have = exported{}
		families, err := metrics.Registry.Gather()
		g.Expect(err).NotTo(HaveOccurred())
		have.add(families)
		g.Expect(have).To(HaveKey("keymint_apitoken_expiration_timestamp_seconds"))
		g.Expect(have).To(HaveKey("keymint_checks_by_service_user_total"))
	}).Should(Succeed())
	body, err := kubernetes.NewForConfigOrDie(cfg).RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	textParser := expfmt.NewTextParser(model.UTF8Validation)
	apiserver, err := textParser.TextToMetricFamilies(bytes.NewReader(body))
	g.Expect(err).NotTo(HaveOccurred())
	for _, f := range apiserver {
		have.add([]*dto.MetricFamily{f})
	}

	for where, expr := range queries {
		checkSelectors(t, have, where, expr)
	}
	for where, expr := range alerts {
		checkSelectors(t, have, where, expr)
	}
}

// checkSelectors requires each vector selector of expr to name an exported
// metric, each of its label matchers (but on target labels) to match one of
// that metric's series, and each by()/on() label to be one of its labels.
func checkSelectors(t *testing.T, have exported, where string, expr parser.Expr) {
	t.Helper()
	parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
		switch n := node.(type) {
		case *parser.VectorSelector:
			if synthesized[n.Name] {
				return nil
			}
			series, ok := have[n.Name]
			if !ok {
				t.Errorf("%s: no exporter has metric %s", where, n.Name)
				return nil
			}
			for _, m := range n.LabelMatchers {
				if m.Name == labels.MetricName || slices.Contains(targetLabels, m.Name) && !hasLabel(series, m.Name) {
					continue
				}
				if !slices.ContainsFunc(series, func(ls map[string]string) bool { return m.Matches(ls[m.Name]) }) {
					t.Errorf("%s: no series of %s has %s", where, n.Name, m)
				}
			}
		case *parser.AggregateExpr:
			checkGrouping(t, have, where, n.Grouping, n.Expr)
		case *parser.BinaryExpr:
			if n.VectorMatching != nil {
				checkGrouping(t, have, where, n.VectorMatching.MatchingLabels, n)
			}
		}
		return nil
	})
}

// checkGrouping requires each label to be a target label or a label of a
// metric selected under expr.
func checkGrouping(t *testing.T, have exported, where string, grouping []string, expr parser.Expr) {
	t.Helper()
	for _, l := range grouping {
		if slices.Contains(targetLabels, l) {
			continue
		}
		found := false
		for _, vs := range parser.ExtractSelectors(expr) {
			for _, m := range vs {
				if m.Name == labels.MetricName && hasLabel(have[m.Value], l) {
					found = true
				}
			}
		}
		if !found {
			t.Errorf("%s: groups by %q, a label none of its metrics has", where, l)
		}
	}
}

func hasLabel(series []map[string]string, name string) bool {
	return slices.ContainsFunc(series, func(ls map[string]string) bool { _, ok := ls[name]; return ok })
}

// grafanaVars are the dashboard's built-in interval variables, replaced by
// a duration before parsing, as Grafana does before sending the query.
var grafanaVars = regexp.MustCompile(`\$__(rate_interval|interval|range)\b`)

// dashboardQueries checks the dashboard is what Grafana imports (a uid, a
// title, a schema version, a Prometheus datasource variable every panel
// uses) and returns every query, parsed, by panel.
func dashboardQueries(t *testing.T, path string) map[string]parser.Expr {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID           string `json:"uid"`
		Title         string `json:"title"`
		SchemaVersion int    `json:"schemaVersion"`
		Templating    struct {
			List []struct{ Name, Type, Query string } `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID         int    `json:"id"`
			Title      string `json:"title"`
			Datasource struct{ Type, UID string }
			Targets    []struct {
				Expr       string `json:"expr"`
				Datasource struct{ Type, UID string }
			} `json:"targets"`
		} `json:"panels"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if d.UID == "" || d.Title == "" || d.SchemaVersion < 36 {
		t.Errorf("%s: uid %q, title %q, schemaVersion %d; Grafana needs a uid and a title, and a schemaVersion of 36 or later for datasource references by uid", path, d.UID, d.Title, d.SchemaVersion)
	}
	if !slices.ContainsFunc(d.Templating.List, func(v struct{ Name, Type, Query string }) bool {
		return v.Name == "datasource" && v.Type == "datasource" && v.Query == "prometheus"
	}) {
		t.Errorf("%s: no templating variable datasource of type datasource, query prometheus: the import could not ask for one", path)
	}
	out := map[string]parser.Expr{}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("%s: panel id %d used twice", path, p.ID)
		}
		ids[p.ID] = true
		if p.Datasource.UID != "${datasource}" {
			t.Errorf("%s: panel %q uses datasource %q, not ${datasource}", path, p.Title, p.Datasource.UID)
		}
		if len(p.Targets) == 0 {
			t.Errorf("%s: panel %q has no query", path, p.Title)
		}
		for i, q := range p.Targets {
			where := fmt.Sprintf("dashboard panel %q query %d", p.Title, i)
			if q.Datasource.UID != "${datasource}" {
				t.Errorf("%s uses datasource %q, not ${datasource}", where, q.Datasource.UID)
			}
			expr, err := parser.NewParser(parser.Options{}).ParseExpr(grafanaVars.ReplaceAllString(q.Expr, "5m"))
			if err != nil {
				t.Errorf("%s: %v", where, err)
				continue
			}
			out[where] = expr
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s: no queries", path)
	}
	return out
}

// ruleQueries checks the PrometheusRule's shape (each alert named once,
// with a severity, a summary and a description, and a valid for) and
// returns every alert's expression, parsed.
func ruleQueries(t *testing.T, path string) map[string]parser.Expr {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rule struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Metadata   metav1.ObjectMeta `json:"metadata"`
		Spec       struct {
			Groups []struct {
				Name  string `json:"name"`
				Rules []struct {
					Alert       string            `json:"alert"`
					Expr        string            `json:"expr"`
					For         string            `json:"for"`
					Labels      map[string]string `json:"labels"`
					Annotations map[string]string `json:"annotations"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"spec"`
	}
	if err := yaml.UnmarshalStrict(raw, &rule); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if rule.APIVersion != "monitoring.coreos.com/v1" || rule.Kind != "PrometheusRule" {
		t.Errorf("%s: %s %s, want monitoring.coreos.com/v1 PrometheusRule", path, rule.APIVersion, rule.Kind)
	}
	out := map[string]parser.Expr{}
	for _, grp := range rule.Spec.Groups {
		for _, r := range grp.Rules {
			where := "alert " + r.Alert
			if r.Alert == "" {
				t.Errorf("%s: a rule of group %s has no alert name", path, grp.Name)
			}
			if _, dup := out[where]; dup {
				t.Errorf("%s: %s twice", path, where)
			}
			if !slices.Contains([]string{"critical", "warning", "info"}, r.Labels["severity"]) {
				t.Errorf("%s: severity %q, want critical, warning or info", where, r.Labels["severity"])
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: needs a summary and a description", where)
			}
			if _, err := model.ParseDuration(r.For); r.For != "" && err != nil {
				t.Errorf("%s: for %q: %v", where, r.For, err)
			}
			expr, err := parser.NewParser(parser.Options{}).ParseExpr(r.Expr)
			if err != nil {
				t.Errorf("%s: %v", where, err)
				continue
			}
			if expr.Type() != parser.ValueTypeVector {
				t.Errorf("%s: its expression is a %s; an alert needs a vector", where, expr.Type())
			}
			out[where] = expr
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s: no alerts", path)
	}
	return out
}

// TestPrometheusKustomization renders config/prometheus with the real
// kubectl and checks its ServiceMonitor selects exactly one Service of
// config/default, on a port that Service has; and that config/default does
// not include it (make deploy needs no prometheus-operator CRDs).
func TestPrometheusKustomization(t *testing.T) {
	if _, err := exec.LookPath("kubectl"); err != nil {
		t.Fatal("kubectl is not on PATH; this test renders config/ with it")
	}
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	render := func(dir string) []unstructured.Unstructured {
		t.Helper()
		out, err := exec.Command("kubectl", "kustomize", filepath.Join(root, "config", dir)).Output()
		if err != nil {
			t.Fatalf("kubectl kustomize config/%s: %v", dir, err)
		}
		var objs []unstructured.Unstructured
		for _, doc := range strings.Split(string(out), "\n---\n") {
			u := unstructured.Unstructured{}
			if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
				t.Fatal(err)
			}
			objs = append(objs, u)
		}
		return objs
	}
	var monitor *unstructured.Unstructured
	kinds := []string{}
	prom := render("prometheus")
	for i, o := range prom {
		kinds = append(kinds, o.GetKind())
		if o.GetKind() == "ServiceMonitor" {
			monitor = &prom[i]
		}
	}
	slices.Sort(kinds)
	if !slices.Equal(kinds, []string{"PrometheusRule", "ServiceMonitor"}) {
		t.Fatalf("config/prometheus renders %v, want a PrometheusRule and a ServiceMonitor", kinds)
	}
	selector, _, _ := unstructured.NestedStringMap(monitor.Object, "spec", "selector", "matchLabels")
	endpoints, _, _ := unstructured.NestedSlice(monitor.Object, "spec", "endpoints")
	if len(selector) == 0 || len(endpoints) != 1 {
		t.Fatalf("ServiceMonitor: selector %v, %d endpoints; want labels and one endpoint", selector, len(endpoints))
	}
	port, _, _ := unstructured.NestedString(endpoints[0].(map[string]any), "port")

	var selected []string
	for _, o := range render("default") {
		if o.GetKind() == "ServiceMonitor" || o.GetKind() == "PrometheusRule" {
			t.Errorf("config/default includes %s %s: make deploy would need prometheus-operator's CRDs", o.GetKind(), o.GetName())
		}
		if o.GetKind() != "Service" {
			continue
		}
		matches := true
		for k, v := range selector {
			matches = matches && o.GetLabels()[k] == v
		}
		if !matches {
			continue
		}
		selected = append(selected, o.GetName())
		ports, _, _ := unstructured.NestedSlice(o.Object, "spec", "ports")
		if !slices.ContainsFunc(ports, func(p any) bool { return p.(map[string]any)["name"] == port }) {
			t.Errorf("Service %s has no port %q for the ServiceMonitor", o.GetName(), port)
		}
	}
	if len(selected) != 1 {
		t.Errorf("the ServiceMonitor selects Services %v, want exactly one", selected)
	}
}

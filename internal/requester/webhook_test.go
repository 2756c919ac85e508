package requester

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/recordkey/recordkeytest"
)

// A requester record is trusted only while every ApiToken write goes
// through the webhook that writes it: the shipped configuration passes,
// each way of letting a write skip it does not.
func TestNotEnforced(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "config", "webhook", "mutating.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	shipped := &admissionregistrationv1.MutatingWebhookConfiguration{}
	if err := yaml.Unmarshal(raw, shipped); err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		mutate func(w *admissionregistrationv1.MutatingWebhook)
		// want is part of the reason; "" means enforced.
		want string
	}{
		"as shipped": {mutate: func(*admissionregistrationv1.MutatingWebhook) {}},
		"pointed at a URL, as make run and envtest install it": {mutate: func(w *admissionregistrationv1.MutatingWebhook) {
			w.ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: ptr.To("https://127.0.0.1:9443/mutate-keymint-io-v1alpha1-apitoken")}
		}},
		"pointed at a URL with a double slash, as envtest writes it": {mutate: func(w *admissionregistrationv1.MutatingWebhook) {
			w.ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: ptr.To("https://127.0.0.1:9443//mutate-keymint-io-v1alpha1-apitoken")}
		}},
		"failurePolicy Ignore": {mutate: func(w *admissionregistrationv1.MutatingWebhook) {
			w.FailurePolicy = ptr.To(admissionregistrationv1.Ignore)
		}, want: "failurePolicy Ignore"},
		"a namespaceSelector": {mutate: func(w *admissionregistrationv1.MutatingWebhook) {
			w.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}}
		}, want: "namespaceSelector"},
		"an objectSelector": {mutate: func(w *admissionregistrationv1.MutatingWebhook) {
			w.ObjectSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "x", Operator: metav1.LabelSelectorOpDoesNotExist}}}
		}, want: "objectSelector"},
		"an empty selector selects everything": {mutate: func(w *admissionregistrationv1.MutatingWebhook) {
			w.NamespaceSelector = &metav1.LabelSelector{}
		}},
		"no UPDATE": {mutate: func(w *admissionregistrationv1.MutatingWebhook) {
			w.Rules[0].Operations = []admissionregistrationv1.OperationType{admissionregistrationv1.Create}
		}, want: "every create and update"},
		"another resource": {mutate: func(w *admissionregistrationv1.MutatingWebhook) {
			w.Rules[0].Resources = []string{"serviceusers"}
		}, want: "every create and update"},
		"wildcards cover it": {mutate: func(w *admissionregistrationv1.MutatingWebhook) {
			w.Rules[0].Rule = admissionregistrationv1.Rule{APIGroups: []string{"*"}, APIVersions: []string{"*"}, Resources: []string{"*"}}
			w.Rules[0].Operations = []admissionregistrationv1.OperationType{admissionregistrationv1.OperationAll}
		}},
		"a match condition of someone else's": {mutate: func(w *admissionregistrationv1.MutatingWebhook) {
			w.MatchConditions = append(w.MatchConditions, admissionregistrationv1.MatchCondition{Name: "skip-mine", Expression: "object.metadata.name != 'x'"})
		}, want: `match condition "skip-mine"`},
		"the shipped condition edited": {mutate: func(w *admissionregistrationv1.MutatingWebhook) {
			w.MatchConditions[0].Expression = "false"
		}, want: `match condition "not-revoked"`},
		"scope Cluster: namespaced ApiTokens never match": {mutate: func(w *admissionregistrationv1.MutatingWebhook) {
			w.Rules[0].Scope = ptr.To(admissionregistrationv1.ClusterScope)
		}, want: "every create and update"},
		"matchPolicy Exact": {mutate: func(w *admissionregistrationv1.MutatingWebhook) {
			w.MatchPolicy = ptr.To(admissionregistrationv1.Exact)
		}, want: "matchPolicy Exact"},
		"another path": {mutate: func(w *admissionregistrationv1.MutatingWebhook) {
			w.ClientConfig.Service.Path = ptr.To("/other")
		}, want: "no webhook calling"},
	}
	t.Run("a second webhook beside keymint's", func(t *testing.T) {
		cfg := shipped.DeepCopy()
		other := cfg.Webhooks[0].DeepCopy()
		other.Name = "other.example.com"
		other.ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: ptr.To("https://attacker.example.com/mutate-keymint-io-v1alpha1-apitoken")}
		cfg.Webhooks = append(cfg.Webhooks, *other)
		if got := NotEnforced(cfg); !strings.Contains(got, "2 webhooks") {
			t.Errorf("NotEnforced = %q, want a refusal of the second webhook", got)
		}
	})
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cfg := shipped.DeepCopy()
			tc.mutate(&cfg.Webhooks[0])
			got := NotEnforced(cfg)
			if (got == "") != (tc.want == "") || !strings.Contains(got, tc.want) {
				t.Errorf("NotEnforced = %q, want %q", got, tc.want)
			}
		})
	}
}

// countingReader counts the configurations it is asked for.
type countingReader struct {
	client.Reader
	cfg   *admissionregistrationv1.MutatingWebhookConfiguration
	reads int
}

func (r *countingReader) Get(_ context.Context, _ client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	r.reads++
	r.cfg.DeepCopyInto(obj.(*admissionregistrationv1.MutatingWebhookConfiguration))
	return nil
}

// A flood of requests to the webhook port costs one API read a TTL.
func TestCheckCacheBoundsReads(t *testing.T) {
	r := &countingReader{cfg: &admissionregistrationv1.MutatingWebhookConfiguration{Webhooks: []admissionregistrationv1.MutatingWebhook{{Name: "x"}}}}
	w := Webhook{Reader: r, Name: "cfg", Cache: &CheckCache{TTL: time.Hour}}
	for range 100 {
		if _, why, err := w.Check(context.Background()); err != nil || why == "" {
			t.Fatalf("check: %q, %v", why, err)
		}
	}
	if r.reads != 1 {
		t.Errorf("%d reads for 100 checks within the TTL, want 1", r.reads)
	}
}

// configReader answers with one configuration, or NotFound when nil.
type configReader struct {
	client.Reader
	cfg *admissionregistrationv1.MutatingWebhookConfiguration
}

func (r configReader) Get(_ context.Context, key client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	if r.cfg == nil {
		return apierrors.NewNotFound(admissionregistrationv1.Resource("mutatingwebhookconfigurations"), key.Name)
	}
	r.cfg.DeepCopyInto(obj.(*admissionregistrationv1.MutatingWebhookConfiguration))
	return nil
}

// keymint acts on a record only while the webhook is enforced, and only on
// one signed since its configuration exists.
func TestTrust(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "config", "webhook", "mutating.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	shipped := &admissionregistrationv1.MutatingWebhookConfiguration{}
	if err := yaml.Unmarshal(raw, shipped); err != nil {
		t.Fatal(err)
	}
	created := func(at time.Time) *admissionregistrationv1.MutatingWebhookConfiguration {
		c := shipped.DeepCopy()
		c.CreationTimestamp = metav1.NewTime(at)
		return c
	}
	r := recordkeytest.Keyring(t, "k1")
	tok := admitted(r, nil, token(), alice) // requestedAt: at
	for name, tc := range map[string]struct {
		cfg         *admissionregistrationv1.MutatingWebhookConfiguration
		tok         *keymintv1alpha1.ApiToken
		problem     Problem
		notEnforced string
	}{
		"signed since the configuration exists": {cfg: created(at.Add(-time.Hour)), tok: tok},
		"signed in the second it was created":   {cfg: created(at.Add(500 * time.Millisecond)), tok: tok},
		"signed before it existed":              {cfg: created(at.Add(time.Second)), tok: tok, problem: BeforeWebhook},
		"no record":                             {cfg: created(at.Add(-time.Hour)), tok: token(), problem: Missing},
		"no configuration":                      {tok: tok, notEnforced: "does not exist"},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := Webhook{Reader: configReader{cfg: tc.cfg}, Name: "cfg"}.Trust(context.Background(), r, tc.tok)
			if err != nil {
				t.Fatal(err)
			}
			if got.Problem != tc.problem || !strings.Contains(got.NotEnforced, tc.notEnforced) || (tc.notEnforced == "") != (got.NotEnforced == "") {
				t.Errorf("Trust = %+v, want problem %q, not enforced %q", got, tc.problem, tc.notEnforced)
			}
			if (got.Record != nil) != (tc.problem == "" && tc.notEnforced == "") {
				t.Errorf("record %+v with problem %q", got.Record, got.Problem)
			}
		})
	}
}

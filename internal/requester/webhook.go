package requester

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/recordkey"
)

// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingwebhookconfigurations,resourceNames=keymint-mutating-webhook-configuration,verbs=get

// Webhook checks that keymint's requester webhook is enforced:
// a requester record can be trusted only if every write that could have
// stored it went through that webhook, which overwrites whatever record a
// writer sends. Anyone who reaches keymint's webhook port can have it sign a
// record of their choosing; while kube-apiserver calls it on every write,
// such a record never reaches etcd.
type Webhook struct {
	Reader client.Reader
	// Name is the MutatingWebhookConfiguration; empty turns the check off
	// (suites that run the controllers with no webhooks, and only those).
	Name string
	// Cache, when set, answers from a read at most its TTL old. The
	// webhooks ask on every request, and anyone who reaches their port can
	// send requests: without it, each would cost keymint an API read.
	Cache *CheckCache
}

// CheckCache keeps the last answer of a Webhook check for TTL.
type CheckCache struct {
	TTL time.Duration

	mu    sync.Mutex
	at    time.Time
	since time.Time
	why   string
}

// Check returns why the webhook is not enforced ("" when it is), and since
// when its configuration exists: records signed before were signed while
// it did not, and are not trusted.
func (w Webhook) Check(ctx context.Context) (since time.Time, why string, err error) {
	if w.Name == "" {
		return time.Time{}, "", nil
	}
	if c := w.Cache; c != nil {
		c.mu.Lock()
		defer c.mu.Unlock()
		if !c.at.IsZero() && time.Since(c.at) < c.TTL {
			return c.since, c.why, nil
		}
		since, why, err = w.read(ctx)
		if err == nil {
			c.at, c.since, c.why = time.Now(), since, why
		}
		return since, why, err
	}
	return w.read(ctx)
}

func (w Webhook) read(ctx context.Context) (since time.Time, why string, err error) {
	cfg := &admissionregistrationv1.MutatingWebhookConfiguration{}
	if err := w.Reader.Get(ctx, types.NamespacedName{Name: w.Name}, cfg); err != nil {
		if apierrors.IsNotFound(err) {
			return time.Time{}, fmt.Sprintf("MutatingWebhookConfiguration %q does not exist", w.Name), nil
		}
		return time.Time{}, "", fmt.Errorf("reading MutatingWebhookConfiguration %q: %w", w.Name, err)
	}
	if why := NotEnforced(cfg); why != "" {
		return time.Time{}, fmt.Sprintf("MutatingWebhookConfiguration %q %s", w.Name, why), nil
	}
	return cfg.CreationTimestamp.Time, "", nil
}

// Trust is what keymint may act on for an ApiToken: Record, when Problem
// and NotEnforced are both empty.
type Trust struct {
	Record *Record
	// Problem says why the ApiToken's record is not to be trusted.
	Problem Problem
	// NotEnforced says how the webhook's configuration lets writes skip
	// it: then no record is trusted.
	NotEnforced string
}

// Trust verifies tok's record, and that it came through the webhook as it
// is enforced now: signed by keymint, for this spec, and since the
// configuration exists. The one answer to "whom does keymint act for?".
func (w Webhook) Trust(ctx context.Context, ring *recordkey.Keyring, tok *keymintv1alpha1.ApiToken) (Trust, error) {
	since, why, err := w.Check(ctx)
	if err != nil || why != "" {
		return Trust{NotEnforced: why}, err
	}
	rec, p := Read(ring, tok)
	if p == "" && rec.RequestedAt.Time.Before(since.Truncate(time.Second)) {
		p = BeforeWebhook
	}
	if p != "" {
		return Trust{Problem: p}, nil
	}
	return Trust{Record: rec}, nil
}

// Record writes the record of an admitted write of after by who, over the
// stored before (nil on create), as Admit does. While the configuration
// can be skipped, nothing of before's record is kept (others' writes may
// have skipped the webhook), nor a record signed before it existed.
func (w Webhook) Record(ctx context.Context, ring *recordkey.Keyring, before, after *keymintv1alpha1.ApiToken, who authenticationv1.UserInfo, now time.Time) error {
	since, why, err := w.Check(ctx)
	if err != nil {
		return err
	}
	if why != "" {
		before = nil
	}
	Admit(ring, before, after, who, now, since)
	return nil
}

// requesterMatchConditions are the match conditions keymint ships: a
// revoked ApiToken mints nothing, so skipping it skips nothing that mints.
var requesterMatchConditions = map[string]string{"not-revoked": "!has(object.spec.revoked) || !object.spec.revoked"}

// NotEnforced says how a configuration lets an ApiToken write skip the
// requester webhook, or "" when it does not: the webhook must fail closed
// and be called for every create and update of an ApiToken that is not
// revoked.
func NotEnforced(cfg *admissionregistrationv1.MutatingWebhookConfiguration) string {
	if len(cfg.Webhooks) != 1 {
		// One webhook, keymint's: another beside it could call elsewhere,
		// or run after it and write a record of its own.
		return fmt.Sprintf("has %d webhooks, where keymint ships one", len(cfg.Webhooks))
	}
	w := cfg.Webhooks[0]
	path := ""
	switch cc := w.ClientConfig; {
	case cc.Service != nil && cc.Service.Path != nil:
		path = *cc.Service.Path
	case cc.URL != nil:
		if u, err := url.Parse(*cc.URL); err == nil {
			path = u.Path
		}
	}
	// (envtest writes its URLs with a double slash.)
	if "/"+strings.TrimLeft(path, "/") != Path {
		return fmt.Sprintf("has no webhook calling %s", Path)
	}
	switch {
	case w.FailurePolicy != nil && *w.FailurePolicy != admissionregistrationv1.Fail:
		return fmt.Sprintf("has failurePolicy %s: a write goes through when keymint cannot answer", *w.FailurePolicy)
	case w.MatchPolicy != nil && *w.MatchPolicy != admissionregistrationv1.Equivalent:
		return fmt.Sprintf("has matchPolicy %s: writes through another version of the API skip the webhook", *w.MatchPolicy)
	case !selectsAll(w.NamespaceSelector), !selectsAll(w.ObjectSelector):
		return "has a namespaceSelector or objectSelector: writes to the objects it leaves out skip the webhook"
	case !coversApiTokenWrites(w.Rules):
		return "does not cover every create and update of keymint.io apitokens"
	}
	for _, c := range w.MatchConditions {
		if requesterMatchConditions[c.Name] != c.Expression {
			return fmt.Sprintf("has match condition %q, which keymint does not ship: writes it leaves out skip the webhook", c.Name)
		}
	}
	return ""
}

// Path is where keymint serves the requester webhook.
const Path = "/mutate-keymint-io-v1alpha1-apitoken"

func selectsAll(s *metav1.LabelSelector) bool {
	return s == nil || (len(s.MatchLabels) == 0 && len(s.MatchExpressions) == 0)
}

func coversApiTokenWrites(rules []admissionregistrationv1.RuleWithOperations) bool {
	var create, update bool
	for _, r := range rules {
		if r.Scope != nil && *r.Scope != admissionregistrationv1.AllScopes && *r.Scope != admissionregistrationv1.NamespacedScope ||
			!slices.ContainsFunc(r.APIGroups, anyOr(keymintv1alpha1.GroupVersion.Group)) ||
			!slices.ContainsFunc(r.APIVersions, anyOr(keymintv1alpha1.GroupVersion.Version)) ||
			!slices.ContainsFunc(r.Resources, anyOr("apitokens")) {
			continue
		}
		for _, op := range r.Operations {
			create = create || op == admissionregistrationv1.Create || op == admissionregistrationv1.OperationAll
			update = update || op == admissionregistrationv1.Update || op == admissionregistrationv1.OperationAll
		}
	}
	return create && update
}

func anyOr(want string) func(string) bool {
	return func(s string) bool { return s == want || s == "*" }
}

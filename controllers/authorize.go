// Mint authorization: whether the requester keymint trusts may have a token minted now, how it is worded, and the backoff after a denial.

package controllers

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/authz"
	"github.com/keymint/keymint/internal/requester"
)

// DefaultAuthorizationRetry is how soon a mint that its requester may not
// do is tried again (then twice as long each time, up to 8 times it): RBAC
// changes send no event a controller could watch without caching every Role
// and binding in the cluster.
const DefaultAuthorizationRetry = 30 * time.Second

// authorization is the answer to "may this token's requester have it
// minted now?".
type authorization struct {
	Allowed bool
	// Reason is the Authorized condition's reason.
	Reason string
	// Message is the condition's message; for a denial it names the right
	// and the rule that grants it.
	Message string
}

// deniedTotal counts what keymint did not do for lack of a requester's
// right, by action (mint, restart) and reason.
var deniedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "keymint_authorization_denied_total",
	Help: "Mints and restarts keymint did not do because the user who asked for them (the requester record admission wrote) lacked the right at that moment, or no valid record existed; by action (mint, restart) and reason (NotAllowed, NoRequesterRecord, RequesterWebhookNotEnforced).",
}, []string{"action", "reason"})

func init() {
	metrics.Registry.MustRegister(deniedTotal)
	for _, action := range []string{"mint", "restart"} {
		for _, reason := range []string{keymintv1alpha1.ApiTokenReasonNotAllowed, keymintv1alpha1.ApiTokenReasonNoRequesterRecord,
			keymintv1alpha1.ApiTokenReasonRequesterWebhookNotEnforced} {
			deniedTotal.WithLabelValues(action, reason)
		}
	}
}

// noRecord is the authorization of a token without a valid requester record.
func noRecord(p requester.Problem, namespace, name string) authorization {
	return authorization{Reason: keymintv1alpha1.ApiTokenReasonNoRequesterRecord, Message: fmt.Sprintf(
		"No token is minted: %s. Have a user who may mint it write the ApiToken once through kube-apiserver, with keymint's webhooks in place, "+
			"so that admission records who asks: any change will do, for example `kubectl annotate apitoken -n %s %s keymint.io/requested=$(date +%%s) --overwrite`",
		p.Explain(), namespace, name)}
}

// webhookNotEnforced is the authorization of any mint while keymint's
// requester webhook can be skipped.
func webhookNotEnforced(why string) authorization {
	return authorization{Reason: keymintv1alpha1.ApiTokenReasonRequesterWebhookNotEnforced, Message: fmt.Sprintf(
		"No token is minted: %s, so ApiTokens may be written without passing it and no requester record can be trusted. "+
			"Restore keymint's webhook configuration as shipped (config/webhook/mutating.yaml, or the Helm chart); keymint asks again by itself", why)}
}

// distrust is the authorization of any mint for the requester of trust
// when keymint may not act for them: no valid record, or a webhook that can
// be skipped. nil when it may, or when trust was not asked.
func distrust(trust *requester.Trust, namespace, name string) *authorization {
	var a authorization
	switch {
	case trust == nil:
		return nil
	case trust.NotEnforced != "":
		a = webhookNotEnforced(trust.NotEnforced)
	case trust.Problem != "":
		a = noRecord(trust.Problem, namespace, name)
	default:
		return nil
	}
	return &a
}

// authorizeMint asks whether the token's requester, whom keymint trusts or
// not as trust says, may mint it now: mint on its ServiceUser and
// impersonate each of the user's groups as they are at this moment,
// whatever they were when the ApiToken was admitted.
func (r *ApiTokenReconciler) authorizeMint(ctx context.Context, tok *keymintv1alpha1.ApiToken, groups []string, trust requester.Trust) (authorization, error) {
	if a := distrust(&trust, tok.Namespace, tok.Name); a != nil {
		return *a, nil
	}
	who := trust.Record.Requester
	denial, err := authz.MayMint(ctx, r.Authorizer, who, tok.Namespace, tok.Spec.ServiceUser, groups)
	if err != nil {
		return authorization{}, err
	}
	if denial != nil {
		asked := fmt.Sprintf("who asked for this token (admitted %s)", trust.Record.RequestedAt.UTC().Format(time.RFC3339))
		return authorization{Reason: keymintv1alpha1.ApiTokenReasonNotAllowed, Message: fmt.Sprintf(
			"No token is minted: %s. keymint asks again after %s, then less often (at most every %s)",
			denial.Sentence(who.Username, asked), r.authorizationRetry(), 8*r.authorizationRetry())}, nil
	}
	return authorization{Allowed: true, Reason: keymintv1alpha1.ApiTokenReasonAuthorized, Message: fmt.Sprintf(
		"user %q, who asked for this token, may mint tokens of ServiceUser %q as it is now", who.Username, tok.Spec.ServiceUser)}, nil
}

// denials are an ApiToken's denied mints in a row; an ApiToken of the same
// name created since starts over.
type denials struct {
	uid types.UID
	n   int
}

// retryDenied counts a denied mint of the ApiToken key (uid) and says when
// to ask again: the retry interval, doubling with each denial in a row up
// to 8 times it.
func (r *ApiTokenReconciler) retryDenied(key types.NamespacedName, uid types.UID) time.Duration {
	d := denials{uid: uid}
	if v, ok := r.denials.Load(key); ok && v.(denials).uid == uid {
		d.n = v.(denials).n
	}
	r.denials.Store(key, denials{uid: uid, n: d.n + 1})
	return r.authorizationRetry() << min(d.n, 3)
}

func (r *ApiTokenReconciler) authorizationRetry() time.Duration {
	if r.AuthorizationRetry > 0 {
		return r.AuthorizationRetry
	}
	return DefaultAuthorizationRetry
}

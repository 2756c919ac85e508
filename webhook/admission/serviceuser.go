package admission

import (
	"context"
	"fmt"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/authz"
	"github.com/keymint/keymint/internal/tokenstate"
)

// ServiceUserValidator admits ServiceUsers: giving one a Kubernetes group
// needs the right to impersonate that group, as `kubectl --as-group` does,
// since every token of the user will carry the group to kube-apiserver; and
// a change that gives its tokens more (creating it while ApiTokens name it,
// re-enabling it, more permissions, a looser token policy) needs the right
// to mint its tokens.
type ServiceUserValidator struct {
	Authorizer authz.Authorizer
	// APIReader lists the ApiTokens that name a ServiceUser, past the cache:
	// a token applied a moment before its user must not slip by.
	APIReader client.Reader
}

// ValidateCreate checks every group, unless the user is created disabled
// (re-enabling it is checked). Creating a ServiceUser that ApiTokens
// already name activates those tokens, as widening an existing user widens
// them: that needs mint too.
func (v *ServiceUserValidator) ValidateCreate(ctx context.Context, u *keymintv1alpha1.ServiceUser) (admission.Warnings, error) {
	if u.Spec.Disabled {
		return nil, nil
	}
	if err := v.authorizeGroups(ctx, u, u.Spec.Groups); err != nil {
		return nil, err
	}
	named, err := v.namedByTokens(ctx, u)
	if err != nil {
		return nil, apierrors.NewInternalError(err)
	}
	if named {
		return nil, authorizeMint(ctx, v.Authorizer, serviceUsers, u.Name, u.Namespace, u.Name, nil,
			"ApiTokens already name it: creating it issues their tokens")
	}
	return nil, nil
}

// namedByTokens reports whether an ApiToken in u's namespace names u.
func (v *ServiceUserValidator) namedByTokens(ctx context.Context, u *keymintv1alpha1.ServiceUser) (bool, error) {
	var tokens metav1.PartialObjectMetadataList
	tokens.SetGroupVersionKind(keymintv1alpha1.GroupVersion.WithKind("ApiTokenList"))
	if err := v.APIReader.List(ctx, &tokens, client.InNamespace(u.Namespace), client.Limit(1),
		client.MatchingFieldsSelector{Selector: fields.OneTermEqualSelector("spec.serviceUser", u.Name)}); err != nil {
		return false, fmt.Errorf("listing the ApiTokens that name ServiceUser %q: %w", u.Name, err)
	}
	return len(tokens.Items) > 0, nil
}

// ValidateUpdate checks the groups added. Re-enabling checks them all:
// while disabled, the webhook is not asked (disabling must work even when
// keymint is down), so groups added then were never checked.
func (v *ServiceUserValidator) ValidateUpdate(ctx context.Context, before, after *keymintv1alpha1.ServiceUser) (admission.Warnings, error) {
	if after.Spec.Disabled {
		return nil, nil
	}
	groups := after.Spec.Groups
	if !before.Spec.Disabled {
		groups = nil
		for _, g := range after.Spec.Groups {
			if !slices.Contains(before.Spec.Groups, g) {
				groups = append(groups, g)
			}
		}
	}
	if err := v.authorizeGroups(ctx, after, groups); err != nil {
		return nil, err
	}
	if what := widens(before, after); what != "" {
		if err := authorizeMint(ctx, v.Authorizer, serviceUsers, after.Name, after.Namespace, after.Name, nil, what); err != nil {
			return nil, err
		}
	}
	return nil, v.authorizeApproval(ctx, before, after)
}

// authorizeApproval: while a user's tokens require approval, what would
// let them be minted or do more without one (turning the policy off,
// widening the user, re-enabling it) needs the right to approve them too,
// not only to mint: four eyes hold for the ServiceUser as for its tokens.
func (v *ServiceUserValidator) authorizeApproval(ctx context.Context, before, after *keymintv1alpha1.ServiceUser) error {
	var what string
	switch {
	case before.Spec.TokenPolicy.RequireApproval && !after.Spec.TokenPolicy.RequireApproval:
		what = "turning tokenPolicy.requireApproval off lets its tokens be minted and accepted unapproved"
	case !before.Spec.TokenPolicy.RequireApproval && !before.Spec.Disabled:
		return nil
	case !after.Spec.TokenPolicy.RequireApproval:
		return nil
	default:
		if what = widens(before, after); what == "" {
			return nil
		}
		what += ", and its tokens require approval"
	}
	req, err := admission.RequestFromContext(ctx)
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	denial, err := authz.MayApprove(ctx, v.Authorizer, req.UserInfo, after.Namespace, after.Name)
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	if denial == nil {
		return nil
	}
	return apierrors.NewForbidden(serviceUsers, after.Name, fmt.Errorf("%s: %s", what, denial.Sentence(req.UserInfo.Username, "")))
}

// widens says how an update gives the user's existing tokens more, or "".
func widens(before, after *keymintv1alpha1.ServiceUser) string {
	b, a := &before.Spec.TokenPolicy, &after.Spec.TokenPolicy
	switch {
	case before.Spec.Disabled:
		return "re-enabling it mints new tokens"
	case slices.ContainsFunc(after.Spec.Permissions, func(p string) bool { return !slices.Contains(before.Spec.Permissions, p) }):
		return "new permissions widen its tokens"
	case longer(b.MaxLifetime, a.MaxLifetime), longer(b.DefaultLifetime, a.DefaultLifetime):
		return "a longer maxLifetime or defaultLifetime renews its tokens"
	case tokenstate.SourcesWider(tokenstate.ParseSources(a.AllowedSourceCIDRs), tokenstate.ParseSources(b.AllowedSourceCIDRs)):
		return "wider allowedSourceCIDRs let its tokens be used from more addresses"
	case tokenstate.QuotaLooser(a.Quota, b.Quota):
		return "a looser quota lets its tokens pass more checks"
	}
	return ""
}

// longer reports whether a lifetime policy went from before to a later (or
// no) limit.
func longer(before, after *metav1.Duration) bool {
	return before != nil && (after == nil || after.Duration > before.Duration)
}

// ValidateDelete allows every deletion: it revokes the user's tokens.
func (v *ServiceUserValidator) ValidateDelete(context.Context, *keymintv1alpha1.ServiceUser) (admission.Warnings, error) {
	return nil, nil
}

// authorizeGroups asks whether the requesting user may impersonate each
// group, and denies with the rule to add.
func (v *ServiceUserValidator) authorizeGroups(ctx context.Context, u *keymintv1alpha1.ServiceUser, groups []string) error {
	req, err := admission.RequestFromContext(ctx)
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	denial, err := authz.MayImpersonate(ctx, v.Authorizer, req.UserInfo, groups)
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	if denial == nil {
		return nil
	}
	return apierrors.NewForbidden(serviceUsers, u.Name, fmt.Errorf(
		"user %q may not give ServiceUser %q that group: its tokens would then %s. A rule that grants it: %s", req.UserInfo.Username, u.Name, denial.What, denial.Rule))
}

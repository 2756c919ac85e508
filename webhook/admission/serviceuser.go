package admission

import (
	"context"
	"fmt"
	"slices"

	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

// ServiceUserValidator admits ServiceUsers: giving one a Kubernetes group
// needs the right to impersonate that group, as `kubectl --as-group` does,
// since every token of the user will carry the group to kube-apiserver; and
// a change that gives its existing tokens more (re-enabling it, more
// permissions, a looser token policy) needs the right to mint its tokens.
type ServiceUserValidator struct {
	Authorizer Authorizer
}

// ValidateCreate checks every group, unless the user is created disabled.
func (v *ServiceUserValidator) ValidateCreate(ctx context.Context, u *keymintv1alpha1.ServiceUser) (admission.Warnings, error) {
	if u.Spec.Disabled {
		return nil, nil
	}
	return nil, v.authorizeGroups(ctx, u, u.Spec.Groups)
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
		return nil, authorizeMint(ctx, v.Authorizer, after.Namespace, after.Name, "serviceusers", after.Name, what)
	}
	return nil, nil
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

func (v *ServiceUserValidator) authorizeGroups(ctx context.Context, u *keymintv1alpha1.ServiceUser, groups []string) error {
	return authorizeGroups(ctx, v.Authorizer, keymintv1alpha1.GroupVersion.WithResource("serviceusers").GroupResource(), u.Name, groups,
		func(who, g string) string {
			return fmt.Sprintf("user %q may not give ServiceUser %q the group %q: its tokens would carry that group to kube-apiserver", who, u.Name, g)
		})
}

// authorizeGroups asks whether the requesting user may impersonate each
// group, and denies with denial(user, group) and the rule to add.
func authorizeGroups(ctx context.Context, authz Authorizer, resource schema.GroupResource, objName string, groups []string, denial func(user, group string) string) error {
	if len(groups) == 0 {
		return nil
	}
	req, err := admission.RequestFromContext(ctx)
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	for _, g := range groups {
		allowed, err := authz.Allowed(ctx, req.UserInfo, authorizationv1.ResourceAttributes{Verb: "impersonate", Resource: "groups", Name: g})
		if err != nil {
			return apierrors.NewInternalError(err)
		}
		if !allowed {
			return apierrors.NewForbidden(resource, objName, fmt.Errorf(
				"%s, which needs verb \"impersonate\" on resource \"groups\" (core API group), as kubectl --as-group does. "+
					"A ClusterRole rule that grants it: {apiGroups: [\"\"], resources: [\"groups\"], verbs: [\"impersonate\"], resourceNames: [%q]}",
				denial(req.UserInfo.Username, g), g))
		}
	}
	return nil
}

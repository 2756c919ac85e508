package admission

import (
	"context"
	"fmt"
	"slices"

	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

// ServiceUserValidator admits ServiceUsers: giving one a Kubernetes group
// needs the right to impersonate that group, as `kubectl --as-group` does,
// since every token of the user will carry the group to kube-apiserver.
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
	return nil, v.authorizeGroups(ctx, after, groups)
}

// ValidateDelete allows every deletion: it revokes the user's tokens.
func (v *ServiceUserValidator) ValidateDelete(context.Context, *keymintv1alpha1.ServiceUser) (admission.Warnings, error) {
	return nil, nil
}

func (v *ServiceUserValidator) authorizeGroups(ctx context.Context, u *keymintv1alpha1.ServiceUser, groups []string) error {
	if len(groups) == 0 {
		return nil
	}
	req, err := admission.RequestFromContext(ctx)
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	for _, g := range groups {
		allowed, err := v.Authorizer.Allowed(ctx, req.UserInfo, authorizationv1.ResourceAttributes{Verb: "impersonate", Resource: "groups", Name: g})
		if err != nil {
			return apierrors.NewInternalError(err)
		}
		if !allowed {
			return apierrors.NewForbidden(keymintv1alpha1.GroupVersion.WithResource("serviceusers").GroupResource(), u.Name, fmt.Errorf(
				"user %q may not give ServiceUser %q the group %q: its tokens would carry that group to kube-apiserver, which needs verb \"impersonate\" on resource \"groups\" (core API group), as kubectl --as-group does. "+
					"A ClusterRole rule that grants it: {apiGroups: [\"\"], resources: [\"groups\"], verbs: [\"impersonate\"], resourceNames: [%q]}",
				req.UserInfo.Username, u.Name, g, g))
		}
	}
	return nil
}

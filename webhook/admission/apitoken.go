package admission

import (
	"context"
	"fmt"
	"slices"
	"strings"

	authorizationv1 "k8s.io/api/authorization/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/tokenstate"
)

// MintVerb is the RBAC verb on serviceusers that lets a user mint tokens of
// a ServiceUser: create an ApiToken for it, or change what a token of it is
// (scopes, audiences, rotation, expiry), rotate it, or un-revoke it.
const MintVerb = "mint"

// ApiTokenValidator admits ApiTokens: it denies minting without the "mint"
// right on the ServiceUser, and warns (without denying: GitOps applies in
// any order) when the token asks for more than its ServiceUser gives.
type ApiTokenValidator struct {
	Reader     client.Reader
	Authorizer Authorizer
	// Clock is the time expiresAt is judged at; nil means the real clock.
	Clock clock.PassiveClock
}

// ValidateCreate needs mint unless the token is created revoked (then it
// mints nothing, and says nothing about its ServiceUser).
func (v *ApiTokenValidator) ValidateCreate(ctx context.Context, tok *keymintv1alpha1.ApiToken) (admission.Warnings, error) {
	if err := v.authorizeRestartTargets(ctx, tok, nil); err != nil {
		return nil, err
	}
	if tok.Spec.Revoked {
		return nil, nil
	}
	if err := v.authorizeMint(ctx, tok); err != nil {
		return nil, err
	}
	return v.warnings(ctx, tok)
}

// ValidateUpdate needs mint for a change that mints or widens a token.
// Revoking, and changes that mint nothing (description, rate), need none.
func (v *ApiTokenValidator) ValidateUpdate(ctx context.Context, before, after *keymintv1alpha1.ApiToken) (admission.Warnings, error) {
	if err := v.authorizeRestartTargets(ctx, after, before); err != nil {
		return nil, err
	}
	if !mints(before, after) {
		return nil, nil
	}
	if err := v.authorizeMint(ctx, after); err != nil {
		return nil, err
	}
	return v.warnings(ctx, after)
}

// ValidateDelete allows every deletion: deleting a token revokes it.
func (v *ApiTokenValidator) ValidateDelete(context.Context, *keymintv1alpha1.ApiToken) (admission.Warnings, error) {
	return nil, nil
}

// mints reports whether an update makes keymint mint a token, or changes
// what the token may do or how long it lives. A token revoked after the
// update mints nothing, whatever else changes: un-revoking it is checked.
func mints(before, after *keymintv1alpha1.ApiToken) bool {
	b, a := &before.Spec, &after.Spec
	switch {
	case a.Revoked:
		return false
	case b.Revoked:
		return true // un-revoking mints a new token
	}
	rotate := keymintv1alpha1.RotateAnnotation
	return !slices.Equal(b.Scopes, a.Scopes) || !slices.Equal(b.Audiences, a.Audiences) ||
		!equality.Semantic.DeepEqual(withoutRestartTargets(b.Rotation), withoutRestartTargets(a.Rotation)) ||
		!equality.Semantic.DeepEqual(b.ExpiresAt, a.ExpiresAt) || !equality.Semantic.DeepEqual(b.Lifetime, a.Lifetime) ||
		(after.Annotations[rotate] != "" && after.Annotations[rotate] != before.Annotations[rotate])
}

// withoutRestartTargets returns the rotation less its restart targets, which
// mint nothing (authorizeRestartTargets checks them).
func withoutRestartTargets(r *keymintv1alpha1.Rotation) *keymintv1alpha1.Rotation {
	if r == nil {
		return nil
	}
	c := r.DeepCopy()
	c.RestartTargets = nil
	return c
}

// workloadResources maps restart target kinds to their resources in API
// group apps.
var workloadResources = map[string]string{"Deployment": "deployments", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets"}

// authorizeRestartTargets denies naming a workload in
// spec.rotation.restartTargets unless the requesting user may patch it
// itself: keymint patches it after each rotation, and must not lend its own
// right to do so. Targets already named before an update are not asked
// about again.
func (v *ApiTokenValidator) authorizeRestartTargets(ctx context.Context, tok, before *keymintv1alpha1.ApiToken) error {
	targets := tok.Spec.RestartTargets()
	if len(targets) == 0 {
		return nil
	}
	// A revoked object is never sent here (the webhook's matchCondition lets
	// revoking work while keymint is down), so targets it gained while
	// revoked were never asked about: on un-revoking, ask about them all.
	var had []keymintv1alpha1.RestartTarget
	if before != nil && !before.Spec.Revoked {
		had = before.Spec.RestartTargets()
	}
	req, err := admission.RequestFromContext(ctx)
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	for _, t := range targets {
		if slices.Contains(had, t) {
			continue
		}
		resource, ok := workloadResources[t.Kind]
		if !ok {
			return apierrors.NewBadRequest(fmt.Sprintf("spec.rotation.restartTargets: kind %q is not Deployment, StatefulSet or DaemonSet", t.Kind))
		}
		allowed, err := v.Authorizer.Allowed(ctx, req.UserInfo, authorizationv1.ResourceAttributes{
			Namespace: tok.Namespace, Verb: "patch", Group: "apps", Resource: resource, Name: t.Name,
		})
		if err != nil {
			return apierrors.NewInternalError(err)
		}
		if !allowed {
			return apierrors.NewForbidden(keymintv1alpha1.GroupVersion.WithResource("apitokens").GroupResource(), tok.Name, fmt.Errorf(
				"user %q may not name %s %q in spec.rotation.restartTargets: keymint restarts it after each rotation, which needs the right to patch it, "+
					"and that is verb \"patch\" on resource %q of API group \"apps\" in namespace %q, which the user does not have",
				req.UserInfo.Username, t.Kind, t.Name, resource, tok.Namespace))
		}
	}
	return nil
}

// authorizeMint asks whether the requesting user may mint tokens of the
// token's ServiceUser and, since every such token carries the user's groups
// to kube-apiserver, impersonate each of those groups (as minting a
// credential in a group is acting as it).
func (v *ApiTokenValidator) authorizeMint(ctx context.Context, tok *keymintv1alpha1.ApiToken) error {
	if err := authorizeMint(ctx, v.Authorizer, tok.Namespace, tok.Name, "apitokens", tok.Spec.ServiceUser, ""); err != nil {
		return err
	}
	user := &keymintv1alpha1.ServiceUser{}
	err := v.Reader.Get(ctx, types.NamespacedName{Namespace: tok.Namespace, Name: tok.Spec.ServiceUser}, user)
	if apierrors.IsNotFound(err) {
		return nil // not there yet: whoever creates it with groups is checked for them
	}
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	return authorizeGroups(ctx, v.Authorizer, keymintv1alpha1.GroupVersion.WithResource("apitokens").GroupResource(), tok.Name, user.Spec.Groups,
		func(who, g string) string {
			return fmt.Sprintf("user %q may not mint tokens of ServiceUser %q, which carry its group %q to kube-apiserver", who, user.Name, g)
		})
}

// authorizeMint asks whether the requesting user may mint tokens of
// ServiceUser userName, and denies in words a user can paste into a Role.
// why, when set, says why the request mints.
func authorizeMint(ctx context.Context, authz Authorizer, namespace, objName, resource, userName, why string) error {
	req, err := admission.RequestFromContext(ctx)
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	allowed, err := authz.Allowed(ctx, req.UserInfo, authorizationv1.ResourceAttributes{
		Namespace: namespace, Verb: MintVerb, Group: keymintv1alpha1.GroupVersion.Group,
		Resource: "serviceusers", Name: userName,
	})
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	if allowed {
		return nil
	}
	if why != "" {
		why = " (" + why + ")"
	}
	return apierrors.NewForbidden(keymintv1alpha1.GroupVersion.WithResource(resource).GroupResource(), objName, fmt.Errorf(
		"user %q may not mint tokens of ServiceUser %q in namespace %q%s: that needs verb %q on resource \"serviceusers\" of API group %q. "+
			"A Role rule that grants it: {apiGroups: [%q], resources: [\"serviceusers\"], verbs: [%q], resourceNames: [%q]}",
		req.UserInfo.Username, userName, namespace, why, MintVerb, keymintv1alpha1.GroupVersion.Group,
		keymintv1alpha1.GroupVersion.Group, MintVerb, userName))
}

// warnings says what the token asks for that it will not get. kubectl
// prints them; the controller reports the same on the RequestGranted
// condition.
func (v *ApiTokenValidator) warnings(ctx context.Context, tok *keymintv1alpha1.ApiToken) (admission.Warnings, error) {
	user := &keymintv1alpha1.ServiceUser{}
	err := v.Reader.Get(ctx, types.NamespacedName{Namespace: tok.Namespace, Name: tok.Spec.ServiceUser}, user)
	if apierrors.IsNotFound(err) {
		return admission.Warnings{fmt.Sprintf("ServiceUser %q does not exist (yet): the token is issued once it does", tok.Spec.ServiceUser)}, nil
	}
	if err != nil {
		return nil, apierrors.NewInternalError(err)
	}
	clk := v.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	state := tokenstate.UserFrom(user)
	return GrantWarnings(&tok.Spec, &state, user.Name, clk), nil
}

// GrantWarnings words what tokenstate.NotGranted finds.
func GrantWarnings(spec *keymintv1alpha1.ApiTokenSpec, u *tokenstate.User, userName string, clk clock.PassiveClock) []string {
	var out []string
	scopes, capped := tokenstate.NotGranted(spec, u, clk.Now())
	if len(scopes) > 0 {
		out = append(out, fmt.Sprintf("scopes %s are not among ServiceUser %q's permissions: the token will not get them", strings.Join(scopes, ", "), userName))
	}
	if capped {
		out = append(out, fmt.Sprintf("the token asks to live longer than ServiceUser %q's tokenPolicy.maxLifetime (%s): it will expire %s after it is issued",
			userName, u.MaxLifetime, u.MaxLifetime))
	}
	// A rate for a scope the token will not get never applies: a check
	// requiring that scope is refused 403 first.
	effective := tokenstate.EffectiveScopes(spec.Scopes, u.Permissions)
	var unused []string
	for _, r := range spec.ScopeRequestsPerMinute {
		if !slices.Contains(effective, r.Scope) {
			unused = append(unused, r.Scope)
		}
	}
	if len(unused) > 0 {
		out = append(out, fmt.Sprintf("scopeRequestsPerMinute gives rates to %s, which the token will not get: those rates never apply", strings.Join(unused, ", ")))
	}
	return out
}

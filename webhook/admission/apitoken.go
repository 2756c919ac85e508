package admission

import (
	"context"
	"fmt"
	"slices"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/authz"
	"github.com/keymint/keymint/internal/recordkey"
	"github.com/keymint/keymint/internal/requester"
	"github.com/keymint/keymint/internal/tokenstate"
)

// ApiTokenValidator admits ApiTokens: it denies minting without the "mint"
// right on the ServiceUser, and warns (without denying: GitOps applies in
// any order) when the token asks for more than its ServiceUser gives.
type ApiTokenValidator struct {
	Reader     client.Reader
	Authorizer authz.Authorizer
	// Keyring and Webhook check the requester record the mutating webhook
	// wrote: validation runs after every mutation, so a record changed or
	// planted after keymint's (by another mutating webhook or policy), or
	// missing because the mutating webhook was skipped, is refused here.
	Keyring *recordkey.Keyring
	Webhook requester.Webhook
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
	if err := v.checkRecord(ctx, nil, tok); err != nil {
		return nil, err
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
	if after.Spec.Revoked {
		return nil, nil // (not sent here: the configuration's matchCondition)
	}
	if err := v.checkRecord(ctx, before, after); err != nil {
		return nil, err
	}
	if !requester.Changes(before, after) {
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

// checkRecord refuses a write whose requester record is not the one
// keymint's requester webhook writes for it: the record for this user over
// the stored object.
func (v *ApiTokenValidator) checkRecord(ctx context.Context, before, after *keymintv1alpha1.ApiToken) error {
	req, err := admission.RequestFromContext(ctx)
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	clk := v.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	want := after.DeepCopy()
	delete(want.Annotations, keymintv1alpha1.RequesterAnnotation)
	delete(want.Annotations, keymintv1alpha1.RequesterSignatureAnnotation)
	if err := v.Webhook.Record(ctx, v.Keyring, before, want, req.UserInfo, clk.Now()); err != nil {
		return apierrors.NewInternalError(err)
	}
	expected, _ := requester.Read(v.Keyring, want)
	got, problem := requester.Read(v.Keyring, after)
	if problem == "" && requester.SameRequest(got, expected) {
		return nil
	}
	return apierrors.NewForbidden(apiTokens, after.Name, fmt.Errorf(
		"annotation %s is not the record keymint's requester webhook writes for this request by user %q: "+
			"it was changed or added after that webhook (by another mutating webhook or admission policy), or that webhook was not called "+
			"(is MutatingWebhookConfiguration %q in place?). keymint mints only for the user who asked",
		keymintv1alpha1.RequesterAnnotation, req.UserInfo.Username, v.Webhook.Name))
}

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
		denial, err := authz.MayPatch(ctx, v.Authorizer, req.UserInfo, tok.Namespace, t.Kind, t.Name)
		if err != nil {
			return apierrors.NewInternalError(err)
		}
		if denial != nil {
			return apierrors.NewForbidden(apiTokens, tok.Name, fmt.Errorf("user %q may not name %s %q in spec.rotation.restartTargets: it may not %s. A rule that grants it: %s",
				req.UserInfo.Username, t.Kind, t.Name, denial.What, denial.Rule))
		}
	}
	return nil
}

// authorizeMint asks whether the requesting user may mint tokens of the
// token's ServiceUser and carry each of its groups. A ServiceUser that does
// not exist yet has no groups: the controller asks again, for this user,
// once it does.
func (v *ApiTokenValidator) authorizeMint(ctx context.Context, tok *keymintv1alpha1.ApiToken) error {
	user := &keymintv1alpha1.ServiceUser{}
	err := v.Reader.Get(ctx, types.NamespacedName{Namespace: tok.Namespace, Name: tok.Spec.ServiceUser}, user)
	switch {
	case apierrors.IsNotFound(err):
		user.Spec.Groups = nil
	case err != nil:
		return apierrors.NewInternalError(err)
	}
	return authorizeMint(ctx, v.Authorizer, apiTokens, tok.Name, tok.Namespace, tok.Spec.ServiceUser, user.Spec.Groups, "")
}

var (
	apiTokens    = keymintv1alpha1.GroupVersion.WithResource("apitokens").GroupResource()
	serviceUsers = keymintv1alpha1.GroupVersion.WithResource("serviceusers").GroupResource()
)

// authorizeMint asks whether the requesting user may mint tokens of
// ServiceUser userName with its groups, and denies in words a user can
// paste into a Role. why, when set, says why the request mints.
func authorizeMint(ctx context.Context, a authz.Authorizer, resource schema.GroupResource, objName, namespace, userName string, groups []string, why string) error {
	req, err := admission.RequestFromContext(ctx)
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	denial, err := authz.MayMint(ctx, a, req.UserInfo, namespace, userName, groups)
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	if denial == nil {
		return nil
	}
	if why != "" {
		why = " (" + why + ")"
	}
	return apierrors.NewForbidden(resource, objName, fmt.Errorf("user %q may not %s%s. A rule that grants it: %s", req.UserInfo.Username, denial.What, why, denial.Rule))
}

// warnings says what the token asks for that it will not get. kubectl
// prints them; the controller reports the same on the RequestGranted
// condition.
func (v *ApiTokenValidator) warnings(ctx context.Context, tok *keymintv1alpha1.ApiToken) (admission.Warnings, error) {
	user := &keymintv1alpha1.ServiceUser{}
	err := v.Reader.Get(ctx, types.NamespacedName{Namespace: tok.Namespace, Name: tok.Spec.ServiceUser}, user)
	if apierrors.IsNotFound(err) {
		return admission.Warnings{fmt.Sprintf("ServiceUser %q does not exist (yet): the token is issued once it does, if you may then mint its tokens and carry its groups", tok.Spec.ServiceUser)}, nil
	}
	if err != nil {
		return nil, apierrors.NewInternalError(err)
	}
	clk := v.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	state := tokenstate.UserFrom(user)
	warnings := GrantWarnings(&tok.Spec, &state, user.Name, clk)
	if state.RequireApproval {
		warnings = append(warnings, fmt.Sprintf("ServiceUser %q requires approval: nothing is minted for this request (no Secret yet: pods that mount it wait) until another user who may approve it runs `kubectl keymint approve -n %s %s`",
			user.Name, tok.Namespace, tok.Name))
	}
	return warnings, nil
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
	if spec.Quota != nil && tokenstate.QuotaOf(spec, u) != spec.Quota {
		out = append(out, fmt.Sprintf("quota allows more than ServiceUser %q's tokenPolicy.quota (more uses, or refilled more often), which applies", userName))
	}
	if spec.MaxIdle != nil && tokenstate.MaxIdle(spec, u) < spec.MaxIdle.Duration {
		out = append(out, fmt.Sprintf("maxIdle %s is longer than ServiceUser %q's tokenPolicy.maxIdle (%s), which applies", spec.MaxIdle.Duration, userName, u.MaxIdle))
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

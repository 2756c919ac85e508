package testenv

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/token"
)

// The objects the tests write, built with options as cert-manager's gen
// package builds its fixtures: testenv.ApiToken(ns, "t", "billing",
// testenv.WithLifetime(time.Hour)).

// ServiceUserOption changes a ServiceUser fixture.
type ServiceUserOption func(*keymintv1alpha1.ServiceUser)

// ServiceUser is a ServiceUser named ns/name, with no permissions unless an
// option grants some.
func ServiceUser(ns, name string, opts ...ServiceUserOption) *keymintv1alpha1.ServiceUser {
	u := &keymintv1alpha1.ServiceUser{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	for _, o := range opts {
		o(u)
	}
	return u
}

// WithPermissions sets the scopes the user's tokens may be granted.
func WithPermissions(scopes ...string) ServiceUserOption {
	return func(u *keymintv1alpha1.ServiceUser) { u.Spec.Permissions = scopes }
}

// WithGroups sets the groups the user's tokens authenticate in.
func WithGroups(groups ...string) ServiceUserOption {
	return func(u *keymintv1alpha1.ServiceUser) { u.Spec.Groups = groups }
}

// WithMaxLifetime caps the lifetime of the user's tokens.
func WithMaxLifetime(d time.Duration) ServiceUserOption {
	return func(u *keymintv1alpha1.ServiceUser) {
		u.Spec.TokenPolicy.MaxLifetime = &metav1.Duration{Duration: d}
	}
}

// WithPrefix sets the prefix of the user's tokens.
func WithPrefix(p string) ServiceUserOption {
	return func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.Prefix = p }
}

// WithRequestsPerMinute sets the user's rate limit: high, for tests whose
// checks are not about rate limits.
func WithRequestsPerMinute(n int32) ServiceUserOption {
	return func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.RequestsPerMinute = n }
}

// WithRequireApproval makes the user's tokens wait for approval.
func WithRequireApproval() ServiceUserOption {
	return func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.RequireApproval = true }
}

// ApiTokenOption changes an ApiToken fixture.
type ApiTokenOption func(*keymintv1alpha1.ApiToken)

// ApiToken is an ApiToken named ns/name for the ServiceUser user.
func ApiToken(ns, name, user string, opts ...ApiTokenOption) *keymintv1alpha1.ApiToken {
	t := &keymintv1alpha1.ApiToken{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       keymintv1alpha1.ApiTokenSpec{ServiceUser: user},
	}
	for _, o := range opts {
		o(t)
	}
	return t
}

// WithLifetime sets how long each token lives from its issue.
func WithLifetime(d time.Duration) ApiTokenOption {
	return func(t *keymintv1alpha1.ApiToken) { t.Spec.Lifetime = &metav1.Duration{Duration: d} }
}

// WithExpiresAt sets a fixed expiry.
func WithExpiresAt(at time.Time) ApiTokenOption {
	return func(t *keymintv1alpha1.ApiToken) { t.Spec.ExpiresAt = &metav1.Time{Time: at} }
}

// WithRotation rotates the token every every (only on request, if 0), the
// old one accepted for grace after.
func WithRotation(every, grace time.Duration) ApiTokenOption {
	return func(t *keymintv1alpha1.ApiToken) {
		t.Spec.Rotation = &keymintv1alpha1.Rotation{}
		if every > 0 {
			t.Spec.Rotation.Every = &metav1.Duration{Duration: every}
		}
		t.Spec.Rotation.GracePeriod = &metav1.Duration{Duration: grace}
	}
}

// WithSecretName names the token's Secret.
func WithSecretName(name string) ApiTokenOption {
	return func(t *keymintv1alpha1.ApiToken) { t.Spec.SecretName = name }
}

// WithScopes sets the token's scopes.
func WithScopes(scopes ...string) ApiTokenOption {
	return func(t *keymintv1alpha1.ApiToken) { t.Spec.Scopes = scopes }
}

// Issued looks once at the ApiToken ns/name and returns the token its
// Secret holds, and the ApiToken, if it is Ready and its status accepts that
// token; otherwise an error saying what is missing. Wrap it in a wait
// (Poll, or Gomega's Eventually).
func Issued(ctx context.Context, c client.Reader, ns, name string) (string, *keymintv1alpha1.ApiToken, error) {
	tok := &keymintv1alpha1.ApiToken{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, tok); err != nil {
		return "", nil, err
	}
	if !meta.IsStatusConditionTrue(tok.Status.Conditions, keymintv1alpha1.ApiTokenConditionReady) {
		return "", tok, fmt.Errorf("ApiToken %s/%s is not Ready: %+v", ns, name, tok.Status.Conditions)
	}
	sec := &corev1.Secret{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: tok.Status.SecretName}, sec); err != nil {
		return "", tok, fmt.Errorf("ApiToken %s/%s is Ready, but its Secret: %w", ns, name, err)
	}
	plain := string(sec.Data[keymintv1alpha1.SecretTokenKey])
	if token.HashString(plain) != tok.Status.TokenHash {
		return "", tok, fmt.Errorf("ApiToken %s/%s: its status does not accept the token in Secret %s", ns, name, sec.Name)
	}
	return plain, tok, nil
}

// WaitIssued waits until Issued succeeds, for within at most.
func WaitIssued(ctx context.Context, c client.Reader, ns, name string, within time.Duration) (string, *keymintv1alpha1.ApiToken, error) {
	var plain string
	var tok *keymintv1alpha1.ApiToken
	err := Poll(ctx, within, "ApiToken "+ns+"/"+name+" to be issued", func(ctx context.Context) error {
		var err error
		plain, tok, err = Issued(ctx, c, ns, name)
		return err
	})
	return plain, tok, err
}

// EventsAbout lists the Events in ns about the object name of kind (any
// kind, if empty).
func EventsAbout(ctx context.Context, c client.Reader, ns, kind, name string) ([]eventsv1.Event, error) {
	var list eventsv1.EventList
	if err := c.List(ctx, &list, client.InNamespace(ns)); err != nil {
		return nil, err
	}
	var out []eventsv1.Event
	for _, e := range list.Items {
		if e.Regarding.Name == name && (kind == "" || e.Regarding.Kind == kind) {
			out = append(out, e)
		}
	}
	return out, nil
}

// Reasons lists the events' reasons, once per occurrence (Occurrences).
func Reasons(events []eventsv1.Event) []string {
	var reasons []string
	for _, e := range events {
		for range Occurrences(e) {
			reasons = append(reasons, e.Reason)
		}
	}
	return reasons
}

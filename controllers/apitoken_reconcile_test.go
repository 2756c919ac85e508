package controllers

import (
	"context"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/recordkey/recordkeytest"
	"github.com/keymint/keymint/internal/requester"
	"github.com/keymint/keymint/internal/secretrecord"
	"github.com/keymint/keymint/internal/token"
)

// refuseAll is an authorizer under which nobody may do anything.
type refuseAll struct{}

func (refuseAll) Allowed(context.Context, authenticationv1.UserInfo, authorizationv1.ResourceAttributes) (bool, error) {
	return false, nil
}

// A rotation its requester may not have is retried after the denial
// backoff, but the token's own schedule still holds: a rotated-out hash
// that retireWhenIdle ends now is retired with its Event, and one that
// ends sooner than the retry brings the token back then.
func TestADeniedMintKeepsTheTokensSchedule(t *testing.T) {
	ring := recordkeytest.Keyring(t, "test")
	plain, _ := token.Mint("km")
	issued, used := metav1.NewTime(now.Add(-time.Hour)), metav1.NewTime(now.Add(-time.Minute))
	user := &keymintv1alpha1.ServiceUser{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "ci", UID: "uid-ci"}}
	tok := &keymintv1alpha1.ApiToken{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "t", UID: "uid-t",
			Annotations: map[string]string{keymintv1alpha1.RotateAnnotation: "r1"}},
		Spec: keymintv1alpha1.ApiTokenSpec{ServiceUser: "ci", Rotation: &keymintv1alpha1.Rotation{
			GracePeriod: &metav1.Duration{Duration: time.Hour}, RetireWhenIdle: &metav1.Duration{Duration: 5 * time.Minute},
		}},
		Status: keymintv1alpha1.ApiTokenStatus{
			Serial: 2, TokenHash: token.HashString(plain), TokenPrefix: token.Display(plain), IssuedAt: &issued,
			ServiceUserUID: "uid-ci", TokenLastUsedAt: &used,
			PreviousTokens: []keymintv1alpha1.PreviousToken{
				// Unused since the rotation an hour ago: retired now.
				{TokenHash: "sha256:idle", IssuedAt: metav1.NewTime(now.Add(-2 * time.Hour)), ValidUntil: metav1.NewTime(now.Add(10 * time.Minute))},
				// Used a minute ago: retired in 4 minutes.
				{TokenHash: "sha256:busy", IssuedAt: metav1.NewTime(now.Add(-2 * time.Hour)), ValidUntil: metav1.NewTime(now.Add(10 * time.Minute)), LastUsedAt: &used},
			},
		},
	}
	requester.Admit(ring, nil, tok, authenticationv1.UserInfo{Username: "alice"}, now.Add(-time.Hour), time.Time{})
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "t",
		Labels:          map[string]string{keymintv1alpha1.TokenLabel: "t"},
		OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(tok, keymintv1alpha1.GroupVersion.WithKind("ApiToken"))}}}
	secretrecord.Write(sec, tok, ring, plain, secretrecord.Record{Serial: 2, Hash: token.HashString(plain), IssuedAt: issued.Time, ServiceUserUID: "uid-ci"})

	objects := func() []client.Object { return []client.Object{tok.DeepCopy(), user.DeepCopy(), sec.DeepCopy()} }
	r, recorder := newFakeReconciler(t, ring, objects(), objects())
	r.Authorizer, r.AuthorizationRetry = refuseAll{}, time.Hour
	res, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: types.NamespacedName{Namespace: "ns", Name: "t"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.RequeueAfter != 4*time.Minute {
		t.Errorf("requeue after %v, want 4m: the busy hash retires before the denied rotation is asked again (1h)", res.RequeueAfter)
	}
	close(recorder.Events)
	var reasons []string
	for e := range recorder.Events {
		reasons = append(reasons, strings.Fields(e)[1])
	}
	if !strings.Contains(strings.Join(reasons, " "), eventMintDenied) || !strings.Contains(strings.Join(reasons, " "), eventRetiredIdle) {
		t.Errorf("Events %v, want both %s and %s", reasons, eventMintDenied, eventRetiredIdle)
	}
	got := &keymintv1alpha1.ApiToken{}
	if err := r.Client.Get(context.Background(), client.ObjectKeyFromObject(tok), got); err != nil {
		t.Fatal(err)
	}
	if got.Status.TokenHash != tok.Status.TokenHash || len(got.Status.PreviousTokens) != 1 || got.Status.PreviousTokens[0].TokenHash != "sha256:busy" {
		t.Errorf("status %+v, want the current token kept and only the busy hash in grace", got.Status)
	}
}

// Whether keymint trusts a requester decides mints, never revocations: with
// the requester webhook's configuration unreadable, a disabled user's token
// is still revoked at once (its Secret emptied, its status cleared), while a
// mint waits until the configuration can be read.
func TestAnUnreadableWebhookConfigurationHoldsUpMintsOnly(t *testing.T) {
	for name, disabled := range map[string]bool{"revoke": true, "mint": false} {
		t.Run(name, func(t *testing.T) {
			ring := recordkeytest.Keyring(t, "test")
			plain, _ := token.Mint("km")
			issued := metav1.NewTime(now.Add(-time.Hour))
			user := &keymintv1alpha1.ServiceUser{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "ci", UID: "uid-ci"},
				Spec: keymintv1alpha1.ServiceUserSpec{Disabled: disabled}}
			tok := &keymintv1alpha1.ApiToken{
				ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "t", UID: "uid-t", Generation: 1},
				Spec:       keymintv1alpha1.ApiTokenSpec{ServiceUser: "ci"},
			}
			requester.Admit(ring, nil, tok, authenticationv1.UserInfo{Username: "alice"}, now.Add(-time.Hour), time.Time{})
			objects := []client.Object{user}
			if disabled {
				tok.Status = keymintv1alpha1.ApiTokenStatus{Serial: 2, TokenHash: token.HashString(plain), TokenPrefix: token.Display(plain),
					IssuedAt: &issued, ServiceUserUID: "uid-ci"}
				sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "t",
					Labels:          map[string]string{keymintv1alpha1.TokenLabel: "t"},
					OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(tok, keymintv1alpha1.GroupVersion.WithKind("ApiToken"))}}}
				secretrecord.Write(sec, tok, ring, plain, secretrecord.Record{Serial: 2, Hash: token.HashString(plain), IssuedAt: issued.Time, ServiceUserUID: "uid-ci"})
				objects = append(objects, sec)
			}
			objects = append(objects, tok)
			r, _ := newFakeReconciler(t, ring, objects, objects)
			r.RequesterWebhook, r.Authorizer = "keymint-requester", allowAll{}
			r.APIReader = interceptor.NewClient(r.APIReader.(client.WithWatch), interceptor.Funcs{
				Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
					if _, ok := obj.(*admissionregistrationv1.MutatingWebhookConfiguration); ok {
						return apierrors.NewServiceUnavailable("kube-apiserver is restarting")
					}
					return c.Get(ctx, key, obj, opts...)
				},
			})
			_, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: types.NamespacedName{Namespace: "ns", Name: "t"}})
			got := &keymintv1alpha1.ApiToken{}
			if gerr := r.Client.Get(context.Background(), client.ObjectKeyFromObject(tok), got); gerr != nil {
				t.Fatal(gerr)
			}
			sec := &corev1.Secret{}
			secErr := r.Client.Get(context.Background(), types.NamespacedName{Namespace: "ns", Name: "t"}, sec)
			if !disabled {
				if err == nil || got.Status.TokenHash != "" || secErr == nil && len(sec.Data[keymintv1alpha1.SecretTokenKey]) > 0 {
					t.Errorf("a mint went ahead without knowing whether to trust its requester: err %v, status %+v", err, got.Status)
				}
				return
			}
			if err != nil {
				t.Fatalf("the revocation waited for the configuration: %v", err)
			}
			if got.Status.TokenHash != "" || len(sec.Data[keymintv1alpha1.SecretTokenKey]) > 0 {
				t.Errorf("the disabled user's token is still on record: hash %q, Secret data %d bytes", got.Status.TokenHash, len(sec.Data[keymintv1alpha1.SecretTokenKey]))
			}
			if c := meta.FindStatusCondition(got.Status.Conditions, keymintv1alpha1.ApiTokenConditionRevoked); c == nil || c.Status != metav1.ConditionTrue || c.Reason != keymintv1alpha1.ApiTokenReasonServiceUserDisabled {
				t.Errorf("Revoked condition %+v, want True, ServiceUserDisabled: keymint minted this token, so its status says why it ended", c)
			}
		})
	}
}

// allowAll is an authorizer under which anybody may do anything.
type allowAll struct{}

func (allowAll) Allowed(context.Context, authenticationv1.UserInfo, authorizationv1.ResourceAttributes) (bool, error) {
	return true, nil
}

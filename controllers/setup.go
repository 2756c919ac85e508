// Setup: the options, the cache and the registration of the three reconcilers and the indexes with a manager.

package controllers

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/authz"
	"github.com/keymint/keymint/internal/recordkey"
	"github.com/keymint/keymint/internal/secretrecord"
)

// CacheOptions limits the manager's cache of Secrets to keymint's token
// Secrets, so the manager holds no other namespace's Secrets in memory, and
// strips managed fields from everything it caches. (The serving-certificate
// rotator keeps a cache of its own, of keymint's namespace only.)
func CacheOptions() cache.Options {
	hasTokenLabel, err := labels.NewRequirement(keymintv1alpha1.TokenLabel, selection.Exists, nil)
	if err != nil {
		panic(err) // a constant, valid label key
	}
	return cache.Options{
		DefaultTransform: stripUnread,
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Secret{}: {Label: labels.NewSelector().Add(*hasTokenLabel), Transform: keepOwnedSecrets},
		},
	}
}

// stripManagedFields is controller-runtime's transform that drops them.
var stripManagedFields = cache.TransformStripManagedFields()

// stripUnread drops what keymint never reads from every object it caches:
// managed fields, and the last-applied configuration client-side kubectl
// apply leaves (about 0.6 KB an ApiToken). Nothing is written back from
// the cache whole: ApiTokens and ServiceUsers are patched, so what the
// cache lacks is never sent.
func stripUnread(obj any) (any, error) {
	obj, err := stripManagedFields(obj)
	if err != nil {
		return obj, err
	}
	if o, ok := obj.(metav1.Object); ok {
		if ann := o.GetAnnotations(); ann != nil {
			if _, has := ann[corev1.LastAppliedConfigAnnotation]; has {
				delete(ann, corev1.LastAppliedConfigAnnotation)
				if len(ann) == 0 {
					o.SetAnnotations(nil)
				}
			}
		}
	}
	return obj, nil
}

// keepOwnedSecrets strips managed fields from every cached Secret, and the
// data and annotations from one no ApiToken controls: anyone may put the
// label on a Secret of their own, and its contents are none of keymint's
// business (its name and owner are all a conflict check reads). A token
// Secret keeps the hash of its token, never the token itself
// (secretrecord.ForCache): the plaintext is in memory only while keymint
// writes it.
func keepOwnedSecrets(obj any) (any, error) {
	sec, ok := obj.(*corev1.Secret)
	if !ok {
		return obj, nil
	}
	sec.ManagedFields = nil
	if owner := metav1.GetControllerOf(sec); owner == nil || !isApiTokenRef(owner) {
		sec.Data, sec.StringData, sec.Annotations = nil, nil, nil
		return sec, nil
	}
	secretrecord.ForCache(sec)
	return sec, nil
}

// cacheSyncTimeout is how long a controller waits for the controllers'
// cache to list everything once it is elected (controller-runtime's
// default is 2 minutes): that cache starts only on the leader, so a new
// leader lists every ApiToken and token Secret then, which takes minutes
// at a million tokens, and a controller that gives up stops the manager.
// The clock runs from the election, so it includes the wait for the check
// index (Cache.StartAfter, at most startAfterAtMost).
const cacheSyncTimeout = 15*time.Minute + startAfterAtMost

// DefaultExpiryWarning is how long before expiry a token is ExpiringSoon
// when its ServiceUser sets no tokenPolicy.expiryWarning: 7 days, as GitLab
// warns.
const DefaultExpiryWarning = 7 * 24 * time.Hour

// Options configure the controllers.
type Options struct {
	// Clock is the clock expiry and rotation are decided by; tests pass a
	// fake one. Nil means the real clock.
	Clock clock.PassiveClock
	// Keyring signs the token records written into Secrets.
	Keyring *recordkey.Keyring
	// ExpiryWarning is the default expiry warning window; zero turns
	// warnings off for users that set none.
	ExpiryWarning time.Duration
	// Authorizer asks whether a token's requester may have it minted, or a
	// restart target restarted, at the moment keymint would; nil means
	// SubjectAccessReviews with the manager's client.
	Authorizer authz.Authorizer
	// AuthorizationRetry is how often a denied mint is tried again; zero
	// means DefaultAuthorizationRetry.
	AuthorizationRetry time.Duration
	// RequesterWebhook is the MutatingWebhookConfiguration that records who
	// asks for each ApiToken: nothing is minted, or restarted, while it is
	// missing or can be skipped. Empty turns the check off: only for suites
	// that run the controllers without keymint's webhook configurations.
	RequesterWebhook string
	// Cache is what the controllers watch and read (NewCache); nil makes
	// one.
	Cache *Cache
}

// Setup registers the indexes and the controllers with a manager, reading
// through o.Cache (a new leader-only cache when nil).
func Setup(ctx context.Context, mgr ctrl.Manager, o Options) error {
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if o.Authorizer == nil {
		o.Authorizer = authz.SubjectAccessReviewer{Client: mgr.GetClient()}
	}
	if o.Cache == nil {
		c, err := NewCache(mgr)
		if err != nil {
			return err
		}
		o.Cache = c
	}
	if err := SetupIndexes(ctx, o.Cache); err != nil {
		return err
	}
	if err := (&ApiTokenReconciler{
		Client:        o.Cache.Client(),
		APIReader:     mgr.GetAPIReader(),
		Recorder:      mgr.GetEventRecorder("keymint-apitoken"),
		Clock:         o.Clock,
		Keyring:       o.Keyring,
		ExpiryWarning: o.ExpiryWarning,

		Authorizer:         o.Authorizer,
		AuthorizationRetry: o.AuthorizationRetry,
		RequesterWebhook:   o.RequesterWebhook,
	}).SetupWithManager(mgr, o.Cache); err != nil {
		return err
	}
	if err := (&RestartReconciler{
		Client:     o.Cache.Client(),
		Recorder:   mgr.GetEventRecorder("keymint-restart"),
		Clock:      o.Clock,
		Keyring:    o.Keyring,
		Authorizer: o.Authorizer,
		APIReader:  mgr.GetAPIReader(),
		Webhook:    o.RequesterWebhook,
	}).SetupWithManager(mgr, o.Cache); err != nil {
		return err
	}
	return (&ServiceUserReconciler{
		Client:   o.Cache.Client(),
		Recorder: mgr.GetEventRecorder("keymint-serviceuser"),
	}).SetupWithManager(mgr, o.Cache)
}

// ApiToken reconciler: Reconcile reads (gather), calls decide and desiredStatus, writes the Secret and the status, and emits Events.

package controllers

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/source"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/authz"
	"github.com/keymint/keymint/internal/recordkey"
	"github.com/keymint/keymint/internal/requester"
	"github.com/keymint/keymint/internal/secretrecord"
	"github.com/keymint/keymint/internal/token"
)

// conflictRetry is how often a token whose Secret name is taken looks again:
// the foreign Secret is outside the controller's cache, so its deletion
// triggers nothing.
const conflictRetry = time.Minute

// ApiTokenReconciler mints each ApiToken's token into its Secret and keeps
// the two in step: expiry, revocation, rotation, a lost Secret.
type ApiTokenReconciler struct {
	// Client reads from the cache, which holds only keymint's token Secrets.
	Client client.Client
	// APIReader reads past the cache, to tell a foreign Secret from none.
	APIReader client.Reader
	Recorder  events.EventRecorder
	Clock     clock.PassiveClock
	// Keyring signs the record written into each token Secret, and verifies
	// it before a record is adopted.
	Keyring *recordkey.Keyring
	// ExpiryWarning is how long before expiry a token whose ServiceUser sets
	// no tokenPolicy.expiryWarning is ExpiringSoon; zero turns it off.
	ExpiryWarning time.Duration
	// Authorizer asks, before each mint, whether the token's requester may
	// have it minted.
	Authorizer authz.Authorizer
	// AuthorizationRetry is how often a denied mint is tried again; zero
	// means DefaultAuthorizationRetry.
	AuthorizationRetry time.Duration
	// RequesterWebhook is the MutatingWebhookConfiguration that records
	// requesters: no record is trusted while it can be skipped.
	RequesterWebhook string

	// statusWritten holds, per ApiToken UID, the last status this controller
	// wrote, until the next reconcile of that token takes it: a Secret event
	// that beats our own status write into the cache then needs no read past
	// the cache to be told apart from a crash's leftover.
	statusWritten sync.Map // types.UID → writtenStatus

	// mints bounds how often one ApiToken mints.
	mints mintLimiter
	// trustCache answers, for reconciles that do not mint, whether the
	// requester webhook is enforced from a read at most a second old: a
	// disabled user's N tokens are revoked with one read, not N. A mint
	// always reads afresh. Set by SetupWithManager.
	trustCache *requester.CheckCache
	// denials holds, for backoff, the ApiTokens whose last mint was denied.
	denials sync.Map // types.NamespacedName → denials
}

// +kubebuilder:rbac:groups=keymint.io,resources=apitokens,verbs=get;list;watch
// +kubebuilder:rbac:groups=keymint.io,resources=apitokens/status,verbs=patch
// +kubebuilder:rbac:groups=keymint.io,resources=apitokens/finalizers,verbs=update
// +kubebuilder:rbac:groups=keymint.io,resources=serviceusers,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;update
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile brings one ApiToken's Secret and status in line with its spec,
// its ServiceUser and the clock: gather, decide, write.
func (r *ApiTokenReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	tok := &keymintv1alpha1.ApiToken{}
	if err := r.Client.Get(ctx, req.NamespacedName, tok); err != nil {
		if apierrors.IsNotFound(err) {
			r.denials.Delete(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	in, settled, err := r.gather(ctx, tok)
	if settled || err != nil {
		return ctrl.Result{}, err
	}
	d := decide(in.obs)
	if d.mints() {
		// One token per mint decision: decide only on the object as it is
		// now. A cache behind our own last status write would mint again.
		if behind, err := r.cacheBehind(ctx, tok, in.user); behind || err != nil {
			return ctrl.Result{RequeueAfter: time.Second}, err
		}
		if wait, ok := r.mints.reserve(tok.UID, r.Clock.Now()); !ok {
			r.rateLimitedEvent(tok, wait, d)
			return ctrl.Result{RequeueAfter: wait}, nil
		}
	}
	if err := r.askRequester(ctx, &in, d); err != nil {
		return ctrl.Result{}, err
	}
	obs := &in.obs

	var rec *secretrecord.Record
	var writeErr error
	denied := obs.denied(d)
	switch {
	case denied:
		// Not minted: the status says why, and a retry asks again.
	case d.mints():
		rec, writeErr = r.writeNewToken(ctx, &in, d)
	case d.Action == actRevoke:
		writeErr = r.removeToken(ctx, in.secret)
	}
	wroteSecret := writeErr == nil && !denied && d.Action != actNone
	switch {
	case denied:
		// Nothing was minted: conditionEvents says why (MintDenied). A
		// record adopted from the Secret is recovered all the same.
		r.actionEvent(tok, obs, decision{}, nil)
	case writeErr == nil:
		// The action is done once the Secret is written: say so even if the
		// status write below fails and a retry adopts the Secret.
		r.actionEvent(tok, obs, d, rec)
	default:
		r.writeFailedEvent(tok, writeErr)
	}

	// The status is written whether or not the Secret could be: a shortened
	// expiry, or a token the Secret no longer delivers, is on record at once.
	a := afterAction(*obs, d, rec, writeErr)
	replaced := tok.ResourceVersion
	before, res, written, err := r.writeStatus(ctx, tok, obs, a, wroteSecret)
	if apierrors.IsConflict(err) {
		// Someone wrote the ApiToken since it was read, and nothing of ours
		// depends on this status: decide again on the new version.
		return ctrl.Result{Requeue: true}, nil
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	if written {
		r.statusWritten.Store(tok.UID, writtenStatus{serial: res.Status.Serial, replaced: replaced})
	}
	if writeErr != nil {
		return ctrl.Result{}, writeErr
	}
	r.conditionEvents(tok, before)
	r.retiredEvents(tok, res.Retired)
	r.leakEvents(tok, obs, res.Leaks)

	return ctrl.Result{RequeueAfter: r.lookAgain(req, tok.UID, obs, res.RequeueAfter)}, nil
}

// lookAgain is when to reconcile again: the first of the next change by the
// clock (byClock), a denied mint's retry, a taken Secret name's retry. A
// denial neither hides nor postpones the token's own schedule.
func (r *ApiTokenReconciler) lookAgain(req ctrl.Request, uid types.UID, obs *observation, byClock time.Duration) time.Duration {
	var retry []time.Duration
	switch {
	case obs.Auth == nil:
	case obs.Auth.Allowed:
		r.denials.Delete(req.NamespacedName)
	case obs.Auth.Reason == keymintv1alpha1.ApiTokenReasonNoRequesterRecord:
		// Only a write through admission brings a record, and a write
		// brings a reconcile: nothing to retry.
	default:
		retry = append(retry, r.retryDenied(req.NamespacedName, uid))
	}
	if obs.Approval != nil && obs.Approval.Retry {
		retry = append(retry, r.retryDenied(req.NamespacedName, uid))
	}
	if obs.Conflict {
		retry = append(retry, conflictRetry)
	}
	return soonestAfter(byClock, retry...)
}

// soonestAfter is the shortest of the positive durations; zero when none is.
func soonestAfter(first time.Duration, more ...time.Duration) time.Duration {
	d := first
	for _, m := range more {
		if m > 0 && (d <= 0 || m < d) {
			d = m
		}
	}
	return d
}

// writeNewToken mints a token and writes it with its signed record into the
// Secret, creating the Secret if needed. The Secret is written before the
// status, so a crash in between leaves a Secret the next reconcile adopts.
func (r *ApiTokenReconciler) writeNewToken(ctx context.Context, in *reads, d decision) (*secretrecord.Record, error) {
	tok := in.tok
	prefix := in.user.Spec.TokenPolicy.Prefix
	if prefix == "" {
		prefix = token.DefaultPrefix
	}
	plain, err := token.Mint(prefix)
	if err != nil {
		return nil, fmt.Errorf("minting a token: %w", err)
	}
	rec := newRecord(in.obs, d, token.HashString(plain), token.Display(plain))

	sec := in.secret
	create := sec == nil
	if create {
		sec = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: tok.Namespace, Name: tok.SecretNameOrDefault()}, Type: corev1.SecretTypeOpaque}
	} else {
		sec = sec.DeepCopy()
	}
	if sec.Labels == nil {
		sec.Labels = map[string]string{}
	}
	sec.Labels[keymintv1alpha1.TokenLabel] = secretrecord.TokenLabelValue(tok.Name)
	sec.OwnerReferences = ownerReferences(sec.OwnerReferences, tok)
	secretrecord.Write(sec, tok, r.Keyring, plain, rec)

	if create {
		err = r.Client.Create(ctx, sec)
	} else {
		err = r.updateSecret(ctx, sec)
	}
	if err != nil {
		// A conflict or an already existing Secret means the cache was behind:
		// nothing was written, and the retry decides again from fresh state.
		return nil, fmt.Errorf("writing Secret %s/%s: %w", sec.Namespace, sec.Name, err)
	}
	logf.FromContext(ctx).Info("Wrote token to Secret", "secret", sec.Name, "tokenPrefix", rec.Display, "serial", rec.Serial, "reason", d.Reason)
	return &rec, nil
}

// removeToken empties the Secret of its token and record, keeping the Secret
// so that pods that mount it see the token disappear rather than the volume.
func (r *ApiTokenReconciler) removeToken(ctx context.Context, sec *corev1.Secret) error {
	sec = sec.DeepCopy()
	secretrecord.Clear(sec)
	if err := r.updateSecret(ctx, sec); err != nil {
		return fmt.Errorf("removing the token from Secret %s/%s: %w", sec.Namespace, sec.Name, err)
	}
	logf.FromContext(ctx).Info("Removed revoked token from Secret", "secret", sec.Name)
	return nil
}

// updateSecret writes a token Secret read from the cache. The cache holds
// its token's hash in place of the token (secretrecord.ForCache): sending
// that back would replace the token its pods read, so a Secret whose token
// was not replaced or removed first is refused.
func (r *ApiTokenReconciler) updateSecret(ctx context.Context, sec *corev1.Secret) error {
	if !secretrecord.Writable(sec) {
		return fmt.Errorf("refusing to write Secret %s/%s with the cache's digest of its token as its token", sec.Namespace, sec.Name)
	}
	return r.Client.Update(ctx, sec)
}

// ownerReferences returns refs with tok as the only controller.
func ownerReferences(refs []metav1.OwnerReference, tok *keymintv1alpha1.ApiToken) []metav1.OwnerReference {
	out := []metav1.OwnerReference{*metav1.NewControllerRef(tok, keymintv1alpha1.GroupVersion.WithKind("ApiToken"))}
	for _, ref := range refs {
		if ref.Controller == nil || !*ref.Controller {
			out = append(out, ref)
		}
	}
	return out
}

// writeStatus writes the status after the action a. When the action wrote
// the Secret (wroteSecret), the status must follow it: a write that loses
// to someone else's (a use recorded, a spec edited) is computed again from
// the object as it is now, so a minted token never lacks its record. It
// returns the status before the write, the result and whether it wrote.
func (r *ApiTokenReconciler) writeStatus(ctx context.Context, tok *keymintv1alpha1.ApiToken, obs *observation, a after, wroteSecret bool) (
	*keymintv1alpha1.ApiTokenStatus, result, bool, error) {
	for attempt := 1; ; attempt++ {
		before := tok.Status.DeepCopy()
		res := desiredStatus(tok.Status, tok.Generation, tok.SecretNameOrDefault(), *obs, a)
		written, err := r.updateStatus(ctx, tok, res.Status)
		if !apierrors.IsConflict(err) || !wroteSecret || attempt == 5 {
			return before, res, written, err
		}
		fresh := &keymintv1alpha1.ApiToken{}
		if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(tok), fresh); err != nil {
			return before, res, false, client.IgnoreNotFound(err)
		}
		// obs.Spec and a.Token.Spec point at tok.Spec: they follow. The
		// token written is the same; its verdict is the new object's.
		tok.ObjectMeta, tok.Spec, tok.Status = fresh.ObjectMeta, fresh.Spec, fresh.Status
		obs.Current.Deleting = tok.DeletionTimestamp != nil
		a.Token.Deleting = obs.Current.Deleting
		a.evaluate(obs)
	}
}

// updateStatus writes the status if it changed; an unchanged state writes
// nothing, so re-applying a manifest costs no API writes. Every write is
// locked on the resourceVersion read: a status computed from an older
// object never overwrites a newer one (a use recorded, a token minted).
// It reports whether it wrote.
func (r *ApiTokenReconciler) updateStatus(ctx context.Context, tok *keymintv1alpha1.ApiToken, st keymintv1alpha1.ApiTokenStatus) (bool, error) {
	if equality.Semantic.DeepEqual(tok.Status, st) {
		return false, nil
	}
	patch := client.MergeFromWithOptions(tok.DeepCopy(), client.MergeFromWithOptimisticLock{})
	tok.Status = st
	err := r.Client.Status().Patch(ctx, tok, patch)
	if apierrors.IsNotFound(err) {
		return false, nil // an ApiToken gone in the meantime needs no status
	}
	return err == nil, err
}

// writtenStatus is a status write of this controller: its serial, and the
// resourceVersion of the object it replaced.
type writtenStatus struct {
	serial   int64
	replaced string
}

// SetupWithManager registers the controller: it watches ApiTokens, the
// Secrets they own, and their ServiceUsers, in the controllers' cache.
func (r *ApiTokenReconciler) SetupWithManager(mgr ctrl.Manager, c cache.Cache) error {
	r.trustCache = &requester.CheckCache{TTL: time.Second}
	return ctrl.NewControllerManagedBy(mgr).
		WatchesRawSource(source.Kind[client.Object](c, &keymintv1alpha1.ApiToken{}, &handler.EnqueueRequestForObject{}, notOnlyLastUsed())).
		WatchesRawSource(source.Kind[client.Object](c, &corev1.Secret{},
			handler.EnqueueRequestForOwner(mgr.GetScheme(), mgr.GetRESTMapper(), &keymintv1alpha1.ApiToken{}, handler.OnlyControllerOwner()))).
		// A status naming another token's hash concerns both tokens.
		WatchesRawSource(source.Kind[client.Object](c, &keymintv1alpha1.ApiToken{}, handler.EnqueueRequestsFromMapFunc(r.claimants), notOnlyLastUsed())).
		WatchesRawSource(source.Kind[client.Object](c, &keymintv1alpha1.ServiceUser{},
			handler.EnqueueRequestsFromMapFunc(r.tokensOfUser), predicate.GenerationChangedPredicate{})).
		WithOptions(controller.Options{MaxConcurrentReconciles: 4, CacheSyncTimeout: cacheSyncTimeout}).
		Named("apitoken").
		Complete(r)
}

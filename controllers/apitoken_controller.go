package controllers

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/authz"
	"github.com/keymint/keymint/internal/recordkey"
	"github.com/keymint/keymint/internal/requester"
	"github.com/keymint/keymint/internal/token"
	"github.com/keymint/keymint/internal/tokenstate"
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
// its ServiceUser and the clock.
func (r *ApiTokenReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	tok := &keymintv1alpha1.ApiToken{}
	if err := r.Client.Get(ctx, req.NamespacedName, tok); err != nil {
		if apierrors.IsNotFound(err) {
			r.denials.Delete(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	// Taken by whichever reconcile comes next, so the map holds only writes
	// whose watch event is still on its way.
	var wrote *writtenStatus
	if v, ok := r.statusWritten.LoadAndDelete(tok.UID); ok {
		w := v.(writtenStatus)
		wrote = &w
	}

	user, err := r.serviceUser(ctx, tok)
	if err != nil {
		return ctrl.Result{}, err
	}
	// A token never reconciled, whose first status write is not merely
	// still on its way to the cache, has nothing of keymint's outside it.
	sec, conflict, err := r.secret(ctx, tok, neverReconciled(tok) && wrote == nil)
	if err != nil {
		return ctrl.Result{}, err
	}

	obs := observe(tok, user, readSecret(sec, tok, r.Keyring), conflict, r.Clock.Now())
	_, obs.RequesterProblem = requester.Read(r.Keyring, tok)
	obs.ExpiryWarning = r.ExpiryWarning
	if user != nil && user.Spec.TokenPolicy.ExpiryWarning != nil {
		obs.ExpiryWarning = user.Spec.TokenPolicy.ExpiryWarning.Duration
	}
	if obs.Claimed, err = r.claimedElsewhere(ctx, tok, obs); err != nil {
		return ctrl.Result{}, err
	}
	if obs.Adopted {
		// Right after our own Secret write, the cached ApiToken may not show
		// the status written next. When this controller wrote that status,
		// its event is on its way; else ask the API server before recovering.
		// Only while the cache still holds exactly the object that write
		// replaced: anything newer (a status someone wiped) is read live.
		if wrote != nil && wrote.replaced == tok.ResourceVersion && wrote.serial >= obs.Serial {
			return ctrl.Result{}, nil
		}
		fresh := &keymintv1alpha1.ApiToken{}
		if err := r.APIReader.Get(ctx, req.NamespacedName, fresh); err != nil {
			return ctrl.Result{}, client.IgnoreNotFound(err)
		}
		if fresh.Status.Serial >= obs.Serial {
			return ctrl.Result{}, nil // the status update on its way brings us back
		}
	}
	d := decide(obs)
	if d.mints() {
		// One token per mint decision: decide only on the object as it is
		// now. A cache behind our own last status write would mint again.
		if behind, err := r.cacheBehind(ctx, tok, user); behind || err != nil {
			return ctrl.Result{RequeueAfter: time.Second}, err
		}
		if wait, ok := r.mints.reserve(tok.UID, time.Now()); !ok {
			r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventMintRateLimited, "Issue",
				"keymint minted %d tokens for this ApiToken within a minute: the next waits %s (%s)", mintBurst, wait.Round(time.Second), d.Reason)
			return ctrl.Result{RequeueAfter: wait}, nil
		}
		var groups []string
		if user != nil {
			groups = user.Spec.Groups
		}
		auth, err := r.authorizeMint(ctx, tok, groups)
		if err != nil {
			return ctrl.Result{}, err
		}
		obs.Auth = &auth
		if !auth.Allowed {
			deniedTotal.WithLabelValues("mint", auth.Reason).Inc()
		}
	}
	var rec secretRecord
	var writeErr error
	wroteSecret := false
	denied := obs.denied(d)
	switch {
	case denied:
		// Not minted: the status says why, and a retry asks again.
	case d.mints():
		rec, writeErr = r.writeNewToken(ctx, tok, user.Spec.TokenPolicy.Prefix, sec, obs, d)
		wroteSecret = writeErr == nil
	case d.Action == actRevoke:
		writeErr = r.removeToken(ctx, sec)
		wroteSecret = writeErr == nil
	}
	switch {
	case denied:
		// Nothing was minted: conditionEvents says why (MintDenied). A
		// record adopted from the Secret is recovered all the same.
		r.actionEvent(tok, obs, decision{}, rec)
	case writeErr == nil:
		// The action is done once the Secret is written: say so even if the
		// status write below fails and a retry adopts the Secret.
		r.actionEvent(tok, obs, d, rec)
	default:
		r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventSecretWriteFailed, "Write", "%s", writeErr.Error())
	}

	// The status is written whether or not the Secret could be: a shortened
	// expiry, or a token the Secret no longer delivers, is on record at once.
	a := afterAction(obs, d, &rec, writeErr)
	replaced := tok.ResourceVersion
	before, res, written, err := r.writeStatus(ctx, tok, &obs, a, wroteSecret)
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
	r.conditionEvents(tok, before, obs)
	switch {
	case obs.Auth == nil:
	case obs.Auth.Allowed:
		r.denials.Delete(req.NamespacedName)
	case obs.Auth.Reason == keymintv1alpha1.ApiTokenReasonNoRequesterRecord:
		// Only a write through admission brings a record, and a write
		// brings a reconcile: nothing to retry.
		return ctrl.Result{RequeueAfter: res.RequeueAfter}, nil
	default:
		return ctrl.Result{RequeueAfter: r.retryDenied(req.NamespacedName, tok.UID)}, nil
	}
	for _, p := range res.Retired {
		r.Recorder.Eventf(tok, nil, corev1.EventTypeNormal, eventRetiredIdle, "Retire",
			"The rotated-out token issued at %s is no longer accepted: the current token %s… is in use and the old one went unused for %s (rotation.retireWhenIdle)",
			p.IssuedAt.UTC().Format(time.RFC3339), tok.Status.TokenPrefix, tokenstate.RetireWhenIdle(&tok.Spec))
	}
	if conflict {
		return ctrl.Result{RequeueAfter: conflictRetry}, nil
	}
	return ctrl.Result{RequeueAfter: res.RequeueAfter}, nil
}

// observe gathers what decide needs.
func observe(tok *keymintv1alpha1.ApiToken, user *keymintv1alpha1.ServiceUser, sec secretState, conflict bool, now time.Time) observation {
	o := observation{
		Namespace:     tok.Namespace,
		Name:          tok.Name,
		Spec:          &tok.Spec,
		RotateRequest: tok.Annotations[keymintv1alpha1.RotateAnnotation],
		User:          tokenstate.UserFrom(user),
		Conflict:      conflict,
		Now:           now,
	}
	observeToken(&o, &tok.Status, sec)
	o.Current.Deleting = tok.DeletionTimestamp != nil
	return o
}

// claimedElsewhere reports whether another ApiToken's status names one of
// the hashes this one's current token record names.
func (r *ApiTokenReconciler) claimedElsewhere(ctx context.Context, tok *keymintv1alpha1.ApiToken, obs observation) (bool, error) {
	if !obs.Current.Issued {
		return false, nil
	}
	hashes := []string{obs.Hash}
	for _, p := range obs.Current.Previous {
		hashes = append(hashes, p.Hash)
	}
	others, err := r.othersClaiming(ctx, tok.UID, hashes)
	return len(others) > 0, err
}

// othersClaiming lists the ApiTokens other than uid whose status names one
// of the hashes (from the cache's hash index).
func (r *ApiTokenReconciler) othersClaiming(ctx context.Context, uid types.UID, hashes []string) ([]keymintv1alpha1.ApiToken, error) {
	var out []keymintv1alpha1.ApiToken
	for _, h := range hashes {
		var list keymintv1alpha1.ApiTokenList
		if err := r.Client.List(ctx, &list, client.MatchingFields{TokenHashIndex: h}); err != nil {
			return nil, err
		}
		for _, o := range list.Items {
			if o.UID != uid {
				out = append(out, o)
			}
		}
	}
	return out, nil
}

// serviceUser returns the token's ServiceUser, or nil when it does not exist.
func (r *ApiTokenReconciler) serviceUser(ctx context.Context, tok *keymintv1alpha1.ApiToken) (*keymintv1alpha1.ServiceUser, error) {
	user := &keymintv1alpha1.ServiceUser{}
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: tok.Namespace, Name: tok.Spec.ServiceUser}, user)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	return user, err
}

// secret returns the token's Secret when this ApiToken owns it. A Secret of
// that name owned by nobody or by someone else is a conflict, and is never
// touched. A Secret left by an earlier ApiToken of the same name (awaiting
// garbage collection) is taken over, but its token is never reused.
//
// With fresh set (a token never reconciled), a Secret missing from the cache
// is taken as missing: the create that follows fails on a foreign one.
func (r *ApiTokenReconciler) secret(ctx context.Context, tok *keymintv1alpha1.ApiToken, fresh bool) (sec *corev1.Secret, conflict bool, err error) {
	key := types.NamespacedName{Namespace: tok.Namespace, Name: tok.SecretNameOrDefault()}
	sec = &corev1.Secret{}
	err = r.Client.Get(ctx, key, sec)
	if apierrors.IsNotFound(err) && fresh {
		// Nothing of ours can exist yet (a Secret written before a crash
		// would be labelled, so cached). A foreign Secret of that name makes
		// the create fail, and the next reconcile looks past the cache.
		return nil, false, nil
	}
	if apierrors.IsNotFound(err) {
		// The cache holds only labelled Secrets, and may not yet hold one
		// this controller just created: ask the API server, for metadata
		// only, so a foreign Secret's data is never read.
		m := &metav1.PartialObjectMetadata{}
		m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
		if err := r.APIReader.Get(ctx, key, m); err != nil {
			return nil, false, client.IgnoreNotFound(err)
		}
		if owner := metav1.GetControllerOf(m); owner == nil || owner.UID != tok.UID {
			return nil, true, nil
		}
		err = r.APIReader.Get(ctx, key, sec)
	}
	if err != nil {
		return nil, false, err
	}
	switch owner := metav1.GetControllerOf(sec); {
	case owner != nil && owner.UID == tok.UID:
		return sec, false, nil
	case owner != nil && isApiTokenRef(owner) && owner.Name == tok.Name && hasTokenLabel(sec):
		// A previous ApiToken of this name: forget its token entirely.
		stale := sec.DeepCopy()
		clearRecord(stale)
		return stale, false, nil
	}
	return nil, true, nil
}

// writeNewToken mints a token and writes it with its signed record into the
// Secret, creating the Secret if needed. The Secret is written before the
// status, so a crash in between leaves a Secret the next reconcile adopts.
func (r *ApiTokenReconciler) writeNewToken(ctx context.Context, tok *keymintv1alpha1.ApiToken, prefix string,
	sec *corev1.Secret, obs observation, d decision) (secretRecord, error) {
	if prefix == "" {
		prefix = token.DefaultPrefix
	}
	plain, err := token.Mint(prefix)
	if err != nil {
		return secretRecord{}, fmt.Errorf("minting a token: %w", err)
	}
	rec := newRecord(obs, d, token.HashString(plain), token.Display(plain))

	create := sec == nil
	if create {
		sec = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: tok.Namespace, Name: tok.SecretNameOrDefault()}, Type: corev1.SecretTypeOpaque}
	} else {
		sec = sec.DeepCopy()
	}
	if sec.Labels == nil {
		sec.Labels = map[string]string{}
	}
	sec.Labels[keymintv1alpha1.TokenLabel] = tokenLabelValue(tok.Name)
	sec.OwnerReferences = ownerReferences(sec.OwnerReferences, tok)
	writeRecord(sec, tok, r.Keyring, plain, rec)

	if create {
		err = r.Client.Create(ctx, sec)
	} else {
		err = r.Client.Update(ctx, sec)
	}
	if err != nil {
		// A conflict or an already existing Secret means the cache was behind:
		// nothing was written, and the retry decides again from fresh state.
		return secretRecord{}, fmt.Errorf("writing Secret %s/%s: %w", sec.Namespace, sec.Name, err)
	}
	logf.FromContext(ctx).Info("Wrote token to Secret", "secret", sec.Name, "tokenPrefix", rec.Display, "serial", rec.Serial, "reason", d.Reason)
	return rec, nil
}

// removeToken empties the Secret of its token and record, keeping the Secret
// so that pods that mount it see the token disappear rather than the volume.
func (r *ApiTokenReconciler) removeToken(ctx context.Context, sec *corev1.Secret) error {
	sec = sec.DeepCopy()
	clearRecord(sec)
	if err := r.Client.Update(ctx, sec); err != nil {
		return fmt.Errorf("removing the token from Secret %s/%s: %w", sec.Namespace, sec.Name, err)
	}
	logf.FromContext(ctx).Info("Removed revoked token from Secret", "secret", sec.Name)
	return nil
}

// neverReconciled reports whether no status was ever written for tok.
func neverReconciled(tok *keymintv1alpha1.ApiToken) bool {
	return len(tok.Status.Conditions) == 0 && tok.Status.Serial == 0 && tok.Status.TokenHash == ""
}

// isApiTokenRef reports whether an owner reference points at an ApiToken of
// keymint's API group (any version).
func isApiTokenRef(ref *metav1.OwnerReference) bool {
	gv, err := schema.ParseGroupVersion(ref.APIVersion)
	return err == nil && gv.Group == keymintv1alpha1.GroupVersion.Group && ref.Kind == "ApiToken"
}

func hasTokenLabel(sec *corev1.Secret) bool {
	_, ok := sec.Labels[keymintv1alpha1.TokenLabel]
	return ok
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
		// obs.Spec and a.Token.Spec point at tok.Spec: they follow.
		tok.ObjectMeta, tok.Spec, tok.Status = fresh.ObjectMeta, fresh.Spec, fresh.Status
		obs.Current.Deleting = tok.DeletionTimestamp != nil
		a.Token.Deleting = obs.Current.Deleting
	}
}

// cacheBehind reports whether the API server holds a newer ApiToken, or
// ServiceUser, than the cache: a mint decided on the cached ApiToken could
// repeat one just made, and one authorized for the cached ServiceUser could
// miss a group added a moment ago. One read of each per mint, which is rare.
func (r *ApiTokenReconciler) cacheBehind(ctx context.Context, tok *keymintv1alpha1.ApiToken, user *keymintv1alpha1.ServiceUser) (bool, error) {
	live := func(kind, name string) (string, error) {
		m := &metav1.PartialObjectMetadata{}
		m.SetGroupVersionKind(keymintv1alpha1.GroupVersion.WithKind(kind))
		err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: tok.Namespace, Name: name}, m)
		if apierrors.IsNotFound(err) {
			return "", nil
		}
		return m.ResourceVersion, err
	}
	rv, err := live("ApiToken", tok.Name)
	if err != nil || rv != tok.ResourceVersion {
		return true, err
	}
	cached := ""
	if user != nil {
		cached = user.ResourceVersion
	}
	rv, err = live("ServiceUser", tok.Spec.ServiceUser)
	return err != nil || rv != cached, err
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

// actionEvent emits an Event for the action a reconcile took, and for an
// adopted record. Events name tokens only by their display prefix.
func (r *ApiTokenReconciler) actionEvent(tok *keymintv1alpha1.ApiToken, obs observation, d decision, rec secretRecord) {
	secretName := tok.SecretNameOrDefault()
	if obs.Adopted {
		r.Recorder.Eventf(tok, nil, corev1.EventTypeNormal, eventAdopted, "Recover",
			"Recovered token %s… (serial %d) from the record keymint signed in Secret %s before its status was written", obs.Display, obs.Serial, secretName)
	}
	switch d.Reason {
	case eventIssued:
		r.Recorder.Eventf(tok, nil, corev1.EventTypeNormal, eventIssued, "Issue", "Issued token %s… into Secret %s", rec.Display, secretName)
	case eventHashConflict:
		r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventHashConflict, "Issue",
			"Another ApiToken's status names a hash of token %s…: a hash belongs to one ApiToken, so it is never accepted again; issued token %s…", obs.Display, rec.Display)
	case eventSecretChanged:
		r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventSecretChanged, "Issue",
			"Secret %s was changed outside keymint: it held a token or record keymint did not write there, which is never accepted; issued token %s… in its place", secretName, rec.Display)
	case eventTokenLost:
		r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventTokenLost, "Issue",
			"Secret %s no longer held token %s…, which is no longer accepted; issued token %s…", secretName, obs.Display, rec.Display)
	case eventRenewed:
		r.Recorder.Eventf(tok, nil, corev1.EventTypeNormal, eventRenewed, "Issue",
			"The expiry was extended, and a token's expiry never moves later: issued token %s…%s; %s", rec.Display, expiresText(rec.ExpiresAt), graceText(rec))
	case eventRotationRequested, eventRotationScheduled:
		how := "on schedule"
		if d.Reason == eventRotationRequested {
			how = fmt.Sprintf("as requested by %s=%q", keymintv1alpha1.RotateAnnotation, truncate(obs.RotateRequest, 64))
		}
		r.Recorder.Eventf(tok, nil, corev1.EventTypeNormal, "Rotated", "Rotate", "Rotated %s to token %s…; %s", how, rec.Display, graceText(rec))
	case eventRevoked:
		r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventRevoked, "Revoke",
			"%s; removed the token from Secret %s", revokeMessage(tokenstate.Evaluate(&obs.Current, &obs.User, obs.Now).Revoked, tok.Spec.ServiceUser), secretName)
	}
}

// truncate keeps user-set text in an Event short: the API server refuses an
// Event whose note is too long.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func graceText(rec secretRecord) string {
	if n := len(rec.Previous); n > 0 {
		return "the previous token is accepted until " + rec.Previous[n-1].ValidUntil.UTC().Format(time.RFC3339)
	}
	return "the previous token is no longer accepted"
}

func expiresText(t *time.Time) string {
	if t == nil {
		return ", which does not expire"
	}
	return ", expiring at " + t.UTC().Format(time.RFC3339)
}

// conditionEvents emits an Event for each condition the status write changed
// without an action: expiry by the clock, a Secret conflict.
func (r *ApiTokenReconciler) conditionEvents(tok *keymintv1alpha1.ApiToken, before *keymintv1alpha1.ApiTokenStatus, obs observation) {
	st := tok.Status
	secretName := tok.SecretNameOrDefault()
	if shortened(before, &st) {
		was := "no expiry"
		if before.ExpiresAt != nil {
			was = before.ExpiresAt.UTC().Format(time.RFC3339)
		}
		r.Recorder.Eventf(tok, nil, corev1.EventTypeNormal, eventExpiryShortened, "Expire", "Token %s… now expires at %s (was %s): the spec or the user's policy shortened it",
			st.TokenPrefix, st.ExpiresAt.UTC().Format(time.RFC3339), was)
	}
	if becameTrue(before.Conditions, st.Conditions, keymintv1alpha1.ApiTokenConditionExpired) {
		r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventExpired, "Expire", "Token %s… expired at %s", st.TokenPrefix, st.ExpiresAt.UTC().Format(time.RFC3339))
	}
	// Once per token: when the window opens, or when a new token is
	// already inside it (a lifetime shorter than the warning).
	if becameTrue(before.Conditions, st.Conditions, keymintv1alpha1.ApiTokenConditionExpiringSoon) ||
		(meta.IsStatusConditionTrue(st.Conditions, keymintv1alpha1.ApiTokenConditionExpiringSoon) && before.TokenHash != st.TokenHash) {
		r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventExpiringSoon, "Warn", "%s",
			meta.FindStatusCondition(st.Conditions, keymintv1alpha1.ApiTokenConditionExpiringSoon).Message)
	}
	if c := meta.FindStatusCondition(st.Conditions, keymintv1alpha1.ApiTokenConditionAuthorized); c != nil {
		// Once per denial (a retry that is denied again says nothing new),
		// and once when a right granted since lets keymint mint.
		prev := meta.FindStatusCondition(before.Conditions, keymintv1alpha1.ApiTokenConditionAuthorized)
		switch {
		case c.Status == metav1.ConditionFalse && (prev == nil || prev.Status != c.Status || prev.Message != c.Message):
			r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventMintDenied, "Authorize", "%s", c.Message)
		case c.Status == metav1.ConditionTrue && prev != nil && prev.Status == metav1.ConditionFalse:
			r.Recorder.Eventf(tok, nil, corev1.EventTypeNormal, keymintv1alpha1.ApiTokenReasonAuthorized, "Authorize", "%s", c.Message)
		}
	}
	if hasReason(st.Conditions, keymintv1alpha1.ApiTokenConditionReady, keymintv1alpha1.ApiTokenReasonSecretConflict) &&
		!hasReason(before.Conditions, keymintv1alpha1.ApiTokenConditionReady, keymintv1alpha1.ApiTokenReasonSecretConflict) {
		r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventSecretConflict, "Issue",
			"Secret %s exists and is not owned by this ApiToken; no token was written", secretName)
	}
}

// SetupWithManager registers the controller: it watches ApiTokens, the
// Secrets they own, and their ServiceUsers.
func (r *ApiTokenReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&keymintv1alpha1.ApiToken{}, builder.WithPredicates(notOnlyLastUsed())).
		Owns(&corev1.Secret{}).
		// A status naming another token's hash concerns both tokens.
		Watches(&keymintv1alpha1.ApiToken{}, handler.EnqueueRequestsFromMapFunc(r.claimants), builder.WithPredicates(notOnlyLastUsed())).
		Watches(&keymintv1alpha1.ServiceUser{},
			handler.EnqueueRequestsFromMapFunc(r.tokensOfUser),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		WithOptions(controller.Options{MaxConcurrentReconciles: 4}).
		Named("apitoken").
		Complete(r)
}

// claimants maps an ApiToken to the other ApiTokens whose status names one
// of its hashes.
func (r *ApiTokenReconciler) claimants(ctx context.Context, obj client.Object) []ctrl.Request {
	tok := obj.(*keymintv1alpha1.ApiToken)
	others, err := r.othersClaiming(ctx, tok.UID, statusHashes(&tok.Status))
	if err != nil {
		logf.FromContext(ctx).Error(err, "Listing the ApiTokens that claim a hash", "apiToken", tok.Name)
		return nil
	}
	reqs := make([]ctrl.Request, len(others))
	for i, o := range others {
		reqs[i] = ctrl.Request{NamespacedName: types.NamespacedName{Namespace: o.Namespace, Name: o.Name}}
	}
	return reqs
}

// tokensOfUser maps a ServiceUser to the ApiTokens that name it.
func (r *ApiTokenReconciler) tokensOfUser(ctx context.Context, obj client.Object) []ctrl.Request {
	var tokens keymintv1alpha1.ApiTokenList
	if err := r.Client.List(ctx, &tokens, client.InNamespace(obj.GetNamespace()), client.MatchingFields{ServiceUserIndex: obj.GetName()}); err != nil {
		logf.FromContext(ctx).Error(err, "Listing the tokens of ServiceUser", "serviceUser", obj.GetName())
		return nil
	}
	reqs := make([]ctrl.Request, len(tokens.Items))
	for i, t := range tokens.Items {
		reqs[i] = ctrl.Request{NamespacedName: types.NamespacedName{Namespace: t.Namespace, Name: t.Name}}
	}
	return reqs
}

// shortened reports whether the same token's expiry moved earlier.
func shortened(before, after *keymintv1alpha1.ApiTokenStatus) bool {
	if before.TokenHash == "" || before.TokenHash != after.TokenHash || after.ExpiresAt == nil {
		return false
	}
	return before.ExpiresAt == nil || after.ExpiresAt.Before(before.ExpiresAt)
}

func becameTrue(before, after []metav1.Condition, condType string) bool {
	return meta.IsStatusConditionTrue(after, condType) && !meta.IsStatusConditionTrue(before, condType)
}

func hasReason(conds []metav1.Condition, condType, reason string) bool {
	c := meta.FindStatusCondition(conds, condType)
	return c != nil && c.Reason == reason
}

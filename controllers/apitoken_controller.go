package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if tok.DeletionTimestamp != nil {
		return ctrl.Result{}, nil // its Secret goes with it, by owner reference
	}

	user, err := r.serviceUser(ctx, tok)
	if err != nil {
		return ctrl.Result{}, err
	}
	sec, conflict, err := r.secret(ctx, tok)
	if err != nil {
		return ctrl.Result{}, err
	}

	obs := observe(tok, user, sec, conflict, r.Clock.Now())
	d := decide(obs)
	rec, hasToken := obs.Record, obs.HasToken
	switch d.Action {
	case actIssue, actRotate:
		if rec, err = r.writeNewToken(ctx, tok, user, sec, obs, d); err != nil {
			return ctrl.Result{}, err
		}
		hasToken = true
	case actRevoke:
		if err := r.removeToken(ctx, sec); err != nil {
			return ctrl.Result{}, err
		}
		rec, hasToken = secretRecord{}, false
	}
	// The action is done once the Secret is written: say so even if the
	// status write below fails and a retry adopts the Secret.
	r.actionEvent(tok, obs, d, rec)

	before := tok.Status.DeepCopy()
	res := desiredStatus(tok.Status, tok.Generation, tok.SecretNameOrDefault(), obs, d, rec, hasToken)
	if err := r.updateStatus(ctx, tok, res.Status); err != nil {
		return ctrl.Result{}, err
	}
	r.conditionEvents(tok, before, obs)
	if conflict {
		return ctrl.Result{RequeueAfter: conflictRetry}, nil
	}
	return ctrl.Result{RequeueAfter: res.RequeueAfter}, nil
}

// observe gathers what decide needs.
func observe(tok *keymintv1alpha1.ApiToken, user *keymintv1alpha1.ServiceUser, sec *corev1.Secret, conflict bool, now time.Time) observation {
	rec, hasToken := readRecord(sec)
	if hasToken {
		rec = trustedRecord(&tok.Status, &tok.Spec, rec, now)
	}
	return observation{
		Spec:             &tok.Spec,
		RotateRequest:    tok.Annotations[keymintv1alpha1.RotateAnnotation],
		User:             tokenstate.UserFrom(user),
		Conflict:         conflict,
		Record:           rec,
		HasToken:         hasToken,
		SecretHoldsToken: holdsToken(sec),
		HadToken:         tok.Status.TokenHash != "",
		Now:              now,
	}
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
func (r *ApiTokenReconciler) secret(ctx context.Context, tok *keymintv1alpha1.ApiToken) (sec *corev1.Secret, conflict bool, err error) {
	key := types.NamespacedName{Namespace: tok.Namespace, Name: tok.SecretNameOrDefault()}
	sec = &corev1.Secret{}
	err = r.Client.Get(ctx, key, sec)
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
	case owner != nil && owner.Kind == "ApiToken" && owner.Name == tok.Name && sec.Labels[keymintv1alpha1.TokenLabel] == tok.Name:
		// A previous ApiToken of this name: forget its token entirely.
		stale := sec.DeepCopy()
		clearRecord(stale)
		return stale, false, nil
	}
	return nil, true, nil
}

// writeNewToken mints a token and writes it with its record into the Secret,
// creating the Secret if needed. The Secret is written before the status, so
// a crash in between leaves a Secret the next reconcile adopts.
func (r *ApiTokenReconciler) writeNewToken(ctx context.Context, tok *keymintv1alpha1.ApiToken, user *keymintv1alpha1.ServiceUser,
	sec *corev1.Secret, obs observation, d decision) (secretRecord, error) {
	prefix := user.Spec.TokenPolicy.Prefix
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
	sec.Labels[keymintv1alpha1.TokenLabel] = tok.Name
	sec.OwnerReferences = ownerReferences(sec.OwnerReferences, tok)
	if sec.Data == nil {
		sec.Data = map[string][]byte{}
	}
	sec.Data[keymintv1alpha1.SecretTokenKey] = []byte(plain)
	writeRecord(sec, rec)

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
	logf.FromContext(ctx).Info("Wrote token to Secret", "secret", sec.Name, "tokenPrefix", rec.Display, "reason", d.Reason)
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

// updateStatus writes the status if it changed; an unchanged state writes
// nothing, so re-applying a manifest costs no API writes.
func (r *ApiTokenReconciler) updateStatus(ctx context.Context, tok *keymintv1alpha1.ApiToken, st keymintv1alpha1.ApiTokenStatus) error {
	if equality.Semantic.DeepEqual(tok.Status, st) {
		return nil
	}
	patch := client.MergeFrom(tok.DeepCopy())
	tok.Status = st
	return r.Client.Status().Patch(ctx, tok, patch)
}

// actionEvent emits an Event for the action a reconcile took. Events name
// tokens only by their display prefix.
func (r *ApiTokenReconciler) actionEvent(tok *keymintv1alpha1.ApiToken, obs observation, d decision, rec secretRecord) {
	secretName := tok.SecretNameOrDefault()
	switch d.Reason {
	case eventIssued:
		r.Recorder.Eventf(tok, nil, corev1.EventTypeNormal, eventIssued, "Issue", "Issued token %s… into Secret %s", rec.Display, secretName)
	case eventReissued:
		r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventReissued, "Issue",
			"Secret %s held a token that did not match its record; issued token %s… in its place", secretName, rec.Display)
	case eventTokenLost:
		r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventTokenLost, "Issue",
			"Secret %s no longer held token %s…, which is no longer accepted; issued token %s…", secretName, tok.Status.TokenPrefix, rec.Display)
	case eventRotationRequested, eventRotationScheduled:
		grace := "the previous token is no longer accepted"
		if n := len(rec.Previous); n > 0 {
			grace = "the previous token is accepted until " + rec.Previous[n-1].ValidUntil.UTC().Format(time.RFC3339)
		}
		how := "on schedule"
		if d.Reason == eventRotationRequested {
			how = fmt.Sprintf("as requested by %s=%q", keymintv1alpha1.RotateAnnotation, obs.RotateRequest)
		}
		r.Recorder.Eventf(tok, nil, corev1.EventTypeNormal, "Rotated", "Rotate", "Rotated %s to token %s…; %s", how, rec.Display, grace)
	case eventRevoked:
		r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventRevoked, "Revoke",
			"%s; removed the token from Secret %s", revokeMessage(d.RevokeReason, tok.Spec.ServiceUser), secretName)
	}
}

// conditionEvents emits an Event for each condition the status write changed
// without an action: expiry by the clock, a Secret conflict.
func (r *ApiTokenReconciler) conditionEvents(tok *keymintv1alpha1.ApiToken, before *keymintv1alpha1.ApiTokenStatus, obs observation) {
	st := tok.Status
	secretName := tok.SecretNameOrDefault()
	if becameTrue(before.Conditions, st.Conditions, keymintv1alpha1.ApiTokenConditionExpired) {
		r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventExpired, "Expire", "Token %s… expired at %s", st.TokenPrefix, st.ExpiresAt.UTC().Format(time.RFC3339))
	}
	if obs.Conflict && !hasReason(before.Conditions, keymintv1alpha1.ApiTokenConditionReady, keymintv1alpha1.ApiTokenReasonSecretConflict) {
		r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, eventSecretConflict, "Issue",
			"Secret %s exists and is not owned by this ApiToken; no token was written", secretName)
	}
}

// SetupWithManager registers the controller: it watches ApiTokens, the
// Secrets they own, and their ServiceUsers.
func (r *ApiTokenReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&keymintv1alpha1.ApiToken{}).
		Owns(&corev1.Secret{}).
		Watches(&keymintv1alpha1.ServiceUser{},
			handler.EnqueueRequestsFromMapFunc(r.tokensOfUser),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		WithOptions(controller.Options{MaxConcurrentReconciles: 4}).
		Named("apitoken").
		Complete(r)
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

func becameTrue(before, after []metav1.Condition, condType string) bool {
	return meta.IsStatusConditionTrue(after, condType) && !meta.IsStatusConditionTrue(before, condType)
}

func hasReason(conds []metav1.Condition, condType, reason string) bool {
	c := meta.FindStatusCondition(conds, condType)
	return c != nil && c.Reason == reason
}

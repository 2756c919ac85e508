// ServiceUser reconciler: status and token counts, and a deleted user's tokens removed.

package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/source"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

// TokensFinalizer holds a deleted ServiceUser until its tokens are revoked and
// removed.
const TokensFinalizer = "keymint.io/revoke-tokens"

// ServiceUserReconciler reports each ServiceUser's state and token counts, and
// on deletion waits for its tokens to be revoked, then deletes them.
//
// Revoking is the ApiToken controller's job: it treats a disabled or deleted
// ServiceUser as revoking every token that names it.
type ServiceUserReconciler struct {
	Client   client.Client
	Recorder events.EventRecorder
}

// +kubebuilder:rbac:groups=keymint.io,resources=serviceusers,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=keymint.io,resources=serviceusers/status,verbs=patch
// +kubebuilder:rbac:groups=keymint.io,resources=apitokens,verbs=get;list;watch;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile updates one ServiceUser's status, or finishes its deletion.
func (r *ServiceUserReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	user := &keymintv1alpha1.ServiceUser{}
	if err := r.Client.Get(ctx, req.NamespacedName, user); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	var tokens keymintv1alpha1.ApiTokenList
	if err := r.Client.List(ctx, &tokens, client.InNamespace(user.Namespace), client.MatchingFields{ServiceUserIndex: user.Name}); err != nil {
		return ctrl.Result{}, err
	}

	if user.DeletionTimestamp != nil {
		return r.finishDeletion(ctx, user, tokens.Items)
	}
	if !controllerutil.ContainsFinalizer(user, TokensFinalizer) {
		// A merge patch replaces the whole finalizer list: lock on the
		// resourceVersion so a stale read cannot drop someone else's.
		patch := client.MergeFromWithOptions(user.DeepCopy(), client.MergeFromWithOptimisticLock{})
		controllerutil.AddFinalizer(user, TokensFinalizer)
		if err := r.Client.Patch(ctx, user, patch); err != nil {
			return ctrl.Result{}, err
		}
	}

	before := user.Status.DeepCopy()
	st := serviceUserStatus(user, tokens.Items)
	if equality.Semantic.DeepEqual(user.Status, st) {
		return ctrl.Result{}, nil
	}
	patch := client.MergeFrom(user.DeepCopy())
	user.Status = st
	if err := r.Client.Status().Patch(ctx, user, patch); err != nil {
		return ctrl.Result{}, err
	}
	if changed(before.Conditions, st.Conditions, keymintv1alpha1.ServiceUserConditionReady) {
		c := meta.FindStatusCondition(st.Conditions, keymintv1alpha1.ServiceUserConditionReady)
		eventType := corev1.EventTypeNormal
		if c.Status != metav1.ConditionTrue {
			eventType = corev1.EventTypeWarning
		}
		r.Recorder.Eventf(user, nil, eventType, c.Reason, "Update", "%s", c.Message)
	}
	return ctrl.Result{}, nil
}

// serviceUserStatus computes a ServiceUser's status from its spec and tokens.
func serviceUserStatus(user *keymintv1alpha1.ServiceUser, tokens []keymintv1alpha1.ApiToken) keymintv1alpha1.ServiceUserStatus {
	st := *user.Status.DeepCopy()
	st.ObservedGeneration = user.Generation
	st.Tokens = int32(len(tokens))
	st.ActiveTokens, st.UnrevokedTokens = 0, 0
	for i := range tokens {
		if meta.IsStatusConditionTrue(tokens[i].Status.Conditions, keymintv1alpha1.ApiTokenConditionReady) {
			st.ActiveTokens++
		}
		// Expired tokens count too: re-enabling must wait until keymint has
		// revoked every hash a check refused while the user was disabled.
		if tokens[i].Status.TokenHash != "" || len(tokens[i].Status.PreviousTokens) > 0 {
			st.UnrevokedTokens++
		}
	}
	cond := metav1.Condition{
		Type: keymintv1alpha1.ServiceUserConditionReady, Status: metav1.ConditionTrue, ObservedGeneration: user.Generation,
		Reason: keymintv1alpha1.ServiceUserReasonEnabled, Message: "The service user is enabled; its tokens can be used",
	}
	if user.Spec.Disabled {
		cond.Status, cond.Reason = metav1.ConditionFalse, keymintv1alpha1.ServiceUserReasonDisabled
		cond.Message = fmt.Sprintf("The service user is disabled; its %d tokens are revoked", len(tokens))
	}
	meta.SetStatusCondition(&st.Conditions, cond)
	return st
}

// finishDeletion deletes the user's tokens once each is revoked (its Secret
// emptied), then lets the ServiceUser go.
func (r *ServiceUserReconciler) finishDeletion(ctx context.Context, user *keymintv1alpha1.ServiceUser, tokens []keymintv1alpha1.ApiToken) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(user, TokensFinalizer) {
		return ctrl.Result{}, nil
	}
	waiting := 0
	for i := range tokens {
		tok := &tokens[i]
		if tok.DeletionTimestamp != nil {
			waiting++
			continue
		}
		if !revokedForMissingUser(tok) {
			waiting++ // the ApiToken controller has not emptied its Secret yet
			continue
		}
		if err := r.Client.Delete(ctx, tok); client.IgnoreNotFound(err) != nil {
			return ctrl.Result{}, err
		}
		waiting++
		logf.FromContext(ctx).Info("Deleted ApiToken of deleted ServiceUser", "apiToken", tok.Name)
	}
	if waiting > 0 {
		// Token watches bring us back as they change; the requeue is a backstop.
		return ctrl.Result{RequeueAfter: 5 * time.Second}, nil
	}
	patch := client.MergeFromWithOptions(user.DeepCopy(), client.MergeFromWithOptimisticLock{})
	controllerutil.RemoveFinalizer(user, TokensFinalizer)
	return ctrl.Result{}, r.Client.Patch(ctx, user, patch)
}

// revokedForMissingUser reports whether the ApiToken controller has seen the
// user go and emptied the token's Secret.
func revokedForMissingUser(tok *keymintv1alpha1.ApiToken) bool {
	c := meta.FindStatusCondition(tok.Status.Conditions, keymintv1alpha1.ApiTokenConditionRevoked)
	return c != nil && c.Status == metav1.ConditionTrue && tok.Status.TokenHash == "" &&
		(c.Reason == keymintv1alpha1.ApiTokenReasonServiceUserNotFound || c.Reason == keymintv1alpha1.ApiTokenReasonRevokedBySpec)
}

func changed(before, after []metav1.Condition, condType string) bool {
	b, a := meta.FindStatusCondition(before, condType), meta.FindStatusCondition(after, condType)
	return a != nil && (b == nil || b.Status != a.Status || b.Reason != a.Reason)
}

// recountDelay is how long a change of an ApiToken of an enabled user waits
// before the user is recounted: a burst of issues then costs one status
// write per user, not one per token. The counts only gate re-enabling a
// disabled user, so a token of a disabled (or missing) user is recounted at
// once: a count that lags behind a token issued just before the disable
// would let the user be re-enabled early.
const recountDelay = time.Second

// SetupWithManager registers the controller: it watches ServiceUsers and the
// ApiTokens that name them.
func (r *ServiceUserReconciler) SetupWithManager(mgr ctrl.Manager, c cache.Cache) error {
	return ctrl.NewControllerManagedBy(mgr).
		WatchesRawSource(source.Kind[client.Object](c, &keymintv1alpha1.ServiceUser{}, &handler.EnqueueRequestForObject{})).
		WatchesRawSource(source.Kind[client.Object](c, &keymintv1alpha1.ApiToken{}, recountUser(r.Client, recountDelay), notOnlyLastUsed())).
		WithOptions(controller.Options{CacheSyncTimeout: cacheSyncTimeout}).
		Named("serviceuser").
		Complete(r)
}

// recountUser enqueues the ServiceUser an ApiToken names: at once when that
// user is disabled or not in the cache, else after delay (the queue keeps one
// entry per user, so changes within delay share it).
func recountUser(c client.Reader, delay time.Duration) handler.EventHandler {
	add := func(ctx context.Context, q workqueue.TypedRateLimitingInterface[ctrl.Request], objs ...client.Object) {
		for _, obj := range objs {
			tok, ok := obj.(*keymintv1alpha1.ApiToken)
			if !ok {
				continue
			}
			req := ctrl.Request{NamespacedName: types.NamespacedName{Namespace: tok.Namespace, Name: tok.Spec.ServiceUser}}
			user := &keymintv1alpha1.ServiceUser{}
			if err := c.Get(ctx, req.NamespacedName, user); err != nil || user.Spec.Disabled || user.DeletionTimestamp != nil {
				q.Add(req)
				continue
			}
			q.AddAfter(req, delay)
		}
	}
	return handler.Funcs{
		CreateFunc: func(ctx context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[ctrl.Request]) {
			add(ctx, q, e.Object)
		},
		UpdateFunc: func(ctx context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[ctrl.Request]) {
			add(ctx, q, e.ObjectOld, e.ObjectNew)
		},
		DeleteFunc: func(ctx context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[ctrl.Request]) {
			add(ctx, q, e.Object)
		},
		GenericFunc: func(ctx context.Context, e event.GenericEvent, q workqueue.TypedRateLimitingInterface[ctrl.Request]) {
			add(ctx, q, e.Object)
		},
	}
}

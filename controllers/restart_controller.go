// Restart reconciler: rolls an ApiToken's restart targets onto each new token, for the user who named them.

package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
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
)

// RestartReconciler rolls the workloads an ApiToken names in
// spec.rotation.restartTargets onto each new token that replaces one in its
// Secret, as `kubectl rollout restart` does: a new pod template annotation.
// It is its own controller: restarting is a job apart from minting, and a
// workload that cannot be patched never holds up a token.
type RestartReconciler struct {
	Client   client.Client
	Recorder events.EventRecorder
	// Clock stamps the restartedAt annotation; nil means the real clock.
	Clock clock.PassiveClock
	// Keyring verifies the requester record that says who named each
	// target; Authorizer asks whether that user may still patch it.
	Keyring    *recordkey.Keyring
	Authorizer authz.Authorizer
	// APIReader reads the requester webhook's configuration, Webhook:
	// nothing is restarted while it can be skipped.
	APIReader client.Reader
	Webhook   string
}

// restartAction is what the restart controller does for one ApiToken.
type restartAction int

const (
	restartNothing restartAction = iota
	// restartRecord notes the current serial without restarting: the
	// targets are new to this token, and its pods already mount its token.
	restartRecord
	// restartRoll restarts the targets: a new token replaced the one they
	// mounted.
	restartRoll
)

// decideRestart decides for an ApiToken from its spec, status and deletion.
func decideRestart(tok *keymintv1alpha1.ApiToken) restartAction {
	st := &tok.Status
	switch {
	case tok.DeletionTimestamp != nil, tok.Spec.Revoked, len(tok.Spec.RestartTargets()) == 0:
		// A revoked or deleting token has nothing to roll onto, and its
		// targets may have been named without admission.
		return restartNothing
	case st.TokenHash == "":
		// Nothing to roll onto (not issued yet, or revoked): a later token
		// has a higher serial and rolls then.
		return restartNothing
	case st.RestartedSerial == 0:
		return restartRecord
	case st.Serial > st.RestartedSerial:
		return restartRoll
	}
	return restartNothing
}

// +kubebuilder:rbac:groups=apps,resources=deployments;statefulsets;daemonsets,verbs=patch

// Reconcile restarts an ApiToken's targets when a new token has replaced
// the one they mount, then records the serial it restarted for.
func (r *RestartReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	tok := &keymintv1alpha1.ApiToken{}
	if err := r.Client.Get(ctx, req.NamespacedName, tok); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	action := decideRestart(tok)
	if action == restartNothing {
		return ctrl.Result{}, nil
	}
	if action == restartRoll {
		if err := r.restart(ctx, tok); err != nil {
			return ctrl.Result{}, err
		}
	}
	// Locked on the resourceVersion read: a token newer than the one just
	// rolled onto makes this write fail, and the retry rolls again.
	patch := client.MergeFromWithOptions(tok.DeepCopy(), client.MergeFromWithOptimisticLock{})
	tok.Status.RestartedSerial = tok.Status.Serial
	if err := r.Client.Status().Patch(ctx, tok, patch); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	return ctrl.Result{}, nil
}

// restart stamps each target's pod template. A target that does not exist
// is skipped with a Warning Event; any other failure is retried.
func (r *RestartReconciler) restart(ctx context.Context, tok *keymintv1alpha1.ApiToken) error {
	clk := r.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	stamp := clk.Now().UTC().Format(time.RFC3339)
	body, err := json.Marshal(map[string]any{"spec": map[string]any{"template": map[string]any{"metadata": map[string]any{
		"annotations": map[string]string{keymintv1alpha1.RestartedAtAnnotation: stamp}}}}})
	if err != nil {
		return err
	}
	trust, err := requester.Webhook{Reader: r.APIReader, Name: r.Webhook}.Trust(ctx, r.Keyring, tok)
	if err != nil {
		return err
	}
	var restarted, missing []string
	for _, t := range tok.Spec.RestartTargets() {
		name := t.Kind + "/" + t.Name
		// keymint patches for the user who named the target, and only while
		// that user may: it never lends its own right to patch workloads.
		if reason, why, err := r.mayRestart(ctx, tok, trust, t); err != nil {
			return err
		} else if why != "" {
			deniedTotal.WithLabelValues("restart", reason).Inc()
			r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, "RestartNotAuthorized", "Restart", "Did not restart %s onto token %s…: %s", name, tok.Status.TokenPrefix, why)
			continue
		}
		obj, err := workload(t.Kind, tok.Namespace, t.Name)
		if err != nil {
			return err // the CRD's enum keeps other kinds out
		}
		switch err := r.Client.Patch(ctx, obj, client.RawPatch(types.StrategicMergePatchType, body)); {
		case apierrors.IsNotFound(err):
			missing = append(missing, name)
		case err != nil:
			r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, "RestartFailed", "Restart",
				"Could not restart %s onto token %s…: %s", name, tok.Status.TokenPrefix, err.Error())
			return fmt.Errorf("restarting %s: %w", name, err)
		default:
			restarted = append(restarted, name)
		}
	}
	if len(missing) > 0 {
		r.Recorder.Eventf(tok, nil, corev1.EventTypeWarning, "RestartTargetNotFound", "Restart",
			"spec.rotation.restartTargets names %s, which do not exist in namespace %s: not restarted", strings.Join(missing, ", "), tok.Namespace)
	}
	if len(restarted) > 0 {
		r.Recorder.Eventf(tok, nil, corev1.EventTypeNormal, "Restarted", "Restart",
			"Restarted %s onto token %s… (serial %d)", strings.Join(restarted, ", "), tok.Status.TokenPrefix, tok.Status.Serial)
		logf.FromContext(ctx).Info("Restarted workloads onto a new token", "targets", restarted, "serial", tok.Status.Serial)
	}
	return nil
}

// mayRestart says why target t may not be restarted now, and the metric's
// reason; "" when it may: keymint must trust the requester record, the
// record must name t, and the user who named t must still have the right to
// patch it.
func (r *RestartReconciler) mayRestart(ctx context.Context, tok *keymintv1alpha1.ApiToken, trust requester.Trust,
	t keymintv1alpha1.RestartTarget) (reason, why string, err error) {
	switch {
	case trust.NotEnforced != "":
		return keymintv1alpha1.ApiTokenReasonRequesterWebhookNotEnforced, trust.NotEnforced, nil
	case trust.Problem != "":
		return keymintv1alpha1.ApiTokenReasonNoRequesterRecord, trust.Problem.Explain(), nil
	}
	who, ok := trust.Record.NamedBy(t)
	if !ok {
		return keymintv1alpha1.ApiTokenReasonNotAllowed,
			"no admitted write named it: it was added while the webhook was not asked (for example while the token was revoked); name it again", nil
	}
	denial, err := authz.MayPatch(ctx, r.Authorizer, who, tok.Namespace, t.Kind, t.Name)
	if err != nil || denial == nil {
		return "", "", err
	}
	return keymintv1alpha1.ApiTokenReasonNotAllowed, fmt.Sprintf("%s (user %q named it)", denial.Sentence(who.Username, ""), who.Username), nil
}

// workload returns an empty object of the target's kind to patch.
func workload(kind, namespace, name string) (client.Object, error) {
	meta := metav1.ObjectMeta{Namespace: namespace, Name: name}
	switch kind {
	case "Deployment":
		return &appsv1.Deployment{ObjectMeta: meta}, nil
	case "StatefulSet":
		return &appsv1.StatefulSet{ObjectMeta: meta}, nil
	case "DaemonSet":
		return &appsv1.DaemonSet{ObjectMeta: meta}, nil
	}
	return nil, fmt.Errorf("restart target kind %q is not Deployment, StatefulSet or DaemonSet", kind)
}

// SetupWithManager registers the controller. It watches only ApiTokens, and
// only those with something to do: workloads are patched, never cached.
func (r *RestartReconciler) SetupWithManager(mgr ctrl.Manager, c cache.Cache) error {
	due := predicate.NewPredicateFuncs(func(obj client.Object) bool {
		tok, ok := obj.(*keymintv1alpha1.ApiToken)
		return ok && decideRestart(tok) != restartNothing
	})
	return ctrl.NewControllerManagedBy(mgr).
		WatchesRawSource(source.Kind[client.Object](c, &keymintv1alpha1.ApiToken{}, &handler.EnqueueRequestForObject{}, due)).
		WithOptions(controller.Options{CacheSyncTimeout: cacheSyncTimeout}).
		Named("restart").
		Complete(r)
}

package admission

import (
	"context"
	"errors"
	"maps"
	"net/http"
	"strings"

	"gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/approval"
	"github.com/keymint/keymint/internal/authz"
	"github.com/keymint/keymint/internal/recordkey"
	"github.com/keymint/keymint/internal/requester"
)

// RequesterRecorder is the mutating webhook that records who asked for an
// ApiToken (internal/requester) and who approved or denied it
// (internal/approval): admission is the one place keymint sees the
// requesting user, and the controllers check that user's rights again
// when they act. It runs before the validating webhook, on every create
// and update of an ApiToken that is not revoked. It denies only a decision
// it does not record (keymint.io/decision).
type RequesterRecorder struct {
	Keyring *recordkey.Keyring
	Decoder admission.Decoder
	// Reader reads the token's ServiceUser, and Authorizer asks whether
	// a decision's writer may approve it.
	Reader     client.Reader
	Authorizer authz.Authorizer
	// Webhook is this webhook's configuration: a record signed before it
	// existed, or while it can be skipped, is never kept.
	Webhook requester.Webhook
	// Clock stamps requestedAt; nil means the real clock.
	Clock clock.PassiveClock
}

// Handle answers with a patch that sets the record.
func (r *RequesterRecorder) Handle(ctx context.Context, req admission.Request) admission.Response {
	if req.Operation != admissionv1.Create && req.Operation != admissionv1.Update {
		return admission.Allowed("")
	}
	after := &keymintv1alpha1.ApiToken{}
	if err := r.Decoder.DecodeRaw(req.Object, after); err != nil {
		return admission.Errored(http.StatusBadRequest, err)
	}
	var before *keymintv1alpha1.ApiToken
	if req.Operation == admissionv1.Update {
		before = &keymintv1alpha1.ApiToken{}
		if err := r.Decoder.DecodeRaw(req.OldObject, before); err != nil {
			return admission.Errored(http.StatusBadRequest, err)
		}
	}
	if after.Spec.Revoked {
		// The configuration's matchCondition keeps revoked objects away
		// (revoking must work while keymint is down); nothing is recorded
		// for a token that mints nothing.
		return admission.Allowed("")
	}
	clk := r.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	sent := maps.Clone(after.Annotations)
	now := clk.Now()
	if err := r.Webhook.Record(ctx, r.Keyring, before, after, req.UserInfo, now); err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	user := &keymintv1alpha1.ServiceUser{}
	if err := r.Reader.Get(ctx, types.NamespacedName{Namespace: after.Namespace, Name: after.Spec.ServiceUser}, user); apierrors.IsNotFound(err) {
		user = nil
	} else if err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	var refusal *approval.Refusal
	switch err := approval.Admit(ctx, r.Keyring, r.Authorizer, user, before, after, req.UserInfo, now); {
	case errors.As(err, &refusal):
		return admission.Denied(refusal.Message)
	case err != nil:
		return admission.Errored(http.StatusInternalServerError, err)
	}
	return admission.Patched("Recorded the requester", annotationPatch(sent, after.Annotations)...)
}

// recordKeys are the annotations this webhook writes or removes; the
// object is otherwise passed on byte for byte.
var recordKeys = []string{
	keymintv1alpha1.RequesterAnnotation, keymintv1alpha1.RequesterSignatureAnnotation,
	keymintv1alpha1.ApprovalAnnotation, keymintv1alpha1.ApprovalSignatureAnnotation,
	keymintv1alpha1.DecisionAnnotation, keymintv1alpha1.DecisionMessageAnnotation, keymintv1alpha1.DecisionRequestAnnotation,
}

// annotationPatch turns the annotations sent into final, for recordKeys.
func annotationPatch(sent, final map[string]string) []jsonpatch.JsonPatchOperation {
	if sent == nil {
		set := map[string]string{}
		for _, k := range recordKeys {
			if v, ok := final[k]; ok {
				set[k] = v
			}
		}
		return []jsonpatch.JsonPatchOperation{{Operation: "add", Path: "/metadata/annotations", Value: set}}
	}
	var ops []jsonpatch.JsonPatchOperation
	for _, k := range recordKeys {
		path := "/metadata/annotations/" + strings.ReplaceAll(k, "/", "~1")
		v, keep := final[k]
		_, was := sent[k]
		switch {
		case keep:
			// "add" replaces a member that exists (RFC 6902, 4.1).
			ops = append(ops, jsonpatch.JsonPatchOperation{Operation: "add", Path: path, Value: v})
		case was:
			ops = append(ops, jsonpatch.JsonPatchOperation{Operation: "remove", Path: path})
		}
	}
	return ops
}

// NewRequesterWebhook returns the mutating webhook, ready to register at
// RequesterPath; hook is its own configuration.
// reader reads ServiceUsers and a answers whether a decision's writer may
// approve.
func NewRequesterWebhook(scheme *runtime.Scheme, ring *recordkey.Keyring, hook requester.Webhook, reader client.Reader, a authz.Authorizer) *admission.Webhook {
	return &admission.Webhook{Handler: &RequesterRecorder{Keyring: ring, Decoder: admission.NewDecoder(scheme), Webhook: hook, Reader: reader, Authorizer: a}}
}

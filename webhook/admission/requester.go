package admission

import (
	"context"
	"net/http"
	"strings"

	"gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/recordkey"
	"github.com/keymint/keymint/internal/requester"
)

// RequesterRecorder is the mutating webhook that records who asked for an
// ApiToken (internal/requester): admission is the one place keymint sees
// the requesting user, and the controllers check that user's rights again
// when they act. It runs before the validating webhook, on every create
// and update of an ApiToken that is not revoked, and denies nothing itself.
type RequesterRecorder struct {
	Keyring *recordkey.Keyring
	Decoder admission.Decoder
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
	hadAnnotations := after.Annotations != nil
	if err := r.Webhook.Record(ctx, r.Keyring, before, after, req.UserInfo, clk.Now()); err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	return admission.Patched("Recorded the requester", annotationPatch(hadAnnotations, after.Annotations)...)
}

// annotationPatch sets the two record annotations, and nothing else: the
// object is otherwise passed on byte for byte.
func annotationPatch(hadAnnotations bool, annotations map[string]string) []jsonpatch.JsonPatchOperation {
	keys := []string{keymintv1alpha1.RequesterAnnotation, keymintv1alpha1.RequesterSignatureAnnotation}
	if !hadAnnotations {
		set := map[string]string{}
		for _, k := range keys {
			set[k] = annotations[k]
		}
		return []jsonpatch.JsonPatchOperation{{Operation: "add", Path: "/metadata/annotations", Value: set}}
	}
	ops := make([]jsonpatch.JsonPatchOperation, len(keys))
	for i, k := range keys {
		// "add" replaces a member that exists (RFC 6902, 4.1).
		ops[i] = jsonpatch.JsonPatchOperation{Operation: "add", Path: "/metadata/annotations/" + strings.ReplaceAll(k, "/", "~1"), Value: annotations[k]}
	}
	return ops
}

// NewRequesterWebhook returns the mutating webhook, ready to register at
// RequesterPath; hook is its own configuration.
func NewRequesterWebhook(scheme *runtime.Scheme, ring *recordkey.Keyring, hook requester.Webhook) *admission.Webhook {
	return &admission.Webhook{Handler: &RequesterRecorder{Keyring: ring, Decoder: admission.NewDecoder(scheme), Webhook: hook}}
}

// Package admission serves keymint's admission webhooks. A mutating one
// records who asked for each ApiToken (internal/requester), so that the
// controllers can ask again, at the moment they mint, whether that user
// still may. Validating ones give the first, friendly answer: RBAC decides
// who may mint a ServiceUser's tokens (verb "mint" on serviceusers) and who
// may give a ServiceUser a Kubernetes group (verb "impersonate" on groups),
// each asked of kube-apiserver with a SubjectAccessReview. What CEL in the
// CRDs can say, it says; these checks need the requesting user and other
// objects, which CEL cannot see.
package admission

import (
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/authz"
	"github.com/keymint/keymint/internal/recordkey"
	"github.com/keymint/keymint/internal/requester"
)

// Paths the webhooks are served at (config/webhook/).
const (
	ApiTokenPath    = "/validate-keymint-io-v1alpha1-apitoken"
	ServiceUserPath = "/validate-keymint-io-v1alpha1-serviceuser"
	RequesterPath   = requester.Path
)

// Setup registers the webhooks with the manager's webhook server. reader
// reads ServiceUsers (the cache); a live reader lists the ApiTokens that
// name a new ServiceUser; a answers the RBAC questions; ring signs the
// requester records; requesterWebhook names the MutatingWebhookConfiguration
// that calls the requester webhook.
func Setup(mgr ctrl.Manager, reader client.Reader, a authz.Authorizer, ring *recordkey.Keyring, requesterWebhook string) {
	scheme := mgr.GetScheme()
	server := mgr.GetWebhookServer()
	hook := requester.Webhook{Reader: mgr.GetAPIReader(), Name: requesterWebhook, Cache: &requester.CheckCache{TTL: time.Second}}
	server.Register(RequesterPath, NewRequesterWebhook(scheme, ring, hook, reader, a))
	server.Register(ApiTokenPath, admission.WithValidator[*keymintv1alpha1.ApiToken](scheme,
		&ApiTokenValidator{Reader: reader, Authorizer: a, Keyring: ring, Webhook: hook}))
	server.Register(ServiceUserPath, admission.WithValidator[*keymintv1alpha1.ServiceUser](scheme, &ServiceUserValidator{Authorizer: a, APIReader: mgr.GetAPIReader()}))
}

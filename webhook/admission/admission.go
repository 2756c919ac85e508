// Package admission serves keymint's validating admission webhooks: RBAC
// decides who may mint a ServiceUser's tokens (verb "mint" on
// serviceusers) and who may give a ServiceUser a Kubernetes group (verb
// "impersonate" on groups), each asked of kube-apiserver with a
// SubjectAccessReview. What CEL in the CRDs can say, it says; these checks
// need the requesting user and other objects, which CEL cannot see.
package admission

import (
	"k8s.io/apimachinery/pkg/runtime"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

// Paths the webhooks are served at (config/webhook/validating.yaml).
const (
	ApiTokenPath    = "/validate-keymint-io-v1alpha1-apitoken"
	ServiceUserPath = "/validate-keymint-io-v1alpha1-serviceuser"
)

// Setup registers both webhooks with the manager's webhook server. reader
// reads ServiceUsers (the cache); authz answers the RBAC questions.
func Setup(mgr ctrl.Manager, reader client.Reader, authz Authorizer) {
	scheme := mgr.GetScheme()
	server := mgr.GetWebhookServer()
	server.Register(ApiTokenPath, admission.WithValidator[*keymintv1alpha1.ApiToken](scheme, &ApiTokenValidator{Reader: reader, Authorizer: authz}))
	server.Register(ServiceUserPath, admission.WithValidator[*keymintv1alpha1.ServiceUser](scheme, &ServiceUserValidator{Authorizer: authz}))
}

var _ runtime.Object = &keymintv1alpha1.ApiToken{}

package admission

import (
	"context"
	"fmt"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Authorizer asks Kubernetes whether a user may do something: the question
// RBAC answers for kubectl, with the answer kube-apiserver would give.
type Authorizer interface {
	Allowed(ctx context.Context, user authenticationv1.UserInfo, attrs authorizationv1.ResourceAttributes) (bool, error)
}

// SubjectAccessReviewer answers with a SubjectAccessReview, so RBAC rules
// (resourceNames included), aggregated roles and any other authorizer
// kube-apiserver runs all apply.
type SubjectAccessReviewer struct {
	Client client.Client
}

// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

// Allowed creates a SubjectAccessReview for user and attrs.
func (s SubjectAccessReviewer) Allowed(ctx context.Context, user authenticationv1.UserInfo, attrs authorizationv1.ResourceAttributes) (bool, error) {
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User: user.Username, UID: user.UID, Groups: user.Groups, ResourceAttributes: &attrs,
	}}
	if len(user.Extra) > 0 {
		sar.Spec.Extra = map[string]authorizationv1.ExtraValue{}
		for k, v := range user.Extra {
			sar.Spec.Extra[k] = authorizationv1.ExtraValue(v)
		}
	}
	if err := s.Client.Create(ctx, sar); err != nil {
		return false, fmt.Errorf("asking kube-apiserver whether %q may %s %s %q: %w", user.Username, attrs.Verb, attrs.Resource, attrs.Name, err)
	}
	return sar.Status.Allowed, nil
}

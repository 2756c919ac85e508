// Package authz asks Kubernetes whether a user may do what keymint would
// do for them: mint tokens of a ServiceUser (verb "mint" on serviceusers),
// carry its groups (verb "impersonate" on groups), restart a workload (verb
// "patch"). Admission asks when an object is written; the controllers ask
// again, for the user admission recorded, at the moment they act. Both word
// a denial the same way: the rule a user can paste into a Role.
package authz

import (
	"context"
	"fmt"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

// MintVerb is the RBAC verb on serviceusers that lets a user mint tokens of
// a ServiceUser: create an ApiToken for it, or change what a token of it is
// (scopes, audiences, rotation, expiry), rotate it, or un-revoke it.
const MintVerb = "mint"

// WorkloadResources maps restart target kinds to their resources in API
// group apps.
var WorkloadResources = map[string]string{"Deployment": "deployments", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets"}

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

// Denial is a right a user lacks, worded for a person.
type Denial struct {
	// What the user may not do, as a sentence without its subject.
	What string
	// Rule is the RBAC rule that grants it.
	Rule string
}

// Sentence words the denial for user: what they may not do, and the rule.
// role, unless empty, says who the user is to the object, as an aside:
// `user "alice", who asked for this token, may not ...`.
func (d Denial) Sentence(user, role string) string {
	if role != "" {
		role = ", " + role + ","
	}
	return fmt.Sprintf("user %q%s may not %s. A rule that grants it: %s", user, role, d.What, d.Rule)
}

// MayMint asks whether user may mint tokens of ServiceUser userName in
// namespace and, since each such token carries the user's groups to
// kube-apiserver, impersonate each of those groups (minting a credential
// in a group is acting as it). It returns the first right missing, or nil.
func MayMint(ctx context.Context, a Authorizer, user authenticationv1.UserInfo, namespace, userName string, groups []string) (*Denial, error) {
	allowed, err := a.Allowed(ctx, user, authorizationv1.ResourceAttributes{
		Namespace: namespace, Verb: MintVerb, Group: keymintv1alpha1.GroupVersion.Group, Resource: "serviceusers", Name: userName,
	})
	if err != nil {
		return nil, err
	}
	if !allowed {
		return mintDenial(namespace, userName), nil
	}
	return MayImpersonate(ctx, a, user, groups)
}

// mintDenial is the missing right to mint tokens of ServiceUser userName.
func mintDenial(namespace, userName string) *Denial {
	g := keymintv1alpha1.GroupVersion.Group
	return &Denial{
		What: fmt.Sprintf("mint tokens of ServiceUser %q in namespace %q: that needs verb %q on resource \"serviceusers\" of API group %q",
			userName, namespace, MintVerb, g),
		Rule: fmt.Sprintf("a Role in namespace %q with {apiGroups: [%q], resources: [\"serviceusers\"], verbs: [%q], resourceNames: [%q]}",
			namespace, g, MintVerb, userName),
	}
}

// MayImpersonate asks whether user may impersonate each group.
func MayImpersonate(ctx context.Context, a Authorizer, user authenticationv1.UserInfo, groups []string) (*Denial, error) {
	for _, g := range groups {
		allowed, err := a.Allowed(ctx, user, authorizationv1.ResourceAttributes{Verb: "impersonate", Resource: "groups", Name: g})
		if err != nil {
			return nil, err
		}
		if !allowed {
			return &Denial{
				What: fmt.Sprintf("carry group %q to kube-apiserver: that needs verb \"impersonate\" on resource \"groups\" (core API group), as kubectl --as-group does", g),
				Rule: fmt.Sprintf("a ClusterRole with {apiGroups: [\"\"], resources: [\"groups\"], verbs: [\"impersonate\"], resourceNames: [%q]}", g),
			}, nil
		}
	}
	return nil, nil
}

// MayPatch asks whether user may patch the workload of kind (Deployment,
// StatefulSet or DaemonSet) name in namespace: what keymint does to a
// restart target.
func MayPatch(ctx context.Context, a Authorizer, user authenticationv1.UserInfo, namespace, kind, name string) (*Denial, error) {
	resource, ok := WorkloadResources[kind]
	if !ok {
		return nil, fmt.Errorf("restart target kind %q is not Deployment, StatefulSet or DaemonSet", kind)
	}
	allowed, err := a.Allowed(ctx, user, authorizationv1.ResourceAttributes{Namespace: namespace, Verb: "patch", Group: "apps", Resource: resource, Name: name})
	if err != nil || allowed {
		return nil, err
	}
	return &Denial{
		What: fmt.Sprintf("restart %s %q: keymint restarts it after each new token, which needs verb \"patch\" on resource %q of API group \"apps\" in namespace %q",
			kind, name, resource, namespace),
		Rule: fmt.Sprintf("a Role in namespace %q with {apiGroups: [\"apps\"], resources: [%q], verbs: [\"patch\"], resourceNames: [%q]}", namespace, resource, name),
	}, nil
}

// ApproveVerb is the RBAC verb on serviceusers that lets a user approve or
// deny the tokens of a ServiceUser with tokenPolicy.requireApproval (as
// "approve" on signers does for CertificateSigningRequests). It is not
// "mint": an approver need not be able to ask for tokens.
const ApproveVerb = "approve"

// MayApprove asks whether user may approve tokens of ServiceUser userName
// in namespace. It returns the right missing, or nil.
func MayApprove(ctx context.Context, a Authorizer, user authenticationv1.UserInfo, namespace, userName string) (*Denial, error) {
	g := keymintv1alpha1.GroupVersion.Group
	allowed, err := a.Allowed(ctx, user, authorizationv1.ResourceAttributes{
		Namespace: namespace, Verb: ApproveVerb, Group: g, Resource: "serviceusers", Name: userName,
	})
	if err != nil || allowed {
		return nil, err
	}
	return &Denial{
		What: fmt.Sprintf("approve tokens of ServiceUser %q in namespace %q: that needs verb %q on resource \"serviceusers\" of API group %q",
			userName, namespace, ApproveVerb, g),
		Rule: fmt.Sprintf("a Role in namespace %q with {apiGroups: [%q], resources: [\"serviceusers\"], verbs: [%q], resourceNames: [%q]}",
			namespace, g, ApproveVerb, userName),
	}, nil
}

package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ApiTokenSpec is the desired state of an ApiToken.
type ApiTokenSpec struct {
	// serviceUser is the name of the ServiceUser, in the same namespace, that
	// owns this token.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	ServiceUser string `json:"serviceUser"`
}

// ApiTokenStatus is the observed state of an ApiToken.
type ApiTokenStatus struct {
	// conditions describe the current state of the token.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ApiToken is one bearer token of a ServiceUser.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=apitok,categories=keymint
type ApiToken struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec ApiTokenSpec `json:"spec"`
	// +optional
	Status ApiTokenStatus `json:"status,omitempty"`
}

// ApiTokenList is a list of ApiTokens.
//
// +kubebuilder:object:root=true
type ApiTokenList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ApiToken `json:"items"`
}

func init() {
	SchemeBuilder.Register(&ApiToken{}, &ApiTokenList{})
}

package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ServiceUserSpec is the desired state of a ServiceUser.
type ServiceUserSpec struct {
	// displayName is a human-readable name for the identity.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	DisplayName string `json:"displayName,omitempty"`
}

// ServiceUserStatus is the observed state of a ServiceUser.
type ServiceUserStatus struct {
	// conditions describe the current state of the ServiceUser.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ServiceUser is a non-interactive identity that owns ApiTokens.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=su,categories=keymint
type ServiceUser struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +optional
	Spec ServiceUserSpec `json:"spec,omitempty"`
	// +optional
	Status ServiceUserStatus `json:"status,omitempty"`
}

// ServiceUserList is a list of ServiceUsers.
//
// +kubebuilder:object:root=true
type ServiceUserList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ServiceUser `json:"items"`
}

func init() {
	SchemeBuilder.Register(&ServiceUser{}, &ServiceUserList{})
}

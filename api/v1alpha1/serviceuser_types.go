package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ServiceUserSpec is the desired state of a ServiceUser.
//
// +kubebuilder:validation:XValidation:rule="!has(self.tokenPolicy) || !has(self.tokenPolicy.maxLifetime) || !has(self.tokenPolicy.defaultLifetime) || duration(self.tokenPolicy.defaultLifetime) <= duration(self.tokenPolicy.maxLifetime)",message="tokenPolicy.defaultLifetime must not exceed tokenPolicy.maxLifetime"
type ServiceUserSpec struct {
	// displayName is a human-readable name for the identity, such as
	// "Billing exporter".
	// +optional
	// +kubebuilder:validation:MaxLength=256
	DisplayName string `json:"displayName,omitempty"`

	// description says what the identity is for and who owns it.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Description string `json:"description,omitempty"`

	// permissions lists what this identity may do, each as "resource:verb"
	// (for example "links:read"): lowercase letters, digits, '-', '_' and '.'
	// on each side. A token's scopes are a subset of these; removing a
	// permission here removes it from every token at once.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=128
	// +kubebuilder:validation:items:MaxLength=128
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9][a-z0-9._-]*:[a-z0-9][a-z0-9._-]*$`
	Permissions []string `json:"permissions,omitempty"`

	// groups are added to the Kubernetes groups of this identity when
	// kube-apiserver authenticates one of its tokens, so ordinary RBAC can bind
	// them. Names starting with "system:" or "keymint:" are reserved and refused.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.all(g, !g.startsWith('system:') && !g.startsWith('keymint:'))",message="groups starting with 'system:' or 'keymint:' are reserved"
	Groups []string `json:"groups,omitempty"`

	// disabled, when true, revokes every token of this identity: their Secrets
	// are emptied and checks refuse them at once. Setting it back to false
	// mints new tokens; the revoked ones never come back. It can be set back
	// only once keymint has revoked them all (status.activeTokens is 0).
	// +optional
	Disabled bool `json:"disabled,omitempty"`

	// tokenPolicy bounds the tokens of this identity.
	// +optional
	// +kubebuilder:default={}
	TokenPolicy TokenPolicy `json:"tokenPolicy,omitempty,omitzero"`
}

// TokenPolicy bounds the tokens of a ServiceUser.
type TokenPolicy struct {
	// prefix starts every token of this identity, before an underscore, so
	// that leaked tokens are easy to scan for and to attribute. 2 to 16
	// lowercase letters or digits, starting with a letter. Defaults to "km".
	// Changing it applies to tokens minted afterwards.
	// +optional
	// +kubebuilder:default=km
	// +kubebuilder:validation:MinLength=2
	// +kubebuilder:validation:MaxLength=16
	// +kubebuilder:validation:Pattern=`^[a-z][a-z0-9]+$`
	Prefix string `json:"prefix,omitempty"`

	// maxLifetime caps how long any token of this identity stays valid after
	// it is issued or rotated, whatever the token asks for. Unset means no cap.
	// A Go duration such as "720h"; must be positive, at most 2562047h.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s') && duration(self) <= duration('2562047h')",message="maxLifetime must be positive, at most 2562047h"
	MaxLifetime *metav1.Duration `json:"maxLifetime,omitempty"`

	// defaultLifetime is the lifetime of a token that sets neither expiresAt
	// nor lifetime. Unset means such tokens do not expire (unless maxLifetime
	// caps them). Must be positive, at most 2562047h, and not above maxLifetime.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s') && duration(self) <= duration('2562047h')",message="defaultLifetime must be positive, at most 2562047h"
	DefaultLifetime *metav1.Duration `json:"defaultLifetime,omitempty"`

	// requestsPerMinute is the rate each token of this identity may be checked
	// at, unless the token sets its own. Unset means the check server's
	// --default-requests-per-minute (500 unless changed).
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000
	RequestsPerMinute int32 `json:"requestsPerMinute,omitempty"`

	// scopeRequestsPerMinute gives some scopes a rate of their own, such as
	// 60 a minute for "links:write" and 1000 for "links:read": a check that
	// requires such a scope counts against that scope's budget (each, when
	// it requires several) instead of requestsPerMinute. A token's own
	// scopeRequestsPerMinute overrides these, scope by scope. At most 32.
	// +optional
	// +listType=map
	// +listMapKey=scope
	// +kubebuilder:validation:MaxItems=32
	ScopeRequestsPerMinute []ScopeRate `json:"scopeRequestsPerMinute,omitempty"`

	// quota is how many checks each token of this identity may pass, in all
	// or per refill period, unless the token sets its own. Unset means no
	// quota: the rate alone limits checks.
	// +optional
	Quota *Quota `json:"quota,omitempty"`

	// expiryWarning is how long before a token expires keymint warns: the
	// token gets condition ExpiringSoon=True and a Warning Event, once. No
	// warning comes when a scheduled rotation replaces the token before it
	// expires. Unset means the manager's --expiry-warning (168h, 7 days,
	// unless changed); "0s" turns warnings off. At most 2562047h.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('0s') && duration(self) <= duration('2562047h')",message="expiryWarning must be from 0s to 2562047h"
	ExpiryWarning *metav1.Duration `json:"expiryWarning,omitempty"`

	// maxIdle revokes, with reason Idle, any token of this identity that no
	// check has accepted for this long (counted from its issue when never
	// used); a token's own maxIdle may only be shorter. Uses are recorded
	// once per quarter of maxIdle (at most 3h), and revocation waits maxIdle
	// plus the gap the last use was recorded under plus 15m past it (at most
	// 3h15m; 15m past its issue when never used; docs/api.md). Unset means
	// tokens are never revoked for idleness. At least 1h, at most 2562047h.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1h') && duration(self) <= duration('2562047h')",message="maxIdle must be at least 1h, at most 2562047h"
	MaxIdle *metav1.Duration `json:"maxIdle,omitempty"`

	// allowedSourceCIDRs limit where every token of this identity may be
	// used from (see the ApiToken's allowedSourceCIDRs): a token's own list
	// is narrowed by this one. At most 32.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=49
	// +kubebuilder:validation:items:XValidation:rule="isCIDR(self) && cidr(self) == cidr(self).masked()",message="each entry must be a CIDR with its network's own address, such as 10.0.0.0/8 or 192.0.2.7/32"
	AllowedSourceCIDRs []string `json:"allowedSourceCIDRs,omitempty"`

	// requireApproval keeps every token of this identity from being minted,
	// and checks from accepting it, until a user who may "approve" this
	// ServiceUser (RBAC verb approve on serviceusers, resourceNames
	// honoured), and who did not ask for the token, approves it (kubectl
	// keymint approve). Any change that needs "mint" (scopes, audiences,
	// lifetime, a rotation request, un-revoking) is a new request that
	// needs a new approval; revoking needs none. Turning it on governs
	// requests from then on: a token already issued keeps working as it
	// is (keymint records its grant as approved by policy), and any change
	// to it needs approval.
	// +optional
	RequireApproval bool `json:"requireApproval,omitempty"`
}

// ScopeRate is the check rate of one scope.
type ScopeRate struct {
	// scope is a permission, "resource:verb".
	// +required
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[a-z0-9][a-z0-9._-]*:[a-z0-9][a-z0-9._-]*$`
	Scope string `json:"scope"`
	// requestsPerMinute is how many checks requiring the scope a token may
	// pass a minute: that many at once, then one more each 60s/rate.
	// +required
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000
	RequestsPerMinute int32 `json:"requestsPerMinute"`
}

// ServiceUser condition types and reasons.
const (
	// ServiceUserConditionReady is True while the identity is enabled and its
	// tokens can be used, with reason Enabled; False with reason Disabled.
	ServiceUserConditionReady = "Ready"

	ServiceUserReasonEnabled  = "Enabled"
	ServiceUserReasonDisabled = "Disabled"
)

// ServiceUserStatus is the observed state of a ServiceUser.
type ServiceUserStatus struct {
	// conditions describe the current state of the ServiceUser.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// tokens is how many ApiTokens name this ServiceUser.
	// +optional
	Tokens int32 `json:"tokens"`

	// activeTokens is how many of those are Ready: issued, not expired and not
	// revoked.
	// +optional
	ActiveTokens int32 `json:"activeTokens"`

	// unrevokedTokens is how many of those still hold a token keymint has not
	// revoked, current or in a grace period, expired or not. Re-enabling a
	// disabled ServiceUser waits for it to reach 0, so that no token refused
	// while the user was disabled is ever accepted again.
	// +optional
	UnrevokedTokens int32 `json:"unrevokedTokens"`

	// observedGeneration is the generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// ServiceUser is a non-interactive identity that owns ApiTokens: what they may
// do (permissions), who they are to Kubernetes RBAC (groups), and the policy
// their tokens follow.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=su,categories=keymint
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.spec.tokenPolicy) || !has(oldSelf.spec.tokenPolicy.requireApproval) || !oldSelf.spec.tokenPolicy.requireApproval || (has(self.spec.tokenPolicy) && has(self.spec.tokenPolicy.requireApproval) && self.spec.tokenPolicy.requireApproval) || !has(self.spec.disabled) || !self.spec.disabled",message="tokenPolicy.requireApproval cannot be turned off while the ServiceUser is disabled (keymint's webhook is not asked then): turn it off while enabled, which needs the right to approve its tokens",fieldPath=".spec.tokenPolicy.requireApproval"
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.spec.disabled) || !oldSelf.spec.disabled || (has(self.spec.disabled) && self.spec.disabled) || !has(oldSelf.status) || ((!has(oldSelf.status.activeTokens) || oldSelf.status.activeTokens == 0) && (!has(oldSelf.status.unrevokedTokens) || oldSelf.status.unrevokedTokens == 0))",message="spec.disabled can be set back to false only once keymint has revoked every token of the user (status.activeTokens and status.unrevokedTokens are 0); try again in a moment",fieldPath=".spec.disabled"
// +kubebuilder:printcolumn:name="Display name",type=string,JSONPath=`.spec.displayName`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Tokens",type=integer,JSONPath=`.status.tokens`
// +kubebuilder:printcolumn:name="Active",type=integer,JSONPath=`.status.activeTokens`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
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

package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Well-known labels and annotations.
const (
	// RotateAnnotation on an ApiToken asks for a rotation: set it to any new
	// value and the controller rotates once for that value.
	RotateAnnotation = "keymint.io/rotate"

	// TokenLabel marks keymint's token Secrets (the only Secrets keymint
	// caches). Its value is the ApiToken's name when that fits a label value
	// (63 characters), else empty; the Secret's controller owner reference
	// always names the ApiToken.
	TokenLabel = "keymint.io/api-token"

	// RecordAnnotation on a token Secret is the record of the token it holds,
	// as JSON: serial, hash, issue and expiry times, grace-period hashes. It is
	// read only to recover a status that names no newer token (a crash
	// between the Secret and status writes), and only with a valid
	// RecordSignatureAnnotation: the status is the record of truth.
	RecordAnnotation = "keymint.io/record"
	// RecordSignatureAnnotation on a token Secret is "<key id>.<HMAC-SHA256>"
	// of the record, bound to the ApiToken's namespace, name and UID, keyed by
	// a key only keymint reads. A record without a valid signature is never
	// adopted.
	RecordSignatureAnnotation = "keymint.io/record-signature"

	// SecretTokenKey is the key of the token in its Secret's data.
	SecretTokenKey = "token"

	// RestartedAtAnnotation is set on the pod template of each of
	// spec.rotation.restartTargets when a new token replaces the one in the
	// Secret: its value, the new token's issue time, changes the template and
	// so rolls the pods.
	RestartedAtAnnotation = "keymint.io/restartedAt"

	// RequesterAnnotation is the record of who asked for the ApiToken as it
	// is: the user whose admitted write last changed what the token is, the
	// digest of that spec, and who named each restart target. keymint's
	// mutating admission webhook writes it; the controllers check that
	// user's rights again each time they mint or restart. It is trusted only
	// with a valid RequesterSignatureAnnotation.
	RequesterAnnotation = "keymint.io/requester"
	// RequesterSignatureAnnotation is "<key id>.<HMAC-SHA256>" of the
	// requester record, bound to the ApiToken's namespace and name, keyed by
	// the record key only keymint reads.
	RequesterSignatureAnnotation = "keymint.io/requester-signature"

	// DecisionAnnotation is how an approver answers a token of a ServiceUser
	// with tokenPolicy.requireApproval: "approve" or "deny" (kubectl keymint
	// approve|deny). keymint's mutating webhook checks, at that write, that
	// the writer may approve the ServiceUser (verb "approve" on serviceusers)
	// and did not ask for the token, then replaces it with ApprovalAnnotation;
	// it is never stored.
	DecisionAnnotation = "keymint.io/decision"
	// DecisionMessageAnnotation is an optional reason sent with a decision
	// (at most 256 characters), kept in the approval record.
	DecisionMessageAnnotation = "keymint.io/decision-message"
	// DecisionRequestAnnotation, sent with a decision, names the request it
	// answers: the ID of the requester record (RequesterAnnotation) as the
	// approver read it. The decision is refused if the request changed
	// since (a spec widened between review and approval). kubectl keymint
	// approve|deny always sends it.
	DecisionRequestAnnotation = "keymint.io/decision-request"
	// ApprovalAnnotation is the record of the decision on the token as it is
	// requested (the requester record): who approved or denied it, when, and
	// why. keymint's mutating webhook writes it and keeps it only while the
	// request it answers stands; it is trusted only with a valid
	// ApprovalSignatureAnnotation, bound to the ApiToken's namespace, name
	// and UID.
	ApprovalAnnotation = "keymint.io/approval"
	// ApprovalSignatureAnnotation is "<key id>.<HMAC-SHA256>" of the approval
	// record, keyed by the record key only keymint reads.
	ApprovalSignatureAnnotation = "keymint.io/approval-signature"
)

// ApiTokenSpec is the desired state of an ApiToken.
//
// +kubebuilder:validation:XValidation:rule="!(has(self.expiresAt) && has(self.lifetime))",message="set expiresAt or lifetime, not both"
// +kubebuilder:validation:XValidation:rule="has(self.secretName) == has(oldSelf.secretName)",message="secretName is immutable: it cannot be added or removed after creation"
type ApiTokenSpec struct {
	// serviceUser is the name of the ServiceUser, in the same namespace, that
	// owns this token. Required and immutable: a token cannot change hands.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="serviceUser is immutable"
	ServiceUser string `json:"serviceUser"`

	// description says what the token is for, such as "nightly export job".
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Description string `json:"description,omitempty"`

	// scopes limit the token to some of its ServiceUser's permissions, each as
	// "resource:verb". Empty means all of them. A scope the ServiceUser does
	// not hold (now or later) is simply not granted.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=128
	// +kubebuilder:validation:items:MaxLength=128
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9][a-z0-9._-]*:[a-z0-9][a-z0-9._-]*$`
	Scopes []string `json:"scopes,omitempty"`

	// expiresAt is when the token stops being valid: an RFC 3339 time such as
	// "2030-01-01T00:00:00Z", from 1970 to before 9999, with an uppercase T
	// and Z (the date-time format alone lets through a lowercase t or z, or an
	// offset of +99:99, which keymint could not read back). Conflicts with
	// lifetime. The ServiceUser's tokenPolicy.maxLifetime still caps it.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Format=date-time
	// +kubebuilder:validation:Pattern=`^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$`
	// +kubebuilder:validation:XValidation:rule="self >= timestamp('1970-01-01T00:00:00Z') && self < timestamp('9999-01-01T00:00:00Z')",message="expiresAt must be an RFC 3339 time such as 2030-01-01T00:00:00Z, from 1970 to before 9999"
	ExpiresAt *metav1.Time `json:"expiresAt,omitempty"`

	// lifetime is how long the token stays valid after it is issued or
	// rotated, as a Go duration such as "720h". Conflicts with expiresAt. When
	// both are unset, the ServiceUser's tokenPolicy.defaultLifetime applies;
	// when that is unset too, the token does not expire. Must be positive and
	// at most 2562047h (about 292 years, the most a Go duration holds).
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s') && duration(self) <= duration('2562047h')",message="lifetime must be positive, at most 2562047h"
	Lifetime *metav1.Duration `json:"lifetime,omitempty"`

	// revoked, when true, revokes the token: its Secret is emptied and checks
	// refuse it at once. Setting it back to false mints a new token; the
	// revoked one never comes back. It can be set back only once keymint has
	// revoked the token (status.tokenHash empty), so a quick revert cannot
	// skip the revocation.
	// +optional
	Revoked bool `json:"revoked,omitempty"`

	// rotation replaces the token on a schedule. Whether or not it is set, the
	// token also rotates each time the keymint.io/rotate annotation takes a new
	// value.
	// +optional
	Rotation *Rotation `json:"rotation,omitempty"`

	// secretName is the Secret the token is written to, under key "token".
	// Defaults to the ApiToken's name. Immutable: it cannot be added, changed
	// or removed once the ApiToken exists.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="secretName is immutable"
	SecretName string `json:"secretName,omitempty"`

	// audiences limit where the token is accepted. When set, a TokenReview
	// must name one of them in spec.audiences, and a /check request in its
	// "audience" query parameter or X-Keymint-Audience header. Empty means the
	// token is accepted without an audience (by kube-apiserver, as its own).
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=253
	Audiences []string `json:"audiences,omitempty"`

	// requestsPerMinute overrides the ServiceUser's tokenPolicy.requestsPerMinute
	// for this token.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000
	RequestsPerMinute *int32 `json:"requestsPerMinute,omitempty"`

	// scopeRequestsPerMinute overrides the ServiceUser's
	// tokenPolicy.scopeRequestsPerMinute for this token, scope by scope. At
	// most 32.
	// +optional
	// +listType=map
	// +listMapKey=scope
	// +kubebuilder:validation:MaxItems=32
	ScopeRequestsPerMinute []ScopeRate `json:"scopeRequestsPerMinute,omitempty"`

	// quota overrides the ServiceUser's tokenPolicy.quota for this token: how
	// many checks it may pass in all, or per refill period.
	// +optional
	Quota *Quota `json:"quota,omitempty"`

	// maxIdle revokes the token, with reason Idle, once no check has
	// accepted it (current or rotated-out) for this long, counted from its
	// issue when it was never used. Rotations do not restart the count; the
	// ServiceUser's tokenPolicy.maxIdle still caps it. A new
	// keymint.io/rotate value issues a new token after an idle revocation.
	// At least 1h, at most 2562047h.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1h') && duration(self) <= duration('2562047h')",message="maxIdle must be at least 1h, at most 2562047h"
	MaxIdle *metav1.Duration `json:"maxIdle,omitempty"`

	// allowedSourceCIDRs limit where the token may be used from: a /check
	// whose client address (the connection's, or X-Forwarded-For from the
	// check server's --trusted-proxy-cidrs) is in none of them is refused
	// with 403 source_not_allowed, and so is one whose client address
	// cannot be established. The ServiceUser's tokenPolicy.allowedSourceCIDRs
	// narrow them further: a client must be in both lists. TokenReview
	// carries no client address: such a token is refused there unless the
	// check server runs with --tokenreview-ignores-source-cidrs. At most 32.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=49
	// +kubebuilder:validation:items:XValidation:rule="isCIDR(self) && cidr(self) == cidr(self).masked()",message="each entry must be a CIDR with its network's own address, such as 10.0.0.0/8 or 192.0.2.7/32"
	AllowedSourceCIDRs []string `json:"allowedSourceCIDRs,omitempty"`

	// metadata are up to 16 string pairs about the token, for the
	// application behind the check: /check returns each as a header
	// X-Keymint-Meta-<key> (and all in its body), TokenReview in
	// user.extra["keymint.io/meta.<key>"]. Keys are 1 to 32 lowercase
	// letters, digits and '-', starting and ending with a letter or digit;
	// values at most 256 printable ASCII characters. Not secret: anyone who
	// may read the ApiToken reads them.
	// +optional
	// +kubebuilder:validation:MaxProperties=16
	// +kubebuilder:validation:XValidation:rule="self.all(k, k.size() <= 32 && k.matches('^[a-z0-9]([a-z0-9-]*[a-z0-9])?$'))",message="metadata keys are 1 to 32 lowercase letters, digits and '-', starting and ending with a letter or digit"
	Metadata map[string]MetadataValue `json:"metadata,omitempty"`
}

// MetadataValue is one metadata value: printable ASCII, so that it can
// travel in an HTTP header as it is.
// +kubebuilder:validation:MaxLength=256
// +kubebuilder:validation:Pattern=`^[ -~]*$`
type MetadataValue string

// Rotation says when a token is replaced by a new one.
//
// +kubebuilder:validation:XValidation:rule="!has(self.every) || !has(self.gracePeriod) || duration(self.gracePeriod) < duration(self.every)",message="gracePeriod must be shorter than every"
// +kubebuilder:validation:XValidation:rule="!has(self.retireWhenIdle) || (has(self.gracePeriod) && duration(self.retireWhenIdle) < duration(self.gracePeriod))",message="retireWhenIdle must be shorter than gracePeriod: it ends a grace period early"
type Rotation struct {
	// every rotates the token this long after it was issued or last rotated,
	// as a Go duration such as "720h". At least 1m, at most 2562047h.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m') && duration(self) <= duration('2562047h')",message="rotation.every must be at least 1m, at most 2562047h"
	Every *metav1.Duration `json:"every,omitempty"`

	// gracePeriod keeps accepting a rotated-out token this long after its
	// replacement is issued, so that clients can pick up the new one. Defaults
	// to 0: the old token stops at once. Never extends a token past its expiry.
	// At most 2562047h.
	// +optional
	// +kubebuilder:default="0s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('0s') && duration(self) <= duration('2562047h')",message="rotation.gracePeriod must be from 0s to 2562047h"
	GracePeriod *metav1.Duration `json:"gracePeriod,omitempty"`

	// retireWhenIdle ends a rotated-out token's grace period early: once the
	// new token has passed a check, the old one stops being accepted as soon
	// as it has not passed one for this long (counted from the rotation at
	// the earliest). A rotated-out token's uses are recorded to the minute
	// while it waits, so it is at least 5m; it must be shorter than gracePeriod, which still bounds it. Unset
	// means the full grace period applies.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('5m') && duration(self) <= duration('2562047h')",message="rotation.retireWhenIdle must be at least 5m, at most 2562047h"
	RetireWhenIdle *metav1.Duration `json:"retireWhenIdle,omitempty"`

	// restartTargets are workloads in the token's namespace that mount its
	// Secret: after each new token replaces one (rotation, renewal, reissue),
	// keymint sets annotation keymint.io/restartedAt on their pod template,
	// which rolls their pods onto the new token, as `kubectl rollout restart`
	// does. Naming a workload needs the right to patch it. At most 16.
	// +optional
	// +listType=map
	// +listMapKey=kind
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=16
	RestartTargets []RestartTarget `json:"restartTargets,omitempty"`
}

// RestartTarget names a workload whose pods keymint restarts after a new
// token replaces the one in its Secret.
type RestartTarget struct {
	// kind is Deployment, StatefulSet or DaemonSet (API group apps).
	// +required
	// +kubebuilder:validation:Enum=Deployment;StatefulSet;DaemonSet
	Kind string `json:"kind"`
	// name is the workload's name, in the ApiToken's namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`
}

// PreviousToken is a rotated-out token that is still accepted for a while.
type PreviousToken struct {
	// tokenHash is "sha256:<64 hex>" of the rotated-out token.
	TokenHash string `json:"tokenHash"`
	// issuedAt is when the rotated-out token was minted: a later, shorter
	// lifetime or maxLifetime cuts its grace period short from there.
	IssuedAt metav1.Time `json:"issuedAt"`
	// validUntil is when the rotated-out token stops being accepted.
	ValidUntil metav1.Time `json:"validUntil"`
	// lastUsedAt is when a check last accepted this rotated-out token, as
	// recorded by the check servers: to within the token's recording gap
	// (a minute while retireWhenIdle waits on it; docs/api.md).
	// +optional
	LastUsedAt *metav1.Time `json:"lastUsedAt,omitempty"`
}

// LeakReport says that a token of this ApiToken was reported leaked: found
// where it should not be (a public repository, a log) and posted to
// keymint's leak report endpoint. The check server that received the report
// writes it; checks refuse that token from then on, and the controller
// replaces it.
type LeakReport struct {
	// tokenHash is "sha256:<64 hex>" of the reported token.
	// +kubebuilder:validation:MaxLength=71
	TokenHash string `json:"tokenHash"`
	// reportedAt is when keymint received the report.
	ReportedAt metav1.Time `json:"reportedAt"`
	// source is the endpoint that received it: github
	// (POST /credentials/revoke) or gitlab (GitLab's Token Revocation API).
	// +kubebuilder:validation:MaxLength=32
	Source string `json:"source"`
	// location is where the token was found, as the reporter said (a URL,
	// a file); empty when it said nothing. Never the token.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Location string `json:"location,omitempty"`
}

// LastLeak is the record of the last leak keymint acted on.
type LastLeak struct {
	LeakReport `json:",inline"`
	// tokenPrefix is the display prefix of the leaked token when it was the
	// current one; empty for a rotated-out one.
	// +optional
	TokenPrefix string `json:"tokenPrefix,omitempty"`
	// currentSerial is the serial of the current token once keymint acted:
	// the one issued in the leaked one's place, or the one already current
	// when a rotated-out token leaked. Condition Leaked stays True while it
	// is still the current serial.
	// +optional
	CurrentSerial int64 `json:"currentSerial,omitempty"`
}

// Quota is how many checks a token may pass: uses in all, or uses per
// refill period. Unlike a rate (per minute, smoothed), a quota is a count:
// once spent, checks are refused (/check: 429 quota_exceeded) until the
// period refills, or for good without refill.
type Quota struct {
	// uses is how many checks may pass, per period with refill.
	// +required
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000000000
	Uses int64 `json:"uses"`
	// refill starts a new period of uses every so often; unset means the
	// uses are for the token's whole life.
	// +optional
	Refill *QuotaRefill `json:"refill,omitempty"`
}

// QuotaStatus is a quota's count as a check server saw it.
type QuotaStatus struct {
	// uses is the quota's uses per period.
	Uses int64 `json:"uses"`
	// remaining is what was left of the period's uses.
	Remaining int64 `json:"remaining"`
	// refillsAt is when the period ends; unset without refill.
	// +optional
	RefillsAt *metav1.Time `json:"refillsAt,omitempty"`
	// observedAt is when a check server saw that count.
	ObservedAt metav1.Time `json:"observedAt"`
}

// QuotaRefill is a quota's period.
type QuotaRefill struct {
	// every is the period's length, at least 1m. Periods are aligned to
	// the Unix epoch (every 24h: at 00:00 UTC), so every replica counts the
	// same period.
	// +required
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m') && duration(self) <= duration('2562047h')",message="refill.every must be at least 1m"
	Every metav1.Duration `json:"every"`
}

// Approval decisions.
const (
	DecisionApproved = "Approved"
	DecisionDenied   = "Denied"
)

// ApprovalStatus is the decision keymint last acted on for a token of a
// ServiceUser with tokenPolicy.requireApproval.
type ApprovalStatus struct {
	// decision is Approved or Denied.
	// +required
	// +kubebuilder:validation:Enum=Approved;Denied
	Decision string `json:"decision"`
	// by is the user who decided.
	// +required
	// +kubebuilder:validation:MaxLength=512
	By string `json:"by"`
	// at is when they decided.
	// +required
	At metav1.Time `json:"at"`
	// message is the reason they gave, if any.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	Message string `json:"message,omitempty"`
	// grant is "sha256:<hex>" of what the decision is for: the spec's
	// serviceUser, scopes, audiences, expiry, lifetime, rotation (less its
	// restart targets), maxIdle, allowedSourceCIDRs and metadata. Checks
	// accept a token of such a ServiceUser only while an Approved grant
	// matches its spec: a widened spec waits for a new approval.
	// +optional
	// +kubebuilder:validation:MaxLength=71
	Grant string `json:"grant,omitempty"`
}

// ApiToken condition types and reasons.
const (
	// ApiTokenConditionReady is True when the Secret holds a token that checks
	// accept now (reason Issued). False otherwise, with reason Expired,
	// RevokedBySpec, ServiceUserNotFound, ServiceUserDisabled, SecretConflict,
	// NotAllowed or NoRequesterRecord (see Authorized), AwaitingApproval or
	// ApprovalDenied (see Approved), or Pending (not issued yet).
	ApiTokenConditionReady = "Ready"
	// ApiTokenConditionExpired is True once the token's effective expiry has
	// passed (reason Expired), False before (reason NotExpired).
	ApiTokenConditionExpired = "Expired"
	// ApiTokenConditionRevoked is True while the token is revoked, with reason
	// RevokedBySpec, ServiceUserDisabled, ServiceUserNotFound, Idle (unused
	// longer than maxIdle) or Deleting (the ApiToken is being deleted);
	// False with reason NotRevoked.
	ApiTokenConditionRevoked = "Revoked"

	// ApiTokenConditionRequestGranted is True (reason AsRequested) when the
	// token gets all its spec asks for; False when its ServiceUser gives less:
	// reason ScopesNotHeld (scopes the user lacks are not granted) or
	// LifetimeCapped (tokenPolicy.maxLifetime cuts the lifetime short).
	// Unknown (reason NotEvaluated) while the token is revoked by its spec or
	// has no valid requester record: the condition then says nothing of the
	// ServiceUser to whoever may write the ApiToken.
	ApiTokenConditionRequestGranted = "RequestGranted"

	// ApiTokenConditionExpiringSoon is True (reason WithinWarningWindow) while
	// the current token expires within its ServiceUser's
	// tokenPolicy.expiryWarning (7 days unless set) and no scheduled rotation
	// replaces it first, or (reason IdleWithinWarningWindow) is revoked for
	// idleness within that window unless used; False (reason
	// NotExpiringSoon) otherwise. A Warning Event goes with each change to
	// True.
	ApiTokenConditionExpiringSoon = "ExpiringSoon"

	// ApiTokenConditionAuthorized is about the last time keymint was to mint
	// a token, or restart a workload, for this ApiToken: True (reason
	// Authorized) when the user who asked for the token (the requester
	// record that admission wrote) still had the right to, at that moment;
	// False when not: reason NotAllowed (the message names the RBAC rule to
	// add; keymint tries again by itself), NoRequesterRecord (no valid
	// record: the ApiToken was written without passing keymint's admission
	// webhook) or RequesterWebhookNotEnforced. Unset until keymint first
	// mints for the ApiToken.
	ApiTokenConditionAuthorized = "Authorized"

	// ApiTokenConditionLeaked is True (reason Reported) from the moment a
	// token of this ApiToken is reported leaked until the token issued in
	// its place is itself replaced (the next rotation); False (reason
	// NotReported) otherwise. Its message says where the token was found.
	ApiTokenConditionLeaked   = "Leaked"
	ApiTokenReasonReported    = "Reported"
	ApiTokenReasonNotReported = "NotReported"
	// ApiTokenReasonLeaked is Ready's reason while a reported token is not
	// yet replaced (its replacement waits for authorization, say): checks
	// refuse it already.
	ApiTokenReasonLeaked = "Leaked"
	// ApiTokenReasonIdle: the token went unused longer than its maxIdle and
	// was revoked (condition Revoked and Ready).
	ApiTokenReasonIdle = "Idle"

	ApiTokenReasonAuthorized        = "Authorized"
	ApiTokenReasonNotAllowed        = "NotAllowed"
	ApiTokenReasonNoRequesterRecord = "NoRequesterRecord"
	// ApiTokenReasonRequesterWebhookNotEnforced: keymint's requester webhook
	// configuration is missing or lets writes skip it, so no record is
	// trusted and nothing is minted until it is restored.
	ApiTokenReasonRequesterWebhookNotEnforced = "RequesterWebhookNotEnforced"
	ApiTokenReasonNotEvaluated                = "NotEvaluated"

	ApiTokenReasonWithinWarningWindow     = "WithinWarningWindow"
	ApiTokenReasonIdleWithinWarningWindow = "IdleWithinWarningWindow"
	ApiTokenReasonNotExpiringSoon         = "NotExpiringSoon"

	ApiTokenReasonAsRequested    = "AsRequested"
	ApiTokenReasonScopesNotHeld  = "ScopesNotHeld"
	ApiTokenReasonLifetimeCapped = "LifetimeCapped"

	ApiTokenReasonIssued              = "Issued"
	ApiTokenReasonExpired             = "Expired"
	ApiTokenReasonNotExpired          = "NotExpired"
	ApiTokenReasonNotRevoked          = "NotRevoked"
	ApiTokenReasonRevokedBySpec       = "RevokedBySpec"
	ApiTokenReasonDeleting            = "Deleting"
	ApiTokenReasonServiceUserDisabled = "ServiceUserDisabled"
	ApiTokenReasonServiceUserNotFound = "ServiceUserNotFound"
	ApiTokenReasonSecretConflict      = "SecretConflict"
	ApiTokenReasonPending             = "Pending"

	// ApiTokenConditionApproved is set for tokens of a ServiceUser with
	// tokenPolicy.requireApproval: True (reason Approved) while the spec as
	// it is was approved, False with reason Pending (waiting for a user who
	// may approve it, or an approver who may no longer) or Denied (final
	// for that request: a changed spec is a new one).
	ApiTokenConditionApproved      = "Approved"
	ApiTokenReasonApproved         = "Approved"
	ApiTokenReasonDenied           = "Denied"
	ApiTokenReasonAwaitingApproval = "AwaitingApproval"
	ApiTokenReasonApprovalDenied   = "ApprovalDenied"
)

// ApiTokenStatus is the observed state of an ApiToken. It never holds the
// token itself.
type ApiTokenStatus struct {
	// conditions describe the current state of the token.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// tokenHash is "sha256:<64 hex>" of the current token. Empty while no
	// token is issued (for example while revoked).
	// +optional
	// +kubebuilder:validation:MaxLength=71
	TokenHash string `json:"tokenHash,omitempty"`

	// tokenPrefix is the first 12 characters of the current token, to tell
	// tokens apart; the rest is secret.
	// +optional
	TokenPrefix string `json:"tokenPrefix,omitempty"`

	// secretName is the Secret that holds the token.
	// +optional
	SecretName string `json:"secretName,omitempty"`

	// serial counts the tokens keymint has minted for this ApiToken: 1 for
	// the first, one more for each issue, rotation or reissue. It never
	// decreases, also while the token is revoked, so a Secret restored from
	// an older copy can never bring back a token this status has moved past.
	// +optional
	Serial int64 `json:"serial,omitempty"`

	// issuedAt is when the current token was minted.
	// +optional
	IssuedAt *metav1.Time `json:"issuedAt,omitempty"`

	// serviceUserUID is the UID of the ServiceUser the current token was
	// minted for: a ServiceUser deleted and created again under the same name
	// never gets the old tokens back.
	// +optional
	ServiceUserUID string `json:"serviceUserUID,omitempty"`

	// expiresAt is the current token's expiry: the earliest of spec.expiresAt
	// (or issuedAt + lifetime or defaultLifetime) and issuedAt + the
	// ServiceUser's maxLifetime, as they were when it was minted, or earlier
	// if they were shortened since. It never moves later: a longer lifetime
	// mints a new token instead. Unset when the token does not expire.
	// +optional
	ExpiresAt *metav1.Time `json:"expiresAt,omitempty"`

	// rotatedAt is when the current token replaced an earlier one by rotation.
	// +optional
	RotatedAt *metav1.Time `json:"rotatedAt,omitempty"`

	// nextRotationAt is when the token rotates next on schedule.
	// +optional
	NextRotationAt *metav1.Time `json:"nextRotationAt,omitempty"`

	// previousTokens are rotated-out tokens still accepted until validUntil.
	// +optional
	// +listType=atomic
	PreviousTokens []PreviousToken `json:"previousTokens,omitempty"`

	// lastUsedAt is when a check last accepted this token, current or in a
	// grace period, to within its recording gap: 3h, a quarter of maxIdle
	// when that is shorter, 1m while retireWhenIdle waits (docs/api.md).
	// +optional
	LastUsedAt *metav1.Time `json:"lastUsedAt,omitempty"`

	// lastUsedRecording is the recording gap lastUsedAt was written under:
	// a use less than the gap after lastUsedAt is not written (only one at
	// least the gap later is). The check servers write it with lastUsedAt,
	// and again if they hold a use back under a longer gap. maxIdle waits
	// the longer of it and the token's gap now (without it, or with it
	// naming another lastUsedAt, the longest gap, 3h).
	// +optional
	LastUsedRecording *UseRecording `json:"lastUsedRecording,omitempty"`

	// tokenLastUsedAt is when a check last accepted the current token
	// (tokenHash); unset until it is first used. rotation.retireWhenIdle
	// waits for it.
	// +optional
	TokenLastUsedAt *metav1.Time `json:"tokenLastUsedAt,omitempty"`

	// idleSince is when the current line of tokens began: the issue of a
	// token where none was. Rotations and replacements carry it over, so
	// maxIdle counts from the later of it and lastUsedAt.
	// +optional
	IdleSince *metav1.Time `json:"idleSince,omitempty"`

	// idleRevokedAt is when keymint revoked the token for going unused
	// longer than maxIdle. No token is issued while it is set; a new
	// keymint.io/rotate value (kubectl keymint rotate) issues one.
	// +optional
	IdleRevokedAt *metav1.Time `json:"idleRevokedAt,omitempty"`

	// leakReports are reports, not yet acted on, that a token of this
	// ApiToken (current or rotated-out) leaked. keymint's check servers
	// write them; checks refuse a reported token at once, and the
	// controller replaces it. keymint's own record, never the spec's, so a
	// GitOps sync cannot undo one.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	LeakReports []LeakReport `json:"leakReports,omitempty"`

	// lastLeak is the last leak keymint acted on.
	// +optional
	LastLeak *LastLeak `json:"lastLeak,omitempty"`

	// restartedSerial is the serial of the token whose arrival last
	// restarted spec.rotation.restartTargets (keymint sets it to the current
	// serial, without restarting anything, when it first sees the targets).
	// +optional
	RestartedSerial int64 `json:"restartedSerial,omitempty"`

	// quota is the token's quota as a check server last counted it; unset
	// without a quota, or before its first check. Eventually consistent:
	// check servers write it with lastUsedAt, so it may be the token's
	// recording gap (3h without an idle rule) and a flush interval late
	// (docs/api.md).
	// +optional
	Quota *QuotaStatus `json:"quota,omitempty"`

	// approval is the decision on this token keymint last acted on, for a
	// ServiceUser with tokenPolicy.requireApproval.
	// +optional
	Approval *ApprovalStatus `json:"approval,omitempty"`

	// lastRotationRequest is the keymint.io/rotate annotation value the
	// controller last handled.
	// +optional
	LastRotationRequest string `json:"lastRotationRequest,omitempty"`

	// observedGeneration is the generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// UseRecording is the recording gap a status.lastUsedAt was written under.
type UseRecording struct {
	// lastUsedAt is the status.lastUsedAt this gap was written with: the
	// gap describes that value only.
	LastUsedAt metav1.Time `json:"lastUsedAt"`

	// gap is the recording gap: a use less than this after lastUsedAt was
	// not written. At most 3h, the longest gap.
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('0s') && duration(self) <= duration('3h')",message="gap must be from 0s to 3h"
	Gap metav1.Duration `json:"gap"`
}

// ApiToken is one bearer token of a ServiceUser. keymint mints it, writes it
// once into a Secret, keeps only its SHA-256 hash, and enforces its expiry,
// revocation and rotation.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=apitok,categories=keymint
// +kubebuilder:selectablefield:JSONPath=`.spec.serviceUser`
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.spec.revoked) || !oldSelf.spec.revoked || (has(self.spec.revoked) && self.spec.revoked) || !has(oldSelf.status) || !has(oldSelf.status.tokenHash) || size(oldSelf.status.tokenHash) == 0",message="spec.revoked can be set back to false only once keymint has revoked the token (status.tokenHash is empty); try again in a moment",fieldPath=".spec.revoked"
// +kubebuilder:printcolumn:name="Service user",type=string,JSONPath=`.spec.serviceUser`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`
// +kubebuilder:printcolumn:name="Granted",type=string,JSONPath=`.status.conditions[?(@.type=="RequestGranted")].reason`,priority=1
// +kubebuilder:printcolumn:name="Authorized",type=string,JSONPath=`.status.conditions[?(@.type=="Authorized")].reason`,priority=1
// +kubebuilder:printcolumn:name="Approved",type=string,JSONPath=`.status.conditions[?(@.type=="Approved")].reason`,priority=1
// +kubebuilder:printcolumn:name="Leaked",type=string,JSONPath=`.status.conditions[?(@.type=="Leaked")].status`,priority=1
// +kubebuilder:printcolumn:name="Prefix",type=string,JSONPath=`.status.tokenPrefix`
// +kubebuilder:printcolumn:name="Expires",type=string,JSONPath=`.status.expiresAt`
// +kubebuilder:printcolumn:name="Secret",type=string,JSONPath=`.status.secretName`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ApiToken struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec ApiTokenSpec `json:"spec"`
	// +optional
	Status ApiTokenStatus `json:"status,omitempty"`
}

// SecretNameOrDefault returns the name of the token's Secret: spec.secretName,
// or the ApiToken's own name.
func (t *ApiToken) SecretNameOrDefault() string {
	if t.Spec.SecretName != "" {
		return t.Spec.SecretName
	}
	return t.Name
}

// RestartTargets returns spec.rotation.restartTargets, nil without a
// rotation.
func (s *ApiTokenSpec) RestartTargets() []RestartTarget {
	if s.Rotation == nil {
		return nil
	}
	return s.Rotation.RestartTargets
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

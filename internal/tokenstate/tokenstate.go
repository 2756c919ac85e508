// Package tokenstate owns every rule of token validity: whether a token is
// revoked and why (idleness included), whether it was reported leaked, its
// effective expiry, whether its expiry was extended, when it rotates next,
// which rotated-out hashes are still accepted and until when, its effective
// scopes, audiences and rate.
//
// The ApiToken controller (conditions, status) and the check server (HTTP
// answers) both decide through Evaluate and Check, so they can never
// disagree: the controller evaluates the token it observes (Evaluate), and
// the check server answers a presented hash with Admit (Check, then the
// audience, the budgets and the scopes). Nothing here does I/O or reads a
// clock: every function takes the instant it decides for. Admit is on the
// request path: it allocates nothing unless scopes are missing.
package tokenstate

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/netip"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

// User is what a token's state depends on from its ServiceUser.
type User struct {
	// Found is false when the ServiceUser does not exist or is being deleted.
	Found       bool
	UID         types.UID
	Disabled    bool
	Permissions []string
	// MaxLifetime and DefaultLifetime are zero when unset.
	MaxLifetime     time.Duration
	DefaultLifetime time.Duration
	// RequestsPerMinute is the policy's rate, zero when unset.
	RequestsPerMinute int32
	// ScopeRates are the policy's rates of single scopes.
	ScopeRates []keymintv1alpha1.ScopeRate
	// MaxIdle is the policy's maxIdle, zero when unset.
	MaxIdle time.Duration
	// Sources are the policy's allowedSourceCIDRs, parsed; nil when unset.
	Sources []netip.Prefix
	// RequireApproval is the policy's requireApproval: a token is accepted
	// only while its grant is approved (Token.Approved).
	RequireApproval bool
	// Quota is the policy's quota, nil when unset: the spec's own wins.
	Quota *keymintv1alpha1.Quota
}

// UserFrom reads a ServiceUser; nil means it does not exist.
func UserFrom(u *keymintv1alpha1.ServiceUser) User {
	if u == nil || u.DeletionTimestamp != nil {
		return User{}
	}
	user := User{
		Found: true, UID: u.UID, Disabled: u.Spec.Disabled, Permissions: u.Spec.Permissions,
		RequestsPerMinute: u.Spec.TokenPolicy.RequestsPerMinute,
		ScopeRates:        u.Spec.TokenPolicy.ScopeRequestsPerMinute,
	}
	if d := u.Spec.TokenPolicy.MaxLifetime; d != nil {
		user.MaxLifetime = d.Duration
	}
	if d := u.Spec.TokenPolicy.DefaultLifetime; d != nil {
		user.DefaultLifetime = d.Duration
	}
	if d := u.Spec.TokenPolicy.MaxIdle; d != nil {
		user.MaxIdle = d.Duration
	}
	user.Sources = ParseSources(u.Spec.TokenPolicy.AllowedSourceCIDRs)
	user.RequireApproval = u.Spec.TokenPolicy.RequireApproval
	user.Quota = u.Spec.TokenPolicy.Quota
	return user
}

// Previous is a rotated-out hash: when its token was minted, and until when
// it was to be accepted when it was rotated out.
type Previous struct {
	Hash       string
	IssuedAt   time.Time
	ValidUntil time.Time
	// LastUsed is when a check last accepted it, as recorded; zero when
	// never (since it was rotated out, or at all).
	LastUsed time.Time
	// Leaked is true once it was reported leaked: it is never accepted
	// again.
	Leaked bool
}

// Token is what a verdict reads of an ApiToken: its spec, and the record of
// its current token as the status holds it.
type Token struct {
	Spec *keymintv1alpha1.ApiTokenSpec
	// IssuedAt is when the current token was minted.
	IssuedAt time.Time
	// Expiry is the expiry recorded when the token was minted (when
	// Expires). The effective expiry may be earlier (the spec or policy was
	// shortened since), never later.
	Expiry time.Time
	// UserUID is the ServiceUser the token was minted for; empty in records
	// older than the field, which then match any.
	UserUID  types.UID
	Previous []Previous
	// LastUsed is when a check last accepted the current token, as
	// recorded; zero when never.
	LastUsed time.Time
	// IdleSince is when the current line of tokens began (status.idleSince;
	// zero: IssuedAt), and AnyLastUsed when a check last accepted any of
	// the ApiToken's tokens (status.lastUsedAt; zero when never): maxIdle
	// counts from the later of the two.
	IdleSince   time.Time
	AnyLastUsed time.Time
	// AnyLastUsedGap is the recording gap AnyLastUsed was written under
	// (status.lastUsedRecording); zero when unknown.
	AnyLastUsedGap time.Duration
	// Sources are the spec's allowedSourceCIDRs, parsed once here rather
	// than on every check; nil when unset.
	Sources []netip.Prefix

	// The flags last, together: every check server holds a Token per
	// ApiToken, and padding after each would cost a million tokens 32 MB.

	// Issued is false while the status names no token (before the first
	// issue, and while revoked).
	Issued bool
	// Expires is false when the token was minted with no expiry.
	Expires bool
	// Deleting is true once the ApiToken is being deleted: deleting a token
	// revokes it, even while a finalizer holds the object.
	Deleting bool
	// Leaked is true once the current token was reported leaked: it is
	// never accepted again, and the controller replaces it.
	Leaked bool
	// IdleRevoked is true once keymint revoked the ApiToken for idleness
	// (status.idleRevokedAt): no token is accepted or issued until a new
	// rotation request.
	IdleRevoked bool
	// Approved is true when the spec's grant is the one the status records
	// as approved (Approved), or when a token was issued before any
	// approval was recorded: issued before its user required approval.
	// Only users with RequireApproval read it.
	Approved bool
}

// TokenFrom reads the token record of an ApiToken's status.
func TokenFrom(spec *keymintv1alpha1.ApiTokenSpec, st *keymintv1alpha1.ApiTokenStatus) Token {
	tok := Token{Spec: spec, Issued: st.TokenHash != "" && st.IssuedAt != nil, UserUID: types.UID(st.ServiceUserUID),
		Sources: ParseSources(spec.AllowedSourceCIDRs)}
	if st.IssuedAt != nil {
		tok.IssuedAt = st.IssuedAt.Time
	}
	if st.ExpiresAt != nil {
		tok.Expiry, tok.Expires = st.ExpiresAt.Time, true
	}
	if st.TokenLastUsedAt != nil {
		tok.LastUsed = st.TokenLastUsedAt.Time
	}
	if st.LastUsedAt != nil {
		tok.AnyLastUsed, tok.AnyLastUsedGap = st.LastUsedAt.Time, RecordedGap(st)
	}
	if st.IdleSince != nil {
		tok.IdleSince = st.IdleSince.Time
	}
	tok.IdleRevoked = st.IdleRevokedAt != nil
	tok.Approved = Approved(spec, st)
	for _, p := range st.PreviousTokens {
		prev := Previous{Hash: p.TokenHash, IssuedAt: p.IssuedAt.Time, ValidUntil: p.ValidUntil.Time}
		if p.LastUsedAt != nil {
			prev.LastUsed = p.LastUsedAt.Time
		}
		tok.Previous = append(tok.Previous, prev)
	}
	tok.MarkReported(st.TokenHash, st.LeakReports)
	return tok
}

// Approved reports whether the status records the grant of spec as
// approved: an Approved decision for exactly this grant, or, with no
// decision recorded, a token issued before approval was required (one
// minted under requireApproval is always recorded with its approval).
func Approved(spec *keymintv1alpha1.ApiTokenSpec, st *keymintv1alpha1.ApiTokenStatus) bool {
	a := st.Approval
	if a == nil {
		return st.TokenHash != "" && st.IssuedAt != nil
	}
	return a.Decision == keymintv1alpha1.DecisionApproved && a.Grant == GrantDigest(spec)
}

// minted is what Digest covers: every field whose change mints a token or
// changes what a token may do, where, how long it lives, or what it tells
// the application behind a check (metadata). Restart targets mint nothing,
// nor do the description and rates. Fields added later are omitempty: a
// token that sets none keeps the digest it was admitted with.
type minted struct {
	ServiceUser string                    `json:"serviceUser"`
	Scopes      []string                  `json:"scopes,omitempty"`
	Audiences   []string                  `json:"audiences,omitempty"`
	ExpiresAt   *metav1.Time              `json:"expiresAt,omitempty"`
	Lifetime    *metav1.Duration          `json:"lifetime,omitempty"`
	Rotation    *keymintv1alpha1.Rotation `json:"rotation,omitempty"`
	Revoked     bool                      `json:"revoked,omitempty"`
	Rotate      string                    `json:"rotate,omitempty"`

	MaxIdle            *metav1.Duration                         `json:"maxIdle,omitempty"`
	AllowedSourceCIDRs []string                                 `json:"allowedSourceCIDRs,omitempty"`
	Metadata           map[string]keymintv1alpha1.MetadataValue `json:"metadata,omitempty"`
}

// Digest is "sha256:<hex>" of what a spec asks to be minted, with rotate
// the value of its keymint.io/rotate annotation: its ServiceUser, scopes,
// audiences, expiry, lifetime, rotation (less restart targets),
// revocation, rotation request, maxIdle, source addresses and metadata.
// Two specs with equal digests mint the same token.
func Digest(s *keymintv1alpha1.ApiTokenSpec, rotate string) string {
	m := minted{
		ServiceUser: s.ServiceUser, Scopes: s.Scopes, Audiences: s.Audiences, ExpiresAt: s.ExpiresAt,
		Lifetime: s.Lifetime, Revoked: s.Revoked, Rotate: rotate,
		MaxIdle: s.MaxIdle, AllowedSourceCIDRs: s.AllowedSourceCIDRs, Metadata: s.Metadata,
	}
	if s.Rotation != nil {
		m.Rotation = s.Rotation.DeepCopy()
		m.Rotation.RestartTargets = nil
		if m.Rotation.GracePeriod != nil && m.Rotation.GracePeriod.Duration == 0 {
			m.Rotation.GracePeriod = nil // the CRD's default: 0s and unset are one request
		}
		if r := m.Rotation; r.Every == nil && r.GracePeriod == nil && r.RetireWhenIdle == nil {
			m.Rotation = nil
		}
	}
	if m.ExpiresAt != nil {
		t := metav1.NewTime(m.ExpiresAt.UTC())
		m.ExpiresAt = &t
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err) // plain data always marshals
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// GrantDigest is the Digest of what a token of spec may do, whether or not
// it is revoked and whatever rotation was asked for: what an approval
// approves.
func GrantDigest(spec *keymintv1alpha1.ApiTokenSpec) string {
	s := *spec
	s.Revoked = false
	return Digest(&s, "")
}

// MarkReported marks the hashes of t (hash is its current one) that leak
// reports name: they are refused for good. TokenFrom applies the status's;
// a record read from elsewhere (a Secret's) gets them the same way.
func (t *Token) MarkReported(hash string, reports []keymintv1alpha1.LeakReport) {
	t.Leaked = t.Issued && Reported(reports, hash)
	for i := range t.Previous {
		t.Previous[i].Leaked = Reported(reports, t.Previous[i].Hash)
	}
}

// Reported reports whether the leak reports name hash.
func Reported(reports []keymintv1alpha1.LeakReport, hash string) bool {
	for i := range reports {
		if reports[i].TokenHash == hash {
			return true
		}
	}
	return false
}

// Verdict is the state of a token at one instant.
type Verdict struct {
	// Revoked is the ApiToken condition reason the token is revoked for
	// (Deleting, RevokedBySpec, ServiceUserNotFound, ServiceUserDisabled,
	// Idle), or "".
	Revoked string
	// Expiry is the current token's effective expiry; Expires is false when
	// it has none.
	Expiry  time.Time
	Expires bool
	Expired bool
	// Extended is true when the spec and policy now give the current token a
	// later expiry than it was minted with. Expiry never moves later: the
	// controller mints a new token instead.
	Extended bool
	// NextRotation is when the current token rotates on schedule; Rotates is
	// false when it has no schedule, or the rotation would fall after expiry.
	NextRotation time.Time
	Rotates      bool
	// IdleAt is when the current token is revoked for idleness unless a use
	// is recorded first (IdleRevocationAt); Idles is false when no maxIdle
	// applies, or expiry comes first.
	IdleAt time.Time
	Idles  bool
	// Leaked is true when the current token was reported leaked.
	Leaked bool
	// Unapproved is true when the token's user requires approval and its
	// grant is not approved (yet, or any more: a widened spec): checks
	// refuse it and the controller mints nothing for it.
	Unapproved bool
	// Accepted is true when checks accept the current token now.
	Accepted bool
}

// Evaluate decides the state of token t of user u at now.
func Evaluate(t *Token, u *User, now time.Time) Verdict {
	v := Verdict{Revoked: revocationReason(t, u), Unapproved: u.RequireApproval && !t.Approved}
	if !t.Issued {
		return v
	}
	v.Leaked = t.Leaked
	specExpiry, specExpires := Expiry(t.Spec, u, t.IssuedAt)
	v.Expiry, v.Expires = t.Expiry, t.Expires
	if specExpires && (!v.Expires || specExpiry.Before(v.Expiry)) {
		v.Expiry, v.Expires = specExpiry, true
	}
	v.Extended = t.Expires && (!specExpires || specExpiry.After(t.Expiry))
	v.Expired = v.Expires && !now.Before(v.Expiry)
	v.NextRotation, v.Rotates = nextRotation(t.Spec, t.IssuedAt)
	// A rotation due after expiry never happens: an expired token stays
	// expired. One due at or before expiry happens even if it runs late.
	if v.Rotates && v.Expires && v.NextRotation.After(v.Expiry) {
		v.Rotates = false
	}
	// Idleness revokes only a token that would otherwise live on: one
	// expiring first expires.
	v.IdleAt, v.Idles = IdleRevocationAt(t, u)
	if v.Idles && v.Expires && !v.IdleAt.Before(v.Expiry) {
		v.IdleAt, v.Idles = time.Time{}, false
	}
	if v.Revoked == "" && v.Idles && !now.Before(v.IdleAt) {
		v.Revoked = keymintv1alpha1.ApiTokenReasonIdle
	}
	v.Accepted = v.Revoked == "" && !v.Expired && !v.Leaked && !v.Unapproved
	return v
}

// UseRecordingSlack is how late a check's use may reach lastUsedAt beyond
// its recording gap (UseRecordingGap): check servers write uses in batches
// (--last-used-flush-interval, 10 s, at most a minute), retry a write
// another replica beat, or kube-apiserver refused, at the next one, and
// write what they hold as they stop. maxIdle waits, past its own end, the
// gap the last recorded use was written under or the token's gap now,
// whichever is longer, and this long besides, so that a token used within
// its maxIdle is never revoked for idleness while its use is on its way
// (IdleRevocationAt), through a kube-apiserver outage of some minutes.
const UseRecordingSlack = 15 * time.Minute

// RecordedGap is the recording gap status.lastUsedAt was written under, as
// the check server that wrote it recorded it beside it; zero when unknown:
// not recorded (a keymint before the field), or recorded for another
// lastUsedAt (an older check server moved lastUsedAt since). No gap is
// longer than DefaultUseRecordingGap: a longer one written by hand counts
// as that, so it cannot put idleness off.
func RecordedGap(st *keymintv1alpha1.ApiTokenStatus) time.Duration {
	r := st.LastUsedRecording
	if r == nil || st.LastUsedAt == nil || !r.LastUsedAt.Equal(st.LastUsedAt) || r.Gap.Duration <= 0 {
		return 0
	}
	return min(r.Gap.Duration, DefaultUseRecordingGap)
}

// DefaultUseRecordingGap is how stale lastUsedAt may be for a token no
// idle rule watches: its uses reach its status once every 3 hours at most.
// GitHub shows a token's last use to within a week; 3 hours keeps "last
// used today" true, and a million tokens in constant use at about 90
// status writes a second and under 1 KB into etcd per token an hour,
// whatever the number of replicas (docs/api.md, lastUsedAt).
const DefaultUseRecordingGap = 3 * time.Hour

// MinUseRecordingGap is the finest a token's uses are recorded: a rotated
// -out token under retireWhenIdle, which retires to the minute.
const MinUseRecordingGap = time.Minute

// UseRecordingGap returns how far apart a token's recorded uses may be:
// check servers move lastUsedAt (and tokenLastUsedAt, previousTokens[]
// .lastUsedAt, status.quota) only by at least this much, so it is at most
// this stale. 3 hours by default; a quarter of its maxIdle when that is
// shorter, so idleness is judged on recent uses; a minute while a
// rotated-out hash waits for retireWhenIdle. A field never set is set at
// once.
func UseRecordingGap(t *Token, u *User) time.Duration {
	gap := DefaultUseRecordingGap
	if idle := MaxIdle(t.Spec, u); idle > 0 {
		gap = min(gap, idle/4)
	}
	if RetireWhenIdle(t.Spec) > 0 && len(t.Previous) > 0 {
		gap = MinUseRecordingGap
	}
	return max(gap, MinUseRecordingGap)
}

// MaxIdle returns how long a token of spec may go unused under user u:
// the shorter of its own and its user's maxIdle; zero when neither is set.
func MaxIdle(spec *keymintv1alpha1.ApiTokenSpec, u *User) time.Duration {
	idle := u.MaxIdle
	if spec.MaxIdle != nil && spec.MaxIdle.Duration > 0 && (idle <= 0 || spec.MaxIdle.Duration < idle) {
		idle = spec.MaxIdle.Duration
	}
	return max(idle, 0)
}

// IdleRevocationAt returns when token t of user u is revoked for idleness
// unless a later use is recorded: maxIdle and UseRecordingSlack (flushes,
// retries) after the later of the start of its line of tokens (IdleSince,
// else its issue) and the last moment a use may have gone unrecorded
// (HeldBackUntil). ok is false without a maxIdle or a token.
func IdleRevocationAt(t *Token, u *User) (at time.Time, ok bool) {
	idle := MaxIdle(t.Spec, u)
	if idle <= 0 || !t.Issued {
		return time.Time{}, false
	}
	since := t.IdleSince
	if since.IsZero() {
		since = t.IssuedAt
	}
	if held := HeldBackUntil(t, u); held.After(since) {
		since = held
	}
	return since.Add(idle + UseRecordingSlack), true
}

// HeldBackUntil is until when a use of t may have gone unrecorded: check
// servers write a use only once it is a recording gap or more after
// lastUsedAt (of any hash), and forget the others. That gap is the one
// lastUsedAt was written under (RecordedGap; the longest,
// DefaultUseRecordingGap, when unknown) or t's gap now if longer: a check
// server that holds a use back under a longer gap than the status records
// writes that gap first (so a maxIdle raised, then cut, cannot shorten
// it). Zero with no use recorded: a first use is written at the next flush.
func HeldBackUntil(t *Token, u *User) time.Time {
	if t.AnyLastUsed.IsZero() {
		return time.Time{}
	}
	return t.AnyLastUsed.Add(HeldBackGap(t, u))
}

// HeldBackGap is how long after lastUsedAt a use of t may go unrecorded
// (HeldBackUntil).
func HeldBackGap(t *Token, u *User) time.Duration {
	recorded := t.AnyLastUsedGap
	if recorded <= 0 {
		recorded = DefaultUseRecordingGap
	}
	return max(recorded, UseRecordingGap(t, u))
}

// revocationReason says why a token is revoked. Deletion, then an explicit
// revocation, win over the user's state, and a missing user over a disabled one. A token
// minted for a ServiceUser that was since deleted and created again counts as
// its user missing.
func revocationReason(t *Token, u *User) string {
	switch {
	case t.Deleting:
		return keymintv1alpha1.ApiTokenReasonDeleting
	case t.Spec.Revoked:
		return keymintv1alpha1.ApiTokenReasonRevokedBySpec
	case !u.Found, t.Issued && t.UserUID != "" && t.UserUID != u.UID:
		return keymintv1alpha1.ApiTokenReasonServiceUserNotFound
	case u.Disabled:
		return keymintv1alpha1.ApiTokenReasonServiceUserDisabled
	case t.IdleRevoked:
		return keymintv1alpha1.ApiTokenReasonIdle
	}
	return ""
}

// Expiry returns when a token of spec minted at issuedAt expires under the
// current spec and policy: the earliest of its own expiry (spec.expiresAt,
// else issuedAt + spec.lifetime, else issuedAt + the user's defaultLifetime)
// and issuedAt + the user's maxLifetime. ok is false when it never expires.
// A new token's record takes this; a minted token's expiry is Evaluate's.
// It is in whole seconds.
func Expiry(spec *keymintv1alpha1.ApiTokenSpec, u *User, issuedAt time.Time) (expiry time.Time, ok bool) {
	switch {
	case spec.ExpiresAt != nil:
		expiry, ok = spec.ExpiresAt.Time, true
	case spec.Lifetime != nil:
		expiry, ok = issuedAt.Add(spec.Lifetime.Duration), true
	case u.DefaultLifetime > 0:
		expiry, ok = issuedAt.Add(u.DefaultLifetime), true
	}
	if u.MaxLifetime > 0 {
		if capped := issuedAt.Add(u.MaxLifetime); !ok || capped.Before(expiry) {
			expiry, ok = capped, true
		}
	}
	// Whole seconds, earlier rather than later: the status records whole
	// seconds, and an expiry a fraction past the recorded one would read as
	// extended at every reconcile, renewing the token without end.
	return expiry.Truncate(time.Second), ok
}

func nextRotation(spec *keymintv1alpha1.ApiTokenSpec, issuedAt time.Time) (time.Time, bool) {
	if spec.Rotation == nil || spec.Rotation.Every == nil || spec.Rotation.Every.Duration <= 0 {
		return time.Time{}, false
	}
	return issuedAt.Add(spec.Rotation.Every.Duration), true
}

// GracePeriod returns how long a rotated-out token stays accepted.
func GracePeriod(spec *keymintv1alpha1.ApiTokenSpec) time.Duration {
	if spec.Rotation == nil || spec.Rotation.GracePeriod == nil || spec.Rotation.GracePeriod.Duration < 0 {
		return 0
	}
	return spec.Rotation.GracePeriod.Duration
}

// RotatedOut returns the grace-period entry for the current token of t
// rotated out at now: accepted for the grace period, never past its
// effective expiry. ok is false when it is not accepted at all (no grace,
// already expired, or revoked).
func RotatedOut(t *Token, v *Verdict, hash string, now time.Time) (Previous, bool) {
	grace := GracePeriod(t.Spec)
	if !v.Accepted || grace <= 0 {
		return Previous{}, false
	}
	until := now.Add(grace)
	if v.Expires && v.Expiry.Before(until) {
		until = v.Expiry
	}
	return Previous{Hash: hash, IssuedAt: t.IssuedAt, ValidUntil: until, LastUsed: t.LastUsed}, until.After(now)
}

// RetireWhenIdle returns spec.rotation.retireWhenIdle, zero when unset.
func RetireWhenIdle(spec *keymintv1alpha1.ApiTokenSpec) time.Duration {
	if spec.Rotation == nil || spec.Rotation.RetireWhenIdle == nil || spec.Rotation.RetireWhenIdle.Duration < 0 {
		return 0
	}
	return spec.Rotation.RetireWhenIdle.Duration
}

// RetireAt returns when rotated-out hash p is retired by
// spec.rotation.retireWhenIdle: once the current token has passed a check,
// p stops as soon as it has gone unused for that long, counted from its last
// recorded use or, at the earliest, from the current token's issue (its
// rotation). ok is false while the rule does not apply: no retireWhenIdle,
// no current token, or the current token never used. Retiring is the
// controller's act: it drops the hash from the status, so a check server
// that sees a later use recorded never accepts a retired hash again.
func RetireAt(t *Token, p *Previous) (at time.Time, ok bool) {
	idle := RetireWhenIdle(t.Spec)
	if idle <= 0 || !t.Issued || t.LastUsed.IsZero() {
		return time.Time{}, false
	}
	since := t.IssuedAt
	if p.LastUsed.After(since) {
		since = p.LastUsed
	}
	return since.Add(idle), true
}

// Retire splits the still-accepted rotated-out hashes prev of t into those
// kept and those retireWhenIdle retires at now. next is the earliest time a
// kept hash is due to retire, zero when none is scheduled.
func Retire(t *Token, prev []Previous, now time.Time) (kept, retired []Previous, next time.Time) {
	for _, p := range prev {
		at, ok := RetireAt(t, &p)
		switch {
		case ok && !now.Before(at):
			retired = append(retired, p)
			continue
		case ok && at.Before(p.ValidUntil) && (next.IsZero() || at.Before(next)):
			next = at
		}
		kept = append(kept, p)
	}
	return kept, retired, next
}

// Warning is whether a token is inside its warning window: the one before
// it expires, or before it is revoked for idleness.
type Warning struct {
	// Soon is true inside the window.
	Soon bool
	// Opens is when the window opens; OK is false when it never will (no
	// end ahead, a rotation comes first, no warning, or not accepted).
	Opens time.Time
	OK    bool
	// Ends is the end it warns of; Idle is true when that is idleness
	// (which a rotation does not put off), not expiry.
	Ends time.Time
	Idle bool
}

// ExpiringSoon returns the warning of a token of verdict v at now: accepted,
// and within warning of the earlier of its expiry (when no scheduled
// rotation replaces it first) and its idle revocation.
func ExpiringSoon(v *Verdict, warning time.Duration, now time.Time) Warning {
	var w Warning
	if warning <= 0 || !v.Accepted {
		return w
	}
	if v.Expires && !v.Rotates {
		w.Ends, w.OK = v.Expiry, true
	}
	if v.Idles && (!w.OK || v.IdleAt.Before(w.Ends)) {
		w.Ends, w.OK, w.Idle = v.IdleAt, true, true
	}
	if !w.OK {
		return w
	}
	w.Opens = w.Ends.Add(-warning)
	w.Soon = !now.Before(w.Opens)
	return w
}

// previousUntil is until when rotated-out token p is accepted: its recorded
// end of grace, cut short by the current spec and policy applied to its own
// issue time. Records from before issue times were kept have none: their
// recorded end of grace stands.
func previousUntil(t *Token, u *User, p *Previous) time.Time {
	until := p.ValidUntil
	if p.IssuedAt.IsZero() {
		return until
	}
	if e, ok := Expiry(t.Spec, u, p.IssuedAt); ok && e.Before(until) {
		until = e
	}
	return until
}

// StillAccepted returns the rotated-out hashes of t accepted at now, each
// with its effective end of grace, in order. A revoked token has none, nor
// does an unapproved one: its grace ends with the approval it lost.
func StillAccepted(t *Token, u *User, v *Verdict, now time.Time) []Previous {
	if v.Revoked != "" || v.Unapproved {
		return nil
	}
	var out []Previous
	for i := range t.Previous {
		p := t.Previous[i]
		p.ValidUntil = previousUntil(t, u, &p)
		if !p.Leaked && now.Before(p.ValidUntil) {
			out = append(out, p)
		}
	}
	return out
}

// Refusal is why a check refuses a hash of a known token.
type Refusal int

const (
	// Accepted: the hash is good now.
	Accepted Refusal = iota
	// Revoked: the token is revoked, or its user disabled or missing.
	Revoked
	// Expired: the current token is past its effective expiry.
	Expired
	// GraceEnded: a rotated-out hash past its grace period; a check answers
	// it as it answers an unknown token.
	GraceEnded
	// NotForAudience: the token is restricted to audiences the check does
	// not accept (Admit only).
	NotForAudience
	// TooManyBudgets: the check requires more rated scopes than MaxBudgets
	// (Admit only): the request is at fault, not the token.
	TooManyBudgets
	// SourceNotAllowed: the token (or its user) is restricted to source
	// addresses the check's client is not in, or the client's address is
	// not known (Admit only).
	SourceNotAllowed
	// Leaked: the hash was reported leaked; it is never accepted again.
	Leaked
	// NotApproved: the token's user requires approval and its spec, as it
	// is, is not approved; every hash of it waits.
	NotApproved
	// NumRefusals is how many Refusals there are, for tables indexed by
	// them.
	NumRefusals
)

// Current selects the current hash in Check; 0 and up select t.Previous[i].
const Current = -1

// Check decides whether the hash `which` of token t of user u (Current, or
// an index into t.Previous) is accepted at now. It is the check server's
// whole rule, and allocates nothing.
func Check(t *Token, u *User, which int, now time.Time) Refusal {
	v := Evaluate(t, u, now)
	switch {
	case v.Revoked != "":
		return Revoked
	case v.Unapproved:
		return NotApproved
	case which == Current && !t.Issued:
		return GraceEnded
	case which == Current && v.Expired:
		return Expired
	case which == Current && v.Leaked:
		return Leaked
	case which < Current || which >= len(t.Previous):
		return GraceEnded
	case which >= 0 && t.Previous[which].Leaked:
		return Leaked
	case which >= 0 && !now.Before(previousUntil(t, u, &t.Previous[which])):
		return GraceEnded
	}
	return Accepted
}

// Demand is what one check asks of a token beyond being valid.
type Demand struct {
	// Scopes are required, every one of them.
	Scopes []string
	// Audiences are those the caller accepts; Admit moves the ones the
	// token accepts to the front (see AcceptsAudience).
	Audiences []string
	// DefaultRate is the checks per minute of a token whose spec and user
	// set none.
	DefaultRate int32
	// Source is the client's address; the zero Addr when it is not known
	// (TokenReview), which a token restricted to sources is refused for,
	// unless IgnoreSources says the caller is trusted to have checked.
	Source        netip.Addr
	IgnoreSources bool
}

// Admission is the whole answer of the rules for one check of one hash.
type Admission struct {
	// Refusal is Accepted, or why the check is refused (Missing aside).
	Refusal Refusal
	// MatchedAudiences is how many of Demand.Audiences, at its front, the
	// token accepts; 0 for a token restricted to none.
	MatchedAudiences int
	// Budgets are what the check counts against (see Budgets).
	Budgets Budgets
	// Missing are the required scopes the token lacks. A check refuses
	// them (403) after counting the check against its budgets, so that a
	// token probing for scopes spends its rate like any other.
	Missing []string
	// Quota is the quota the check counts against, once its rate allows
	// it; Uses 0 when the token has none.
	Quota QuotaUse
}

// Admit decides one check of hash `which` of token t of user u at now, in
// one call: Check, then the audience, the budgets and the missing scopes.
// It writes its answer into a, whatever a held, so that a caller's answer is
// filled in place rather than copied (a check's budgets are 200 bytes); it
// allocates nothing unless scopes are missing.
func Admit(t *Token, u *User, which int, now time.Time, d Demand, a *Admission) {
	a.MatchedAudiences, a.Missing, a.Quota = 0, nil, QuotaUse{}
	a.Budgets.N = 0
	if a.Refusal = Check(t, u, which, now); a.Refusal != Accepted {
		return
	}
	var ok bool
	if a.MatchedAudiences, ok = AcceptsAudience(t.Spec.Audiences, d.Audiences); !ok {
		a.Refusal = NotForAudience
		return
	}
	if !d.IgnoreSources && !SourceAllowed(t.Sources, u.Sources, d.Source) {
		a.Refusal = SourceNotAllowed
		return
	}
	if !a.Budgets.Fill(t.Spec, u, d.Scopes, d.DefaultRate) {
		a.Refusal, a.Budgets.N = TooManyBudgets, 0
		return
	}
	if q := QuotaOf(t.Spec, u); q != nil {
		a.Quota = QuotaAt(q, now)
	}
	for _, s := range d.Scopes {
		if !Grants(t.Spec, u, s) {
			a.Missing = append(a.Missing, s)
		}
	}
}

// Grants reports whether a token of spec may do scope under user u: one of
// its EffectiveScopes, without building them.
func Grants(spec *keymintv1alpha1.ApiTokenSpec, u *User, scope string) bool {
	return slices.Contains(u.Permissions, scope) && (len(spec.Scopes) == 0 || slices.Contains(spec.Scopes, scope))
}

// MaxBudgets bounds the budgets one check counts against.
const MaxBudgets = 8

// Budget is one budget a check counts against: the token's own (Scope ""),
// or that of one scope with a rate of its own.
type Budget struct {
	Scope string
	Limit int32
}

// Budgets are the budgets of one check, held by value so that passing them
// allocates nothing: List[:N]. The fields are read directly, so that a
// limiter charging them needs no call back into this package.
type Budgets struct {
	N    int
	List [MaxBudgets]Budget
}

// Add adds a budget, once per scope. It reports false when the check
// already has MaxBudgets.
func (bs *Budgets) Add(scope string, limit int32) bool {
	for i := range bs.N {
		if bs.List[i].Scope == scope {
			return true
		}
	}
	if bs.N == MaxBudgets {
		return false
	}
	bs.List[bs.N] = Budget{Scope: scope, Limit: limit}
	bs.N++
	return true
}

// Fill sets bs to the budgets a check that requires scopes counts against:
// one per required scope with a rate of its own (ScopeRate), else the
// token's own rate (Rate). It reports false past MaxBudgets.
func (bs *Budgets) Fill(spec *keymintv1alpha1.ApiTokenSpec, u *User, required []string, serverDefault int32) bool {
	bs.N = 0
	for _, s := range required {
		if r := ScopeRate(spec, u, s); r != nil && !bs.Add(r.Scope, r.RequestsPerMinute) {
			return false
		}
	}
	if bs.N == 0 {
		bs.Add("", Rate(spec, u, serverDefault))
	}
	return true
}

// EffectiveScopes returns what a token may do: its scopes that the user still
// holds, or all the user's permissions when the token names no scopes. The
// result is sorted and has no duplicates.
func EffectiveScopes(scopes, permissions []string) []string {
	var out []string
	if len(scopes) == 0 {
		out = slices.Clone(permissions)
	} else {
		for _, s := range scopes {
			if slices.Contains(permissions, s) {
				out = append(out, s)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// NotGranted returns what a token's spec asks for that its user does not
// give: the scopes the user does not hold, and whether the lifetime or
// expiresAt asked for (from now) goes beyond the user's maxLifetime. The
// token is issued all the same, with less; admission warns and the
// controller's RequestGranted condition says so.
func NotGranted(spec *keymintv1alpha1.ApiTokenSpec, u *User, now time.Time) (scopes []string, lifetimeCapped bool) {
	for _, s := range spec.Scopes {
		if !slices.Contains(u.Permissions, s) {
			scopes = append(scopes, s)
		}
	}
	if u.MaxLifetime > 0 {
		switch {
		case spec.Lifetime != nil:
			lifetimeCapped = spec.Lifetime.Duration > u.MaxLifetime
		case spec.ExpiresAt != nil:
			lifetimeCapped = spec.ExpiresAt.Time.After(now.Add(u.MaxLifetime))
		}
	}
	return scopes, lifetimeCapped
}

// AcceptsAudience reports whether a token restricted to audiences may be used
// for one of the requested ones, and which: it reorders requested so that
// the audiences the token accepts come first, in their order, and returns
// how many, so that the answer allocates nothing. Audiences restrict tokens,
// not routes: a token that sets none is accepted whatever is asked (for a
// TokenReview, with no audience in the answer, which kube-apiserver reads as
// its own), with matched 0.
func AcceptsAudience(audiences, requested []string) (matched int, ok bool) {
	if len(audiences) == 0 {
		return 0, true
	}
	for i, a := range requested {
		if slices.Contains(audiences, a) {
			requested[matched], requested[i] = a, requested[matched]
			matched++
		}
	}
	return matched, matched > 0
}

// ParseSources reads allowedSourceCIDRs; entries that do not parse (the
// CRD refuses them) are left out, and a list of only such entries allows
// no source at all rather than every one.
func ParseSources(cidrs []string) []netip.Prefix {
	if len(cidrs) == 0 {
		return nil
	}
	out := make([]netip.Prefix, 0, len(cidrs))
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil {
			out = append(out, p.Masked())
		}
	}
	if len(out) == 0 {
		// Every entry unreadable: nothing matches the unspecified prefix
		// of length -1, so nothing is allowed.
		out = append(out, netip.Prefix{})
	}
	return out
}

// RestrictsSources reports whether token t of user u is restricted to
// source addresses: only then does a check need the client's address.
func RestrictsSources(t *Token, u *User) bool {
	return len(t.Sources) > 0 || len(u.Sources) > 0
}

// SourceAllowed reports whether a client at addr may use a token
// restricted to tokenSources under a user restricted to userSources: in
// both lists, each when set. A client whose address is not known (the
// zero Addr) is allowed only when neither list is set. IPv4-mapped IPv6
// addresses count as IPv4.
func SourceAllowed(tokenSources, userSources []netip.Prefix, addr netip.Addr) bool {
	if len(tokenSources) == 0 && len(userSources) == 0 {
		return true
	}
	if !addr.IsValid() {
		return false
	}
	addr = addr.Unmap()
	return inSources(tokenSources, addr) && inSources(userSources, addr)
}

// inSources reports whether addr is in one of sources; an empty list
// restricts nothing.
func inSources(sources []netip.Prefix, addr netip.Addr) bool {
	if len(sources) == 0 {
		return true
	}
	for _, p := range sources {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// Rate returns the checks per minute a token may pass: its own rate, else
// its user's policy, else the server's default.
func Rate(spec *keymintv1alpha1.ApiTokenSpec, u *User, serverDefault int32) int32 {
	switch {
	case spec.RequestsPerMinute != nil:
		return *spec.RequestsPerMinute
	case u.RequestsPerMinute > 0:
		return u.RequestsPerMinute
	}
	return serverDefault
}

// QuotaOf returns the quota of a token of spec under user u: its own where
// it is no looser than its user's (no more uses, refilled no more often),
// else its user's; nil when neither sets one. A token's quota needs no
// mint to change, so only its user's bounds it: whoever edits the ApiToken
// can narrow the quota, never widen it.
func QuotaOf(spec *keymintv1alpha1.ApiTokenSpec, u *User) *keymintv1alpha1.Quota {
	own, users := spec.Quota, u.Quota
	switch {
	case own == nil:
		return users
	case users == nil || !looser(own, users):
		return own
	}
	return users
}

// QuotaLooser reports whether quota q, where nil is none, lets more checks
// through than bound: a policy changed from bound to q widens its tokens.
func QuotaLooser(q, bound *keymintv1alpha1.Quota) bool {
	switch {
	case bound == nil:
		return false
	case q == nil:
		return true
	}
	return looser(q, bound)
}

// SourcesWider reports whether a client address allowed by sources after
// may be refused by before: a policy changed so widens its tokens. An
// empty list restricts nothing.
func SourcesWider(after, before []netip.Prefix) bool {
	if len(before) == 0 {
		return false
	}
	if len(after) == 0 {
		return true
	}
	for _, p := range after {
		if !p.IsValid() {
			continue // an unreadable entry allows nothing
		}
		covered := false
		for _, q := range before {
			if q.Bits() <= p.Bits() && q.Contains(p.Addr()) {
				covered = true
				break
			}
		}
		if !covered {
			return true
		}
	}
	return false
}

// looser reports whether quota q lets more checks through than bound in
// some period: more uses, or uses renewed more often (or at all, where
// bound's are for good).
func looser(q, bound *keymintv1alpha1.Quota) bool {
	switch {
	case q.Uses > bound.Uses:
		return true
	case bound.Refill == nil:
		return q.Refill != nil
	case q.Refill == nil:
		return false
	}
	return q.Refill.Every.Duration < bound.Refill.Every.Duration
}

// QuotaUse is the quota one check counts against: Uses checks in the
// period that ends at Refill (the one a new count would start, when the
// period being counted has ended). Without refill Refill is zero: the uses
// are for the token's whole life.
type QuotaUse struct {
	Uses   int64
	Refill time.Time
}

// QuotaAt places now in q's periods. Periods are aligned to the Unix epoch
// (every 24h: from 00:00 UTC), so every replica counts the same one
// without agreeing on anything but the time.
func QuotaAt(q *keymintv1alpha1.Quota, now time.Time) QuotaUse {
	use := QuotaUse{Uses: q.Uses}
	if q.Refill == nil || q.Refill.Every.Duration <= 0 {
		return use
	}
	every := int64(q.Refill.Every.Duration)
	use.Refill = time.Unix(0, (now.UnixNano()/every+1)*every)
	return use
}

// ScopeRate returns the rate a token has for checks that require scope:
// its own entry for that scope, else its user's policy's; nil when neither
// gives the scope a rate (Rate applies). The entry is the spec's or the
// user's own: callers only read it. It allocates nothing.
func ScopeRate(spec *keymintv1alpha1.ApiTokenSpec, u *User, scope string) *keymintv1alpha1.ScopeRate {
	for i := range spec.ScopeRequestsPerMinute {
		if r := &spec.ScopeRequestsPerMinute[i]; r.Scope == scope {
			return r
		}
	}
	for i := range u.ScopeRates {
		if r := &u.ScopeRates[i]; r.Scope == scope {
			return r
		}
	}
	return nil
}

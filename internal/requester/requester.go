// Package requester keeps the record of who asked for an ApiToken: written
// by keymint's mutating admission webhook, the one place that sees the
// requesting user, and read by the controllers, which check that user's
// rights again at the moment they mint a token or restart a workload.
//
// The record is two annotations on the ApiToken: the JSON record, and an
// HMAC of it keyed by the record keyring (internal/recordkey), bound to the
// ApiToken's namespace and name. Anybody may edit annotations; nobody but
// keymint can sign, so an edited or copied record does not verify. The
// record names the digest of the spec it was admitted for: a spec changed
// without admission (while revoked, or with the webhooks bypassed) no
// longer matches it.
package requester

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/recordkey"
	"github.com/keymint/keymint/internal/tokenstate"
)

// version starts every signed message, so a later record format can never
// verify as this one.
const version = "keymint.io/requester/v1"

// sameUser reports whether two users, as admission recorded them, are one.
func sameUser(a, b authenticationv1.UserInfo) bool {
	if a.Username != b.Username || a.UID != b.UID || !slices.Equal(a.Groups, b.Groups) || len(a.Extra) != len(b.Extra) {
		return false
	}
	for k, v := range a.Extra {
		if w, ok := b.Extra[k]; !ok || !slices.Equal(v, w) {
			return false
		}
	}
	return true
}

// Target is a restart target and the user whose admitted write named it:
// keymint patches it only while that user may.
type Target struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
	// NamedBy is the user as kube-apiserver authenticated them in the
	// admission request: what a SubjectAccessReview asks about again.
	NamedBy authenticationv1.UserInfo `json:"namedBy"`
}

// Record says who asked for an ApiToken as it is.
type Record struct {
	// Requester made the last admitted change to what the token is (see
	// SpecDigest), or created it: the user as kube-apiserver authenticated
	// them in the admission request.
	Requester authenticationv1.UserInfo `json:"requester"`
	// RequestedAt is when that change was admitted.
	RequestedAt metav1.Time `json:"requestedAt"`
	// Spec is SpecDigest of the ApiToken the requester asked for.
	Spec string `json:"spec"`
	// RestartTargets are the spec's restart targets, each with who named it.
	RestartTargets []Target `json:"restartTargets,omitempty"`
}

// NamedBy returns who named restart target t, and false when the record
// does not list it (it was added without admission).
func (r *Record) NamedBy(t keymintv1alpha1.RestartTarget) (authenticationv1.UserInfo, bool) {
	for _, rt := range r.RestartTargets {
		if rt.Kind == t.Kind && rt.Name == t.Name {
			return rt.NamedBy, true
		}
	}
	return authenticationv1.UserInfo{}, false
}

// ID names the request r records: its spec digest, its requester and when
// it was admitted. An approval answers one request: any change that needs
// the right to mint (a new record) is a new one.
func (r *Record) ID() string {
	b, err := json.Marshal([]any{r.Spec, r.Requester.Username, r.Requester.UID, r.RequestedAt.UTC().Format(time.RFC3339)})
	if err != nil {
		panic(err)
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// SpecDigest is "sha256:<hex>" of what an ApiToken asks to be minted
// (tokenstate.Digest of its spec and keymint.io/rotate annotation). Two
// ApiTokens with equal digests mint the same token; a change to it is a
// change that needs the right to mint.
func SpecDigest(tok *keymintv1alpha1.ApiToken) string {
	return tokenstate.Digest(&tok.Spec, tok.Annotations[keymintv1alpha1.RotateAnnotation])
}

// Problem says why an ApiToken has no record to act on.
type Problem string

const (
	// Missing: the ApiToken carries no requester record.
	Missing Problem = "Missing"
	// Forged: the record's signature does not verify (edited, copied from
	// another ApiToken, or signed with a key keymint no longer has).
	Forged Problem = "Forged"
	// SpecChanged: the record is keymint's, for a spec other than this one:
	// the spec changed without passing admission.
	SpecChanged Problem = "SpecChanged"
	// BeforeWebhook: the record is keymint's, signed before keymint's
	// requester webhook configuration existed, when writes could skip it.
	BeforeWebhook Problem = "BeforeWebhook"
)

// Explain words a problem for a condition message.
func (p Problem) Explain() string {
	switch p {
	case Missing:
		return "the ApiToken carries no record of who asked for it, which keymint's admission webhook writes: it was written while the webhook was not called (bypassed, or before this keymint version)"
	case Forged:
		return "the record of who asked for the ApiToken (annotation " + keymintv1alpha1.RequesterAnnotation + ") was not written by keymint: it was edited or copied"
	case SpecChanged:
		return "the spec changed since keymint's admission webhook recorded who asked for it: the change was written without passing admission"
	case BeforeWebhook:
		return "its record of who asked for it was signed before keymint's requester webhook configuration was created, while ApiToken writes could skip that webhook, so it is not trusted"
	}
	return string(p)
}

// Read verifies and returns an ApiToken's record. A record that does not
// verify is a Problem, never an error: it is user-editable data.
func Read(ring *recordkey.Keyring, tok *keymintv1alpha1.ApiToken) (*Record, Problem) {
	rec, p := readSigned(ring, tok)
	if p != "" {
		return nil, p
	}
	if rec.Spec != SpecDigest(tok) {
		return rec, SpecChanged
	}
	return rec, ""
}

// readSigned verifies the record's signature and parses it.
func readSigned(ring *recordkey.Keyring, tok *keymintv1alpha1.ApiToken) (*Record, Problem) {
	raw, ok := tok.Annotations[keymintv1alpha1.RequesterAnnotation]
	if !ok {
		return nil, Missing
	}
	if !ring.Verify(tok.Annotations[keymintv1alpha1.RequesterSignatureAnnotation], signedFields(tok, raw)...) {
		return nil, Forged
	}
	rec := &Record{}
	if err := json.Unmarshal([]byte(raw), rec); err != nil {
		return nil, Forged // keymint never signs what it cannot read
	}
	return rec, ""
}

func signedFields(tok *keymintv1alpha1.ApiToken, raw string) []string {
	return []string{version, tok.Namespace, tok.Name, raw}
}

// Admit writes the record for an admitted write of after by who, at now.
// before is the stored object (nil on create). The requester stays who it
// was while the write changes nothing Changes counts (a description, a
// rate, restart targets, a re-apply of the same manifest), and becomes who
// otherwise: who changed what the token is, un-revoked it, or wrote to it
// while it had no valid record, or one signed before trustedSince (when
// writes could skip the webhook: see Webhook.Check). Each restart target
// keeps who named it; a new one is who's.
func Admit(ring *recordkey.Keyring, before, after *keymintv1alpha1.ApiToken, who authenticationv1.UserInfo, now, trustedSince time.Time) {
	var prev *Record
	if before != nil && !before.Spec.Revoked {
		// While revoked no admission runs (revoking works with keymint
		// down): nothing recorded then is kept on un-revoking.
		if r, p := Read(ring, before); p == "" && !r.RequestedAt.Time.Before(trustedSince.Truncate(time.Second)) {
			prev = r
		}
	}
	rec := Record{Requester: who, RequestedAt: metav1.NewTime(now.UTC().Truncate(time.Second)), Spec: SpecDigest(after)}
	if prev != nil && !Changes(before, after) {
		rec.Requester, rec.RequestedAt = prev.Requester, prev.RequestedAt
	}
	for _, t := range after.Spec.RestartTargets() {
		by := who
		if prev != nil {
			if named, ok := prev.NamedBy(t); ok {
				by = named
			}
		}
		rec.RestartTargets = append(rec.RestartTargets, Target{Kind: t.Kind, Name: t.Name, NamedBy: by})
	}
	raw, err := json.Marshal(rec)
	if err != nil {
		panic(err)
	}
	if after.Annotations == nil {
		after.Annotations = map[string]string{}
	}
	after.Annotations[keymintv1alpha1.RequesterAnnotation] = string(raw)
	after.Annotations[keymintv1alpha1.RequesterSignatureAnnotation] = ring.Sign(signedFields(after, string(raw))...)
}

// SameRequest reports whether two records name the same requester for the
// same spec, with the same restart targets named by the same users: the
// same request, whenever each was signed.
func SameRequest(a, b *Record) bool {
	if a == nil || b == nil || a.Spec != b.Spec || !sameUser(a.Requester, b.Requester) || len(a.RestartTargets) != len(b.RestartTargets) {
		return false
	}
	for i, t := range a.RestartTargets {
		u := b.RestartTargets[i]
		if t.Kind != u.Kind || t.Name != u.Name || !sameUser(t.NamedBy, u.NamedBy) {
			return false
		}
	}
	return true
}

// Changes reports whether an update asks for a different token: one that
// needs the right to mint. A token revoked after the update mints nothing,
// whatever else changes; un-revoking mints. Shortening counts too: any
// change to the expiry, lifetime, scopes, audiences or rotation is asked
// about, so that what admission allowed is exactly what gets minted.
func Changes(before, after *keymintv1alpha1.ApiToken) bool {
	b, a := &before.Spec, &after.Spec
	switch {
	case a.Revoked:
		return false
	case b.Revoked:
		return true
	}
	rotate := keymintv1alpha1.RotateAnnotation
	if r := after.Annotations[rotate]; r != "" && r != before.Annotations[rotate] {
		return true
	}
	// Removing the rotate annotation asks for nothing.
	withRotate := func(t *keymintv1alpha1.ApiToken, v string) *keymintv1alpha1.ApiToken {
		c := &keymintv1alpha1.ApiToken{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{rotate: v}}, Spec: t.Spec}
		return c
	}
	return SpecDigest(withRotate(before, "")) != SpecDigest(withRotate(after, ""))
}

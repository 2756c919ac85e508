package controllers

import (
	"encoding/json"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/recordkey"
	"github.com/keymint/keymint/internal/token"
	"github.com/keymint/keymint/internal/tokenstate"
)

// secretRecord is the record of a token, as the Secret that delivers it
// carries it. The status is the record of truth; the Secret's copy exists
// only to recover a token the status does not name yet (a crash between the
// Secret and status writes), and is adopted only if keymint signed it.
type secretRecord struct {
	Serial          int64            `json:"serial"`
	Hash            string           `json:"hash"`
	ServiceUserUID  types.UID        `json:"serviceUserUID,omitempty"`
	IssuedAt        time.Time        `json:"issuedAt"`
	ExpiresAt       *time.Time       `json:"expiresAt,omitempty"`
	RotatedAt       *time.Time       `json:"rotatedAt,omitempty"`
	Previous        []recordPrevious `json:"previous,omitempty"`
	RotationRequest string           `json:"rotationRequest,omitempty"`
	// Display is the token's first characters, for humans; never stored.
	Display string `json:"-"`
}

type recordPrevious struct {
	Hash       string    `json:"hash"`
	IssuedAt   time.Time `json:"issuedAt"`
	ValidUntil time.Time `json:"validUntil"`
}

// recordVersion starts every signed message, so a future record format can
// never verify as this one.
const recordVersion = "keymint.io/record/v1"

// signedFields binds a record to one ApiToken object: the same record in
// another ApiToken's Secret, or in a later ApiToken of the same name, does
// not verify.
func signedFields(tok *keymintv1alpha1.ApiToken, record string) []string {
	return []string{recordVersion, tok.Namespace, tok.Name, string(tok.UID), tok.Spec.ServiceUser, record}
}

// secretState is what a token Secret holds, as far as a reconcile trusts it.
type secretState struct {
	// Plain is the token in the Secret's data, "" when none.
	Plain string
	// Holds is true when the Secret has any token data or record at all.
	Holds bool
	// Signed is the Secret's record when keymint signed it for this
	// ApiToken and the Secret's token is the record's; nil otherwise.
	Signed *secretRecord
}

// readSecret reads a token Secret, verifying its record with ring.
func readSecret(sec *corev1.Secret, tok *keymintv1alpha1.ApiToken, ring *recordkey.Keyring) secretState {
	if sec == nil {
		return secretState{}
	}
	var st secretState
	plain, hasData := sec.Data[keymintv1alpha1.SecretTokenKey]
	record, hasRecord := sec.Annotations[keymintv1alpha1.RecordAnnotation]
	_, hasSig := sec.Annotations[keymintv1alpha1.RecordSignatureAnnotation]
	st.Holds = hasData || hasRecord || hasSig
	if _, err := token.Parse(string(plain)); err == nil {
		st.Plain = string(plain)
	}
	if st.Plain == "" || !ring.Verify(sec.Annotations[keymintv1alpha1.RecordSignatureAnnotation], signedFields(tok, record)...) {
		return st
	}
	var rec secretRecord
	if err := json.Unmarshal([]byte(record), &rec); err != nil || !token.Matches(st.Plain, rec.Hash) {
		return st
	}
	rec.Display = token.Display(st.Plain)
	st.Signed = &rec
	return st
}

// writeRecord puts the token, its record and the record's signature into a
// Secret, replacing any earlier ones and keeping everything else.
func writeRecord(sec *corev1.Secret, tok *keymintv1alpha1.ApiToken, ring *recordkey.Keyring, plain string, rec secretRecord) {
	if sec.Data == nil {
		sec.Data = map[string][]byte{}
	}
	sec.Data[keymintv1alpha1.SecretTokenKey] = []byte(plain)
	if sec.Annotations == nil {
		sec.Annotations = map[string]string{}
	}
	record := string(mustJSON(rec))
	sec.Annotations[keymintv1alpha1.RecordAnnotation] = record
	sec.Annotations[keymintv1alpha1.RecordSignatureAnnotation] = ring.Sign(signedFields(tok, record)...)
}

// clearRecord removes the token and its record from a Secret.
func clearRecord(sec *corev1.Secret) {
	delete(sec.Data, keymintv1alpha1.SecretTokenKey)
	delete(sec.Annotations, keymintv1alpha1.RecordAnnotation)
	delete(sec.Annotations, keymintv1alpha1.RecordSignatureAnnotation)
}

// tokenFromRecord is the token a record describes, as a verdict reads it.
func tokenFromRecord(spec *keymintv1alpha1.ApiTokenSpec, rec *secretRecord) tokenstate.Token {
	t := tokenstate.Token{Spec: spec, Issued: true, IssuedAt: rec.IssuedAt, UserUID: rec.ServiceUserUID}
	if rec.ExpiresAt != nil {
		t.Expiry, t.Expires = *rec.ExpiresAt, true
	}
	for _, p := range rec.Previous {
		t.Previous = append(t.Previous, tokenstate.Previous{Hash: p.Hash, IssuedAt: p.IssuedAt, ValidUntil: p.ValidUntil})
	}
	return t
}

// recordPrevious converts grace-period entries for the record and status.
func toRecordPrevious(prev []tokenstate.Previous) []recordPrevious {
	out := make([]recordPrevious, len(prev))
	for i, p := range prev {
		out[i] = recordPrevious{Hash: p.Hash, IssuedAt: p.IssuedAt, ValidUntil: p.ValidUntil}
	}
	return out
}

func previousTokens(prev []tokenstate.Previous) []keymintv1alpha1.PreviousToken {
	if len(prev) == 0 {
		return nil
	}
	out := make([]keymintv1alpha1.PreviousToken, len(prev))
	for i, p := range prev {
		out[i] = keymintv1alpha1.PreviousToken{
			TokenHash: p.Hash, IssuedAt: metav1.NewTime(p.IssuedAt.UTC()), ValidUntil: metav1.NewTime(p.ValidUntil.UTC()),
		}
		if !p.LastUsed.IsZero() {
			out[i].LastUsedAt = timePtr(&p.LastUsed)
		}
	}
	return out
}

// tokenLabelValue is the TokenLabel value for an ApiToken: its name when
// that fits a label value, else empty (the owner reference names it).
func tokenLabelValue(name string) string {
	if len(name) > 63 {
		return ""
	}
	return name
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only called on types that always marshal
	}
	return b
}

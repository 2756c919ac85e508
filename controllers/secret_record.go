package controllers

import (
	"encoding/json"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/token"
	"github.com/keymint/keymint/internal/tokenstate"
)

// secretRecord is what a token Secret says about the token it holds. The
// Secret is written before the ApiToken status, so after a crash between the
// two writes (or a status lost to a backup restore) the status is rebuilt
// from this record, and no second token is minted.
type secretRecord struct {
	Hash            string
	Display         string // the first characters of the token, for humans
	IssuedAt        time.Time
	RotatedAt       *time.Time
	Previous        []tokenstate.Previous
	RotationRequest string
}

// recordAnnotations are the Secret annotations a record is stored in.
var recordAnnotations = []string{
	keymintv1alpha1.TokenHashAnnotation,
	keymintv1alpha1.IssuedAtAnnotation,
	keymintv1alpha1.RotatedAtAnnotation,
	keymintv1alpha1.PreviousTokensAnnotation,
	keymintv1alpha1.RotationRequestAnnotation,
}

// readRecord returns the record of a token Secret. ok is false unless the
// Secret holds a well-formed token whose hash matches its annotation and a
// readable issue time: anything less counts as no token at all.
func readRecord(sec *corev1.Secret) (rec secretRecord, ok bool) {
	if sec == nil {
		return rec, false
	}
	plain := string(sec.Data[keymintv1alpha1.SecretTokenKey])
	if _, err := token.Parse(plain); err != nil {
		return rec, false
	}
	ann := sec.Annotations
	rec.Hash = ann[keymintv1alpha1.TokenHashAnnotation]
	if !token.Matches(plain, rec.Hash) {
		return secretRecord{}, false
	}
	issuedAt, err := time.Parse(time.RFC3339, ann[keymintv1alpha1.IssuedAtAnnotation])
	if err != nil {
		return secretRecord{}, false
	}
	rec.IssuedAt = issuedAt
	rec.Display = token.Display(plain)
	if v, err := time.Parse(time.RFC3339, ann[keymintv1alpha1.RotatedAtAnnotation]); err == nil {
		rec.RotatedAt = &v
	}
	if v := ann[keymintv1alpha1.PreviousTokensAnnotation]; v != "" {
		var prev []keymintv1alpha1.PreviousToken
		if err := json.Unmarshal([]byte(v), &prev); err == nil {
			for _, p := range prev {
				if _, valid := token.ParseHash(p.TokenHash); valid {
					rec.Previous = append(rec.Previous, tokenstate.Previous{Hash: p.TokenHash, ValidUntil: p.ValidUntil.Time})
				}
			}
		}
	}
	rec.RotationRequest = ann[keymintv1alpha1.RotationRequestAnnotation]
	return rec, true
}

// writeRecord sets the record's annotations on a Secret, replacing any
// earlier record and keeping every other annotation.
func writeRecord(sec *corev1.Secret, rec secretRecord) {
	for _, k := range recordAnnotations {
		delete(sec.Annotations, k)
	}
	if sec.Annotations == nil {
		sec.Annotations = map[string]string{}
	}
	sec.Annotations[keymintv1alpha1.TokenHashAnnotation] = rec.Hash
	sec.Annotations[keymintv1alpha1.IssuedAtAnnotation] = rec.IssuedAt.UTC().Format(time.RFC3339)
	if rec.RotatedAt != nil {
		sec.Annotations[keymintv1alpha1.RotatedAtAnnotation] = rec.RotatedAt.UTC().Format(time.RFC3339)
	}
	if len(rec.Previous) > 0 {
		sec.Annotations[keymintv1alpha1.PreviousTokensAnnotation] = string(mustJSON(previousTokens(rec.Previous)))
	}
	if rec.RotationRequest != "" {
		sec.Annotations[keymintv1alpha1.RotationRequestAnnotation] = rec.RotationRequest
	}
}

// clearRecord removes the token and its record from a Secret.
func clearRecord(sec *corev1.Secret) {
	delete(sec.Data, keymintv1alpha1.SecretTokenKey)
	for _, k := range recordAnnotations {
		delete(sec.Annotations, k)
	}
}

// holdsToken reports whether a Secret still has any token data, valid or not.
func holdsToken(sec *corev1.Secret) bool {
	if sec == nil {
		return false
	}
	if _, ok := sec.Data[keymintv1alpha1.SecretTokenKey]; ok {
		return true
	}
	for _, k := range recordAnnotations {
		if _, ok := sec.Annotations[k]; ok {
			return true
		}
	}
	return false
}

func previousTokens(prev []tokenstate.Previous) []keymintv1alpha1.PreviousToken {
	if len(prev) == 0 {
		return nil
	}
	out := make([]keymintv1alpha1.PreviousToken, len(prev))
	for i, p := range prev {
		out[i] = keymintv1alpha1.PreviousToken{TokenHash: p.Hash, ValidUntil: metav1.NewTime(p.ValidUntil.UTC())}
	}
	return out
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only called on types that always marshal
	}
	return b
}

// Package secretrecord is the format of the record keymint signs into each
// token Secret, beside the token: its serial, hash, times and grace-period
// hashes, bound by an HMAC (internal/recordkey) to one ApiToken object.
//
// The ApiToken status is the record of truth; the Secret's copy exists only
// to recover a token the status does not name yet (a crash between the
// Secret and status writes), and is adopted only if keymint signed it. The
// controllers read and write it; hack/bench builds its fixtures with it.
package secretrecord

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/recordkey"
	"github.com/keymint/keymint/internal/token"
)

// Version starts every signed message, so a future record format can never
// verify as this one.
const Version = "keymint.io/record/v1"

// Record is the record of a token, as the Secret that delivers it carries it
// (annotation keymint.io/record).
type Record struct {
	Serial          int64      `json:"serial"`
	Hash            string     `json:"hash"`
	ServiceUserUID  types.UID  `json:"serviceUserUID,omitempty"`
	IssuedAt        time.Time  `json:"issuedAt"`
	ExpiresAt       *time.Time `json:"expiresAt,omitempty"`
	RotatedAt       *time.Time `json:"rotatedAt,omitempty"`
	Previous        []Previous `json:"previous,omitempty"`
	RotationRequest string     `json:"rotationRequest,omitempty"`
	// IdleSince is when the token's line began (status.idleSince); zero in
	// records older than the field, which then count from IssuedAt.
	IdleSince *time.Time `json:"idleSince,omitempty"`
	// Display is the token's first characters, for humans; never stored.
	Display string `json:"-"`
}

// Previous is a rotated-out hash in its grace period.
type Previous struct {
	Hash       string    `json:"hash"`
	IssuedAt   time.Time `json:"issuedAt"`
	ValidUntil time.Time `json:"validUntil"`
}

// signedFields binds a record to one ApiToken object: the same record in
// another ApiToken's Secret, or in a later ApiToken of the same name, does
// not verify.
func signedFields(tok *keymintv1alpha1.ApiToken, record string) []string {
	return []string{Version, tok.Namespace, tok.Name, string(tok.UID), tok.Spec.ServiceUser, record}
}

// Contents is what a token Secret holds, as far as keymint trusts it. It
// never holds the token itself: only its hash, which is all keymint compares.
type Contents struct {
	// Hash is the hash of the token in the Secret's data ("sha256:..."),
	// "" when it holds none that parses; Display is its first characters.
	Hash, Display string
	// Holds is true when the Secret has any token data or record at all.
	Holds bool
	// Signed is the Secret's record when keymint signed it for this
	// ApiToken and the Secret's token is the record's; nil otherwise.
	Signed *Record
}

// Read reads token Secret sec of tok (nil: none), verifying its record with
// ring.
func Read(sec *corev1.Secret, tok *keymintv1alpha1.ApiToken, ring *recordkey.Keyring) Contents {
	if sec == nil {
		return Contents{}
	}
	var c Contents
	data, hasData := sec.Data[keymintv1alpha1.SecretTokenKey]
	record, hasRecord := sec.Annotations[keymintv1alpha1.RecordAnnotation]
	_, hasSig := sec.Annotations[keymintv1alpha1.RecordSignatureAnnotation]
	c.Holds = hasData || hasRecord || hasSig
	c.Hash, c.Display = digestOf(data)
	if c.Hash == "" || !ring.Verify(sec.Annotations[keymintv1alpha1.RecordSignatureAnnotation], signedFields(tok, record)...) {
		return c
	}
	var rec Record
	if err := json.Unmarshal([]byte(record), &rec); err != nil || !SameHash(c.Hash, rec.Hash) {
		return c
	}
	rec.Display = c.Display
	c.Signed = &rec
	return c
}

// cachedPrefix starts a token Secret's data as the manager's cache holds
// it (ForCache): "keymint.io/cached:<mac>:<hash>:<display>", or
// "keymint.io/cached:-" for data that is no token.
const cachedPrefix = "keymint.io/cached:"

// cacheKey authenticates this process's digests: data that merely looks
// like one (a Secret writer can put anything in the Secret) is no token. A
// new key each start: the cache lives no longer.
var cacheKey = func() []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return k
}()

// cacheMAC is the digest's authenticator, hex: 64 characters.
func cacheMAC(hashAndDisplay string) string {
	m := hmac.New(sha256.New, cacheKey)
	m.Write([]byte(hashAndDisplay))
	return hex.EncodeToString(m.Sum(nil))
}

// ForCache replaces the token in a Secret about to be cached with its hash
// and display, so that no plaintext token stays in the manager's memory
// (it is there only while keymint writes it). A digest this process made
// is kept (informers may transform an object again); anything else in the
// digest's form came from the API server, from a Secret writer, and is no
// token. A Secret so changed must never be written back as it is: Write and
// Clear replace or remove the token, and Writable says whether they did.
func ForCache(sec *corev1.Secret) {
	data, ok := sec.Data[keymintv1alpha1.SecretTokenKey]
	if !ok {
		return
	}
	if strings.HasPrefix(string(data), cachedPrefix) {
		if h, _ := digestOf(data); h == "" {
			sec.Data[keymintv1alpha1.SecretTokenKey] = []byte(cachedPrefix + "-")
		}
		return
	}
	digest := cachedPrefix + "-"
	if _, err := token.Parse(string(data)); err == nil {
		body := token.HashString(string(data)) + ":" + token.Display(string(data))
		digest = cachedPrefix + cacheMAC(body) + ":" + body
	}
	sec.Data[keymintv1alpha1.SecretTokenKey] = []byte(digest)
}

// Writable reports whether sec may be sent to the API server: its token
// data, if any, is a token and not the cache's digest of one.
func Writable(sec *corev1.Secret) bool {
	return !strings.HasPrefix(string(sec.Data[keymintv1alpha1.SecretTokenKey]), cachedPrefix)
}

// digestOf is the hash and display of a Secret's token data, plaintext or
// this process's digest; "" for data that holds no token, or a digest this
// process did not make.
func digestOf(data []byte) (hash, display string) {
	s := string(data)
	if rest, ok := strings.CutPrefix(s, cachedPrefix); ok {
		// <mac>:<hash>:<display>; the hash has a fixed length and a
		// colon of its own.
		mac, body, ok := strings.Cut(rest, ":")
		n := len(token.HashPrefix) + 2*sha256.Size
		if !ok || len(body) <= n || body[n] != ':' || !hmac.Equal([]byte(mac), []byte(cacheMAC(body))) {
			return "", ""
		}
		if _, valid := token.ParseHash(body[:n]); !valid {
			return "", ""
		}
		return body[:n], body[n+1:]
	}
	if _, err := token.Parse(s); err != nil {
		return "", ""
	}
	return token.HashString(s), token.Display(s)
}

// SameHash reports, in constant time, whether two "sha256:..." hashes are
// the same; false when either does not parse.
func SameHash(a, b string) bool {
	x, okA := token.ParseHash(a)
	y, okB := token.ParseHash(b)
	return okA && okB && subtle.ConstantTimeCompare(x[:], y[:]) == 1
}

// Write puts the token plain, its record and the record's signature into
// sec, tok's token Secret, replacing any earlier ones and keeping everything
// else.
func Write(sec *corev1.Secret, tok *keymintv1alpha1.ApiToken, ring *recordkey.Keyring, plain string, rec Record) {
	if sec.Data == nil {
		sec.Data = map[string][]byte{}
	}
	sec.Data[keymintv1alpha1.SecretTokenKey] = []byte(plain)
	if sec.Annotations == nil {
		sec.Annotations = map[string]string{}
	}
	b, err := json.Marshal(rec)
	if err != nil {
		panic(err) // plain data always marshals
	}
	record := string(b)
	sec.Annotations[keymintv1alpha1.RecordAnnotation] = record
	sec.Annotations[keymintv1alpha1.RecordSignatureAnnotation] = ring.Sign(signedFields(tok, record)...)
}

// Clear removes the token and its record from a Secret.
func Clear(sec *corev1.Secret) {
	delete(sec.Data, keymintv1alpha1.SecretTokenKey)
	delete(sec.Annotations, keymintv1alpha1.RecordAnnotation)
	delete(sec.Annotations, keymintv1alpha1.RecordSignatureAnnotation)
}

// TokenLabelValue is the TokenLabel value of ApiToken name's Secret: the
// name when it fits a label value, else empty (the owner reference names it).
func TokenLabelValue(name string) string {
	if len(name) > 63 {
		return ""
	}
	return name
}

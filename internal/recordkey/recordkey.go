// Package recordkey signs and verifies the token record keymint writes into
// each token Secret, so that a record is adopted only if keymint wrote it.
//
// The keys live in one Secret in keymint's own namespace: data "active" names
// the signing key, every other entry is a key (at least 32 bytes) by its ID.
// keymint creates the Secret with one random key on first start. To rotate,
// add a key, point "active" at it and restart keymint; records signed with
// an older key verify as long as that key stays in the Secret.
package recordkey

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// ActiveKey is the data entry of the key Secret naming the signing key.
const ActiveKey = "active"

// MinKeyLen is the shortest key accepted, in bytes.
const MinKeyLen = 32

var keyID = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$`)

// Keyring holds the signing key and every key a record may be verified with.
type Keyring struct {
	active string
	keys   map[string][]byte
}

// New returns a keyring that signs with keys[active].
func New(active string, keys map[string][]byte) (*Keyring, error) {
	if _, ok := keys[active]; !ok {
		return nil, fmt.Errorf("the active key %q is not among the keys", active)
	}
	for id, k := range keys {
		if !keyID.MatchString(id) {
			return nil, fmt.Errorf("key ID %q: use 1 to 32 lowercase letters, digits or '-'", id)
		}
		if len(k) < MinKeyLen {
			return nil, fmt.Errorf("key %q has %d bytes; at least %d are needed", id, len(k), MinKeyLen)
		}
	}
	return &Keyring{active: active, keys: keys}, nil
}

// Generate returns a keyring with one new random key.
func Generate(id string) (*Keyring, error) {
	k := make([]byte, MinKeyLen)
	if _, err := rand.Read(k); err != nil {
		return nil, err
	}
	return New(id, map[string][]byte{id: k})
}

// Sign returns "<key id>.<base64url HMAC-SHA256>" of the fields, each
// length-prefixed so that no two field lists sign alike.
func (k *Keyring) Sign(fields ...string) string {
	return k.active + "." + base64.RawURLEncoding.EncodeToString(mac(k.keys[k.active], fields))
}

// Verify reports whether sig is a signature of the fields by a key of the
// keyring, comparing in constant time.
func (k *Keyring) Verify(sig string, fields ...string) bool {
	id, encoded, ok := strings.Cut(sig, ".")
	key, known := k.keys[id]
	if !ok || !known {
		return false
	}
	got, err := base64.RawURLEncoding.DecodeString(encoded)
	if err != nil {
		return false
	}
	return hmac.Equal(got, mac(key, fields))
}

func mac(key []byte, fields []string) []byte {
	h := hmac.New(sha256.New, key)
	var n [8]byte
	for _, f := range fields {
		binary.BigEndian.PutUint64(n[:], uint64(len(f)))
		h.Write(n[:])
		h.Write([]byte(f))
	}
	return h.Sum(nil)
}

// FromSecret reads a keyring from a key Secret.
func FromSecret(sec *corev1.Secret) (*Keyring, error) {
	if _, ok := sec.Data[ActiveKey]; !ok {
		return nil, fmt.Errorf("no %q entry names the signing key", ActiveKey)
	}
	active := string(sec.Data[ActiveKey])
	keys := map[string][]byte{}
	for id, v := range sec.Data {
		if id != ActiveKey {
			keys[id] = v
		}
	}
	return New(active, keys)
}

// UnusableError is a key Secret keymint cannot sign with: no "active" entry,
// an active ID that names no key, a key shorter than MinKeyLen, a bad ID.
// keymint never replaces such a Secret by itself: records signed with the
// keys it holds would stop verifying. Its text says how to fix it.
type UnusableError struct {
	Secret types.NamespacedName
	// Err says what is wrong with it.
	Err error
}

func (e *UnusableError) Error() string {
	ns, name := e.Secret.Namespace, e.Secret.Name
	return fmt.Sprintf("record key Secret %s cannot be used: %v. keymint does not replace it, since token records signed with its keys would stop verifying: "+
		"repair it (kubectl -n %s edit secret %s: %q names the signing key, every other entry is a key of at least %d bytes), "+
		"or delete it (kubectl -n %s delete secret %s) and keymint creates a new key at its next start (docs/security.md#the-record-key)",
		e.Secret, e.Err, ns, name, ActiveKey, MinKeyLen, ns, name)
}

func (e *UnusableError) Unwrap() error { return e.Err }

// Check reports whether keymint can start with the key Secret at key: nil
// when it is usable or absent (keymint creates it), an *UnusableError when
// keymint would refuse it, any other error when it cannot be read.
func Check(ctx context.Context, reader client.Reader, key types.NamespacedName) error {
	sec := &corev1.Secret{}
	err := reader.Get(ctx, key, sec)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading record key Secret %s: %w", key, err)
	}
	if _, err := FromSecret(sec); err != nil {
		return &UnusableError{Secret: key, Err: err}
	}
	return nil
}

// LoadOrCreate reads the keyring from the Secret at key, creating the Secret
// with a random key if it does not exist. Replicas starting together agree:
// the one whose create loses reads the winner's. A Secret it cannot use is an
// *UnusableError, and stays as it is.
func LoadOrCreate(ctx context.Context, reader client.Reader, writer client.Writer, key types.NamespacedName) (*Keyring, error) {
	for range 2 {
		sec := &corev1.Secret{}
		err := reader.Get(ctx, key, sec)
		if err == nil {
			ring, err := FromSecret(sec)
			if err != nil {
				return nil, &UnusableError{Secret: key, Err: err}
			}
			return ring, nil
		}
		if !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("reading record key Secret %s: %w", key, err)
		}
		ring, err := Generate("k1")
		if err != nil {
			return nil, err
		}
		sec = &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name},
			Type:       corev1.SecretTypeOpaque,
			Data:       map[string][]byte{ActiveKey: []byte(ring.active), ring.active: ring.keys[ring.active]},
		}
		err = writer.Create(ctx, sec)
		if err == nil {
			return ring, nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("creating record key Secret %s: %w", key, err)
		}
	}
	return nil, errors.New("the record key Secret was created and deleted while reading it; try again")
}

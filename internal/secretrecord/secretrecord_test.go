package secretrecord

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/recordkey"
	"github.com/keymint/keymint/internal/recordkey/recordkeytest"
	"github.com/keymint/keymint/internal/token"
)

var now = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

func apiToken(uid string) *keymintv1alpha1.ApiToken {
	return &keymintv1alpha1.ApiToken{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "t", UID: types.UID("uid-" + uid)},
		Spec:       keymintv1alpha1.ApiTokenSpec{ServiceUser: "ci"},
	}
}

func TestSignedRecordRoundTrip(t *testing.T) {
	ring := recordkeytest.Keyring(t, "test")
	tok := apiToken("a")
	plain, _ := token.Mint("km")
	rotated := now.Add(-time.Minute)
	expires := now.Add(time.Hour)
	want := Record{
		Serial: 4, Hash: token.HashString(plain), ServiceUserUID: "uid-ci", IssuedAt: now, ExpiresAt: &expires, RotatedAt: &rotated,
		Previous:        []Previous{{Hash: token.HashString("x"), IssuedAt: now.Add(-time.Hour), ValidUntil: now.Add(time.Hour)}},
		RotationRequest: "r1",
	}
	sec := &corev1.Secret{}
	Write(sec, tok, ring, plain, want)
	got := Read(sec, tok, ring)
	if !got.Holds || got.Hash != token.HashString(plain) || got.Display != token.Display(plain) || got.Signed == nil {
		t.Fatalf("Read(Write(r)) = %+v, want the signed record", got)
	}
	// As the manager's cache holds it: the same, from the digest.
	cached := sec.DeepCopy()
	ForCache(cached)
	if strings.Contains(string(cached.Data[keymintv1alpha1.SecretTokenKey]), plain[len(token.Display(plain)):]) {
		t.Fatalf("the cached Secret holds the token: %q", cached.Data)
	}
	if again := Read(cached, tok, ring); again.Hash != got.Hash || again.Display != got.Display || again.Signed == nil || again.Signed.Serial != 4 {
		t.Errorf("Read of the cached Secret = %+v, want what Read of the Secret gave", again)
	}
	if Writable(cached) || !Writable(sec) {
		t.Error("Writable: the cached digest must never be written as the token, the token may")
	}
	ForCache(cached) // idempotent
	if again := Read(cached, tok, ring); again.Hash != got.Hash {
		t.Errorf("ForCache twice: %+v", again)
	}

	// A Secret writer who knows the hash (it is in the ApiToken's status)
	// but not the token writes the digest's form into the Secret: it is no
	// token, through the cache or not, so keymint never takes it for the
	// delivered token.
	forged := sec.DeepCopy()
	forged.Data[keymintv1alpha1.SecretTokenKey] = []byte(cachedPrefix + strings.Repeat("0", 64) + ":" + token.HashString(plain) + ":" + token.Display(plain))
	if r := Read(forged, tok, ring); r.Hash != "" || r.Signed != nil {
		t.Errorf("a forged digest read from the API server: %+v", r)
	}
	ForCache(forged)
	if r := Read(forged, tok, ring); r.Hash != "" || r.Signed != nil || !r.Holds {
		t.Errorf("a forged digest through the cache: %+v", r)
	}
	r := got.Signed
	if r.Serial != 4 || r.Hash != want.Hash || r.Display != token.Display(plain) || r.ServiceUserUID != "uid-ci" ||
		!r.IssuedAt.Equal(now) || !r.ExpiresAt.Equal(expires) || !r.RotatedAt.Equal(rotated) || r.RotationRequest != "r1" ||
		len(r.Previous) != 1 || !r.Previous[0].ValidUntil.Equal(now.Add(time.Hour)) || !r.Previous[0].IssuedAt.Equal(now.Add(-time.Hour)) {
		t.Errorf("record read back = %+v, want %+v", r, want)
	}

	Clear(sec)
	if got := Read(sec, tok, ring); got.Holds || got.Signed != nil {
		t.Errorf("after Clear the Secret still holds %v %v", sec.Data, sec.Annotations)
	}
}

// TestReadTrustsOnlyKeymintsSignature covers what someone who can write a
// token Secret may try: none of it yields a record to adopt.
func TestReadTrustsOnlyKeymintsSignature(t *testing.T) {
	ring := recordkeytest.Keyring(t, "test")
	tok := apiToken("a")
	plain, _ := token.Mint("km")
	other, _ := token.Mint("km")
	signed := func() *corev1.Secret {
		sec := &corev1.Secret{}
		Write(sec, tok, ring, plain, Record{Serial: 2, Hash: token.HashString(plain), IssuedAt: now})
		return sec
	}
	tests := map[string]struct {
		secret   func() *corev1.Secret
		reader   *keymintv1alpha1.ApiToken
		keyring  *recordkey.Keyring
		wantHold bool
	}{
		"a record signed by another key": {
			secret: signed, reader: tok, keyring: recordkeytest.Keyring(t, "test"), wantHold: true,
		},
		"a record signed for another ApiToken object of the same name": {
			secret: signed, reader: apiToken("b"), keyring: ring, wantHold: true,
		},
		"a record whose serial was edited": {
			secret: func() *corev1.Secret {
				sec := signed()
				sec.Annotations[keymintv1alpha1.RecordAnnotation] = `{"serial":99,"hash":"` + token.HashString(plain) + `","issuedAt":"2026-11-23T12:00:00Z"}`
				return sec
			}, reader: tok, keyring: ring, wantHold: true,
		},
		"another token under a genuine record": {
			secret: func() *corev1.Secret {
				sec := signed()
				sec.Data[keymintv1alpha1.SecretTokenKey] = []byte(other)
				return sec
			}, reader: tok, keyring: ring, wantHold: true,
		},
		"a token with no record at all": {
			secret: func() *corev1.Secret {
				return &corev1.Secret{Data: map[string][]byte{keymintv1alpha1.SecretTokenKey: []byte(plain)}}
			}, reader: tok, keyring: ring, wantHold: true,
		},
		"a signature without a token": {
			secret: func() *corev1.Secret {
				sec := signed()
				delete(sec.Data, keymintv1alpha1.SecretTokenKey)
				return sec
			}, reader: tok, keyring: ring, wantHold: true,
		},
		"no Secret": {
			secret: func() *corev1.Secret { return nil }, reader: tok, keyring: ring,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := Read(tc.secret(), tc.reader, tc.keyring)
			if got.Signed != nil {
				t.Errorf("Read vouched for %+v", got.Signed)
			}
			if got.Holds != tc.wantHold {
				t.Errorf("holds = %v, want %v", got.Holds, tc.wantHold)
			}
		})
	}
	if got := Read(signed(), tok, ring); got.Signed == nil {
		t.Error("the untouched signed Secret was not vouched for: the cases above prove nothing")
	}
}

func TestTokenLabelValue(t *testing.T) {
	long := string(make([]byte, 64))
	if v := TokenLabelValue("short"); v != "short" {
		t.Errorf("TokenLabelValue(short) = %q", v)
	}
	if v := TokenLabelValue(long); v != "" {
		t.Errorf("a 64-character name gave label value %q, want empty (label values stop at 63)", v)
	}
}

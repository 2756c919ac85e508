package recordkey

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
)

var key32 = bytes.Repeat([]byte{7}, 32)

func TestNewRefusesKeysItCannotUse(t *testing.T) {
	tests := map[string]struct {
		active string
		keys   map[string][]byte
		want   string
	}{
		"no active key":       {active: "k2", keys: map[string][]byte{"k1": key32}, want: `active key "k2" is not among the keys`},
		"a short key":         {active: "k1", keys: map[string][]byte{"k1": key32[:31]}, want: "31 bytes; at least 32"},
		"a bad ID":            {active: "K1", keys: map[string][]byte{"K1": key32}, want: `key ID "K1"`},
		"an ID with a period": {active: "k.1", keys: map[string][]byte{"k.1": key32}, want: `key ID "k.1"`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := New(tc.active, tc.keys); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestSignAndVerify(t *testing.T) {
	old, _ := New("k1", map[string][]byte{"k1": key32})
	rotated, _ := New("k2", map[string][]byte{"k1": key32, "k2": bytes.Repeat([]byte{9}, 32)})
	other, _ := Generate("k1")

	sig := old.Sign("ns", "name", "record")
	if !strings.HasPrefix(sig, "k1.") || !old.Verify(sig, "ns", "name", "record") {
		t.Fatalf("a signature %q does not verify with its own key", sig)
	}
	if !rotated.Verify(sig, "ns", "name", "record") {
		t.Error("after rotation, a record signed with the old key no longer verifies while the key stays")
	}
	if s := rotated.Sign("ns", "name", "record"); !strings.HasPrefix(s, "k2.") {
		t.Errorf("after rotation new records are signed %q, want k2", s)
	}
	for name, ok := range map[string]bool{
		"another key of the same ID":         other.Verify(sig, "ns", "name", "record"),
		"another field":                      old.Verify(sig, "ns", "name", "record2"),
		"fields split differently":           old.Verify(sig, "ns", "namerecord", ""),
		"an unknown key ID":                  old.Verify("k9."+strings.TrimPrefix(sig, "k1."), "ns", "name", "record"),
		"no key ID":                          old.Verify(strings.TrimPrefix(sig, "k1."), "ns", "name", "record"),
		"a signature that is not base64url":  old.Verify("k1.!!!", "ns", "name", "record"),
		"an empty signature":                 old.Verify("", "ns", "name", "record"),
		"a truncated signature (first half)": old.Verify(sig[:len(sig)/2], "ns", "name", "record"),
	} {
		if ok {
			t.Errorf("%s verified", name)
		}
	}
}

func TestLoadOrCreate(t *testing.T) {
	scheme := runtime.NewScheme()
	_ = corev1.AddToScheme(scheme)
	key := types.NamespacedName{Namespace: "keymint-system", Name: "keymint-record-key"}

	t.Run("creates one random key on first start, and reads it back after", func(t *testing.T) {
		c := fake.NewClientBuilder().WithScheme(scheme).Build()
		first, err := LoadOrCreate(context.Background(), c, c, key)
		if err != nil {
			t.Fatal(err)
		}
		again, err := LoadOrCreate(context.Background(), c, c, key)
		if err != nil {
			t.Fatal(err)
		}
		if sig := first.Sign("x"); !again.Verify(sig, "x") {
			t.Error("a second start has another key")
		}
	})
	t.Run("a replica losing the race to create reads the winner's key", func(t *testing.T) {
		winner, _ := Generate("k1")
		store := fake.NewClientBuilder().WithScheme(scheme).Build()
		c := interceptor.NewClient(fake.NewClientBuilder().WithScheme(scheme).Build(), interceptor.Funcs{
			Get: func(ctx context.Context, _ client.WithWatch, k client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
				return store.Get(ctx, k, obj, opts...)
			},
			Create: func(ctx context.Context, _ client.WithWatch, obj client.Object, _ ...client.CreateOption) error {
				// Another replica created it between our Get and Create.
				won := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name},
					Data: map[string][]byte{ActiveKey: []byte("k1"), "k1": winner.keys["k1"]}}
				if err := store.Create(ctx, won); err != nil {
					return err
				}
				return store.Create(ctx, obj)
			},
		})
		got, err := LoadOrCreate(context.Background(), c, c, key)
		if err != nil {
			t.Fatal(err)
		}
		if !got.Verify(winner.Sign("x"), "x") {
			t.Error("the loser kept its own key")
		}
	})
	t.Run("a key Secret it cannot use is an error that says why and how to fix it, and stays", func(t *testing.T) {
		for name, tc := range map[string]struct {
			data map[string][]byte
			why  string
		}{
			"a short key":       {data: map[string][]byte{ActiveKey: []byte("k1"), "k1": []byte("short")}, why: `key "k1" has 5 bytes; at least 32 are needed`},
			"no active entry":   {data: map[string][]byte{"k1": key32}, why: `no "active" entry names the signing key`},
			"an unknown active": {data: map[string][]byte{ActiveKey: []byte("k2"), "k1": key32}, why: `the active key "k2" is not among the keys`},
		} {
			t.Run(name, func(t *testing.T) {
				bad := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}, Data: tc.data}
				c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(bad.DeepCopy()).Build()
				_, err := LoadOrCreate(context.Background(), c, c, key)
				var unusable *UnusableError
				if !errors.As(err, &unusable) || unusable.Secret != key {
					t.Fatalf("LoadOrCreate = %v, want an UnusableError for %s", err, key)
				}
				for _, want := range []string{
					"record key Secret keymint-system/keymint-record-key cannot be used: " + tc.why,
					"keymint does not replace it",
					"kubectl -n keymint-system edit secret keymint-record-key",
					"kubectl -n keymint-system delete secret keymint-record-key",
				} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("the error lacks %q:\n%v", want, err)
					}
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("the error is several lines; keymint logs it as one:\n%v", err)
				}
				if check := Check(context.Background(), c, key); !errors.As(check, &unusable) {
					t.Errorf("Check = %v, want an UnusableError", check)
				}
				// Never replaced: records signed with its keys would no
				// longer verify.
				got := &corev1.Secret{}
				if err := c.Get(context.Background(), key, got); err != nil || !reflect.DeepEqual(got.Data, tc.data) {
					t.Errorf("the key Secret changed: %v, %v", got.Data, err)
				}
			})
		}
	})
	t.Run("Check accepts a usable or absent Secret and writes nothing", func(t *testing.T) {
		c := fake.NewClientBuilder().WithScheme(scheme).Build()
		if err := Check(context.Background(), c, key); err != nil {
			t.Errorf("Check of an absent Secret = %v, want nil: keymint creates it", err)
		}
		if err := c.Get(context.Background(), key, &corev1.Secret{}); !apierrors.IsNotFound(err) {
			t.Errorf("Check created the Secret: %v", err)
		}
		if _, err := LoadOrCreate(context.Background(), c, c, key); err != nil {
			t.Fatal(err)
		}
		if err := Check(context.Background(), c, key); err != nil {
			t.Errorf("Check of the Secret keymint created = %v", err)
		}
	})
}

package controllers

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/token"
	"github.com/keymint/keymint/internal/tokenstate"
)

func TestRecordRoundTrip(t *testing.T) {
	plain, _ := token.Mint("km")
	rotated := now.Add(-time.Minute)
	want := secretRecord{
		Hash: token.HashString(plain), Display: token.Display(plain), IssuedAt: now, RotatedAt: &rotated,
		Previous:        []tokenstate.Previous{{Hash: token.HashString("x"), ValidUntil: now.Add(time.Hour)}},
		RotationRequest: "r1",
	}
	sec := &corev1.Secret{Data: map[string][]byte{keymintv1alpha1.SecretTokenKey: []byte(plain)}}
	writeRecord(sec, want)
	got, ok := readRecord(sec)
	if !ok || got.Hash != want.Hash || got.Display != want.Display || !got.IssuedAt.Equal(now) || !got.RotatedAt.Equal(rotated) ||
		got.RotationRequest != "r1" || len(got.Previous) != 1 || !got.Previous[0].ValidUntil.Equal(now.Add(time.Hour)) {
		t.Errorf("readRecord(writeRecord(r)) = %+v, %v; want %+v", got, ok, want)
	}

	clearRecord(sec)
	if holdsToken(sec) {
		t.Errorf("after clearRecord the Secret still holds %v %v", sec.Data, sec.Annotations)
	}
}

func TestReadRecordRefusesAnythingButAMatchingToken(t *testing.T) {
	plain, _ := token.Mint("km")
	other, _ := token.Mint("km")
	issued := now.Format(time.RFC3339)
	tests := map[string]struct {
		data map[string][]byte
		ann  map[string]string
	}{
		"no Secret data":              {ann: map[string]string{keymintv1alpha1.TokenHashAnnotation: token.HashString(plain), keymintv1alpha1.IssuedAtAnnotation: issued}},
		"a hash of another token":     {data: map[string][]byte{"token": []byte(plain)}, ann: map[string]string{keymintv1alpha1.TokenHashAnnotation: token.HashString(other), keymintv1alpha1.IssuedAtAnnotation: issued}},
		"no hash annotation":          {data: map[string][]byte{"token": []byte(plain)}, ann: map[string]string{keymintv1alpha1.IssuedAtAnnotation: issued}},
		"no issue time":               {data: map[string][]byte{"token": []byte(plain)}, ann: map[string]string{keymintv1alpha1.TokenHashAnnotation: token.HashString(plain)}},
		"a value that is not a token": {data: map[string][]byte{"token": []byte("hunter2")}, ann: map[string]string{keymintv1alpha1.TokenHashAnnotation: token.HashString("hunter2"), keymintv1alpha1.IssuedAtAnnotation: issued}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			sec := &corev1.Secret{Data: tc.data}
			sec.Annotations = tc.ann
			if rec, ok := readRecord(sec); ok {
				t.Errorf("readRecord accepted %+v", rec)
			}
		})
	}
}

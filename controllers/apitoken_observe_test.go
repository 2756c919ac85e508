package controllers

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/secretrecord"
)

func TestObserveToken(t *testing.T) {
	issued := metav1.NewTime(now.Add(-time.Hour))
	status := keymintv1alpha1.ApiTokenStatus{TokenHash: "sha256:status", TokenPrefix: "km_status", IssuedAt: &issued, Serial: 3}
	signed := func(serial int64) *secretrecord.Record {
		return &secretrecord.Record{Serial: serial, Hash: "sha256:secret", Display: "km_secret", IssuedAt: now}
	}
	tests := map[string]struct {
		status      keymintv1alpha1.ApiTokenStatus
		secret      secretState
		wantAdopted bool
		wantHash    string
	}{
		"a signed record newer than the status is adopted (a crash between the writes)": {
			status: status, secret: secretState{Hash: "sha256:x", Holds: true, Signed: signed(4)}, wantAdopted: true, wantHash: "sha256:secret",
		},
		"a signed record at the status's serial is not: the status already moved past it": {
			status: status, secret: secretState{Hash: "sha256:x", Holds: true, Signed: signed(3)}, wantHash: "sha256:status",
		},
		"a signed record older than a revoked status is not: a restored backup revives nothing": {
			status: keymintv1alpha1.ApiTokenStatus{Serial: 5}, secret: secretState{Hash: "sha256:x", Holds: true, Signed: signed(2)},
		},
		"a signed record recovers a lost status": {
			status: keymintv1alpha1.ApiTokenStatus{}, secret: secretState{Hash: "sha256:x", Holds: true, Signed: signed(1)}, wantAdopted: true, wantHash: "sha256:secret",
		},
		"an unsigned Secret is never adopted": {
			status: keymintv1alpha1.ApiTokenStatus{}, secret: secretState{Hash: "sha256:x", Holds: true},
		},
		"a revoked status adopts nothing, even a newer record: a fresh token is minted instead": {
			status: keymintv1alpha1.ApiTokenStatus{Serial: 1}, secret: secretState{Hash: "sha256:x", Holds: true, Signed: signed(2)},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			o := observation{Spec: &keymintv1alpha1.ApiTokenSpec{}}
			observeToken(&o, &tc.status, tc.secret)
			if o.Adopted != tc.wantAdopted || o.Hash != tc.wantHash || o.Current.Issued != (tc.wantHash != "") {
				t.Errorf("adopted %v hash %q issued %v; want adopted %v hash %q", o.Adopted, o.Hash, o.Current.Issued, tc.wantAdopted, tc.wantHash)
			}
			if o.Adopted && (!o.Delivered || o.Serial != tc.secret.Signed.Serial) {
				t.Errorf("an adopted record: delivered %v serial %d", o.Delivered, o.Serial)
			}
		})
	}
}

func TestAdoptedRecordBringsNoHashTheStatusDoesNotName(t *testing.T) {
	issued := metav1.NewTime(now.Add(-time.Hour))
	status := keymintv1alpha1.ApiTokenStatus{TokenHash: "sha256:status", IssuedAt: &issued, Serial: 3}
	rec := &secretrecord.Record{Serial: 4, Hash: "sha256:secret", IssuedAt: now, Previous: []secretrecord.Previous{
		{Hash: "sha256:status", IssuedAt: now.Add(-time.Hour), ValidUntil: now.Add(time.Hour)},
		{Hash: "sha256:planted", IssuedAt: now.Add(-time.Hour), ValidUntil: now.Add(time.Hour)},
	}}
	o := observation{Spec: &keymintv1alpha1.ApiTokenSpec{}}
	observeToken(&o, &status, secretState{Hash: "sha256:x", Holds: true, Signed: rec})
	if !o.Adopted || len(o.Current.Previous) != 1 || o.Current.Previous[0].Hash != "sha256:status" {
		t.Errorf("adopted %v with previous %+v; want only the status's own hash in grace", o.Adopted, o.Current.Previous)
	}
}

package controllers

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

func TestTheCacheKeepsNoContentsOfSecretsNoApiTokenControls(t *testing.T) {
	tok := &keymintv1alpha1.ApiToken{ObjectMeta: metav1.ObjectMeta{Name: "t", UID: "u"}}
	owned := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "t", Annotations: map[string]string{"a": "b"}, ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "x"}},
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(tok, keymintv1alpha1.GroupVersion.WithKind("ApiToken"))}},
		Data: map[string][]byte{"token": []byte("km_x")},
	}
	foreign := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "big", Labels: map[string]string{keymintv1alpha1.TokenLabel: ""}, Annotations: map[string]string{"a": "b"}},
		Data:       map[string][]byte{"blob": make([]byte, 1<<20)},
	}
	out, _ := keepOwnedSecrets(owned)
	if s := out.(*corev1.Secret); s.Data == nil || s.Annotations == nil || s.ManagedFields != nil {
		t.Errorf("an owned Secret lost its contents or kept managed fields: %+v", s)
	}
	out, _ = keepOwnedSecrets(foreign)
	if s := out.(*corev1.Secret); s.Data != nil || s.Annotations != nil || s.Labels == nil {
		t.Errorf("a labelled Secret no ApiToken controls kept data %d bytes, annotations %v", len(s.Data["blob"]), s.Annotations)
	}
}

package check

import (
	"net/http"
	"slices"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/token"
)

// The feed's store is the index: a relist drops the tokens deleted while
// the watch was down (and tells what keeps state per token), indexes the
// listed ones, and only then says the index has synced.
func TestFeedStoreRelistDropsTokensDeletedMeanwhile(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	var gone []types.NamespacedName
	store := &tokenStore{ix: f.index, gone: []func(types.NamespacedName){func(k types.NamespacedName) { gone = append(gone, k) }}}

	issuedToken := func(name, plain string) *keymintv1alpha1.ApiToken {
		return &keymintv1alpha1.ApiToken{
			ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: name, Annotations: map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
			Spec:       keymintv1alpha1.ApiTokenSpec{ServiceUser: "exporter", Description: "stripped"},
			Status:     keymintv1alpha1.ApiTokenStatus{TokenHash: token.HashString(plain), IssuedAt: ptr.To(metav1.NewTime(t0))},
		}
	}
	kept, _ := token.Mint("km")
	deleted, _ := token.Mint("km")
	if err := store.Add(issuedToken("kept", kept)); err != nil {
		t.Fatal(err)
	}
	if err := store.Add(issuedToken("deleted", deleted)); err != nil {
		t.Fatal(err)
	}
	if store.synced.Load() {
		t.Fatal("synced before any list")
	}
	added, _ := token.Mint("km")
	if err := store.Replace([]any{issuedToken("kept", kept), issuedToken("added", added)}, "42"); err != nil {
		t.Fatal(err)
	}
	if !store.synced.Load() {
		t.Error("not synced after a list")
	}
	if want := []types.NamespacedName{{Namespace: "team-a", Name: "deleted"}}; !slices.Equal(gone, want) {
		t.Errorf("gone %v, want %v", gone, want)
	}
	for plain, want := range map[string]int{kept: http.StatusOK, added: http.StatusOK, deleted: http.StatusUnauthorized} {
		if a := f.check(plain, ""); a.status != want {
			t.Errorf("%s: %d, want %d", token.Display(plain), a.status, want)
		}
	}
	// A watch delete goes too.
	if err := store.Delete(issuedToken("kept", kept)); err != nil {
		t.Fatal(err)
	}
	if a := f.check(kept, ""); a.status != http.StatusUnauthorized {
		t.Errorf("after its delete: %d", a.status)
	}
	if err := store.Add(&keymintv1alpha1.ServiceUser{}); err == nil {
		t.Error("a ServiceUser in the token store: no error")
	}
}

package check

import (
	"encoding/json"
	"net/http"
	"testing"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

// TestMetadataReachesTheCaller: a token's metadata comes back from /check
// as one X-Keymint-Meta-<Key> header per pair and in the body, and from
// TokenReview in user.extra; a token without any gets none.
func TestMetadataReachesTheCaller(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	tagged := f.token("tagged", "exporter", func(t *keymintv1alpha1.ApiToken) {
		t.Spec.Metadata = map[string]keymintv1alpha1.MetadataValue{"team": "payments", "cost-center": "CC-4711 (EU)"}
	})
	plain := f.token("plain", "exporter")

	for range 2 { // the second answer comes from the prebuilt one
		a := f.check(tagged, "")
		if a.status != http.StatusOK {
			t.Fatalf("answer %d %v", a.status, a.body)
		}
		if got := a.header.Get("X-Keymint-Meta-Team"); got != "payments" {
			t.Errorf("X-Keymint-Meta-Team %q", got)
		}
		if got := a.header.Values("X-Keymint-Meta-Cost-Center"); len(got) != 1 || got[0] != "CC-4711 (EU)" {
			t.Errorf("X-Keymint-Meta-Cost-Center %q", got)
		}
		meta, _ := json.Marshal(a.body["metadata"])
		if string(meta) != `{"cost-center":"CC-4711 (EU)","team":"payments"}` {
			t.Errorf("body metadata %s", meta)
		}
	}
	a := f.check(plain, "")
	if a.status != http.StatusOK || a.body["metadata"] != nil {
		t.Errorf("a token without metadata: %d %v", a.status, a.body)
	}
	for name := range a.header {
		if len(name) > len(HeaderMetaPrefix) && name[:len(HeaderMetaPrefix)] == HeaderMetaPrefix {
			t.Errorf("a token without metadata got header %s", name)
		}
	}

	review := f.do(http.MethodPost, TokenReviewV1, nil, reviewBody("authentication.k8s.io/v1", tagged))
	extra, _ := json.Marshal(review.body["status"].(map[string]any)["user"].(map[string]any)["extra"])
	want := `{"keymint.io/meta.cost-center":["CC-4711 (EU)"],"keymint.io/meta.team":["payments"],"keymint.io/scopes":["links:read","links:write","qr:read"],"keymint.io/token":["team-a/tagged"]}`
	if string(extra) != want {
		t.Errorf("TokenReview extra %s, want %s", extra, want)
	}
}

package check

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/token"
)

// fuzzHandler is a handler with one good token indexed, called in-process.
func fuzzHandler(f *testing.F) (http.Handler, string) {
	index := NewIndex()
	index.UpsertUser(&keymintv1alpha1.ServiceUser{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "u"},
		Spec:       keymintv1alpha1.ServiceUserSpec{Permissions: []string{"a:b"}},
	})
	good, _ := token.Mint("km")
	issued := metav1.NewTime(t0)
	index.UpsertToken(&keymintv1alpha1.ApiToken{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "t"},
		Spec:       keymintv1alpha1.ApiTokenSpec{ServiceUser: "u"},
		Status:     keymintv1alpha1.ApiTokenStatus{TokenHash: token.HashString(good), IssuedAt: &issued},
	})
	h := NewHandler(index, clocktesting.NewFakeClock(t0), 1<<20, prometheus.NewRegistry())
	return h.ServeMux(), good
}

// expectSane fails on a 5xx or an answer whose body is not JSON.
func expectSane(t *testing.T, rec *httptest.ResponseRecorder) {
	if rec.Code >= 500 {
		t.Fatalf("answered %d: %s", rec.Code, rec.Body)
	}
	if !json.Valid(rec.Body.Bytes()) {
		t.Fatalf("answered %d with a body that is not JSON: %q", rec.Code, rec.Body)
	}
}

// FuzzCheckHeaders sends arbitrary Authorization, forwarded and scope
// headers to /check: never a panic, a 5xx, or a non-JSON answer.
func FuzzCheckHeaders(f *testing.F) {
	handler, good := fuzzHandler(f)
	f.Add("Bearer "+good, "", "a:b")
	f.Add("bearer  "+good+"  ", "Bearer x", "")
	f.Add("Bearer", "Bearer "+good, ",,a:b,")
	f.Add("Basic Zm9vOmJhcg==", "", "")
	f.Add("Bearer km_\x00\xff", "", "\x00")
	f.Fuzz(func(t *testing.T, authorization, forwarded, scope string) {
		req := httptest.NewRequest(http.MethodGet, CheckPath, nil)
		req.Header["Authorization"] = []string{authorization}
		req.Header[HeaderForwarded] = []string{forwarded}
		req.Header[HeaderScope] = []string{scope}
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)
		expectSane(t, rec)
		if rec.Code == http.StatusOK && bearerToken(req) != good {
			t.Fatalf("accepted %q", bearerToken(req))
		}
	})
}

// FuzzTokenReview sends arbitrary bodies to the TokenReview endpoint.
func FuzzTokenReview(f *testing.F) {
	handler, good := fuzzHandler(f)
	f.Add([]byte(`{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":"` + good + `"}}`))
	f.Add([]byte(`{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":"x","audiences":["a"]}}`))
	f.Add([]byte(`{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":null}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"spec":{"token":{}}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, path := range []string{TokenReviewV1, TokenReviewV1beta} {
			req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
			rec := httptest.NewRecorder()
			handler.ServeHTTP(rec, req)
			expectSane(t, rec)
			if rec.Code != http.StatusOK && rec.Code != http.StatusBadRequest {
				t.Fatalf("answered %d", rec.Code)
			}
		}
	})
}

package check

import (
	"crypto/sha256"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/token"
)

// benchIndex indexes n tokens of 100 users and returns the index and one
// token's plaintext.
func benchIndex(b *testing.B, n int) (*Index, string) {
	b.Helper()
	index := NewIndex()
	for u := range 100 {
		index.UpsertUser(&keymintv1alpha1.ServiceUser{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("u%d", u)},
			Spec:       keymintv1alpha1.ServiceUserSpec{Permissions: []string{"links:read", "links:write", "qr:read"}, Groups: []string{"g"}},
		})
	}
	issued := metav1.NewTime(t0)
	var last string
	for i := range n {
		plain, err := token.Mint("km")
		if err != nil {
			b.Fatal(err)
		}
		index.UpsertToken(&keymintv1alpha1.ApiToken{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("t%d", i)},
			Spec: keymintv1alpha1.ApiTokenSpec{
				ServiceUser: fmt.Sprintf("u%d", i%100), Scopes: []string{"links:read"},
				Lifetime: &metav1.Duration{Duration: 1 << 40},
			},
			Status: keymintv1alpha1.ApiTokenStatus{TokenHash: token.HashString(plain), IssuedAt: &issued},
		})
		last = plain
	}
	return index, last
}

var sizes = []int{10, 100_000}

// BenchmarkCheck is one in-process check: parse, hash, lookup, policy.
func BenchmarkCheck(b *testing.B) {
	for _, n := range sizes {
		index, tok := benchIndex(b, n)
		c := &Checker{Index: index}
		b.Run(fmt.Sprintf("tokens=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, f := c.Check(tok, t0); f != OK {
					b.Fatal(f)
				}
			}
		})
	}
}

// BenchmarkBaselineHashLookup is the least a hashed-token check can do: a
// SHA-256 and a map read, with no format check and no policy.
func BenchmarkBaselineHashLookup(b *testing.B) {
	for _, n := range sizes {
		m := make(map[[sha256.Size]byte]*tokenEntry, n)
		var tok string
		for range n {
			tok, _ = token.Mint("km")
			m[sha256.Sum256([]byte(tok))] = &tokenEntry{}
		}
		b.Run(fmt.Sprintf("tokens=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if m[sha256.Sum256([]byte(tok))] == nil {
					b.Fatal("missing")
				}
			}
		})
	}
}

// BenchmarkCheckHandler is a whole /check answer in-process: routing,
// header parsing, check, rate limit, scope, headers and JSON body.
func BenchmarkCheckHandler(b *testing.B) {
	for _, n := range sizes {
		index, tok := benchIndex(b, n)
		h := NewHandler(index, clocktesting.NewFakeClock(t0), 1<<30, prometheus.NewRegistry()).ServeMux()
		req := httptest.NewRequest(http.MethodGet, CheckPath+"?scope=links:read", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		b.Run(fmt.Sprintf("tokens=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					b.Fatal(rec.Code)
				}
			}
		})
	}
}

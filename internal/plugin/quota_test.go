package plugin

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/tokenstate"
)

// TestQuotaColumn: what `status -o wide` says of a token's quota, from the
// spec (or its user's policy) and status.quota as a check server last
// recorded it.
func TestQuotaColumn(t *testing.T) {
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *metav1.Time { t := metav1.NewTime(now.Add(d)); return &t }
	daily := &keymintv1alpha1.Quota{Uses: 100, Refill: &keymintv1alpha1.QuotaRefill{Every: metav1.Duration{Duration: 24 * time.Hour}}}
	for _, tc := range []struct {
		name   string
		quota  *keymintv1alpha1.Quota
		user   tokenstate.User
		status *keymintv1alpha1.QuotaStatus
		want   string
	}{
		{name: "no quota", want: "-"},
		{name: "never checked", quota: daily, want: "100 of 100 left, refilled every 1d"},
		{name: "this period's count", quota: daily, status: &keymintv1alpha1.QuotaStatus{Uses: 100, Remaining: 42, RefillsAt: at(3 * time.Hour)},
			want: "42 of 100 left, refills in 3h"},
		{name: "a period that has ended", quota: daily, status: &keymintv1alpha1.QuotaStatus{Uses: 100, Remaining: 0, RefillsAt: at(-time.Minute)},
			want: "100 of 100 left, refilled every 1d"},
		{name: "a count for other uses (the quota changed since)", quota: &keymintv1alpha1.Quota{Uses: 500, Refill: daily.Refill},
			status: &keymintv1alpha1.QuotaStatus{Uses: 100, Remaining: 0, RefillsAt: at(time.Hour)}, want: "500 of 500 left, refilled every 1d"},
		{name: "for good", quota: &keymintv1alpha1.Quota{Uses: 10}, status: &keymintv1alpha1.QuotaStatus{Uses: 10, Remaining: 3},
			want: "3 of 10 left, no refill"},
		{name: "the user's, as no token quota is set", user: tokenstate.User{Found: true, Quota: &keymintv1alpha1.Quota{Uses: 7}},
			want: "7 of 7 left, no refill"},
	} {
		tok := &keymintv1alpha1.ApiToken{Spec: keymintv1alpha1.ApiTokenSpec{Quota: tc.quota}, Status: keymintv1alpha1.ApiTokenStatus{Quota: tc.status}}
		if got := quotaOf(tok, &tc.user, now); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

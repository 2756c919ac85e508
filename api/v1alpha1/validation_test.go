package v1alpha1_test

import (
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

var nameSeq atomic.Int64

func uniqueName(base string) string {
	return fmt.Sprintf("%s-%d", base, nameSeq.Add(1))
}

func duration(s string) *metav1.Duration {
	d, err := time.ParseDuration(s)
	Expect(err).NotTo(HaveOccurred())
	return &metav1.Duration{Duration: d}
}

// expectErrors checks that err carries every wanted message, or is nil when
// none is wanted.
func expectErrors(err error, wantErrors []string) {
	GinkgoHelper()
	if len(wantErrors) == 0 {
		Expect(err).NotTo(HaveOccurred())
		return
	}
	Expect(err).To(HaveOccurred())
	for _, want := range wantErrors {
		Expect(err.Error()).To(ContainSubstring(want))
	}
}

var _ = Describe("ServiceUser validation", func() {
	tests := []struct {
		desc       string
		mutate     func(*keymintv1alpha1.ServiceUser)
		wantErrors []string
	}{
		{desc: "an empty spec is valid"},
		{
			desc: "well-formed permissions and groups are valid",
			mutate: func(u *keymintv1alpha1.ServiceUser) {
				u.Spec.Permissions = []string{"links:read", "qr_codes:write", "analytics.v2:read"}
				u.Spec.Groups = []string{"billing", "team:payments"}
			},
		},
		{
			desc:       "a permission without a verb is refused",
			mutate:     func(u *keymintv1alpha1.ServiceUser) { u.Spec.Permissions = []string{"links"} },
			wantErrors: []string{"spec.permissions[0]", "should match"},
		},
		{
			desc:       "an upper-case permission is refused",
			mutate:     func(u *keymintv1alpha1.ServiceUser) { u.Spec.Permissions = []string{"Links:Read"} },
			wantErrors: []string{"spec.permissions[0]", "should match"},
		},
		{
			desc:       "a permission with two colons is refused",
			mutate:     func(u *keymintv1alpha1.ServiceUser) { u.Spec.Permissions = []string{"links:read:all"} },
			wantErrors: []string{"spec.permissions[0]", "should match"},
		},
		{
			desc:       "duplicate permissions are refused",
			mutate:     func(u *keymintv1alpha1.ServiceUser) { u.Spec.Permissions = []string{"links:read", "links:read"} },
			wantErrors: []string{"Duplicate value"},
		},
		{
			desc:       "a system: group is refused, so no token can claim system:masters",
			mutate:     func(u *keymintv1alpha1.ServiceUser) { u.Spec.Groups = []string{"system:masters"} },
			wantErrors: []string{"groups starting with 'system:' or 'keymint:' are reserved"},
		},
		{
			desc:       "a keymint: group is refused",
			mutate:     func(u *keymintv1alpha1.ServiceUser) { u.Spec.Groups = []string{"keymint:serviceusers"} },
			wantErrors: []string{"reserved"},
		},
		{
			desc:       "an upper-case prefix is refused",
			mutate:     func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.Prefix = "KM" },
			wantErrors: []string{"spec.tokenPolicy.prefix", "should match"},
		},
		{
			desc:       "a prefix with an underscore is refused",
			mutate:     func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.Prefix = "my_co" },
			wantErrors: []string{"spec.tokenPolicy.prefix"},
		},
		{
			desc:       "a negative maxLifetime is refused",
			mutate:     func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.MaxLifetime = duration("-1h") },
			wantErrors: []string{"spec.tokenPolicy.maxLifetime"},
		},
		{
			desc:       "a zero defaultLifetime is refused",
			mutate:     func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.DefaultLifetime = duration("0s") },
			wantErrors: []string{"defaultLifetime must be positive"},
		},
		{
			desc: "a defaultLifetime above maxLifetime is refused",
			mutate: func(u *keymintv1alpha1.ServiceUser) {
				u.Spec.TokenPolicy.MaxLifetime = duration("24h")
				u.Spec.TokenPolicy.DefaultLifetime = duration("48h")
			},
			wantErrors: []string{"tokenPolicy.defaultLifetime must not exceed tokenPolicy.maxLifetime"},
		},
		{
			desc:       "a zero requestsPerMinute is refused",
			mutate:     func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.RequestsPerMinute = -1 },
			wantErrors: []string{"spec.tokenPolicy.requestsPerMinute"},
		},
	}
	for _, tc := range tests {
		It(tc.desc, func() {
			u := &keymintv1alpha1.ServiceUser{ObjectMeta: metav1.ObjectMeta{Name: uniqueName("su"), Namespace: "default"}}
			if tc.mutate != nil {
				tc.mutate(u)
			}
			expectErrors(k8sClient.Create(ctx, u), tc.wantErrors)
		})
	}

	It("defaults the token policy a user leaves out", func() {
		u := &keymintv1alpha1.ServiceUser{ObjectMeta: metav1.ObjectMeta{Name: uniqueName("su"), Namespace: "default"}}
		Expect(k8sClient.Create(ctx, u)).To(Succeed())
		Expect(u.Spec.TokenPolicy.Prefix).To(Equal("km"))
		Expect(u.Spec.TokenPolicy.RequestsPerMinute).To(BeZero(), "unset: the check server's default applies")
	})
})

var _ = Describe("ApiToken validation", func() {
	newToken := func() *keymintv1alpha1.ApiToken {
		return &keymintv1alpha1.ApiToken{
			ObjectMeta: metav1.ObjectMeta{Name: uniqueName("tok"), Namespace: "default"},
			Spec:       keymintv1alpha1.ApiTokenSpec{ServiceUser: "ci-bot"},
		}
	}

	createTests := []struct {
		desc       string
		mutate     func(*keymintv1alpha1.ApiToken)
		wantErrors []string
	}{
		{desc: "a token naming its user is valid"},
		{
			desc:       "a token without a user is refused",
			mutate:     func(t *keymintv1alpha1.ApiToken) { t.Spec.ServiceUser = "" },
			wantErrors: []string{"spec.serviceUser"},
		},
		{
			desc: "expiresAt and lifetime together are refused",
			mutate: func(t *keymintv1alpha1.ApiToken) {
				t.Spec.ExpiresAt = &metav1.Time{Time: time.Now().Add(time.Hour)}
				t.Spec.Lifetime = duration("1h")
			},
			wantErrors: []string{"set expiresAt or lifetime, not both"},
		},
		{
			desc:       "a negative lifetime is refused",
			mutate:     func(t *keymintv1alpha1.ApiToken) { t.Spec.Lifetime = duration("-5m") },
			wantErrors: []string{"spec.lifetime"},
		},
		{
			desc:       "a zero lifetime is refused",
			mutate:     func(t *keymintv1alpha1.ApiToken) { t.Spec.Lifetime = duration("0s") },
			wantErrors: []string{"lifetime must be positive"},
		},
		{
			desc: "a negative grace period is refused",
			mutate: func(t *keymintv1alpha1.ApiToken) {
				t.Spec.Rotation = &keymintv1alpha1.Rotation{GracePeriod: duration("-1m")}
			},
			wantErrors: []string{"spec.rotation.gracePeriod"},
		},
		{
			desc:       "a rotation more often than every minute is refused",
			mutate:     func(t *keymintv1alpha1.ApiToken) { t.Spec.Rotation = &keymintv1alpha1.Rotation{Every: duration("30s")} },
			wantErrors: []string{"rotation.every must be at least 1m"},
		},
		{
			desc: "a grace period as long as the rotation interval is refused",
			mutate: func(t *keymintv1alpha1.ApiToken) {
				t.Spec.Rotation = &keymintv1alpha1.Rotation{Every: duration("1h"), GracePeriod: duration("1h")}
			},
			wantErrors: []string{"gracePeriod must be shorter than every"},
		},
		{
			desc: "a rotation with a shorter grace period is valid",
			mutate: func(t *keymintv1alpha1.ApiToken) {
				t.Spec.Rotation = &keymintv1alpha1.Rotation{Every: duration("720h"), GracePeriod: duration("1h")}
			},
		},
		{
			desc:       "a scope that is not resource:verb is refused",
			mutate:     func(t *keymintv1alpha1.ApiToken) { t.Spec.Scopes = []string{"read links"} },
			wantErrors: []string{"spec.scopes[0]", "should match"},
		},
		{
			desc:       "a secretName that is not a DNS name is refused",
			mutate:     func(t *keymintv1alpha1.ApiToken) { t.Spec.SecretName = "My_Secret" },
			wantErrors: []string{"spec.secretName"},
		},
		{
			desc:       "a requestsPerMinute of zero is refused",
			mutate:     func(t *keymintv1alpha1.ApiToken) { t.Spec.RequestsPerMinute = ptr.To[int32](0) },
			wantErrors: []string{"spec.requestsPerMinute"},
		},
		{
			desc:       "a description over 1024 characters is refused",
			mutate:     func(t *keymintv1alpha1.ApiToken) { t.Spec.Description = strings.Repeat("x", 1025) },
			wantErrors: []string{"spec.description"},
		},
	}
	for _, tc := range createTests {
		It("on create: "+tc.desc, func() {
			t := newToken()
			if tc.mutate != nil {
				tc.mutate(t)
			}
			expectErrors(k8sClient.Create(ctx, t), tc.wantErrors)
		})
	}

	It("defaults the grace period of a rotation to 0s", func() {
		t := newToken()
		t.Spec.Rotation = &keymintv1alpha1.Rotation{Every: duration("24h")}
		Expect(k8sClient.Create(ctx, t)).To(Succeed())
		Expect(t.Spec.Rotation.GracePeriod).NotTo(BeNil())
		Expect(t.Spec.Rotation.GracePeriod.Duration).To(BeZero())
	})

	updateTests := []struct {
		desc       string
		initial    func(*keymintv1alpha1.ApiToken)
		mutate     func(*keymintv1alpha1.ApiToken)
		wantErrors []string
	}{
		{
			desc:       "changing serviceUser is refused",
			mutate:     func(t *keymintv1alpha1.ApiToken) { t.Spec.ServiceUser = "someone-else" },
			wantErrors: []string{"serviceUser is immutable"},
		},
		{
			desc:       "changing secretName is refused",
			initial:    func(t *keymintv1alpha1.ApiToken) { t.Spec.SecretName = "first" },
			mutate:     func(t *keymintv1alpha1.ApiToken) { t.Spec.SecretName = "second" },
			wantErrors: []string{"secretName is immutable"},
		},
		{
			desc:       "adding secretName after creation is refused",
			mutate:     func(t *keymintv1alpha1.ApiToken) { t.Spec.SecretName = "elsewhere" },
			wantErrors: []string{"secretName is immutable"},
		},
		{
			desc:       "removing secretName after creation is refused",
			initial:    func(t *keymintv1alpha1.ApiToken) { t.Spec.SecretName = "first" },
			mutate:     func(t *keymintv1alpha1.ApiToken) { t.Spec.SecretName = "" },
			wantErrors: []string{"secretName is immutable"},
		},
		{
			desc:   "revoking is allowed",
			mutate: func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = true },
		},
		{
			desc:       "adding lifetime next to expiresAt is refused",
			initial:    func(t *keymintv1alpha1.ApiToken) { t.Spec.ExpiresAt = &metav1.Time{Time: time.Now().Add(time.Hour)} },
			mutate:     func(t *keymintv1alpha1.ApiToken) { t.Spec.Lifetime = duration("1h") },
			wantErrors: []string{"set expiresAt or lifetime, not both"},
		},
	}
	for _, tc := range updateTests {
		It("on update: "+tc.desc, func() {
			t := newToken()
			if tc.initial != nil {
				tc.initial(t)
			}
			Expect(k8sClient.Create(ctx, t)).To(Succeed())
			if tc.mutate != nil {
				tc.mutate(t)
			}
			expectErrors(k8sClient.Update(ctx, t), tc.wantErrors)
		})
	}

	It("refuses a lifetime that is not a Go duration, as kubectl would send it", func() {
		t := newToken()
		Expect(k8sClient.Create(ctx, t)).To(Succeed())
		patch := client.RawPatch("application/merge-patch+json", []byte(`{"spec":{"lifetime":"3 days"}}`))
		expectErrors(k8sClient.Patch(ctx, t, patch), []string{"spec.lifetime", "should match"})
	})

	It("refuses removing serviceUser with a merge patch", func() {
		t := newToken()
		Expect(k8sClient.Create(ctx, t)).To(Succeed())
		patch := client.RawPatch("application/merge-patch+json", []byte(`{"spec":{"serviceUser":null}}`))
		expectErrors(k8sClient.Patch(ctx, t, patch), []string{"spec.serviceUser"})
	})
})

var _ = Describe("Undoing a revocation", func() {
	It("is refused for an ApiToken until keymint has cleared its hash", func() {
		t := &keymintv1alpha1.ApiToken{
			ObjectMeta: metav1.ObjectMeta{Name: uniqueName("tok"), Namespace: "default"},
			Spec:       keymintv1alpha1.ApiTokenSpec{ServiceUser: "ci-bot"},
		}
		Expect(k8sClient.Create(ctx, t)).To(Succeed())
		t.Status.TokenHash = "sha256:" + strings.Repeat("a", 64)
		Expect(k8sClient.Status().Update(ctx, t)).To(Succeed())

		t.Spec.Revoked = true
		Expect(k8sClient.Update(ctx, t)).To(Succeed())
		t.Spec.Revoked = false
		expectErrors(k8sClient.Update(ctx, t), []string{"spec.revoked can be set back to false only once keymint has revoked the token"})

		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(t), t)).To(Succeed())
		t.Status.TokenHash = "" // what the controller does when it revokes
		Expect(k8sClient.Status().Update(ctx, t)).To(Succeed())
		t.Spec.Revoked = false
		Expect(k8sClient.Update(ctx, t)).To(Succeed())
	})

	It("is refused for a ServiceUser until none of its tokens is active", func() {
		u := &keymintv1alpha1.ServiceUser{ObjectMeta: metav1.ObjectMeta{Name: uniqueName("su"), Namespace: "default"}}
		Expect(k8sClient.Create(ctx, u)).To(Succeed())
		u.Status.ActiveTokens = 2
		Expect(k8sClient.Status().Update(ctx, u)).To(Succeed())

		u.Spec.Disabled = true
		Expect(k8sClient.Update(ctx, u)).To(Succeed())
		u.Spec.Disabled = false
		expectErrors(k8sClient.Update(ctx, u), []string{"spec.disabled can be set back to false only once keymint has revoked every token"})

		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(u), u)).To(Succeed())
		u.Status.ActiveTokens = 0
		Expect(k8sClient.Status().Update(ctx, u)).To(Succeed())
		u.Spec.Disabled = false
		Expect(k8sClient.Update(ctx, u)).To(Succeed())
	})

	It("is refused for a ServiceUser while an expired, never revoked token still holds its hash", func() {
		u := &keymintv1alpha1.ServiceUser{ObjectMeta: metav1.ObjectMeta{Name: uniqueName("su"), Namespace: "default"}}
		Expect(k8sClient.Create(ctx, u)).To(Succeed())
		// One token, expired (so not Ready, not active), not yet revoked.
		u.Status.Tokens, u.Status.ActiveTokens, u.Status.UnrevokedTokens = 1, 0, 1
		Expect(k8sClient.Status().Update(ctx, u)).To(Succeed())

		u.Spec.Disabled = true
		Expect(k8sClient.Update(ctx, u)).To(Succeed())
		u.Spec.Disabled = false
		expectErrors(k8sClient.Update(ctx, u), []string{"spec.disabled: Invalid value", "status.unrevokedTokens are 0"})

		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(u), u)).To(Succeed())
		u.Status.UnrevokedTokens = 0
		Expect(k8sClient.Status().Update(ctx, u)).To(Succeed())
		u.Spec.Disabled = false
		Expect(k8sClient.Update(ctx, u)).To(Succeed())
	})

	It("does not get in the way of revoking, or of a token never issued", func() {
		t := &keymintv1alpha1.ApiToken{
			ObjectMeta: metav1.ObjectMeta{Name: uniqueName("tok"), Namespace: "default"},
			Spec:       keymintv1alpha1.ApiTokenSpec{ServiceUser: "ci-bot", Revoked: true},
		}
		Expect(k8sClient.Create(ctx, t)).To(Succeed())
		t.Spec.Revoked = false
		Expect(k8sClient.Update(ctx, t)).To(Succeed())
	})
})

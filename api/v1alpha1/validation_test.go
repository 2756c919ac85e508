package v1alpha1_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
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
			desc: "a policy's per-scope rates are valid",
			mutate: func(u *keymintv1alpha1.ServiceUser) {
				u.Spec.TokenPolicy.ScopeRequestsPerMinute = []keymintv1alpha1.ScopeRate{{Scope: "links:write", RequestsPerMinute: 60}}
			},
		},
		{
			desc: "a policy's per-scope rate of 0 is refused",
			mutate: func(u *keymintv1alpha1.ServiceUser) {
				u.Spec.TokenPolicy.ScopeRequestsPerMinute = []keymintv1alpha1.ScopeRate{{Scope: "links:write"}}
			},
			wantErrors: []string{"spec.tokenPolicy.scopeRequestsPerMinute[0].requestsPerMinute"},
		},
		{
			desc:   "an expiryWarning of 0s (off) is valid",
			mutate: func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.ExpiryWarning = &metav1.Duration{} },
		},
		{
			desc:   "an expiryWarning of 14 days is valid",
			mutate: func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.ExpiryWarning = duration("336h") },
		},
		{
			desc:       "a negative expiryWarning is refused",
			mutate:     func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.ExpiryWarning = duration("-1h") },
			wantErrors: []string{"spec.tokenPolicy.expiryWarning"},
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
		{
			desc:       "a maxIdle under an hour is refused",
			mutate:     func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.MaxIdle = duration("59m") },
			wantErrors: []string{"maxIdle must be at least 1h"},
		},
		{
			desc: "allowedSourceCIDRs of IPv4 and IPv6 networks are valid",
			mutate: func(u *keymintv1alpha1.ServiceUser) {
				u.Spec.TokenPolicy.AllowedSourceCIDRs = []string{"10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"}
			},
		},
		{
			desc: "an allowedSourceCIDRs entry that is an address, or not its network's, is refused",
			mutate: func(u *keymintv1alpha1.ServiceUser) {
				u.Spec.TokenPolicy.AllowedSourceCIDRs = []string{"10.0.0.1", "10.1.2.3/8"}
			},
			wantErrors: []string{"each entry must be a CIDR with its network's own address"},
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
			desc: "per-scope rates are valid",
			mutate: func(t *keymintv1alpha1.ApiToken) {
				t.Spec.ScopeRequestsPerMinute = []keymintv1alpha1.ScopeRate{{Scope: "links:write", RequestsPerMinute: 60}, {Scope: "links:read", RequestsPerMinute: 1000000}}
			},
		},
		{
			desc: "a per-scope rate of 0 is refused",
			mutate: func(t *keymintv1alpha1.ApiToken) {
				t.Spec.ScopeRequestsPerMinute = []keymintv1alpha1.ScopeRate{{Scope: "links:write", RequestsPerMinute: 0}}
			},
			wantErrors: []string{"spec.scopeRequestsPerMinute[0].requestsPerMinute"},
		},
		{
			desc: "a per-scope rate above 1,000,000 is refused",
			mutate: func(t *keymintv1alpha1.ApiToken) {
				t.Spec.ScopeRequestsPerMinute = []keymintv1alpha1.ScopeRate{{Scope: "links:write", RequestsPerMinute: 1000001}}
			},
			wantErrors: []string{"spec.scopeRequestsPerMinute[0].requestsPerMinute"},
		},
		{
			desc: "a per-scope rate for something not shaped as a scope is refused",
			mutate: func(t *keymintv1alpha1.ApiToken) {
				t.Spec.ScopeRequestsPerMinute = []keymintv1alpha1.ScopeRate{{Scope: "Links", RequestsPerMinute: 5}}
			},
			wantErrors: []string{"spec.scopeRequestsPerMinute[0].scope", "should match"},
		},
		{
			desc: "two rates for one scope are refused",
			mutate: func(t *keymintv1alpha1.ApiToken) {
				t.Spec.ScopeRequestsPerMinute = []keymintv1alpha1.ScopeRate{{Scope: "links:write", RequestsPerMinute: 5}, {Scope: "links:write", RequestsPerMinute: 6}}
			},
			wantErrors: []string{"Duplicate value"},
		},
		{
			desc: "retireWhenIdle shorter than the grace period, and restart targets, are valid",
			mutate: func(t *keymintv1alpha1.ApiToken) {
				t.Spec.Rotation = &keymintv1alpha1.Rotation{GracePeriod: duration("24h"), RetireWhenIdle: duration("15m"),
					RestartTargets: []keymintv1alpha1.RestartTarget{{Kind: "Deployment", Name: "web"}, {Kind: "StatefulSet", Name: "web"}, {Kind: "DaemonSet", Name: "agent"}}}
			},
		},
		{
			desc: "retireWhenIdle without a grace period is refused",
			mutate: func(t *keymintv1alpha1.ApiToken) {
				t.Spec.Rotation = &keymintv1alpha1.Rotation{RetireWhenIdle: duration("15m")}
			},
			wantErrors: []string{"retireWhenIdle must be shorter than gracePeriod"},
		},
		{
			desc: "retireWhenIdle as long as the grace period is refused",
			mutate: func(t *keymintv1alpha1.ApiToken) {
				t.Spec.Rotation = &keymintv1alpha1.Rotation{GracePeriod: duration("1h"), RetireWhenIdle: duration("1h")}
			},
			wantErrors: []string{"retireWhenIdle must be shorter than gracePeriod"},
		},
		{
			desc: "retireWhenIdle under 5m is refused: uses are recorded about a minute late",
			mutate: func(t *keymintv1alpha1.ApiToken) {
				t.Spec.Rotation = &keymintv1alpha1.Rotation{GracePeriod: duration("1h"), RetireWhenIdle: duration("4m")}
			},
			wantErrors: []string{"rotation.retireWhenIdle must be at least 5m"},
		},
		{
			desc: "a restart target of another kind is refused",
			mutate: func(t *keymintv1alpha1.ApiToken) {
				t.Spec.Rotation = &keymintv1alpha1.Rotation{RestartTargets: []keymintv1alpha1.RestartTarget{{Kind: "Pod", Name: "web"}}}
			},
			wantErrors: []string{"spec.rotation.restartTargets[0].kind", "Unsupported value"},
		},
		{
			desc: "the same restart target twice is refused",
			mutate: func(t *keymintv1alpha1.ApiToken) {
				t.Spec.Rotation = &keymintv1alpha1.Rotation{RestartTargets: []keymintv1alpha1.RestartTarget{{Kind: "Deployment", Name: "web"}, {Kind: "Deployment", Name: "web"}}}
			},
			wantErrors: []string{"Duplicate value"},
		},
		{
			desc: "a restart target with an invalid name is refused",
			mutate: func(t *keymintv1alpha1.ApiToken) {
				t.Spec.Rotation = &keymintv1alpha1.Rotation{RestartTargets: []keymintv1alpha1.RestartTarget{{Kind: "Deployment", Name: "Web_App"}}}
			},
			wantErrors: []string{"spec.rotation.restartTargets[0].name", "should match"},
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
			desc:       "a maxIdle under an hour is refused",
			mutate:     func(t *keymintv1alpha1.ApiToken) { t.Spec.MaxIdle = duration("30m") },
			wantErrors: []string{"maxIdle must be at least 1h"},
		},
		{
			desc:       "allowedSourceCIDRs that are not CIDRs are refused",
			mutate:     func(t *keymintv1alpha1.ApiToken) { t.Spec.AllowedSourceCIDRs = []string{"10.0.0.0/33", "office"} },
			wantErrors: []string{"each entry must be a CIDR with its network's own address"},
		},
		{
			desc: "metadata within bounds is valid",
			mutate: func(t *keymintv1alpha1.ApiToken) {
				t.Spec.Metadata = map[string]keymintv1alpha1.MetadataValue{"team": "payments", "cost-center": "CC-4711 (EU)", "x": ""}
			},
		},
		{
			desc: "a metadata key with capitals or underscores is refused",
			mutate: func(t *keymintv1alpha1.ApiToken) {
				t.Spec.Metadata = map[string]keymintv1alpha1.MetadataValue{"Team_Name": "x"}
			},
			wantErrors: []string{"metadata keys are 1 to 32 lowercase letters"},
		},
		{
			desc: "a metadata value with a newline, or over 256 characters, is refused",
			mutate: func(t *keymintv1alpha1.ApiToken) {
				t.Spec.Metadata = map[string]keymintv1alpha1.MetadataValue{"a": "one\ntwo", "b": keymintv1alpha1.MetadataValue(strings.Repeat("v", 257))}
			},
			wantErrors: []string{"spec.metadata.a", "spec.metadata.b"},
		},
		{
			desc: "more than 16 metadata pairs are refused",
			mutate: func(t *keymintv1alpha1.ApiToken) {
				t.Spec.Metadata = map[string]keymintv1alpha1.MetadataValue{}
				for i := range 17 {
					t.Spec.Metadata[fmt.Sprintf("k%d", i)] = "v"
				}
			},
			wantErrors: []string{"spec.metadata"},
		},
		{
			desc:   "allowedSourceCIDRs in IPv6 are valid",
			mutate: func(t *keymintv1alpha1.ApiToken) { t.Spec.AllowedSourceCIDRs = []string{"fd00::/8"} },
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

	It("keeps a ServiceUser's requireApproval on while it is disabled: the webhook that asks for approve is not called then", func() {
		u := &keymintv1alpha1.ServiceUser{ObjectMeta: metav1.ObjectMeta{Name: uniqueName("su"), Namespace: "default"},
			Spec: keymintv1alpha1.ServiceUserSpec{TokenPolicy: keymintv1alpha1.TokenPolicy{RequireApproval: true}}}
		Expect(k8sClient.Create(ctx, u)).To(Succeed())
		u.Spec.Disabled, u.Spec.TokenPolicy.RequireApproval = true, false
		expectErrors(k8sClient.Update(ctx, u), []string{"tokenPolicy.requireApproval cannot be turned off while the ServiceUser is disabled"})
		u.Spec.TokenPolicy.RequireApproval = true
		Expect(k8sClient.Update(ctx, u)).To(Succeed())
		u.Spec.TokenPolicy.RequireApproval = false
		expectErrors(k8sClient.Update(ctx, u), []string{"tokenPolicy.requireApproval cannot be turned off while the ServiceUser is disabled"})
		u.Spec.Disabled = false
		Expect(k8sClient.Update(ctx, u)).To(Succeed(), "turned off while enabled (the webhook, not run here, asks for approve)")
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

// A value kube-apiserver stores but metav1.Duration or metav1.Time cannot
// parse makes every typed List and Watch of its kind fail: keymint's
// informers, and with them every controller and the check index, would
// stall cluster-wide. So the invariant is: accepted by the schema ⇒ the Go
// type decodes it. Each case sends the raw JSON a kubectl user could, and
// asserts both sides: what the API server answers, and that whatever it
// stores is read back by the typed client (Get, and a List of the kind).
var _ = Describe("Durations and times keymint cannot read", func() {
	const maxGo = "2562047h47m16.854775807s" // the longest time.Duration

	// set returns a mutate that puts value (nil: JSON null) at path.
	set := func(value any, path ...string) func(*unstructured.Unstructured) {
		return func(u *unstructured.Unstructured) {
			Expect(unstructured.SetNestedField(u.Object, value, path...)).To(Succeed())
		}
	}
	both := func(mutates ...func(*unstructured.Unstructured)) func(*unstructured.Unstructured) {
		return func(u *unstructured.Unstructured) {
			for _, m := range mutates {
				m(u)
			}
		}
	}
	raw := func(kind, base string) *unstructured.Unstructured {
		u := &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{}}}
		u.SetAPIVersion(keymintv1alpha1.GroupVersion.String())
		u.SetKind(kind)
		u.SetNamespace("default")
		u.SetName(uniqueName(base))
		return u
	}
	rawToken := func() *unstructured.Unstructured {
		u := raw("ApiToken", "tok")
		Expect(unstructured.SetNestedField(u.Object, "ci-bot", "spec", "serviceUser")).To(Succeed())
		return u
	}

	// expectReadable checks the invariant for one create or patch: a value
	// the Go type cannot decode is refused, and whatever is stored reads
	// back through the typed client.
	expectReadable := func(u *unstructured.Unstructured, write error, typed client.Object, list client.ObjectList) {
		GinkgoHelper()
		body, err := json.Marshal(u.Object)
		Expect(err).NotTo(HaveOccurred())
		if decodeErr := json.Unmarshal(body, typed); decodeErr != nil {
			Expect(write).To(HaveOccurred(), "the Go type cannot decode %s (%v), so the API server must refuse it", body, decodeErr)
		}
		if write != nil {
			return
		}
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(u), typed)).To(Succeed(), "a stored object must decode")
		Expect(k8sClient.List(ctx, list, client.InNamespace(u.GetNamespace()))).To(Succeed(), "one undecodable object fails the whole List")
	}
	create := func(u *unstructured.Unstructured, typed client.Object, list client.ObjectList, wantErrors []string) {
		GinkgoHelper()
		err := k8sClient.Create(ctx, u)
		if err == nil {
			// If a poisoned object got through, take it away again so that
			// only this spec fails, not every later List.
			DeferCleanup(func() { Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, u))).To(Succeed()) })
		}
		expectErrors(err, wantErrors)
		expectReadable(u, err, typed, list)
	}

	tokenTests := []struct {
		desc       string
		mutate     func(*unstructured.Unstructured)
		wantErrors []string
	}{
		// Durations. CEL's duration() is Go's time.ParseDuration, so every
		// rule calling it refuses what Go cannot parse; the bound makes the
		// message say why.
		{
			desc: "the security review's case: a revoked token with a gracePeriod past int64 nanoseconds",
			mutate: both(set(true, "spec", "revoked"),
				set("99999999999999999999h", "spec", "rotation", "gracePeriod")),
			wantErrors: []string{"spec.rotation.gracePeriod", "rotation.gracePeriod must be from 0s to 2562047h"},
		},
		{
			desc:       "a gracePeriod of 2562048h (just past Go's range) is refused",
			mutate:     set("2562048h", "spec", "rotation", "gracePeriod"),
			wantErrors: []string{"rotation.gracePeriod must be from 0s to 2562047h"},
		},
		{
			desc:       "a gracePeriod 1ns past Go's range is refused",
			mutate:     set("2562047h47m16.854775808s", "spec", "rotation", "gracePeriod"),
			wantErrors: []string{"rotation.gracePeriod must be from 0s to 2562047h"},
		},
		{
			desc:       "a gracePeriod of 2^63 ns is refused",
			mutate:     set("9223372036854775808ns", "spec", "rotation", "gracePeriod"),
			wantErrors: []string{"rotation.gracePeriod must be from 0s to 2562047h"},
		},
		{
			desc:       "a gracePeriod of exactly Go's maximum is refused by the bound, with its message",
			mutate:     set(maxGo, "spec", "rotation", "gracePeriod"),
			wantErrors: []string{"rotation.gracePeriod must be from 0s to 2562047h"},
		},
		{desc: "a gracePeriod of 2562047h is valid", mutate: set("2562047h", "spec", "rotation", "gracePeriod")},
		{desc: "a gracePeriod below 1ns is valid (Go reads 0s)", mutate: set("0.0000000001s", "spec", "rotation", "gracePeriod")},
		{desc: "a gracePeriod with a long fraction is valid", mutate: set("1.00000000000000000000000001h", "spec", "rotation", "gracePeriod")},
		{desc: "a gracePeriod in µs (micro sign) is valid", mutate: set("1500µs", "spec", "rotation", "gracePeriod")},
		{
			desc:       "a gracePeriod in μs (Greek mu, which Go also reads) is refused by the pattern",
			mutate:     set("1500μs", "spec", "rotation", "gracePeriod"),
			wantErrors: []string{"spec.rotation.gracePeriod", "should match"},
		},
		{
			desc:       "a gracePeriod in days is refused",
			mutate:     set("1d", "spec", "rotation", "gracePeriod"),
			wantErrors: []string{"spec.rotation.gracePeriod", "should match"},
		},
		{
			desc:       "a negative gracePeriod is refused",
			mutate:     set("-1m", "spec", "rotation", "gracePeriod"),
			wantErrors: []string{"spec.rotation.gracePeriod", "should match"},
		},
		{
			desc:       "a gracePeriod without a leading digit (which Go reads) is refused by the pattern",
			mutate:     set(".5h", "spec", "rotation", "gracePeriod"),
			wantErrors: []string{"spec.rotation.gracePeriod", "should match"},
		},
		{
			desc:       "a gracePeriod as a JSON number is refused",
			mutate:     set(int64(3600), "spec", "rotation", "gracePeriod"),
			wantErrors: []string{"spec.rotation.gracePeriod", "must be of type string"},
		},
		{desc: "a null gracePeriod is dropped and defaulted", mutate: set(nil, "spec", "rotation", "gracePeriod")},
		{
			desc:       "a rotation.every past Go's range is refused",
			mutate:     set("99999999999999999999h", "spec", "rotation", "every"),
			wantErrors: []string{"spec.rotation.every", "rotation.every must be at least 1m, at most 2562047h"},
		},
		{
			desc:   "a rotation.every of 2562047h is valid",
			mutate: both(set("2562047h", "spec", "rotation", "every"), set("1h", "spec", "rotation", "gracePeriod")),
		},
		{
			desc:       "a retireWhenIdle past Go's range is refused",
			mutate:     both(set("2h", "spec", "rotation", "gracePeriod"), set("99999999999999999999h", "spec", "rotation", "retireWhenIdle")),
			wantErrors: []string{"spec.rotation.retireWhenIdle", "rotation.retireWhenIdle must be at least 5m, at most 2562047h"},
		},
		{
			desc:       "a retireWhenIdle as a JSON number is refused",
			mutate:     both(set("2h", "spec", "rotation", "gracePeriod"), set(int64(600), "spec", "rotation", "retireWhenIdle")),
			wantErrors: []string{"spec.rotation.retireWhenIdle", "must be of type string"},
		},
		{
			desc:       "a lifetime past Go's range is refused",
			mutate:     set("99999999999999999999h", "spec", "lifetime"),
			wantErrors: []string{"spec.lifetime", "lifetime must be positive, at most 2562047h"},
		},
		{
			desc:       "a lifetime of Go's maximum is refused by the bound",
			mutate:     set(maxGo, "spec", "lifetime"),
			wantErrors: []string{"lifetime must be positive, at most 2562047h"},
		},
		{desc: "a lifetime of 2562047h is valid", mutate: set("2562047h", "spec", "lifetime")},
		{
			desc:       "an empty lifetime is refused",
			mutate:     set("", "spec", "lifetime"),
			wantErrors: []string{"spec.lifetime", "should match"},
		},
		{
			desc:       "a lifetime with a trailing space is refused",
			mutate:     set("1h ", "spec", "lifetime"),
			wantErrors: []string{"spec.lifetime", "should match"},
		},

		// Times. The date-time format alone is laxer than Go's RFC 3339
		// parser (it lower-cases the string, and reads any two digits as an
		// offset); the pattern and the rule close the gap.
		{desc: "an expiresAt in UTC is valid", mutate: set("2030-01-01T00:00:00Z", "spec", "expiresAt")},
		{
			desc:       "an expiresAt with a lowercase t and z is refused",
			mutate:     set("2026-01-01t00:00:00z", "spec", "expiresAt"),
			wantErrors: []string{"spec.expiresAt", "should match"},
		},
		{
			desc:       "an expiresAt with a lowercase z is refused",
			mutate:     set("2030-01-01T00:00:00z", "spec", "expiresAt"),
			wantErrors: []string{"spec.expiresAt", "should match"},
		},
		{
			desc:       "an expiresAt with a lowercase t is refused",
			mutate:     set("2030-01-01t00:00:00Z", "spec", "expiresAt"),
			wantErrors: []string{"spec.expiresAt", "should match"},
		},
		{
			desc:       "an expiresAt with an offset of +99:99 is refused",
			mutate:     set("2030-01-01T00:00:00+99:99", "spec", "expiresAt"),
			wantErrors: []string{"spec.expiresAt", "expiresAt must be an RFC 3339 time"},
		},
		{
			desc:       "an expiresAt without a zone is refused",
			mutate:     set("2030-01-01T00:00:00", "spec", "expiresAt"),
			wantErrors: []string{"spec.expiresAt"},
		},
		{
			desc:       "an expiresAt with a space for the T is refused",
			mutate:     set("2030-01-01 00:00:00Z", "spec", "expiresAt"),
			wantErrors: []string{"spec.expiresAt"},
		},
		{
			desc:       "an expiresAt with an offset without a colon is refused",
			mutate:     set("2030-01-01T00:00:00+0100", "spec", "expiresAt"),
			wantErrors: []string{"spec.expiresAt"},
		},
		{
			desc:       "an expiresAt with a one-digit hour (which Go reads) is refused by the pattern",
			mutate:     set("2030-01-01T1:00:00Z", "spec", "expiresAt"),
			wantErrors: []string{"spec.expiresAt", "should match"},
		},
		{
			desc:       "an expiresAt with a decimal comma (which Go reads) is refused by the pattern",
			mutate:     set("2030-01-01T00:00:00,5Z", "spec", "expiresAt"),
			wantErrors: []string{"spec.expiresAt", "should match"},
		},
		{
			desc:       "an expiresAt with any character for the decimal point (which the date-time format allows) is refused",
			mutate:     set("2030-01-01T00:00:00x5Z", "spec", "expiresAt"),
			wantErrors: []string{"spec.expiresAt", "should match"},
		},
		{desc: "an expiresAt with nanoseconds is valid", mutate: set("2030-01-01T00:00:00.123456789Z", "spec", "expiresAt")},
		{desc: "an expiresAt with more than 9 fractional digits is valid", mutate: set("2030-01-01T00:00:00.1234567891234Z", "spec", "expiresAt")},
		{desc: "an expiresAt with an offset is valid", mutate: set("2030-01-01T00:00:00+01:00", "spec", "expiresAt")},
		{desc: "an expiresAt with offset -00:00 is valid", mutate: set("2030-01-01T00:00:00-00:00", "spec", "expiresAt")},
		{desc: "an expiresAt with offset +23:60 (which Go reads) is valid", mutate: set("2030-01-01T00:00:00+23:60", "spec", "expiresAt")},
		{desc: "an expiresAt with offset +24:00 (which Go reads) is valid", mutate: set("2030-01-01T00:00:00+24:00", "spec", "expiresAt")},
		{
			desc:       "an expiresAt of February 30 is refused",
			mutate:     set("2030-02-30T00:00:00Z", "spec", "expiresAt"),
			wantErrors: []string{"spec.expiresAt"},
		},
		{
			desc:       "an expiresAt at hour 24 is refused",
			mutate:     set("2030-01-01T24:00:00Z", "spec", "expiresAt"),
			wantErrors: []string{"spec.expiresAt"},
		},
		{
			desc:       "an expiresAt on a leap second is refused",
			mutate:     set("2030-06-30T23:59:60Z", "spec", "expiresAt"),
			wantErrors: []string{"spec.expiresAt"},
		},
		{
			desc:       "an expiresAt in year 10000 is refused",
			mutate:     set("10000-01-01T00:00:00Z", "spec", "expiresAt"),
			wantErrors: []string{"spec.expiresAt"},
		},
		{
			desc:       "an expiresAt after 9999-01-01 is refused, even one Go reads",
			mutate:     set("9999-12-31T23:59:59-01:00", "spec", "expiresAt"),
			wantErrors: []string{"expiresAt must be an RFC 3339 time such as 2030-01-01T00:00:00Z, from 1970 to before 9999"},
		},
		{desc: "an expiresAt in 9998 is valid", mutate: set("9998-12-31T23:59:59Z", "spec", "expiresAt")},
		{
			desc:       "an expiresAt in year 0 is refused",
			mutate:     set("0000-01-01T00:00:00Z", "spec", "expiresAt"),
			wantErrors: []string{"expiresAt must be an RFC 3339 time"},
		},
		{
			desc:       "an expiresAt before 1970 is refused",
			mutate:     set("1969-12-31T23:59:59Z", "spec", "expiresAt"),
			wantErrors: []string{"expiresAt must be an RFC 3339 time"},
		},
		{desc: "an expiresAt at the Unix epoch is valid", mutate: set("1970-01-01T00:00:00Z", "spec", "expiresAt")},
		{
			desc:       "an empty expiresAt is refused",
			mutate:     set("", "spec", "expiresAt"),
			wantErrors: []string{"spec.expiresAt"},
		},
		{
			desc:       "an expiresAt as a Unix time number is refused",
			mutate:     set(int64(1893456000), "spec", "expiresAt"),
			wantErrors: []string{"spec.expiresAt", "must be of type date-time"},
		},
		{desc: "a null expiresAt is dropped", mutate: set(nil, "spec", "expiresAt")},
	}
	for _, tc := range tokenTests {
		It("ApiToken: "+tc.desc, func() {
			u := rawToken()
			tc.mutate(u)
			create(u, &keymintv1alpha1.ApiToken{}, &keymintv1alpha1.ApiTokenList{}, tc.wantErrors)
		})
	}

	userTests := []struct {
		desc       string
		mutate     func(*unstructured.Unstructured)
		wantErrors []string
	}{
		{
			desc: "a disabled user with a maxLifetime past Go's range is refused",
			mutate: both(set(true, "spec", "disabled"),
				set("99999999999999999999h", "spec", "tokenPolicy", "maxLifetime")),
			wantErrors: []string{"spec.tokenPolicy.maxLifetime", "maxLifetime must be positive, at most 2562047h"},
		},
		{
			desc:       "a defaultLifetime just past Go's range is refused",
			mutate:     set("2562048h", "spec", "tokenPolicy", "defaultLifetime"),
			wantErrors: []string{"spec.tokenPolicy.defaultLifetime", "defaultLifetime must be positive, at most 2562047h"},
		},
		{
			desc:       "a maxLifetime of Go's maximum is refused by the bound",
			mutate:     set(maxGo, "spec", "tokenPolicy", "maxLifetime"),
			wantErrors: []string{"maxLifetime must be positive, at most 2562047h"},
		},
		{
			desc: "a maxLifetime and defaultLifetime of 2562047h are valid",
			mutate: both(set("2562047h", "spec", "tokenPolicy", "maxLifetime"),
				set("2562047h", "spec", "tokenPolicy", "defaultLifetime")),
		},
		{
			desc:       "a maxLifetime in days is refused",
			mutate:     set("90d", "spec", "tokenPolicy", "maxLifetime"),
			wantErrors: []string{"spec.tokenPolicy.maxLifetime", "should match"},
		},
		{
			desc:       "an expiryWarning past Go's range is refused",
			mutate:     set("99999999999999999999h", "spec", "tokenPolicy", "expiryWarning"),
			wantErrors: []string{"spec.tokenPolicy.expiryWarning", "expiryWarning must be from 0s to 2562047h"},
		},
		{
			desc:       "an expiryWarning in days is refused",
			mutate:     set("7d", "spec", "tokenPolicy", "expiryWarning"),
			wantErrors: []string{"spec.tokenPolicy.expiryWarning", "should match"},
		},
	}
	for _, tc := range userTests {
		It("ServiceUser: "+tc.desc, func() {
			u := raw("ServiceUser", "su")
			tc.mutate(u)
			create(u, &keymintv1alpha1.ServiceUser{}, &keymintv1alpha1.ServiceUserList{}, tc.wantErrors)
		})
	}

	patchTests := []struct {
		desc       string
		user       bool // patch a ServiceUser, else an ApiToken
		patch      string
		wantErrors []string
	}{
		{
			desc:       "revoking a token and setting an unreadable gracePeriod in one merge patch is refused",
			patch:      `{"spec":{"revoked":true,"rotation":{"gracePeriod":"99999999999999999999h"}}}`,
			wantErrors: []string{"rotation.gracePeriod must be from 0s to 2562047h"},
		},
		{
			desc:       "an unreadable expiresAt in a merge patch is refused",
			patch:      `{"spec":{"expiresAt":"2030-01-01t00:00:00z"}}`,
			wantErrors: []string{"spec.expiresAt", "should match"},
		},
		{
			desc:       "disabling a user and setting an unreadable defaultLifetime in one merge patch is refused",
			user:       true,
			patch:      `{"spec":{"disabled":true,"tokenPolicy":{"defaultLifetime":"99999999999999999999h"}}}`,
			wantErrors: []string{"defaultLifetime must be positive, at most 2562047h"},
		},
	}
	for _, tc := range patchTests {
		It("on update: "+tc.desc, func() {
			u, typed, list := rawToken(), client.Object(&keymintv1alpha1.ApiToken{}), client.ObjectList(&keymintv1alpha1.ApiTokenList{})
			if tc.user {
				u, typed, list = raw("ServiceUser", "su"), &keymintv1alpha1.ServiceUser{}, &keymintv1alpha1.ServiceUserList{}
			}
			Expect(k8sClient.Create(ctx, u)).To(Succeed())
			err := k8sClient.Patch(ctx, u, client.RawPatch(types.MergePatchType, []byte(tc.patch)))
			expectErrors(err, tc.wantErrors)
			Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(u), typed)).To(Succeed())
			Expect(k8sClient.List(ctx, list, client.InNamespace(u.GetNamespace()))).To(Succeed())
		})
	}
})

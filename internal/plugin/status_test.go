package plugin_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/plugin"
	"github.com/keymint/keymint/internal/token"
)

// The status table says what checks make of each token at one instant,
// from statuses pinned in place (no controller runs in this namespace).
func TestStatus(t *testing.T) {
	g := NewWithT(t)
	cl := startCluster(t)
	const ns = "status"
	newNamespace(t, cl, ns)
	createUser(t, cl, ns, "billing")
	now := time.Now().Truncate(time.Second)
	at := func(d time.Duration) *metav1.Time { return &metav1.Time{Time: now.Add(d)} }
	opts := plugin.Options{Now: func() time.Time { return now }}

	ready := createToken(t, cl, ns, "ready", "billing", func(tok *keymintv1alpha1.ApiToken) {
		tok.Spec.Lifetime = &metav1.Duration{Duration: 150 * time.Hour}
		tok.Spec.Rotation = &keymintv1alpha1.Rotation{Every: &metav1.Duration{Duration: 100 * time.Hour}, GracePeriod: &metav1.Duration{Duration: time.Hour}}
	})
	readyPlain := issue(t, cl, ready, "ready-secret", now.Add(-time.Hour), keymintv1alpha1.ApiTokenStatus{
		ExpiresAt: at(149 * time.Hour), LastUsedAt: at(-5 * time.Minute),
		PreviousTokens: []keymintv1alpha1.PreviousToken{{TokenHash: token.HashString("rotated-out"), IssuedAt: *at(-101 * time.Hour), ValidUntil: *at(45 * time.Minute)}},
	})
	expired := createToken(t, cl, ns, "expired", "billing", func(tok *keymintv1alpha1.ApiToken) {
		tok.Spec.Lifetime = &metav1.Duration{Duration: 24 * time.Hour}
	})
	// Ready=True as last written: the expiry passed since, and checks
	// refuse it whatever the condition still says.
	expiredPlain := issue(t, cl, expired, "expired", now.Add(-26*time.Hour), keymintv1alpha1.ApiTokenStatus{ExpiresAt: at(-2 * time.Hour)})
	revoked := createToken(t, cl, ns, "revoked", "billing", func(tok *keymintv1alpha1.ApiToken) { tok.Spec.Revoked = true })
	setStatus(t, cl, revoked, keymintv1alpha1.ApiTokenStatus{TokenPrefix: "km_Revoked12", Serial: 3, Conditions: []metav1.Condition{{
		Type: keymintv1alpha1.ApiTokenConditionRevoked, Status: metav1.ConditionTrue, Reason: keymintv1alpha1.ApiTokenReasonRevokedBySpec, LastTransitionTime: metav1.Now(),
	}}})
	orphan := createToken(t, cl, ns, "orphan", "ghost")
	orphanPlain := issue(t, cl, orphan, "orphan", now.Add(-time.Minute), keymintv1alpha1.ApiTokenStatus{})
	createToken(t, cl, ns, "pending", "billing")
	expiring := createToken(t, cl, ns, "expiring", "billing", func(tok *keymintv1alpha1.ApiToken) {
		tok.Spec.Lifetime = &metav1.Duration{Duration: 24 * time.Hour}
		tok.Spec.Quota = &keymintv1alpha1.Quota{Uses: 100, Refill: &keymintv1alpha1.QuotaRefill{Every: metav1.Duration{Duration: 24 * time.Hour}}}
	})
	expiringPlain := issue(t, cl, expiring, "expiring", now.Add(-20*time.Hour), keymintv1alpha1.ApiTokenStatus{ExpiresAt: at(4 * time.Hour),
		Quota: &keymintv1alpha1.QuotaStatus{Uses: 100, Remaining: 42, RefillsAt: at(3 * time.Hour), ObservedAt: *at(-time.Minute)},
		Conditions: []metav1.Condition{{Type: keymintv1alpha1.ApiTokenConditionExpiringSoon, Status: metav1.ConditionTrue,
			Reason: keymintv1alpha1.ApiTokenReasonWithinWarningWindow, LastTransitionTime: metav1.Now()}}})
	// Issued, and its rotation waits: its requester may no longer mint it.
	blocked := createToken(t, cl, ns, "blocked", "billing", func(tok *keymintv1alpha1.ApiToken) {
		tok.Spec.Rotation = &keymintv1alpha1.Rotation{Every: &metav1.Duration{Duration: time.Hour}}
	})
	blockedPlain := issue(t, cl, blocked, "blocked", now.Add(-2*time.Hour), keymintv1alpha1.ApiTokenStatus{
		Conditions: []metav1.Condition{{Type: keymintv1alpha1.ApiTokenConditionAuthorized, Status: metav1.ConditionFalse,
			Reason: keymintv1alpha1.ApiTokenReasonNotAllowed, LastTransitionTime: metav1.Now()}}})
	plains := []string{readyPlain, expiredPlain, orphanPlain, expiringPlain, blockedPlain}
	neverPrintsATokens := func(r result) {
		t.Helper()
		for _, p := range plains {
			g.Expect(r.stdout + r.stderr).NotTo(ContainSubstring(p[len(token.DefaultPrefix)+1:]))
		}
	}

	t.Run("table", func(t *testing.T) {
		r := cl.run(t, opts, "status", "-n", ns)
		t.Log("\n" + r.stdout)
		g.Expect(r.code).To(Equal(0), r.stderr)
		neverPrintsATokens(r)
		rows := table(t, r.stdout)
		g.Expect(rows).To(HaveLen(7))
		g.Expect(rows["blocked"]).To(HaveKeyWithValue("STATE", "Ready"), "its token is still accepted")
		g.Expect(rows["blocked"]).To(HaveKeyWithValue("ROTATION", "blocked: NotAllowed, due 1h ago"))
		g.Expect(rows["expiring"]).To(HaveKeyWithValue("STATE", "ExpiringSoon"), "accepted, inside its warning window")
		g.Expect(rows["ready"]).To(Equal(map[string]string{
			"NAME": "ready", "SERVICE USER": "billing", "STATE": "Ready", "EXPIRES": "in 6d5h", "LAST USED": "5m ago",
			"PREFIX": token.Display(readyPlain), "ROTATION": "in 4d3h, old token accepted for 45m",
		}))
		g.Expect(rows["expired"]).To(HaveKeyWithValue("STATE", "Expired"))
		g.Expect(rows["expired"]).To(HaveKeyWithValue("EXPIRES", "expired 2h ago"))
		g.Expect(rows["expired"]).To(HaveKeyWithValue("LAST USED", "never"))
		g.Expect(rows["revoked"]).To(Equal(map[string]string{
			"NAME": "revoked", "SERVICE USER": "billing", "STATE": "Revoked", "EXPIRES": "-", "LAST USED": "never",
			"PREFIX": "km_Revoked12", "ROTATION": "-",
		}))
		g.Expect(rows["orphan"]).To(HaveKeyWithValue("STATE", "ServiceUserNotFound"))
		g.Expect(rows["orphan"]).To(HaveKeyWithValue("EXPIRES", "never"))
		g.Expect(rows["pending"]).To(HaveKeyWithValue("STATE", "Pending"))
		g.Expect(rows["pending"]).To(HaveKeyWithValue("PREFIX", "-"))
	})

	t.Run("one by name, wide", func(t *testing.T) {
		r := cl.run(t, opts, "status", "ready", "-n", ns, "-o", "wide")
		t.Log("\n" + r.stdout)
		g.Expect(r.code).To(Equal(0), r.stderr)
		rows := table(t, r.stdout)
		g.Expect(rows).To(HaveLen(1))
		g.Expect(rows["ready"]).To(HaveKeyWithValue("SECRET", "ready-secret"))
		g.Expect(rows["ready"]).To(HaveKeyWithValue("SERIAL", "1"))
		g.Expect(rows["ready"]).To(HaveKeyWithValue("ISSUED", "1h ago"))
		g.Expect(rows["ready"]).To(HaveKeyWithValue("QUOTA", "-"))

		r = cl.run(t, opts, "status", "expiring", "-n", ns, "-o", "wide")
		g.Expect(r.code).To(Equal(0), r.stderr)
		g.Expect(table(t, r.stdout)["expiring"]).To(HaveKeyWithValue("QUOTA", "42 of 100 left, refills in 3h"), "from status.quota")
	})

	t.Run("all namespaces", func(t *testing.T) {
		r := cl.run(t, opts, "status", "-A")
		g.Expect(r.code).To(Equal(0), r.stderr)
		g.Expect(strings.Fields(strings.SplitN(r.stdout, "\n", 2)[0])[0]).To(Equal("NAMESPACE"))
		g.Expect(table(t, r.stdout)["ready"]).To(HaveKeyWithValue("NAMESPACE", ns))
	})

	t.Run("json and yaml print the objects", func(t *testing.T) {
		r := cl.run(t, opts, "status", "-n", ns, "-o", "json")
		g.Expect(r.code).To(Equal(0), r.stderr)
		neverPrintsATokens(r)
		var list keymintv1alpha1.ApiTokenList
		g.Expect(json.Unmarshal([]byte(r.stdout), &list)).To(Succeed())
		g.Expect(list.Items).To(HaveLen(7))
		g.Expect(list.Items[0].Kind).To(Equal("ApiToken"))
		g.Expect(list.Items[0].APIVersion).To(Equal("keymint.io/v1alpha1"))
		g.Expect(r.stdout).NotTo(ContainSubstring("managedFields"))

		r = cl.run(t, opts, "status", "ready", "-n", ns, "-o", "yaml")
		g.Expect(r.code).To(Equal(0), r.stderr)
		g.Expect(r.stdout).To(ContainSubstring("kind: ApiToken\n"))
		g.Expect(r.stdout).To(ContainSubstring("tokenPrefix: " + token.Display(readyPlain)))

		r = cl.run(t, opts, "status", "ready", "-n", ns, "-o", "jsonpath={.status.secretName}")
		g.Expect(r.stdout).To(Equal("ready-secret"))

		r = cl.run(t, opts, "status", "ready", "-n", ns, "-o", "name")
		g.Expect(r.stdout).To(Equal("apitoken.keymint.io/ready\n"))

		r = cl.run(t, opts, "status", "-n", ns, "-o", "name")
		g.Expect(r.code).To(Equal(0), r.stderr)
		g.Expect(r.stdout).To(ContainSubstring("apitoken.keymint.io/ready\n"), "every token, one name a line, as kubectl get -o name")
	})

	t.Run("without the right to read ServiceUsers, from the conditions", func(t *testing.T) {
		// alice may read ApiTokens here, nothing else: status still works.
		g.Expect(cl.c.Create(context.Background(), &rbacv1.Role{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "apitoken-reader"},
			Rules:      []rbacv1.PolicyRule{{APIGroups: []string{"keymint.io"}, Resources: []string{"apitokens"}, Verbs: []string{"get", "list"}}},
		})).To(Succeed())
		g.Expect(cl.c.Create(context.Background(), &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "alice-reads-apitokens"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "apitoken-reader"},
			Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: "alice"}},
		})).To(Succeed())
		r := cl.run(t, opts, "status", "-n", ns, "--as", "alice")
		g.Expect(r.code).To(Equal(0), r.stderr)
		rows := table(t, r.stdout)
		g.Expect(rows["ready"]).To(HaveKeyWithValue("STATE", "Ready"))
		g.Expect(rows["ready"]).To(HaveKeyWithValue("ROTATION", "in 4d3h, old token accepted for 45m"))
		g.Expect(rows["expired"]).To(HaveKeyWithValue("STATE", "Expired"))
		g.Expect(rows["revoked"]).To(HaveKeyWithValue("STATE", "Revoked"))

		r = cl.run(t, opts, "status", "ready", "-n", ns, "--as", "alice")
		g.Expect(r.code).To(Equal(0), r.stderr)
		g.Expect(table(t, r.stdout)["ready"]).To(HaveKeyWithValue("STATE", "Ready"))
	})

	t.Run("bad input", func(t *testing.T) {
		r := cl.run(t, opts, "status", "nope", "-n", ns)
		g.Expect(r.code).To(Equal(1))
		g.Expect(r.stderr).To(Equal("error: apitoken \"nope\" not found in namespace \"status\"\n"))

		r = cl.run(t, opts, "status", "ready", "-A")
		g.Expect(r.code).To(Equal(1))
		g.Expect(r.stderr).To(ContainSubstring("cannot be looked up across all namespaces"))

		r = cl.run(t, opts, "status", "-o", "csv")
		g.Expect(r.code).To(Equal(1))
		g.Expect(r.stderr).To(ContainSubstring(`unable to match a printer suitable for the output format "csv"`))

		r = cl.run(t, opts, "status", "-n", "empty-namespace")
		g.Expect(r.code).To(Equal(0))
		g.Expect(r.stdout).To(BeEmpty())
		g.Expect(r.stderr).To(Equal("No ApiTokens found in empty-namespace namespace.\n"))
	})
}

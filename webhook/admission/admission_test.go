package admission_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/testenv"
)

// manageTokens is what an editor of ApiTokens holds, without mint.
var manageTokens = rbacv1.PolicyRule{APIGroups: []string{"keymint.io"}, Resources: []string{"apitokens"}, Verbs: []string{"get", "list", "create", "update", "patch", "delete"}}

func mint(users ...string) rbacv1.PolicyRule {
	return rbacv1.PolicyRule{APIGroups: []string{"keymint.io"}, Resources: []string{"serviceusers"}, Verbs: []string{"mint"}, ResourceNames: users}
}

func serviceUser(ns, name string, groups ...string) *keymintv1alpha1.ServiceUser {
	return testenv.ServiceUser(ns, name, testenv.WithPermissions("invoices:read", "reports:write"), testenv.WithGroups(groups...))
}

func apiToken(ns, name, user string) *keymintv1alpha1.ApiToken {
	return testenv.ApiToken(ns, name, user)
}

// update applies mutate to an ApiToken as c, retrying on conflicts with the
// controller's status writes.
func update(c client.Client, ns, name string, mutate func(*keymintv1alpha1.ApiToken)) error {
	GinkgoHelper()
	var err error
	for range 10 {
		t := &keymintv1alpha1.ApiToken{}
		Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, t)).To(Succeed())
		mutate(t)
		if err = c.Update(ctx, t); !apierrors.IsConflict(err) {
			return err
		}
	}
	return err
}

var _ = Describe("Minting", func() {
	var ns string
	BeforeEach(func() {
		ns = newNamespace()
		Expect(k8sClient.Create(ctx, serviceUser(ns, "billing"))).To(Succeed())
		Expect(k8sClient.Create(ctx, serviceUser(ns, "payroll"))).To(Succeed())
	})

	It("is denied without mint, naming the rule to add", func() {
		grant(ns, "bob", manageTokens)
		bob, _ := as("bob")
		err := bob.Create(ctx, apiToken(ns, "t", "billing"))
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%v", err)
		Expect(err.Error()).To(And(
			ContainSubstring(`user "bob" may not mint tokens of ServiceUser "billing"`),
			ContainSubstring(`verbs: ["mint"], resourceNames: ["billing"]`),
		))
	})

	It("names a restart target only for a user who may patch that workload itself", func() {
		grant(ns, "bob", manageTokens, mint("billing"),
			rbacv1.PolicyRule{APIGroups: []string{"apps"}, Resources: []string{"deployments"}, Verbs: []string{"patch"}, ResourceNames: []string{"web"}})
		bob, _ := as("bob")
		withTargets := func(name string, targets ...keymintv1alpha1.RestartTarget) *keymintv1alpha1.ApiToken {
			t := apiToken(ns, name, "billing")
			t.Spec.Rotation = &keymintv1alpha1.Rotation{RestartTargets: targets}
			return t
		}
		web := keymintv1alpha1.RestartTarget{Kind: "Deployment", Name: "web"}
		db := keymintv1alpha1.RestartTarget{Kind: "StatefulSet", Name: "db"}

		Expect(bob.Create(ctx, withTargets("rolls-web", web))).To(Succeed())
		err := bob.Create(ctx, withTargets("rolls-db", web, db))
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%v", err)
		Expect(err.Error()).To(And(
			ContainSubstring(`user "bob" may not name StatefulSet "db" in spec.rotation.restartTargets`),
			ContainSubstring(`verb "patch" on resource "statefulsets" of API group "apps"`),
		))

		By("adding one to an existing token is checked the same way")
		err = update(bob, ns, "rolls-web", func(t *keymintv1alpha1.ApiToken) {
			t.Spec.Rotation.RestartTargets = append(t.Spec.Rotation.RestartTargets, db)
		})
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%v", err)

		By("targets added while revoked (admission is not asked then) are asked about on un-revoking")
		revoked := withTargets("revoked-first", web, db)
		revoked.Spec.Revoked = true
		Expect(bob.Create(ctx, revoked)).To(Succeed(), "revoking, and creating revoked, never waits for the webhook")
		err = update(bob, ns, "revoked-first", func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = false })
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%v", err)
		Expect(err.Error()).To(ContainSubstring(`may not name StatefulSet "db"`))
		Expect(update(bob, ns, "rolls-web", func(t *keymintv1alpha1.ApiToken) {
			t.Spec.Revoked = true
			t.Spec.Rotation.RestartTargets = append(t.Spec.Rotation.RestartTargets, db)
		})).To(Succeed())
		Eventually(func() string { // un-revoking waits for keymint to revoke (a CEL rule)
			t := &keymintv1alpha1.ApiToken{}
			Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "rolls-web"}, t)).To(Succeed())
			return t.Status.TokenHash
		}).Should(BeEmpty())
		err = update(bob, ns, "rolls-web", func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = false })
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "a target added in the same patch as a revocation: %v", err)
		Expect(update(bob, ns, "rolls-web", func(t *keymintv1alpha1.ApiToken) {
			t.Spec.Revoked = false
			t.Spec.Rotation.RestartTargets = []keymintv1alpha1.RestartTarget{web}
		})).To(Succeed(), "un-revoked with only the target bob may patch")

		By("a target named before is not asked about again, and dropping one needs no right")
		grant(ns, "carol", manageTokens)
		carol, _ := as("carol")
		Expect(update(carol, ns, "rolls-web", func(t *keymintv1alpha1.ApiToken) { t.Spec.Description = "rolls web" })).To(Succeed())
		Expect(update(carol, ns, "rolls-web", func(t *keymintv1alpha1.ApiToken) { t.Spec.Rotation.RestartTargets = nil })).To(Succeed())
	})

	It("by resourceName is allowed for that ServiceUser only", func() {
		grant(ns, "alice", manageTokens, mint("billing"))
		alice, _ := as("alice")
		Expect(alice.Create(ctx, apiToken(ns, "billing-token", "billing"))).To(Succeed())
		err := alice.Create(ctx, apiToken(ns, "payroll-token", "payroll"))
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%v", err)
		Expect(err.Error()).To(ContainSubstring(`ServiceUser "payroll"`))
	})

	It("is needed to widen, rotate or un-revoke a token, not to revoke it or edit its description", func() {
		Expect(k8sClient.Create(ctx, apiToken(ns, "t", "billing"))).To(Succeed())
		grant(ns, "bob", manageTokens)
		bob, _ := as("bob")

		forbidden := func(err error) { GinkgoHelper(); Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%v", err) }
		forbidden(update(bob, ns, "t", func(t *keymintv1alpha1.ApiToken) { t.Spec.Scopes = []string{"invoices:read"} }))
		forbidden(update(bob, ns, "t", func(t *keymintv1alpha1.ApiToken) { t.Spec.Lifetime = &metav1.Duration{Duration: time.Hour} }))
		forbidden(update(bob, ns, "t", func(t *keymintv1alpha1.ApiToken) {
			t.Annotations = map[string]string{keymintv1alpha1.RotateAnnotation: "now"}
		}))
		Expect(update(bob, ns, "t", func(t *keymintv1alpha1.ApiToken) { t.Spec.Description = "nightly export" })).To(Succeed())
		Expect(update(bob, ns, "t", func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = true })).To(Succeed())

		// Wait for keymint's revocation (the CEL rule holds un-revoking until then).
		Eventually(func(g Gomega) {
			t := &keymintv1alpha1.ApiToken{}
			g.Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "t"}, t)).To(Succeed())
			g.Expect(meta.IsStatusConditionTrue(t.Status.Conditions, keymintv1alpha1.ApiTokenConditionRevoked)).To(BeTrue())
			g.Expect(t.Status.TokenHash).To(BeEmpty())
		}).Should(Succeed())
		forbidden(update(bob, ns, "t", func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = false }))
		Expect(bob.Delete(ctx, apiToken(ns, "t", "billing"))).To(Succeed())
	})
})

var _ = Describe("Group claims", func() {
	manageUsers := rbacv1.PolicyRule{APIGroups: []string{"keymint.io"}, Resources: []string{"serviceusers"}, Verbs: []string{"get", "create", "update", "patch"}}

	It("need impersonate on each group, named in the denial", func() {
		ns := newNamespace()
		grant(ns, "carol", manageUsers)
		grantCluster("carol-impersonates-reporting", "carol", rbacv1.PolicyRule{
			APIGroups: []string{""}, Resources: []string{"groups"}, Verbs: []string{"impersonate"}, ResourceNames: []string{"reporting"},
		})
		carol, _ := as("carol")

		err := carol.Create(ctx, serviceUser(ns, "exporter", "cluster-admins"))
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%v", err)
		Expect(err.Error()).To(And(ContainSubstring(`carry group "cluster-admins"`), ContainSubstring(`verbs: ["impersonate"], resourceNames: ["cluster-admins"]`)))

		Expect(carol.Create(ctx, serviceUser(ns, "exporter", "reporting"))).To(Succeed())
		Eventually(func() error { // past conflicts with keymint's finalizer write
			u := &keymintv1alpha1.ServiceUser{}
			Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "exporter"}, u)).To(Succeed())
			u.Spec.Groups = append(u.Spec.Groups, "cluster-admins")
			err = carol.Update(ctx, u)
			if apierrors.IsConflict(err) {
				return err
			}
			return nil
		}).Should(Succeed())
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%v", err)
		Expect(err.Error()).To(ContainSubstring(`"cluster-admins"`))
	})
})

var _ = Describe("Asking for more than the ServiceUser gives", func() {
	It("is admitted with warnings, and the token gets only what the user holds", func() {
		ns := newNamespace()
		u := serviceUser(ns, "billing")
		u.Spec.TokenPolicy.MaxLifetime = &metav1.Duration{Duration: 24 * time.Hour}
		u.Spec.TokenPolicy.MaxIdle = &metav1.Duration{Duration: 48 * time.Hour}
		Expect(k8sClient.Create(ctx, u)).To(Succeed())
		grant(ns, "alice", manageTokens, mint("billing"))
		alice, seen := as("alice")

		tok := apiToken(ns, "greedy", "billing")
		tok.Spec.Scopes = []string{"invoices:read", "admin:write"}
		tok.Spec.Lifetime = &metav1.Duration{Duration: 720 * time.Hour}
		tok.Spec.MaxIdle = &metav1.Duration{Duration: 2160 * time.Hour}
		tok.Spec.ScopeRequestsPerMinute = []keymintv1alpha1.ScopeRate{{Scope: "invoices:read", RequestsPerMinute: 60}, {Scope: "admin:write", RequestsPerMinute: 5}}
		Expect(alice.Create(ctx, tok)).To(Succeed())
		Expect(seen.all()).To(ContainElements(
			ContainSubstring(`scopes admin:write are not among ServiceUser "billing"'s permissions`),
			ContainSubstring(`longer than ServiceUser "billing"'s tokenPolicy.maxLifetime (24h0m0s)`),
			ContainSubstring(`scopeRequestsPerMinute gives rates to admin:write, which the token will not get`),
			ContainSubstring(`maxIdle 2160h0m0s is longer than ServiceUser "billing"'s tokenPolicy.maxIdle (48h0m0s), which applies`),
		))

		By("the controller keeps the same on a condition, and issues the token with less")
		Eventually(func(g Gomega) {
			t := &keymintv1alpha1.ApiToken{}
			g.Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "greedy"}, t)).To(Succeed())
			c := meta.FindStatusCondition(t.Status.Conditions, keymintv1alpha1.ApiTokenConditionRequestGranted)
			g.Expect(c).NotTo(BeNil())
			g.Expect(c.Reason).To(Equal(keymintv1alpha1.ApiTokenReasonScopesNotHeld))
			g.Expect(c.Message).To(And(ContainSubstring("admin:write"), ContainSubstring("maxLifetime")))
			g.Expect(t.Status.ExpiresAt).NotTo(BeNil())
			g.Expect(t.Status.ExpiresAt.Time).To(Equal(t.Status.IssuedAt.Add(24 * time.Hour)))
		}).Should(Succeed())
	})

	It("for a ServiceUser applied later (GitOps, any order) is admitted and converges", func() {
		ns := newNamespace()
		grant(ns, "alice", manageTokens, mint("later"))
		alice, seen := as("alice")
		Expect(alice.Create(ctx, apiToken(ns, "early", "later"))).To(Succeed())
		Expect(seen.all()).To(ContainElement(ContainSubstring(`ServiceUser "later" does not exist (yet)`)))

		Expect(k8sClient.Create(ctx, serviceUser(ns, "later"))).To(Succeed())
		Eventually(func(g Gomega) {
			t := &keymintv1alpha1.ApiToken{}
			g.Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "early"}, t)).To(Succeed())
			g.Expect(meta.IsStatusConditionTrue(t.Status.Conditions, keymintv1alpha1.ApiTokenConditionReady)).To(BeTrue())
		}).Should(Succeed())
	})
})

var _ = Describe("With the webhook down", func() {
	It("minting and group claims fail with the webhook's error; revoking and disabling still work", func() {
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, serviceUser(ns, "billing"))).To(Succeed())
		Expect(k8sClient.Create(ctx, apiToken(ns, "live", "billing"))).To(Succeed())

		// The shipped configuration, pointed at a port nothing listens on, for
		// this namespace only.
		root, err := testenv.RepoRoot()
		Expect(err).NotTo(HaveOccurred())
		raw, err := os.ReadFile(filepath.Join(root, "config", "webhook", "validating.yaml"))
		Expect(err).NotTo(HaveOccurred())
		down := &admissionregistrationv1.ValidatingWebhookConfiguration{}
		Expect(yaml.Unmarshal(raw, down)).To(Succeed())
		down.Name = "keymint-down-" + ns
		for i := range down.Webhooks {
			w := &down.Webhooks[i]
			w.ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: ptr.To("https://127.0.0.1:1" + *w.ClientConfig.Service.Path)}
			w.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: ns}}
		}
		Expect(k8sClient.Create(ctx, down)).To(Succeed())
		DeferCleanup(func() { Expect(k8sClient.Delete(ctx, down)).To(Succeed()) })

		Eventually(func() string {
			err := k8sClient.Create(ctx, apiToken(ns, "new", "billing"))
			if err == nil {
				Expect(k8sClient.Delete(ctx, apiToken(ns, "new", "billing"))).To(Succeed())
				return ""
			}
			return err.Error()
		}).Should(ContainSubstring(`failed calling webhook "apitokens.keymint.io"`))
		err = update(k8sClient, ns, "live", func(t *keymintv1alpha1.ApiToken) { t.Spec.Scopes = []string{"invoices:read"} })
		Expect(err).To(MatchError(ContainSubstring("failed calling webhook")))

		Expect(update(k8sClient, ns, "live", func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = true })).To(Succeed())
		Eventually(func() error {
			u := &keymintv1alpha1.ServiceUser{}
			Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "billing"}, u)).To(Succeed())
			u.Spec.Disabled = true
			return k8sClient.Update(ctx, u)
		}).Should(Succeed())
	})
})

var _ = Describe("The shipped roles (config/rbac/keymint_roles.yaml)", func() {
	// loadRoles creates the shipped ClusterRoles under their installed names.
	loadRoles := func() {
		GinkgoHelper()
		root, err := testenv.RepoRoot()
		Expect(err).NotTo(HaveOccurred())
		raw, err := os.ReadFile(filepath.Join(root, "config", "rbac", "keymint_roles.yaml"))
		Expect(err).NotTo(HaveOccurred())
		for _, doc := range strings.Split(string(raw), "\n---\n") {
			role := &rbacv1.ClusterRole{}
			Expect(yaml.Unmarshal([]byte(doc), role)).To(Succeed())
			role.Name = "keymint-" + role.Name // the prefix config/default adds
			Expect(k8sClient.Create(ctx, role)).To(Succeed())
			if role.Name == "keymint-approver" {
				// Approving is a duty of its own, bound where it applies.
				Expect(role.Labels).NotTo(HaveKey(HavePrefix("rbac.authorization.k8s.io/aggregate-to-")), "the approver role is aggregated")
				continue
			}
			Expect(role.Labels).To(HaveKey(HavePrefix("rbac.authorization.k8s.io/aggregate-to-")), "aggregated to a built-in role")
		}
	}
	bind := func(ns, user, role string) {
		GinkgoHelper()
		Expect(k8sClient.Create(ctx, &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: user + "-" + role},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
		})).To(Succeed())
	}

	It("let an editor mint, a viewer only read, and an admin manage ServiceUsers but claim no group", func() {
		loadRoles()
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, serviceUser(ns, "billing"))).To(Succeed())
		bind(ns, "erin", "keymint-editor")
		bind(ns, "vic", "keymint-viewer")
		bind(ns, "ada", "keymint-admin")
		erin, _ := as("erin")
		vic, _ := as("vic")
		ada, _ := as("ada")

		Eventually(func() error { return erin.Create(ctx, apiToken(ns, "erin-token", "billing")) }).Should(Succeed())
		list := &keymintv1alpha1.ApiTokenList{}
		Expect(vic.List(ctx, list, client.InNamespace(ns))).To(Succeed())
		Expect(list.Items).To(HaveLen(1))
		Expect(apierrors.IsForbidden(vic.Create(ctx, apiToken(ns, "vic-token", "billing")))).To(BeTrue())
		Expect(apierrors.IsForbidden(vic.Get(ctx, types.NamespacedName{Namespace: ns, Name: "erin-token"}, &corev1.Secret{}))).To(BeTrue(), "a viewer reads no Secret")

		Expect(ada.Create(ctx, serviceUser(ns, "reports"))).To(Succeed())
		err := ada.Create(ctx, serviceUser(ns, "admins", "cluster-admins"))
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%v", err)
		Expect(err.Error()).To(ContainSubstring(`carry group "cluster-admins"`))
	})
})

var _ = Describe("Minting for a ServiceUser with groups", func() {
	It("also needs impersonate on each of its groups: a token carries them to kube-apiserver", func() {
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, serviceUser(ns, "deployer", "payments"))).To(Succeed())
		grant(ns, "erin", manageTokens, mint())
		erin, _ := as("erin")
		err := erin.Create(ctx, apiToken(ns, "t", "deployer"))
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%v", err)
		Expect(err.Error()).To(And(ContainSubstring(`carry group "payments"`), ContainSubstring(`resourceNames: ["payments"]`)))

		grantCluster("erin-impersonates-payments-"+ns, "erin", rbacv1.PolicyRule{
			APIGroups: []string{""}, Resources: []string{"groups"}, Verbs: []string{"impersonate"}, ResourceNames: []string{"payments"},
		})
		Eventually(func() error { return erin.Create(ctx, apiToken(ns, "t", "deployer")) }).Should(Succeed())
	})
})

var _ = Describe("Changing a ServiceUser so its tokens get more", func() {
	It("needs mint on it: re-enabling, more permissions, a looser lifetime policy", func() {
		ns := newNamespace()
		u := serviceUser(ns, "billing")
		u.Spec.TokenPolicy.MaxLifetime = &metav1.Duration{Duration: time.Hour}
		u.Spec.TokenPolicy.DefaultLifetime = &metav1.Duration{Duration: 30 * time.Minute}
		Expect(k8sClient.Create(ctx, u)).To(Succeed())
		grant(ns, "mallory", rbacv1.PolicyRule{APIGroups: []string{"keymint.io"}, Resources: []string{"serviceusers"}, Verbs: []string{"get", "update", "patch"}})
		mallory, _ := as("mallory")

		change := func(c client.Client, mutate func(*keymintv1alpha1.ServiceUser)) error {
			GinkgoHelper()
			var err error
			Eventually(func() error {
				u := &keymintv1alpha1.ServiceUser{}
				Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "billing"}, u)).To(Succeed())
				mutate(u)
				if err = c.Update(ctx, u); apierrors.IsConflict(err) {
					return err
				}
				return nil
			}).Should(Succeed())
			return err
		}
		for what, mutate := range map[string]func(*keymintv1alpha1.ServiceUser){
			"more permissions": func(u *keymintv1alpha1.ServiceUser) {
				u.Spec.Permissions = append(u.Spec.Permissions, "everything:admin")
			},
			"no maxLifetime": func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.MaxLifetime = nil },
			"a longer maxLifetime": func(u *keymintv1alpha1.ServiceUser) {
				u.Spec.TokenPolicy.MaxLifetime = &metav1.Duration{Duration: 2 * time.Hour}
			},
			"a longer defaultLifetime": func(u *keymintv1alpha1.ServiceUser) {
				u.Spec.TokenPolicy.DefaultLifetime = &metav1.Duration{Duration: time.Hour}
			},
		} {
			err := change(mallory, mutate)
			Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%s: %v", what, err)
			Expect(err.Error()).To(ContainSubstring(`may not mint tokens of ServiceUser "billing"`), what)
		}
		Expect(change(mallory, func(u *keymintv1alpha1.ServiceUser) { u.Spec.Description = "billing exports" })).To(Succeed())
		Expect(change(mallory, func(u *keymintv1alpha1.ServiceUser) { u.Spec.Permissions = []string{"invoices:read"} })).To(Succeed(), "fewer permissions")
		Expect(change(mallory, func(u *keymintv1alpha1.ServiceUser) { u.Spec.Disabled = true })).To(Succeed())
		Eventually(func() error {
			err := change(mallory, func(u *keymintv1alpha1.ServiceUser) { u.Spec.Disabled = false })
			if err != nil && strings.Contains(err.Error(), "try again in a moment") {
				return err // keymint has not revoked yet
			}
			if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "re-enabling it mints new tokens") {
				return StopTrying(fmt.Sprintf("re-enabling: %v", err))
			}
			return nil
		}).Should(Succeed())
	})
})

var _ = Describe("An ApiToken created revoked", func() {
	It("needs no mint and tells nothing about its ServiceUser", func() {
		ns := newNamespace()
		grant(ns, "bob", manageTokens)
		bob, seen := as("bob")
		tok := apiToken(ns, "t", "secret-user")
		tok.Spec.Revoked = true
		Expect(bob.Create(ctx, tok)).To(Succeed())
		Expect(seen.all()).To(BeEmpty())
	})
})

var _ = Describe("Loosening a ServiceUser whose tokens require approval", func() {
	It("needs approve on it as well as mint: turning the policy off, more permissions", func() {
		ns := newNamespace()
		u := serviceUser(ns, "billing")
		u.Spec.TokenPolicy.RequireApproval = true
		u.Spec.TokenPolicy.AllowedSourceCIDRs = []string{"10.0.0.0/8"}
		u.Spec.TokenPolicy.Quota = &keymintv1alpha1.Quota{Uses: 100}
		Expect(k8sClient.Create(ctx, u)).To(Succeed())
		grant(ns, "mallory", rbacv1.PolicyRule{APIGroups: []string{"keymint.io"}, Resources: []string{"serviceusers"}, Verbs: []string{"get", "update", "patch"}}, mint())
		mallory, _ := as("mallory")
		update := func(mutate func(*keymintv1alpha1.ServiceUser)) error {
			GinkgoHelper()
			for {
				u := &keymintv1alpha1.ServiceUser{}
				Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "billing"}, u)).To(Succeed())
				mutate(u)
				if err := mallory.Update(ctx, u); !apierrors.IsConflict(err) {
					return err
				}
			}
		}
		var err error
		Eventually(func() bool {
			err = update(func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.RequireApproval = false })
			return apierrors.IsForbidden(err)
		}).Should(BeTrue(), "turning the policy off with mint alone: %v", err)
		Expect(err.Error()).To(And(ContainSubstring("turning tokenPolicy.requireApproval off"), ContainSubstring(`verbs: ["approve"], resourceNames: ["billing"]`)))
		err = update(func(u *keymintv1alpha1.ServiceUser) {
			u.Spec.Permissions = append(u.Spec.Permissions, "everything:admin")
		})
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%v", err)
		Expect(err.Error()).To(ContainSubstring("its tokens require approval"))
		Expect(update(func(u *keymintv1alpha1.ServiceUser) { u.Spec.Description = "billing exports" })).To(Succeed(), "a change that widens nothing")

		By("source addresses and the quota are the user's ceiling: loosening them widens its tokens")
		err = update(func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.AllowedSourceCIDRs = nil })
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "removing allowedSourceCIDRs: %v", err)
		Expect(err.Error()).To(ContainSubstring("wider allowedSourceCIDRs"))
		err = update(func(u *keymintv1alpha1.ServiceUser) {
			u.Spec.TokenPolicy.AllowedSourceCIDRs = []string{"10.0.0.0/8", "192.0.2.0/24"}
		})
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "adding a range: %v", err)
		Expect(update(func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.AllowedSourceCIDRs = []string{"10.1.0.0/16"} })).To(Succeed(), "narrowing")
		err = update(func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.Quota.Uses = 1000 })
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "raising the quota: %v", err)
		Expect(err.Error()).To(ContainSubstring("a looser quota"))
		Expect(update(func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.Quota.Uses = 10 })).To(Succeed(), "lowering the quota")

		Expect(k8sClient.Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "approve-billing"}, Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{"keymint.io"}, Resources: []string{"serviceusers"}, Verbs: []string{"approve"}, ResourceNames: []string{"billing"}},
		}})).To(Succeed())
		Expect(k8sClient.Create(ctx, &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "mallory-approves-billing"},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "approve-billing"},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "mallory"}},
		})).To(Succeed())
		Eventually(func() error {
			return update(func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.RequireApproval = false })
		}).Should(Succeed(), "with approve too")
	})
})

package admission_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/testenv"
)

// The attacks an attacker review found on admission alone (issue 18): each
// changes the world between the moment an ApiToken is admitted and the
// moment keymint mints or restarts for it. The controllers ask again, for
// the requester admission recorded, at that moment.

func getToken(ns, name string) *keymintv1alpha1.ApiToken {
	GinkgoHelper()
	t := &keymintv1alpha1.ApiToken{}
	Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, t)).To(Succeed())
	return t
}

func waitReady(ns, name string) *keymintv1alpha1.ApiToken {
	GinkgoHelper()
	var t *keymintv1alpha1.ApiToken
	Eventually(func(g Gomega) {
		t = getToken(ns, name)
		g.Expect(meta.IsStatusConditionTrue(t.Status.Conditions, keymintv1alpha1.ApiTokenConditionReady)).To(BeTrue(), "%+v", t.Status.Conditions)
	}).Should(Succeed())
	return t
}

// eventsOf lists the Events keymint emitted about an ApiToken.
func eventsOf(ns, name string) []eventsv1.Event {
	GinkgoHelper()
	events, err := testenv.EventsAbout(ctx, k8sClient, ns, "ApiToken", name)
	Expect(err).NotTo(HaveOccurred())
	return events
}

// countReason counts the occurrences of an Event reason.
func countReason(events []eventsv1.Event, reason string) int {
	return len(slices.DeleteFunc(testenv.Reasons(events), func(r string) bool { return r != reason }))
}

func deployment(ns, name string) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}},
			},
		},
	}
}

func restartedAt(ns, name string) string {
	GinkgoHelper()
	d := &appsv1.Deployment{}
	Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, d)).To(Succeed())
	return d.Spec.Template.Annotations[keymintv1alpha1.RestartedAtAnnotation]
}

var impersonatePayments = rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"groups"}, Verbs: []string{"impersonate"}, ResourceNames: []string{"payments"}}

var _ = Describe("Authorization at the moment of minting", func() {
	var ns string
	BeforeEach(func() { ns = newNamespace() })

	It("restarts nothing for a user who may not patch the workload, revoked or not (1)", func() {
		Expect(k8sClient.Create(ctx, serviceUser(ns, "billing"))).To(Succeed())
		Expect(k8sClient.Create(ctx, deployment(ns, "victim"))).To(Succeed())
		Expect(k8sClient.Create(ctx, deployment(ns, "own"))).To(Succeed())
		// editor: every right on ApiTokens and mint, no right on Deployments
		// but "own".
		grant(ns, "editor", manageTokens, mint("billing"),
			rbacv1.PolicyRule{APIGroups: []string{"apps"}, Resources: []string{"deployments"}, Verbs: []string{"patch"}, ResourceNames: []string{"own"}})
		editor, _ := as("editor")
		tok := apiToken(ns, "t", "billing")
		tok.Spec.Rotation = &keymintv1alpha1.Rotation{RestartTargets: []keymintv1alpha1.RestartTarget{{Kind: "Deployment", Name: "own"}}}
		Expect(editor.Create(ctx, tok)).To(Succeed())
		waitReady(ns, "t")

		for cycle := range 3 {
			// One write: revoked, and victim named. Admission is skipped.
			Expect(update(editor, ns, "t", func(t *keymintv1alpha1.ApiToken) {
				t.Spec.Revoked = true
				t.Spec.Rotation.RestartTargets = append(t.Spec.Rotation.RestartTargets, keymintv1alpha1.RestartTarget{Kind: "Deployment", Name: "victim"})
			})).To(Succeed(), "cycle %d", cycle)
			Eventually(func() string { return getToken(ns, "t").Status.TokenHash }).Should(BeEmpty())
			// Un-revoke without victim, as admission demands: mint is enough.
			Eventually(func() error {
				return update(editor, ns, "t", func(t *keymintv1alpha1.ApiToken) {
					t.Spec.Revoked = false
					t.Spec.Rotation.RestartTargets = t.Spec.Rotation.RestartTargets[:1]
				})
			}).Should(Succeed())
			waitReady(ns, "t")
		}
		// "own" rolls onto each new token; victim never.
		Eventually(func() string { return restartedAt(ns, "own") }).ShouldNot(BeEmpty())
		Consistently(func() string { return restartedAt(ns, "victim") }, 2*time.Second).Should(BeEmpty())

		// Named by someone who may patch it, then that right is taken away:
		// checked at restart time, not kept from admission.
		grant(ns, "lead", manageTokens, mint("billing"), rbacv1.PolicyRule{APIGroups: []string{"apps"}, Resources: []string{"deployments"}, Verbs: []string{"patch"}})
		lead, _ := as("lead")
		Eventually(func() error {
			return update(lead, ns, "t", func(t *keymintv1alpha1.ApiToken) {
				t.Spec.Rotation.RestartTargets = append(t.Spec.Rotation.RestartTargets, keymintv1alpha1.RestartTarget{Kind: "Deployment", Name: "victim"})
			})
		}).Should(Succeed())
		Expect(k8sClient.Delete(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "lead-" + ns}})).To(Succeed())
		Expect(update(editor, ns, "t", func(t *keymintv1alpha1.ApiToken) {
			t.Annotations = map[string]string{keymintv1alpha1.RotateAnnotation: "after-lead-left"}
		})).To(Succeed())
		Eventually(func() int { return countReason(eventsOf(ns, "t"), "RestartNotAuthorized") }).Should(BeNumerically(">=", 1))
		Expect(restartedAt(ns, "victim")).To(BeEmpty())
		var msgs []string
		for _, e := range eventsOf(ns, "t") {
			if e.Reason == "RestartNotAuthorized" {
				msgs = append(msgs, e.Note)
			}
		}
		Expect(msgs).To(ContainElement(And(ContainSubstring(`user "lead" may not restart Deployment "victim"`), ContainSubstring(`resourceNames: ["victim"]`))))
	})

	It("mints a token applied before its ServiceUser only once its requester may carry the user's groups (2a)", func() {
		grant(ns, "editor", manageTokens, mint("ghost"))
		editor, seen := as("editor")
		Expect(editor.Create(ctx, apiToken(ns, "early", "ghost"))).To(Succeed())
		Expect(seen.all()).To(ContainElement(ContainSubstring(`ServiceUser "ghost" does not exist (yet)`)))

		// An admin, who may give groups, creates ghost in payments.
		Expect(k8sClient.Create(ctx, serviceUser(ns, "ghost", "payments"))).To(Succeed())
		var cond *metav1.Condition
		Eventually(func(g Gomega) {
			t := getToken(ns, "early")
			cond = meta.FindStatusCondition(t.Status.Conditions, keymintv1alpha1.ApiTokenConditionAuthorized)
			g.Expect(cond).NotTo(BeNil())
			g.Expect(cond.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(t.Status.TokenHash).To(BeEmpty())
		}).Should(Succeed())
		Expect(cond.Reason).To(Equal(keymintv1alpha1.ApiTokenReasonNotAllowed))
		Expect(cond.Message).To(And(ContainSubstring(`user "editor", who asked for this token`), ContainSubstring(`verbs: ["impersonate"], resourceNames: ["payments"]`)))
		Expect(meta.FindStatusCondition(getToken(ns, "early").Status.Conditions, keymintv1alpha1.ApiTokenConditionReady).Reason).To(Equal(keymintv1alpha1.ApiTokenReasonNotAllowed))
		Eventually(func() int { return countReason(eventsOf(ns, "early"), "MintDenied") }).Should(Equal(1))
		Consistently(func() int { return countReason(eventsOf(ns, "early"), "Issued") }, time.Second).Should(BeZero(), "no Event tells of a token never minted")
		sec := &corev1.Secret{}
		Expect(apierrors.IsNotFound(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "early"}, sec))).To(BeTrue(), "no Secret, no token")

		// Granted the group: minted by itself, no write needed.
		grantCluster("editor-impersonates-payments-"+ns, "editor", impersonatePayments)
		t := waitReady(ns, "early")
		Expect(meta.IsStatusConditionTrue(t.Status.Conditions, keymintv1alpha1.ApiTokenConditionAuthorized)).To(BeTrue())
		Eventually(func() int { return countReason(eventsOf(ns, "early"), keymintv1alpha1.ApiTokenReasonAuthorized) }).Should(Equal(1))
		Expect(countReason(eventsOf(ns, "early"), "MintDenied")).To(Equal(1), "one Event per denial, not per retry")
	})

	It("needs mint to create a ServiceUser that ApiTokens already name (2b)", func() {
		// GitOps applies the token first; its controller may mint anything.
		grant(ns, "gitops", manageTokens, mint())
		gitops, _ := as("gitops")
		Expect(gitops.Create(ctx, apiToken(ns, "svc2-prod", "svc2"))).To(Succeed())

		grant(ns, "su-writer", rbacv1.PolicyRule{APIGroups: []string{"keymint.io"}, Resources: []string{"serviceusers"}, Verbs: []string{"get", "create", "update", "patch", "delete"}})
		suWriter, _ := as("su-writer")
		u := serviceUser(ns, "svc2")
		u.Spec.Permissions = []string{"payments:refund", "admin:all"}
		err := suWriter.Create(ctx, u)
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%v", err)
		Expect(err.Error()).To(And(ContainSubstring(`user "su-writer" may not mint tokens of ServiceUser "svc2"`), ContainSubstring("ApiTokens already name it")))

		// Created disabled (admission skipped), then enabled: asked then.
		u = serviceUser(ns, "svc2")
		u.Spec.Permissions = []string{"payments:refund", "admin:all"}
		u.Spec.Disabled = true
		Expect(suWriter.Create(ctx, u)).To(Succeed())
		Eventually(func() error {
			u := &keymintv1alpha1.ServiceUser{}
			Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "svc2"}, u)).To(Succeed())
			u.Spec.Disabled = false
			if err = suWriter.Update(ctx, u); apierrors.IsConflict(err) {
				return err
			}
			return nil
		}).Should(Succeed())
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%v", err)
		Expect(err.Error()).To(ContainSubstring("re-enabling it mints new tokens"))
		Expect(getToken(ns, "svc2-prod").Status.TokenHash).To(BeEmpty())

		// A ServiceUser nobody names is su-writer's to create.
		Expect(suWriter.Create(ctx, serviceUser(ns, "unnamed"))).To(Succeed())
	})

	It("mints one token per decision, however fast revoke and un-revoke alternate (3)", func() {
		Expect(k8sClient.Create(ctx, serviceUser(ns, "billing"))).To(Succeed())
		grant(ns, "alice", manageTokens, mint("billing"))
		alice, _ := as("alice")
		Expect(alice.Create(ctx, apiToken(ns, "t", "billing"))).To(Succeed())
		waitReady(ns, "t")
		const cycles = 6
		for range cycles {
			Expect(update(alice, ns, "t", func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = true })).To(Succeed())
			// Un-revoke the moment keymint lets us (CEL waits for the hash
			// to go), before anything settles.
			Eventually(func() error {
				return update(alice, ns, "t", func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = false })
			}, 15*time.Second, 5*time.Millisecond).Should(Succeed())
		}
		t := waitReady(ns, "t")
		Consistently(func() int64 { return getToken(ns, "t").Status.Serial }, 2*time.Second).Should(Equal(t.Status.Serial))
		t = getToken(ns, "t")
		events := eventsOf(ns, "t")
		// Un-revoking as soon as CEL allows can land before keymint minted
		// for the previous un-revoke: mints may be fewer than cycles, never
		// more than one per cycle, and each has a serial of its own.
		Expect(t.Status.Serial).To(BeNumerically(">=", 2))
		Expect(t.Status.Serial).To(BeNumerically("<=", 1+cycles))
		Expect(countReason(events, "Issued")).To(BeEquivalentTo(t.Status.Serial), "one Issued Event per serial: no serial minted twice")
		Expect(countReason(events, "SecretChanged")).To(BeZero(), "keymint never takes its own token for tampering")
		Expect(countReason(events, "Revoked")).To(BeNumerically("<=", cycles))
		prefixes := map[string]bool{}
		for _, e := range events {
			if e.Reason == "Issued" {
				prefixes[e.Note] = true
			}
		}
		Expect(prefixes).To(HaveLen(int(t.Status.Serial)), "each mint a new token")
		sec := &corev1.Secret{}
		Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "t"}, sec)).To(Succeed())
		Expect(sec.Annotations[keymintv1alpha1.RecordAnnotation]).To(ContainSubstring(fmt.Sprintf(`"serial":%d`, t.Status.Serial)))
	})

	It("tells whoever writes a revoked ApiToken nothing about its ServiceUser (4)", func() {
		u := serviceUser(ns, "billing")
		u.Spec.Permissions = []string{"invoices:read"}
		Expect(k8sClient.Create(ctx, u)).To(Succeed())
		grant(ns, "snoop", manageTokens) // no mint, no get on serviceusers
		snoop, seen := as("snoop")
		statusOf := func(name, user string) []metav1.Condition {
			GinkgoHelper()
			tok := apiToken(ns, name, user)
			tok.Spec.Revoked = true
			tok.Spec.Scopes = []string{"invoices:read", "admin:write"}
			Expect(snoop.Create(ctx, tok)).To(Succeed())
			var conds []metav1.Condition
			Eventually(func(g Gomega) {
				conds = getToken(ns, name).Status.Conditions
				g.Expect(conds).To(ContainElement(HaveField("Type", keymintv1alpha1.ApiTokenConditionReady)))
			}).Should(Succeed())
			for i := range conds {
				conds[i].LastTransitionTime = metav1.Time{}
			}
			return conds
		}
		exists, missing := statusOf("probe-exists", "billing"), statusOf("probe-missing", "nobody")
		Expect(exists).To(Equal(missing), "a user that exists and one that does not look alike")
		Expect(seen.all()).To(BeEmpty())
		for _, c := range exists {
			Expect(c.Message).NotTo(Or(ContainSubstring("admin:write"), ContainSubstring("does not exist")), c.Type)
		}
		Expect(meta.FindStatusCondition(exists, keymintv1alpha1.ApiTokenConditionReady).Reason).To(Equal(keymintv1alpha1.ApiTokenReasonRevokedBySpec))
		Expect(meta.FindStatusCondition(exists, keymintv1alpha1.ApiTokenConditionRequestGranted).Status).To(Equal(metav1.ConditionUnknown))
	})

	It("mints nothing while the requester webhook can be skipped, nor for a record forged meanwhile", func() {
		Expect(k8sClient.Create(ctx, serviceUser(ns, "billing", "payments"))).To(Succeed())
		// Anyone who reaches keymint's webhook port can have it sign a record
		// for an identity of their choosing: an AdmissionReview of their own.
		forgedAt := time.Now()
		forged := forgeRecord(apiToken(ns, "t", "billing"), authenticationv1.UserInfo{Username: "kubernetes-admin", Groups: []string{"system:masters"}})
		Expect(forged).To(HaveKey(keymintv1alpha1.RequesterSignatureAnnotation))
		withForged := func() *keymintv1alpha1.ApiToken {
			tok := apiToken(ns, "t", "billing")
			tok.Annotations = forged
			return tok
		}

		// The mutating webhook skipped (its configuration gone, or a later
		// mutating webhook planting the record): the validating webhook,
		// which runs after every mutation, refuses the record.
		restoreMutating := deleteForAWhile(&admissionregistrationv1.MutatingWebhookConfiguration{}, testenv.RequesterWebhookName)
		Eventually(func() string {
			err := k8sClient.Create(ctx, withForged())
			if err == nil {
				Expect(k8sClient.Delete(ctx, withForged())).To(Succeed())
				return ""
			}
			return err.Error()
		}).Should(ContainSubstring(`annotation keymint.io/requester is not the record keymint's requester webhook writes for this request`))

		// Both webhooks skipped (configurations deleted, as only a cluster
		// admin can): the record gets in, and keymint, which reads its
		// webhook's configuration before minting, mints nothing.
		restoreValidating := deleteForAWhile(&admissionregistrationv1.ValidatingWebhookConfiguration{}, "validating-webhook-configuration")
		Eventually(func() error { return k8sClient.Create(ctx, withForged()) }).Should(Succeed())
		Eventually(func(g Gomega) {
			t := getToken(ns, "t")
			g.Expect(t.Annotations).To(HaveKeyWithValue(keymintv1alpha1.RequesterAnnotation, forged[keymintv1alpha1.RequesterAnnotation]), "stored past the webhooks")
			c := meta.FindStatusCondition(t.Status.Conditions, keymintv1alpha1.ApiTokenConditionAuthorized)
			g.Expect(c).NotTo(BeNil())
			g.Expect(c.Reason).To(Equal(keymintv1alpha1.ApiTokenReasonRequesterWebhookNotEnforced))
			g.Expect(c.Message).To(ContainSubstring(`MutatingWebhookConfiguration "mutating-webhook-configuration" does not exist`))
		}).Should(Succeed())
		Expect(getToken(ns, "t").Status.TokenHash).To(BeEmpty())

		// Restored: a record signed before the configuration existed is not
		// trusted. (Both times are in whole seconds: restore in a later
		// second than the forgery, as any real window would be.)
		time.Sleep(time.Until(forgedAt.Truncate(time.Second).Add(time.Second)))
		restoreMutating()
		restoreValidating()
		Eventually(func(g Gomega) {
			c := meta.FindStatusCondition(getToken(ns, "t").Status.Conditions, keymintv1alpha1.ApiTokenConditionAuthorized)
			g.Expect(c.Reason).To(Equal(keymintv1alpha1.ApiTokenReasonNoRequesterRecord))
			g.Expect(c.Message).To(ContainSubstring("signed before keymint's requester webhook configuration was created"))
		}).Should(Succeed())
		Consistently(func() string { return getToken(ns, "t").Status.TokenHash }, time.Second).Should(BeEmpty())

		// Written again through the webhooks, by a user who may mint it:
		// recorded for that user, minted.
		Eventually(func(g Gomega) {
			g.Expect(update(k8sClient, ns, "t", func(t *keymintv1alpha1.ApiToken) {
				t.Annotations["keymint.io/requested"] = fmt.Sprint(time.Now().UnixNano())
			})).To(Succeed())
			g.Expect(getToken(ns, "t").Annotations[keymintv1alpha1.RequesterAnnotation]).NotTo(ContainSubstring("kubernetes-admin"))
		}).Should(Succeed())
		waitReady(ns, "t")
	})
})

// deleteForAWhile deletes the cluster-scoped object name (read into obj)
// and returns what creates it again, as it was; the spec's cleanup does too.
func deleteForAWhile(obj client.Object, name string) (restore func()) {
	GinkgoHelper()
	Expect(k8sClient.Get(ctx, types.NamespacedName{Name: name}, obj)).To(Succeed())
	Expect(k8sClient.Delete(ctx, obj)).To(Succeed())
	restore = func() {
		c := obj.DeepCopyObject().(client.Object)
		c.SetResourceVersion("")
		c.SetUID("")
		c.SetCreationTimestamp(metav1.Time{})
		err := k8sClient.Create(ctx, c)
		Expect(err == nil || apierrors.IsAlreadyExists(err)).To(BeTrue(), "%v", err)
	}
	DeferCleanup(restore)
	return restore
}

// forgeRecord posts an AdmissionReview of its own making, for user, to
// keymint's requester webhook, as any pod that reaches its port could, and
// returns the annotations it answers with.
func forgeRecord(tok *keymintv1alpha1.ApiToken, user authenticationv1.UserInfo) map[string]string {
	GinkgoHelper()
	tok.APIVersion, tok.Kind = keymintv1alpha1.GroupVersion.String(), "ApiToken"
	raw, err := json.Marshal(tok)
	Expect(err).NotTo(HaveOccurred())
	review := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: "forged", Operation: admissionv1.Create, UserInfo: user, Namespace: tok.Namespace, Name: tok.Name,
			Kind:     metav1.GroupVersionKind{Group: "keymint.io", Version: "v1alpha1", Kind: "ApiToken"},
			Resource: metav1.GroupVersionResource{Group: "keymint.io", Version: "v1alpha1", Resource: "apitokens"},
			Object:   runtime.RawExtension{Raw: raw},
		},
	}
	body, err := json.Marshal(review)
	Expect(err).NotTo(HaveOccurred())
	pool := x509.NewCertPool()
	wh := testEnv.WebhookInstallOptions()
	Expect(pool.AppendCertsFromPEM(wh.LocalServingCAData)).To(BeTrue())
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	resp, err := hc.Post(fmt.Sprintf("https://%s/mutate-keymint-io-v1alpha1-apitoken", net.JoinHostPort(wh.LocalServingHost, fmt.Sprint(wh.LocalServingPort))),
		"application/json", bytes.NewReader(body))
	Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	var answer admissionv1.AdmissionReview
	Expect(json.NewDecoder(resp.Body).Decode(&answer)).To(Succeed())
	Expect(answer.Response.Allowed).To(BeTrue())
	var ops []struct {
		Path  string            `json:"path"`
		Value map[string]string `json:"value"`
	}
	Expect(json.Unmarshal(answer.Response.Patch, &ops)).To(Succeed())
	Expect(ops).To(HaveLen(1))
	return ops[0].Value
}

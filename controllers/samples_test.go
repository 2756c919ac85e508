package controllers_test

import (
	"os"
	"path/filepath"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/testenv"
)

var _ = Describe("config/samples", func() {
	It("apply as shipped and give the tokens their documented lifetimes", func() {
		root, err := testenv.RepoRoot()
		Expect(err).NotTo(HaveOccurred())
		ns := newNamespace()
		for _, file := range []string{"keymint_v1alpha1_serviceuser.yaml", "keymint_v1alpha1_apitoken.yaml"} {
			raw, err := os.ReadFile(filepath.Join(root, "config", "samples", file))
			Expect(err).NotTo(HaveOccurred())
			for _, doc := range strings.Split(string(raw), "\n---\n") {
				obj := &unstructured.Unstructured{}
				Expect(yaml.Unmarshal([]byte(doc), &obj.Object)).To(Succeed())
				obj.SetNamespace(ns)
				Expect(k8sClient.Create(ctx, obj)).To(Succeed(), "%s in %s", obj.GetName(), file)
			}
		}

		plain, prod := issued(ns, "billing-exporter-prod")
		Expect(plain).To(HavePrefix("billing_"))
		Expect(prod.Status.SecretName).To(Equal("billing-exporter-token"))
		Expect(prod.Status.ExpiresAt.Time).To(Equal(prod.Status.IssuedAt.Add(30*24*time.Hour)), "the user's defaultLifetime")
		Expect(prod.Status.NextRotationAt.Time).To(Equal(prod.Status.IssuedAt.Add(25 * 24 * time.Hour)))

		_, backfill := issued(ns, "billing-backfill")
		Expect(backfill.Status.ExpiresAt.Time).To(Equal(backfill.Status.IssuedAt.Add(7 * 24 * time.Hour)))
	})

	It("the policies sample applies as shipped: its token waits for approval, and erin's approval mints it", func() {
		root, err := testenv.RepoRoot()
		Expect(err).NotTo(HaveOccurred())
		ns := newNamespace()
		raw, err := os.ReadFile(filepath.Join(root, "config", "samples", "keymint_v1alpha1_policies.yaml"))
		Expect(err).NotTo(HaveOccurred())
		carol, _ := minter(ns, "carol", "reports-api")
		for _, doc := range strings.Split(string(raw), "\n---\n") {
			obj := &unstructured.Unstructured{}
			Expect(yaml.Unmarshal([]byte(doc), &obj.Object)).To(Succeed())
			obj.SetNamespace(ns)
			c := k8sClient
			if obj.GetKind() == "ApiToken" {
				c = carol // the requester, as a developer would
			}
			Expect(c.Create(ctx, obj)).To(Succeed(), "%s %s", obj.GetKind(), obj.GetName())
		}
		expectCondition(ns, "reports-publisher", keymintv1alpha1.ApiTokenConditionApproved, metav1.ConditionFalse, keymintv1alpha1.ApiTokenReasonPending)
		Expect(decide(actingAs("erin"), ns, "reports-publisher", "approve", "")).To(Succeed())
		_, tok := issued(ns, "reports-publisher")
		Expect(tok.Status.Approval.By).To(Equal("erin"))
	})
})

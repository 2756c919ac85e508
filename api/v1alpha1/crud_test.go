package v1alpha1_test

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

var _ = Describe("The installed CRDs", func() {
	It("store, return and delete a ServiceUser and an ApiToken", func() {
		user := &keymintv1alpha1.ServiceUser{
			ObjectMeta: metav1.ObjectMeta{Name: "ci-bot", Namespace: "default"},
			Spec:       keymintv1alpha1.ServiceUserSpec{DisplayName: "CI bot"},
		}
		token := &keymintv1alpha1.ApiToken{
			ObjectMeta: metav1.ObjectMeta{Name: "ci-bot-deploy", Namespace: "default"},
			Spec:       keymintv1alpha1.ApiTokenSpec{ServiceUser: "ci-bot"},
		}
		for _, obj := range []client.Object{user, token} {
			Expect(k8sClient.Create(ctx, obj)).To(Succeed())
		}

		gotUser := &keymintv1alpha1.ServiceUser{}
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(user), gotUser)).To(Succeed())
		Expect(gotUser.Spec.DisplayName).To(Equal("CI bot"))
		gotToken := &keymintv1alpha1.ApiToken{}
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(token), gotToken)).To(Succeed())
		Expect(gotToken.Spec.ServiceUser).To(Equal("ci-bot"))

		for _, obj := range []client.Object{token, user} {
			Expect(k8sClient.Delete(ctx, obj)).To(Succeed())
			err := k8sClient.Get(ctx, client.ObjectKeyFromObject(obj), obj)
			Expect(apierrors.IsNotFound(err)).To(BeTrue(), "%s still readable after delete: %v", obj.GetName(), err)
		}
	})

	It("advertise the short names and category kubectl uses", func() {
		disco, err := discovery.NewDiscoveryClientForConfig(cfg)
		Expect(err).NotTo(HaveOccurred())
		resources, err := disco.ServerResourcesForGroupVersion(keymintv1alpha1.GroupVersion.String())
		Expect(err).NotTo(HaveOccurred())
		byName := map[string]metav1.APIResource{}
		for _, r := range resources.APIResources {
			byName[r.Name] = r
		}
		Expect(byName).To(HaveKey("serviceusers"))
		Expect(byName).To(HaveKey("apitokens"))
		Expect(byName["serviceusers"].ShortNames).To(ConsistOf("su"))
		Expect(byName["apitokens"].ShortNames).To(ConsistOf("apitok"))
		Expect(byName["serviceusers"].Categories).To(ContainElement("keymint"))
		Expect(byName["apitokens"].Categories).To(ContainElement("keymint"))
		Expect(byName["serviceusers"].Namespaced).To(BeTrue())
		Expect(byName["apitokens"].Namespaced).To(BeTrue())
	})
})

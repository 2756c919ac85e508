package controllers_test

import (
	"encoding/json"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/testenv"
)

// newNamespace creates a namespace of its own for one spec.
func newNamespace() string {
	GinkgoHelper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "keymint-test-"}}
	Expect(k8sClient.Create(ctx, ns)).To(Succeed())
	return ns.Name
}

// createUser creates a ServiceUser that may grant links:read and
// links:write, unless opts say otherwise.
func createUser(ns, name string, opts ...testenv.ServiceUserOption) *keymintv1alpha1.ServiceUser {
	GinkgoHelper()
	u := testenv.ServiceUser(ns, name, append([]testenv.ServiceUserOption{testenv.WithPermissions("links:read", "links:write")}, opts...)...)
	Expect(k8sClient.Create(ctx, u)).To(Succeed())
	return u
}

func createToken(ns, name, user string, opts ...testenv.ApiTokenOption) *keymintv1alpha1.ApiToken {
	GinkgoHelper()
	t := testenv.ApiToken(ns, name, user, opts...)
	Expect(k8sClient.Create(ctx, t)).To(Succeed())
	return t
}

func getToken(ns, name string) *keymintv1alpha1.ApiToken {
	GinkgoHelper()
	t := &keymintv1alpha1.ApiToken{}
	Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, t)).To(Succeed())
	return t
}

func getSecret(ns, name string) (*corev1.Secret, error) {
	s := &corev1.Secret{}
	err := k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, s)
	return s, err
}

// issued waits until the token is Ready with a token in its Secret, and
// returns the token the Secret holds and the ApiToken.
func issued(ns, name string) (string, *keymintv1alpha1.ApiToken) {
	GinkgoHelper()
	var plain string
	var tok *keymintv1alpha1.ApiToken
	Eventually(func() (err error) {
		plain, tok, err = testenv.Issued(ctx, k8sClient, ns, name)
		return err
	}).Should(Succeed())
	return plain, tok
}

// rotatedFrom waits until the Secret holds a token other than old, and
// returns it and the ApiToken.
func rotatedFrom(ns, name, old string) (string, *keymintv1alpha1.ApiToken) {
	GinkgoHelper()
	var plain string
	var tok *keymintv1alpha1.ApiToken
	Eventually(func(g Gomega) {
		plain, tok = issued(ns, name)
		g.Expect(plain).NotTo(Equal(old))
	}).Should(Succeed())
	return plain, tok
}

// expectCondition waits until the ApiToken has the condition with the status
// and reason.
func expectCondition(ns, name, condType string, status metav1.ConditionStatus, reason string) *keymintv1alpha1.ApiToken {
	GinkgoHelper()
	var tok *keymintv1alpha1.ApiToken
	Eventually(func(g Gomega) {
		tok = &keymintv1alpha1.ApiToken{}
		g.Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, tok)).To(Succeed())
		c := meta.FindStatusCondition(tok.Status.Conditions, condType)
		g.Expect(c).NotTo(BeNil())
		g.Expect(c.Status).To(Equal(status))
		g.Expect(c.Reason).To(Equal(reason))
		g.Expect(c.ObservedGeneration).To(Equal(tok.Generation))
	}).Should(Succeed())
	return tok
}

// mutateToken applies a change to an ApiToken the way kubectl edit would,
// retrying on conflicts with the controllers' status writes.
func mutateToken(ns, name string, mutate func(*keymintv1alpha1.ApiToken)) {
	GinkgoHelper()
	Eventually(func() error {
		t := getToken(ns, name)
		mutate(t)
		return k8sClient.Update(ctx, t)
	}).Should(Succeed())
}

func mutateUser(ns, name string, mutate func(*keymintv1alpha1.ServiceUser)) {
	GinkgoHelper()
	Eventually(func() error {
		u := &keymintv1alpha1.ServiceUser{}
		if err := k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, u); err != nil {
			return err
		}
		mutate(u)
		return k8sClient.Update(ctx, u)
	}).Should(Succeed())
}

// poke makes the controllers look at a token again, as any edit would. Specs
// that step the fake clock use it: the real work queue waits real time.
func poke(ns, name string) {
	GinkgoHelper()
	mutateToken(ns, name, func(t *keymintv1alpha1.ApiToken) {
		if t.Annotations == nil {
			t.Annotations = map[string]string{}
		}
		t.Annotations["test.keymint.io/poke"] = time.Now().Format(time.RFC3339Nano)
	})
}

// eventsFor returns the reasons of the Events about an object, oldest first,
// one per occurrence: the events recorder folds repeats of an Event into one
// object and counts them in its series.
func eventsFor(ns, name string) []string {
	GinkgoHelper()
	events, err := testenv.EventsAbout(ctx, k8sClient, ns, "", name)
	Expect(err).NotTo(HaveOccurred())
	return testenv.Reasons(events)
}

// eventNotes returns the notes of every Event in a namespace.
func eventNotes(ns string) []string {
	GinkgoHelper()
	var list eventsv1.EventList
	Expect(k8sClient.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
	var notes []string
	for _, e := range list.Items {
		notes = append(notes, e.Note)
	}
	return notes
}

// statusJSON is the ApiToken status as kubectl get -o json shows it.
func statusJSON(t *keymintv1alpha1.ApiToken) string {
	GinkgoHelper()
	b, err := json.Marshal(t.Status)
	Expect(err).NotTo(HaveOccurred())
	return string(b)
}

func isNotFound(err error) bool { return apierrors.IsNotFound(err) }

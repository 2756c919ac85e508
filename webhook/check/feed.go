package check

// feed.go: the API server → index. ApiTokens come through a reflector of the
// check server's own, straight into the index: no informer keeps the
// objects, so a replica holds a token as its index entry and nothing more.
// ServiceUsers (one per many tokens) come from the manager's cache, which
// the admission webhooks read too.

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

// FeedPageSize is how many ApiTokens one page of a List holds, when the API
// server serves a List rather than a stream (WatchList).
const FeedPageSize = 500

// Feed keeps the index in step with the ApiTokens (a reflector of its own)
// and the ServiceUsers (the manager's cache), and calls each of gone with
// the key of a deleted ApiToken, so that what other parts keep per token
// goes with it. track, when set, wraps the ApiTokens' ListerWatcher (the
// freshness tracker does). The returned function reports whether both
// kinds have been listed once: the check server is ready only then, so it
// never refuses a good token for not having seen it.
func Feed(ctx context.Context, mgr ctrl.Manager, ix *Index, track func(toolscache.ListerWatcher) toolscache.ListerWatcher, gone ...func(types.NamespacedName)) (synced func() bool, err error) {
	users, err := mgr.GetCache().GetInformer(ctx, &keymintv1alpha1.ServiceUser{})
	if err != nil {
		return nil, err
	}
	userReg, err := users.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { upsertUser(ix, obj) },
		UpdateFunc: func(_, obj any) { upsertUser(ix, obj) },
		DeleteFunc: func(obj any) {
			if u, ok := unwrap(obj).(*keymintv1alpha1.ServiceUser); ok {
				ix.DeleteUser(types.NamespacedName{Namespace: u.Namespace, Name: u.Name})
			}
		},
	})
	if err != nil {
		return nil, err
	}
	c, err := client.NewWithWatch(mgr.GetConfig(), client.Options{Scheme: mgr.GetScheme(), Mapper: mgr.GetRESTMapper(), HTTPClient: mgr.GetHTTPClient()})
	if err != nil {
		return nil, err
	}
	rc, err := TokenRESTClient(mgr.GetConfig(), mgr.GetHTTPClient(), mgr.GetScheme())
	if err != nil {
		return nil, err
	}
	var lw toolscache.ListerWatcher = TokenListerWatcher(c, rc)
	if track != nil {
		lw = track(lw)
	}
	store := &tokenStore{ix: ix, gone: gone}
	r := toolscache.NewReflectorWithOptions(lw, &keymintv1alpha1.ApiToken{}, store, toolscache.ReflectorOptions{Name: "check index: ApiTokens"})
	if err := mgr.Add(everyReplica(func(ctx context.Context) error {
		r.RunWithContext(ctx)
		return nil
	})); err != nil {
		return nil, err
	}
	return func() bool { return store.synced.Load() && userReg.HasSynced() }, nil
}

// everyReplica is a runnable the manager starts on every replica, leader
// or not.
type everyReplica func(ctx context.Context) error

func (f everyReplica) Start(ctx context.Context) error { return f(ctx) }
func (everyReplica) NeedLeaderElection() bool          { return false }

// TokenRESTClient is a REST client of keymint.io/v1alpha1 that reads JSON,
// for WatchTokens.
func TokenRESTClient(cfg *rest.Config, hc *http.Client, scheme *runtime.Scheme) (rest.Interface, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.GroupVersion, cfg.APIPath = &keymintv1alpha1.GroupVersion, "/apis"
	cfg.ContentType, cfg.AcceptContentTypes = runtime.ContentTypeJSON, runtime.ContentTypeJSON
	cfg.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	return rest.RESTClientForConfigAndClient(cfg, hc)
}

// TokenListerWatcher lists ApiTokens with c and watches them with rc
// (WatchTokens; nil: with c). A List is read page by page, each token
// stripped as it comes (StripToken), so what is held at once is the
// stripped tokens, not the API server's whole answer decoded. A watch
// (which streams the first list too, where kube-apiserver has WatchList)
// decodes only what StripToken keeps.
func TokenListerWatcher(c client.WithWatch, rc rest.Interface) toolscache.ListerWatcher {
	return &toolscache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			all := &keymintv1alpha1.ApiTokenList{}
			opts.Limit = FeedPageSize
			for {
				page := &keymintv1alpha1.ApiTokenList{}
				if err := c.List(ctx, page, &client.ListOptions{Raw: &opts, Limit: opts.Limit, Continue: opts.Continue}); err != nil {
					return nil, err
				}
				if all.ResourceVersion == "" {
					// A paged list is one snapshot: the first page's version.
					all.ResourceVersion = page.ResourceVersion
				}
				for i := range page.Items {
					StripToken(&page.Items[i])
				}
				all.Items = append(all.Items, page.Items...)
				if page.Continue == "" {
					return all, nil
				}
				// Later pages are read at the snapshot the continue token
				// names; the first page's version options must go.
				opts.Continue, opts.ResourceVersion, opts.ResourceVersionMatch = page.Continue, "", ""
			}
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			if rc != nil {
				return WatchTokens(ctx, rc, opts)
			}
			return c.Watch(ctx, &keymintv1alpha1.ApiTokenList{}, &client.ListOptions{Raw: &opts})
		},
	}
}

// StripToken drops from an ApiToken what neither the index nor the verdict
// reads: metadata other than its identity, version and deletion, the
// description and Secret name (so that tokens applied from one template
// share one spec in the index), and every status condition but Revoked.
// It returns t.
func StripToken(t *keymintv1alpha1.ApiToken) *keymintv1alpha1.ApiToken {
	t.ObjectMeta = metav1.ObjectMeta{
		Name: t.Name, Namespace: t.Namespace, UID: t.UID, ResourceVersion: t.ResourceVersion,
		Generation: t.Generation, DeletionTimestamp: t.DeletionTimestamp,
	}
	t.Spec.Description, t.Spec.SecretName = "", ""
	var revoked []metav1.Condition
	if c := meta.FindStatusCondition(t.Status.Conditions, keymintv1alpha1.ApiTokenConditionRevoked); c != nil {
		revoked = []metav1.Condition{{Type: c.Type, Status: c.Status}}
	}
	t.Status.Conditions = revoked
	return t
}

// stripAny is StripToken as a client-go transform.
func stripAny(obj any) (any, error) {
	if t, ok := obj.(*keymintv1alpha1.ApiToken); ok {
		return StripToken(t), nil
	}
	return obj, nil
}

// tokenStore is the reflector's store: it keeps nothing but the index.
// (The reflector calls it from one goroutine.)
type tokenStore struct {
	ix     *Index
	gone   []func(types.NamespacedName)
	synced atomic.Bool
}

var _ toolscache.TransformingStore = (*tokenStore)(nil)

// Transformer strips the tokens of a streamed list as they arrive, before
// the reflector holds them all.
func (s *tokenStore) Transformer() toolscache.TransformFunc { return stripAny }

func (s *tokenStore) Add(obj any) error    { return s.upsert(obj) }
func (s *tokenStore) Update(obj any) error { return s.upsert(obj) }

func (s *tokenStore) upsert(obj any) error {
	t, ok := obj.(*keymintv1alpha1.ApiToken)
	if !ok {
		return fmt.Errorf("the check index's store got a %T, not an ApiToken", obj)
	}
	s.ix.UpsertToken(StripToken(t))
	return nil
}

func (s *tokenStore) Delete(obj any) error {
	t, ok := unwrap(obj).(*keymintv1alpha1.ApiToken)
	if !ok {
		return fmt.Errorf("the check index's store got a %T, not an ApiToken", obj)
	}
	s.delete(types.NamespacedName{Namespace: t.Namespace, Name: t.Name})
	return nil
}

func (s *tokenStore) delete(key types.NamespacedName) {
	s.ix.DeleteToken(key)
	for _, g := range s.gone {
		g(key)
	}
}

// Replace is a (re)list: tokens the index holds and the list lacks were
// deleted meanwhile.
func (s *tokenStore) Replace(list []any, _ string) error {
	listed := make(map[types.NamespacedName]struct{}, len(list))
	for _, obj := range list {
		t, ok := obj.(*keymintv1alpha1.ApiToken)
		if !ok {
			return fmt.Errorf("the check index's store got a %T, not an ApiToken", obj)
		}
		listed[types.NamespacedName{Namespace: t.Namespace, Name: t.Name}] = struct{}{}
	}
	for _, key := range s.ix.TokenKeys() {
		if _, ok := listed[key]; !ok {
			s.delete(key)
		}
	}
	for _, obj := range list {
		if err := s.upsert(obj); err != nil {
			return err
		}
	}
	s.synced.Store(true)
	return nil
}

// The reflector reads nothing back from its store.
func (s *tokenStore) List() []any                                { return nil }
func (s *tokenStore) ListKeys() []string                         { return nil }
func (s *tokenStore) Get(any) (item any, exists bool, err error) { return nil, false, nil }
func (s *tokenStore) GetByKey(string) (item any, exists bool, err error) {
	return nil, false, nil
}
func (s *tokenStore) Resync() error { return nil }

func upsertUser(ix *Index, obj any) {
	if u, ok := obj.(*keymintv1alpha1.ServiceUser); ok {
		ix.UpsertUser(u)
	}
}

// unwrap returns the object inside a tombstone, for deletes the informer saw
// only after a relist.
func unwrap(obj any) any {
	if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		return d.Obj
	}
	return obj
}

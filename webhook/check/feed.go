package check

// feed.go: informers → index.

import (
	"context"

	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

// Feed keeps the index in step with the ApiTokens and ServiceUsers in the
// cache, and calls each of gone with the key of a deleted ApiToken, so that
// what other parts keep per token goes with it. The returned function
// reports whether both kinds have been listed once: the check server is
// ready only then, so it never refuses a good token for not having seen it.
func Feed(ctx context.Context, c cache.Cache, ix *Index, gone ...func(types.NamespacedName)) (synced func() bool, err error) {
	tokens, err := c.GetInformer(ctx, &keymintv1alpha1.ApiToken{})
	if err != nil {
		return nil, err
	}
	users, err := c.GetInformer(ctx, &keymintv1alpha1.ServiceUser{})
	if err != nil {
		return nil, err
	}
	tokenReg, err := tokens.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { upsertToken(ix, obj) },
		UpdateFunc: func(_, obj any) { upsertToken(ix, obj) },
		DeleteFunc: func(obj any) {
			if t, ok := unwrap(obj).(*keymintv1alpha1.ApiToken); ok {
				key := types.NamespacedName{Namespace: t.Namespace, Name: t.Name}
				ix.DeleteToken(key)
				for _, g := range gone {
					g(key)
				}
			}
		},
	})
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
	return func() bool { return tokenReg.HasSynced() && userReg.HasSynced() }, nil
}

func upsertToken(ix *Index, obj any) {
	if t, ok := obj.(*keymintv1alpha1.ApiToken); ok {
		ix.UpsertToken(t)
	}
}

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

// Field indexes on ApiTokens (by ServiceUser, by every hash a status names) and the lookups through them.

package controllers

import (
	"context"

	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

// ServiceUserIndex is the ApiToken field index on spec.serviceUser.
const ServiceUserIndex = "spec.serviceUser"

// TokenHashIndex is the ApiToken field index on every hash its status names,
// current and in a grace period: one hash belongs to one ApiToken.
const TokenHashIndex = "status.tokenHashes"

// SetupIndexes registers the field indexes the controllers use.
func SetupIndexes(ctx context.Context, indexer client.FieldIndexer) error {
	if err := indexer.IndexField(ctx, &keymintv1alpha1.ApiToken{}, ServiceUserIndex, ServiceUserIndexFunc); err != nil {
		return err
	}
	return indexer.IndexField(ctx, &keymintv1alpha1.ApiToken{}, TokenHashIndex, TokenHashIndexFunc)
}

// ServiceUserIndexFunc is ServiceUserIndex's function: the ServiceUser an
// ApiToken names. obj must be an ApiToken.
func ServiceUserIndexFunc(obj client.Object) []string {
	return []string{obj.(*keymintv1alpha1.ApiToken).Spec.ServiceUser}
}

// TokenHashIndexFunc is TokenHashIndex's function: the hashes an ApiToken's
// status names (StatusHashes). obj must be an ApiToken.
func TokenHashIndexFunc(obj client.Object) []string {
	return StatusHashes(&obj.(*keymintv1alpha1.ApiToken).Status)
}

// StatusHashes lists the hashes a status names, current first: the values
// of TokenHashIndex.
func StatusHashes(st *keymintv1alpha1.ApiTokenStatus) []string {
	var out []string
	if st.TokenHash != "" {
		out = append(out, st.TokenHash)
	}
	for _, p := range st.PreviousTokens {
		out = append(out, p.TokenHash)
	}
	return out
}

// othersClaiming lists the ApiTokens other than uid whose status names one
// of the hashes (from the cache's hash index).
func (r *ApiTokenReconciler) othersClaiming(ctx context.Context, uid types.UID, hashes []string) ([]keymintv1alpha1.ApiToken, error) {
	var out []keymintv1alpha1.ApiToken
	for _, h := range hashes {
		var list keymintv1alpha1.ApiTokenList
		if err := r.Client.List(ctx, &list, client.MatchingFields{TokenHashIndex: h}); err != nil {
			return nil, err
		}
		for _, o := range list.Items {
			if o.UID != uid {
				out = append(out, o)
			}
		}
	}
	return out, nil
}

// claimants maps an ApiToken to the other ApiTokens whose status names one
// of its hashes.
func (r *ApiTokenReconciler) claimants(ctx context.Context, obj client.Object) []ctrl.Request {
	tok := obj.(*keymintv1alpha1.ApiToken)
	others, err := r.othersClaiming(ctx, tok.UID, StatusHashes(&tok.Status))
	if err != nil {
		logf.FromContext(ctx).Error(err, "Listing the ApiTokens that claim a hash", "apiToken", tok.Name)
		return nil
	}
	reqs := make([]ctrl.Request, len(others))
	for i, o := range others {
		reqs[i] = ctrl.Request{NamespacedName: types.NamespacedName{Namespace: o.Namespace, Name: o.Name}}
	}
	return reqs
}

// tokensOfUser maps a ServiceUser to the ApiTokens that name it.
func (r *ApiTokenReconciler) tokensOfUser(ctx context.Context, obj client.Object) []ctrl.Request {
	var tokens keymintv1alpha1.ApiTokenList
	if err := r.Client.List(ctx, &tokens, client.InNamespace(obj.GetNamespace()), client.MatchingFields{ServiceUserIndex: obj.GetName()}); err != nil {
		logf.FromContext(ctx).Error(err, "Listing the tokens of ServiceUser", "serviceUser", obj.GetName())
		return nil
	}
	reqs := make([]ctrl.Request, len(tokens.Items))
	for i, t := range tokens.Items {
		reqs[i] = ctrl.Request{NamespacedName: types.NamespacedName{Namespace: t.Namespace, Name: t.Name}}
	}
	return reqs
}

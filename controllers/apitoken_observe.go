// Gather: everything one ApiToken reconcile reads (token, ServiceUser, Secret, claims, requester), as one observation.

package controllers

import (
	"context"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/requester"
	"github.com/keymint/keymint/internal/secretrecord"
	"github.com/keymint/keymint/internal/tokenstate"
)

// observation is everything a decision and a status depend on, read from
// the API server and the clock.
type observation struct {
	// Namespace and Name are the ApiToken's.
	Namespace, Name string
	Spec            *keymintv1alpha1.ApiTokenSpec
	// RotateRequest is the keymint.io/rotate annotation's value.
	RotateRequest string
	User          tokenstate.User
	// Conflict is true when the Secret name is taken by a Secret this
	// ApiToken does not own.
	Conflict bool
	// Current is the token the status names, or the one a signed Secret
	// record newer than the status names (Adopted).
	Current tokenstate.Token
	// Verdict is Current's state at Now: the reconcile's one evaluation of
	// the token it found (evaluate).
	Verdict tokenstate.Verdict
	// Hash, Display, Serial, RotatedAt and RotationRequest complete Current's
	// record.
	Hash            string
	Display         string
	Serial          int64
	RotatedAt       *time.Time
	RotationRequest string
	// Adopted is true when Current comes from the Secret's signed record.
	Adopted bool
	// Delivered is true when the Secret holds Current's token.
	Delivered bool
	// SecretHolds is true when the Secret has any token data or record.
	SecretHolds bool
	// Claimed is true when another ApiToken's status names one of Current's
	// hashes.
	Claimed bool
	// Trust is whether keymint may act for the requester the ApiToken's
	// record names (requester.Webhook.Trust); nil when this reconcile's
	// outcome does not depend on it, so it was not asked (needsRequester).
	Trust *requester.Trust
	// Auth answers whether the requester may have the decided token minted
	// now; nil when this reconcile asked nothing.
	Auth *authorization
	// Approval answers whether the token, as requested now, is approved,
	// for a user that requires approval; nil when this reconcile asked
	// nothing (the status records the spec's approval, and nothing mints).
	Approval *approvalAnswer
	// OurRecord is the serial of a record keymint signed in the Secret and
	// that was not adopted (a token minted after a revocation whose status
	// write was lost); zero when none. A new token's serial passes it, and
	// replacing it is no sign of tampering.
	OurRecord int64
	// ExpiryWarning is how long before expiry the token is ExpiringSoon:
	// its user's tokenPolicy.expiryWarning, else the manager's default.
	ExpiryWarning time.Duration
	Now           time.Time
}

// secretState is what the token Secret holds, as far as a reconcile trusts
// it.
type secretState = secretrecord.Contents

// observe builds the observation of tok, its user (nil: missing) and what
// its Secret holds, at now, with the approval asked before (nil when none
// was), and evaluates the token it finds.
func observe(tok *keymintv1alpha1.ApiToken, user *keymintv1alpha1.ServiceUser, sec secretState, conflict bool, approval *approvalAnswer, now time.Time) observation {
	o := observation{
		Namespace:     tok.Namespace,
		Name:          tok.Name,
		Spec:          &tok.Spec,
		RotateRequest: tok.Annotations[keymintv1alpha1.RotateAnnotation],
		User:          tokenstate.UserFrom(user),
		Conflict:      conflict,
		Approval:      approval,
		Now:           now,
	}
	observeToken(&o, &tok.Status, sec)
	o.Current.Deleting = tok.DeletionTimestamp != nil
	if approval != nil && approval.Approved {
		o.Current.Approved = true
	}
	o.evaluate()
	return o
}

// evaluate sets the verdict of the token observed. Everything after reads
// it, never tokenstate.Evaluate again for the same token.
func (o *observation) evaluate() {
	o.Verdict = tokenstate.Evaluate(&o.Current, &o.User, o.Now)
}

// trusted reports whether keymint may act for the ApiToken's requester.
func (o *observation) trusted() bool {
	return o.Trust != nil && o.Trust.Problem == "" && o.Trust.NotEnforced == ""
}

// observeToken fills in the token part of an observation: the status's
// token, unless the Secret carries a record keymint signed for this ApiToken
// with a higher serial than the status has seen. Nothing else in a Secret is
// evidence of a token.
func observeToken(o *observation, st *keymintv1alpha1.ApiTokenStatus, sec secretState) {
	o.SecretHolds = sec.Holds
	// A status that has named a token and names none now was revoked (or
	// never written after an un-revoke): nothing minted before is adopted
	// into it; a fresh token is minted instead.
	if rec := sec.Signed; rec != nil && rec.Serial > st.Serial && (st.Serial == 0 || st.TokenHash != "") {
		rec.Previous = namedPrevious(rec.Previous, st)
		o.Current = tokenFromRecord(o.Spec, rec)
		// What the status records beside any token still holds: the
		// reports of leaked hashes, the line's last use, the approval.
		o.Current.MarkReported(rec.Hash, st.LeakReports)
		o.Current.Approved = tokenstate.Approved(o.Spec, st)
		if st.LastUsedAt != nil {
			o.Current.AnyLastUsed, o.Current.AnyLastUsedGap = st.LastUsedAt.Time, tokenstate.RecordedGap(st)
		}
		o.Hash, o.Display, o.Serial, o.RotatedAt, o.RotationRequest = rec.Hash, rec.Display, rec.Serial, rec.RotatedAt, rec.RotationRequest
		o.Adopted, o.Delivered = true, true
		return
	}
	if sec.Signed != nil {
		o.OurRecord = sec.Signed.Serial
	}
	o.Current = tokenstate.TokenFrom(o.Spec, st)
	o.Hash, o.Display, o.Serial, o.RotationRequest = st.TokenHash, st.TokenPrefix, st.Serial, st.LastRotationRequest
	if st.RotatedAt != nil {
		t := st.RotatedAt.Time
		o.RotatedAt = &t
	}
	o.Delivered = o.Current.Issued && secretrecord.SameHash(sec.Hash, st.TokenHash)
}

// namedPrevious keeps the grace-period hashes of an adopted record that the
// status names too: the token it replaced, or ones still in grace. A record
// never brings a hash into the status by itself.
func namedPrevious(prev []secretrecord.Previous, st *keymintv1alpha1.ApiTokenStatus) []secretrecord.Previous {
	named := StatusHashes(st)
	var out []secretrecord.Previous
	for _, p := range prev {
		if slices.Contains(named, p.Hash) {
			out = append(out, p)
		}
	}
	return out
}

// tokenFromRecord is the token a record describes, as a verdict reads it.
func tokenFromRecord(spec *keymintv1alpha1.ApiTokenSpec, rec *secretrecord.Record) tokenstate.Token {
	t := tokenstate.Token{Spec: spec, Issued: true, IssuedAt: rec.IssuedAt, UserUID: rec.ServiceUserUID}
	if rec.ExpiresAt != nil {
		t.Expiry, t.Expires = *rec.ExpiresAt, true
	}
	if rec.IdleSince != nil {
		t.IdleSince = *rec.IdleSince
	}
	for _, p := range rec.Previous {
		t.Previous = append(t.Previous, tokenstate.Previous{Hash: p.Hash, IssuedAt: p.IssuedAt, ValidUntil: p.ValidUntil})
	}
	return t
}

// reads is what one reconcile read: the objects it writes back, and the
// observation built from them.
type reads struct {
	tok *keymintv1alpha1.ApiToken
	// user is the token's ServiceUser, nil when it does not exist.
	user *keymintv1alpha1.ServiceUser
	// secret is the token's Secret when this ApiToken may write it; nil
	// when there is none, or on a conflict.
	secret *corev1.Secret
	obs    observation
}

// gather reads what decide needs of tok. settled is true when there is
// nothing to do: the status for a Secret this controller just wrote is on
// its way, and brings the token back.
func (r *ApiTokenReconciler) gather(ctx context.Context, tok *keymintv1alpha1.ApiToken) (in reads, settled bool, err error) {
	in.tok = tok
	// Taken by whichever reconcile comes next, so the map holds only writes
	// whose watch event is still on its way.
	var wrote *writtenStatus
	if v, ok := r.statusWritten.LoadAndDelete(tok.UID); ok {
		w := v.(writtenStatus)
		wrote = &w
	}
	if in.user, err = r.serviceUser(ctx, tok); err != nil {
		return in, false, err
	}
	// A token never reconciled, whose first status write is not merely
	// still on its way to the cache, has nothing of keymint's outside it.
	sec, conflict, err := r.secret(ctx, tok, neverReconciled(tok) && wrote == nil)
	if err != nil {
		return in, false, err
	}
	in.secret = sec
	// An approval is asked before the token is evaluated: whether checks
	// accept it depends on it.
	var trust *requester.Trust
	var approval *approvalAnswer
	if needsApproval(tok, in.user) {
		t, err := requester.Webhook{Reader: r.APIReader, Name: r.RequesterWebhook}.Trust(ctx, r.Keyring, tok)
		if err != nil {
			return in, false, err
		}
		ans, err := r.askApproval(ctx, tok, &t)
		if err != nil {
			return in, false, err
		}
		trust, approval = &t, &ans
	}
	o := observe(tok, in.user, secretrecord.Read(sec, tok, r.Keyring), conflict, approval, r.Clock.Now())
	o.Trust = trust
	o.ExpiryWarning = r.ExpiryWarning
	if in.user != nil && in.user.Spec.TokenPolicy.ExpiryWarning != nil {
		o.ExpiryWarning = in.user.Spec.TokenPolicy.ExpiryWarning.Duration
	}
	if o.Claimed, err = r.claimedElsewhere(ctx, tok, &o); err != nil {
		return in, false, err
	}
	in.obs = o
	if !o.Adopted {
		return in, false, nil
	}
	// Right after our own Secret write, the cached ApiToken may not show
	// the status written next. When this controller wrote that status,
	// its event is on its way; else ask the API server before recovering.
	// Only while the cache still holds exactly the object that write
	// replaced: anything newer (a status someone wiped) is read live.
	if wrote != nil && wrote.replaced == tok.ResourceVersion && wrote.serial >= o.Serial {
		return in, true, nil
	}
	fresh := &keymintv1alpha1.ApiToken{}
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(tok), fresh); err != nil {
		return in, apierrors.IsNotFound(err), client.IgnoreNotFound(err)
	}
	// The status update on its way brings us back.
	return in, fresh.Status.Serial >= o.Serial, nil
}

// askRequester reads, when d's outcome depends on it, whether keymint
// trusts the requester the ApiToken's record names: one verification of
// the record, for what the status may tell and for the mint. For a mint it
// also asks whether that requester may have the token minted now.
func (r *ApiTokenReconciler) askRequester(ctx context.Context, in *reads, d decision) error {
	if !d.mints() && !needsRequester(&in.obs, d) {
		return nil
	}
	if in.obs.Trust == nil {
		// Not read yet (an approval asked for it, afresh, in gather).
		hook := requester.Webhook{Reader: r.APIReader, Name: r.RequesterWebhook}
		if !d.mints() {
			hook.Cache = r.trustCache
		}
		trust, err := hook.Trust(ctx, r.Keyring, in.tok)
		switch {
		case err != nil && d.mints():
			return err
		case err != nil:
			// Only what the status tells hangs on it: tell nothing of the
			// ServiceUser, and revoke or keep as decided. A revocation never
			// waits for a read.
			logf.FromContext(ctx).Info("Cannot tell whether the requester webhook is enforced; the status tells nothing of the ServiceUser", "error", err.Error())
			return nil
		}
		in.obs.Trust = &trust
	}
	if !d.mints() {
		return nil
	}
	trust := *in.obs.Trust
	if in.obs.User.RequireApproval && in.obs.Approval == nil {
		// Every mint of such a token is approved at that moment: a
		// scheduled rotation too, by an approver who still may.
		ans, err := r.askApproval(ctx, in.tok, &trust)
		if err != nil {
			return err
		}
		in.obs.Approval = &ans
	}
	if in.obs.unapproved() {
		return nil // nothing to authorize: nothing is minted until approved
	}
	var groups []string
	if in.user != nil {
		groups = in.user.Spec.Groups
	}
	auth, err := r.authorizeMint(ctx, in.tok, groups, trust)
	if err != nil {
		return err
	}
	in.obs.Auth = &auth
	if !auth.Allowed {
		deniedTotal.WithLabelValues("mint", auth.Reason).Inc()
	}
	return nil
}

// claimedElsewhere reports whether another ApiToken's status names one of
// the hashes this one's current token record names.
func (r *ApiTokenReconciler) claimedElsewhere(ctx context.Context, tok *keymintv1alpha1.ApiToken, o *observation) (bool, error) {
	if !o.Current.Issued {
		return false, nil
	}
	hashes := []string{o.Hash}
	for _, p := range o.Current.Previous {
		hashes = append(hashes, p.Hash)
	}
	others, err := r.othersClaiming(ctx, tok.UID, hashes)
	return len(others) > 0, err
}

// serviceUser returns the token's ServiceUser, or nil when it does not exist.
func (r *ApiTokenReconciler) serviceUser(ctx context.Context, tok *keymintv1alpha1.ApiToken) (*keymintv1alpha1.ServiceUser, error) {
	user := &keymintv1alpha1.ServiceUser{}
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: tok.Namespace, Name: tok.Spec.ServiceUser}, user)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	return user, err
}

// secret returns the token's Secret when this ApiToken owns it. A Secret of
// that name owned by nobody or by someone else is a conflict, and is never
// touched. A Secret left by an earlier ApiToken of the same name (awaiting
// garbage collection) is taken over, but its token is never reused.
//
// With fresh set (a token never reconciled), a Secret missing from the cache
// is taken as missing: the create that follows fails on a foreign one.
func (r *ApiTokenReconciler) secret(ctx context.Context, tok *keymintv1alpha1.ApiToken, fresh bool) (sec *corev1.Secret, conflict bool, err error) {
	key := types.NamespacedName{Namespace: tok.Namespace, Name: tok.SecretNameOrDefault()}
	sec = &corev1.Secret{}
	err = r.Client.Get(ctx, key, sec)
	if apierrors.IsNotFound(err) && fresh {
		// Nothing of ours can exist yet (a Secret written before a crash
		// would be labelled, so cached). A foreign Secret of that name makes
		// the create fail, and the next reconcile looks past the cache.
		return nil, false, nil
	}
	if apierrors.IsNotFound(err) {
		// The cache holds only labelled Secrets, and may not yet hold one
		// this controller just created: ask the API server, for metadata
		// only, so a foreign Secret's data is never read.
		m := &metav1.PartialObjectMetadata{}
		m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
		if err := r.APIReader.Get(ctx, key, m); err != nil {
			return nil, false, client.IgnoreNotFound(err)
		}
		if owner := metav1.GetControllerOf(m); owner == nil || owner.UID != tok.UID {
			return nil, true, nil
		}
		err = r.APIReader.Get(ctx, key, sec)
	}
	if err != nil {
		return nil, false, err
	}
	switch owner := metav1.GetControllerOf(sec); {
	case owner != nil && owner.UID == tok.UID:
		return sec, false, nil
	case owner != nil && isApiTokenRef(owner) && owner.Name == tok.Name && hasTokenLabel(sec):
		// A previous ApiToken of this name: forget its token entirely.
		stale := sec.DeepCopy()
		secretrecord.Clear(stale)
		return stale, false, nil
	}
	return nil, true, nil
}

// cacheBehind reports whether the API server holds a newer ApiToken, or
// ServiceUser, than the cache: a mint decided on the cached ApiToken could
// repeat one just made, and one authorized for the cached ServiceUser could
// miss a group added a moment ago. One read of each per mint, which is rare.
func (r *ApiTokenReconciler) cacheBehind(ctx context.Context, tok *keymintv1alpha1.ApiToken, user *keymintv1alpha1.ServiceUser) (bool, error) {
	live := func(kind, name string) (string, error) {
		m := &metav1.PartialObjectMetadata{}
		m.SetGroupVersionKind(keymintv1alpha1.GroupVersion.WithKind(kind))
		err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: tok.Namespace, Name: name}, m)
		if apierrors.IsNotFound(err) {
			return "", nil
		}
		return m.ResourceVersion, err
	}
	rv, err := live("ApiToken", tok.Name)
	if err != nil || rv != tok.ResourceVersion {
		return true, err
	}
	cached := ""
	if user != nil {
		cached = user.ResourceVersion
	}
	rv, err = live("ServiceUser", tok.Spec.ServiceUser)
	return err != nil || rv != cached, err
}

// neverReconciled reports whether no status was ever written for tok.
func neverReconciled(tok *keymintv1alpha1.ApiToken) bool {
	return len(tok.Status.Conditions) == 0 && tok.Status.Serial == 0 && tok.Status.TokenHash == ""
}

// isApiTokenRef reports whether an owner reference points at an ApiToken of
// keymint's API group (any version).
func isApiTokenRef(ref *metav1.OwnerReference) bool {
	gv, err := schema.ParseGroupVersion(ref.APIVersion)
	return err == nil && gv.Group == keymintv1alpha1.GroupVersion.Group && ref.Kind == "ApiToken"
}

func hasTokenLabel(sec *corev1.Secret) bool {
	_, ok := sec.Labels[keymintv1alpha1.TokenLabel]
	return ok
}

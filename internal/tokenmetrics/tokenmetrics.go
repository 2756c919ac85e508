// Package tokenmetrics exports what a platform team alerts on about its
// tokens: each ApiToken's expiry and how many tokens are in each state.
//
// The numbers are computed at each scrape from the controllers' cache
// with tokenstate.Evaluate, the verdict the controller and the check server
// use: no goroutine per token, no write, and a token that expired a second
// ago counts as expired before the controller has written anything. Only
// the leader fills that cache, so only the leader serves the series; alerts
// take max by() over pods so that a handover's overlap counts once.
package tokenmetrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/tokenstate"
)

// States of an ApiToken, the values of keymint_apitokens' state label. Each
// token is in exactly one, so they add up to all ApiTokens.
const (
	// StateActive: checks accept the current token, and no rotated-out one.
	StateActive = "active"
	// StateRotating: checks accept the current token and, for their grace
	// period, one or more rotated-out ones.
	StateRotating = "rotating"
	// StateExpired: the current token is past its effective expiry.
	StateExpired = "expired"
	// StateRevoked: spec.revoked is set or the ApiToken is being deleted.
	StateRevoked = "revoked"
	// StateDisabled: its ServiceUser is disabled.
	StateDisabled = "disabled"
	// StateOrphaned: its ServiceUser does not exist (or was deleted and
	// created again since the token was minted).
	StateOrphaned = "orphaned"
	// StateConflict: its Secret's name is taken by a Secret it does not own
	// (Ready reason SecretConflict).
	StateConflict = "conflict"
	// StatePending: no token is issued yet.
	StatePending = "pending"
	// StateIdle: revoked for going unused longer than its maxIdle.
	StateIdle = "idle"
	// StateLeaked: the current token was reported leaked and is refused;
	// its replacement is not issued yet (it waits for authorization, say).
	StateLeaked = "leaked"
	// StateAwaitingApproval: its ServiceUser requires approval and the
	// ApiToken as it is waits for one (refused meanwhile).
	StateAwaitingApproval = "awaiting_approval"
	// StateApprovalDenied: as it is, the ApiToken's request was denied.
	StateApprovalDenied = "approval_denied"
)

// States lists every state, in the order they are exported.
var States = []string{StateActive, StateRotating, StateExpired, StateRevoked, StateDisabled, StateOrphaned, StateConflict, StatePending, StateIdle, StateLeaked, StateAwaitingApproval, StateApprovalDenied}

// Metric names.
const (
	ExpirationName   = "keymint_apitoken_expiration_timestamp_seconds"
	NextRotationName = "keymint_apitoken_next_rotation_timestamp_seconds"
	TokensName       = "keymint_apitokens"
	IdleName         = "keymint_apitoken_idle_revocation_timestamp_seconds"
)

var (
	expirationDesc = prometheus.NewDesc(ExpirationName,
		"When the current token of this ApiToken expires, in Unix seconds: its effective expiry, which a shortened lifetime or maxLifetime may have brought forward. No series for a token that never expires, is revoked, or has none issued yet.",
		[]string{"namespace", "name", "service_user"}, nil)
	nextRotationDesc = prometheus.NewDesc(NextRotationName,
		"When the current token of this ApiToken is replaced on schedule (spec.rotation.every), in Unix seconds. Only for tokens that rotate before they expire: an expiry alert can leave those out, since a new token comes first.",
		[]string{"namespace", "name", "service_user"}, nil)
	idleDesc = prometheus.NewDesc(IdleName,
		"When the current token of this ApiToken is revoked for idleness unless a check accepts it first (maxIdle after its last recorded use), in Unix seconds. Only for accepted tokens with a maxIdle that comes before their expiry.",
		[]string{"namespace", "name", "service_user"}, nil)
	tokensDesc = prometheus.NewDesc(TokensName,
		"ApiTokens by state: active, rotating (rotated-out tokens still in their grace period), expired, revoked, disabled (ServiceUser disabled), orphaned (ServiceUser missing), conflict (Secret name taken), pending (not issued yet), idle (revoked for idleness), leaked (reported leaked, not yet replaced), awaiting_approval (its ServiceUser requires approval and it waits for one), approval_denied.",
		[]string{"state"}, nil)
)

// Collector computes the token metrics from a cache at each scrape.
type Collector struct {
	Cache cache.Cache
	Clock clock.PassiveClock
	// Timeout bounds one scrape's reads of the cache; they are from memory,
	// so it matters only if an informer is still being created.
	Timeout time.Duration
}

// New returns a collector over the manager's cache.
func New(c cache.Cache, clk clock.PassiveClock) *Collector {
	return &Collector{Cache: c, Clock: clk, Timeout: 5 * time.Second}
}

// Describe sends both descriptors.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- expirationDesc
	ch <- nextRotationDesc
	ch <- idleDesc
	ch <- tokensDesc
}

// Collect reads every ApiToken and ServiceUser from the cache, without
// copying them, and sends the series. Until both informers have synced it
// sends nothing: a partial count would look like tokens disappearing.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.Timeout)
	defer cancel()
	if !c.synced(ctx) {
		return
	}
	var users keymintv1alpha1.ServiceUserList
	var tokens keymintv1alpha1.ApiTokenList
	if c.Cache.List(ctx, &users, client.UnsafeDisableDeepCopy) != nil ||
		c.Cache.List(ctx, &tokens, client.UnsafeDisableDeepCopy) != nil {
		return
	}
	byName := make(map[types.NamespacedName]*keymintv1alpha1.ServiceUser, len(users.Items))
	for i := range users.Items {
		u := &users.Items[i]
		byName[types.NamespacedName{Namespace: u.Namespace, Name: u.Name}] = u
	}
	now := c.Clock.Now()
	counts := make(map[string]int, len(States))
	for i := range tokens.Items {
		t := &tokens.Items[i]
		user := tokenstate.UserFrom(byName[types.NamespacedName{Namespace: t.Namespace, Name: t.Spec.ServiceUser}])
		state, v := Evaluate(t, &user, now)
		counts[state]++
		if v.Expires && v.Revoked == "" {
			ch <- prometheus.MustNewConstMetric(expirationDesc, prometheus.GaugeValue,
				float64(v.Expiry.Unix()), t.Namespace, t.Name, t.Spec.ServiceUser)
		}
		if v.Idles && v.Accepted {
			ch <- prometheus.MustNewConstMetric(idleDesc, prometheus.GaugeValue,
				float64(v.IdleAt.Unix()), t.Namespace, t.Name, t.Spec.ServiceUser)
		}
		if v.Rotates && v.Accepted {
			ch <- prometheus.MustNewConstMetric(nextRotationDesc, prometheus.GaugeValue,
				float64(v.NextRotation.Unix()), t.Namespace, t.Name, t.Spec.ServiceUser)
		}
	}
	for _, s := range States {
		ch <- prometheus.MustNewConstMetric(tokensDesc, prometheus.GaugeValue, float64(counts[s]), s)
	}
}

// synced reports whether the ApiToken and ServiceUser informers have listed
// once. They already exist (the controllers' watches made them); on a
// follower they are never started, so it sends nothing.
func (c *Collector) synced(ctx context.Context) bool {
	for _, obj := range []client.Object{&keymintv1alpha1.ApiToken{}, &keymintv1alpha1.ServiceUser{}} {
		inf, err := c.Cache.GetInformer(ctx, obj, cache.BlockUntilSynced(false))
		if err != nil || !inf.HasSynced() {
			return false
		}
	}
	return true
}

// Evaluate returns the state of ApiToken t of user u at now, and the verdict
// it comes from. The order is the Ready condition's (controllers'
// desiredStatus): a Secret conflict, then revocation, expiry, no token yet.
func Evaluate(t *keymintv1alpha1.ApiToken, u *tokenstate.User, now time.Time) (string, tokenstate.Verdict) {
	tok := tokenstate.TokenFrom(&t.Spec, &t.Status)
	tok.Deleting = t.DeletionTimestamp != nil
	v := tokenstate.Evaluate(&tok, u, now)
	ready := meta.FindStatusCondition(t.Status.Conditions, keymintv1alpha1.ApiTokenConditionReady)
	switch {
	case ready != nil && ready.Reason == keymintv1alpha1.ApiTokenReasonSecretConflict:
		return StateConflict, v
	case v.Revoked == keymintv1alpha1.ApiTokenReasonServiceUserDisabled:
		return StateDisabled, v
	case v.Revoked == keymintv1alpha1.ApiTokenReasonServiceUserNotFound:
		return StateOrphaned, v
	case v.Revoked == keymintv1alpha1.ApiTokenReasonIdle:
		return StateIdle, v
	case v.Revoked != "":
		return StateRevoked, v
	case v.Expired:
		return StateExpired, v
	case v.Leaked:
		return StateLeaked, v
	case v.Unapproved:
		if approved := meta.FindStatusCondition(t.Status.Conditions, keymintv1alpha1.ApiTokenConditionApproved); approved != nil && approved.Reason == keymintv1alpha1.ApiTokenReasonDenied {
			return StateApprovalDenied, v
		}
		return StateAwaitingApproval, v
	case !v.Accepted:
		return StatePending, v
	case len(tokenstate.StillAccepted(&tok, u, &v, now)) > 0:
		return StateRotating, v
	}
	return StateActive, v
}

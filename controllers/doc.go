// Package controllers holds keymint's three reconcilers:
//
//   - ApiTokenReconciler mints each ApiToken's token into its Secret and
//     keeps the two in step (store, expire, revoke, rotate), each mint only
//     for a requester keymint trusts and who may have it;
//   - RestartReconciler rolls an ApiToken's restart targets onto each new
//     token, for the user who named them;
//   - ServiceUserReconciler reports each ServiceUser's state and token
//     counts, and removes a deleted user's tokens.
//
// An ApiToken reconcile is gather, decide, write: one step reads everything
// into an observation, which evaluates the token it found once
// (tokenstate.Evaluate); the decision and the status are pure functions of
// it, and only a state the observation could not see (a token the
// reconcile mints or empties) is evaluated again, once. Between deciding
// and writing, what a decision needs that depends on it is asked live, at
// the moment of acting: for a mint, whether the cache has caught up with
// our last write, the per-token mint rate, the requester's record and
// right (askRequester: SubjectAccessReviews); for the rest, only whether
// keymint trusts the requester, for what the status may tell. The
// controller then writes the Secret and the status and emits Events.
// The files, by job:
//
//   - apitoken_controller.go: Reconcile (read, call, write), Secret and status writes;
//   - apitoken_observe.go: gather, the observation and the reads behind it;
//   - apitoken_decide.go: the action, the record it mints, the state it leaves;
//   - apitoken_status.go: the status, each condition an ordered chain of rules;
//   - apitoken_events.go: the Events;
//   - authorize.go: mint authorization, its wording and backoff;
//   - mintlimit.go: the per-token mint rate limit;
//   - indexes.go: the field indexes (by ServiceUser, by hash) and lookups through them;
//   - predicates.go: which ApiToken updates are worth a reconcile;
//   - restart_controller.go, serviceuser_controller.go: the other two reconcilers;
//   - setup.go: options, cache and registration with a manager.
//
// The token Secret's signed record is internal/secretrecord's.
package controllers

package controllers

import (
	"cmp"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/token"
	"github.com/keymint/keymint/internal/tokenstate"
	"github.com/keymint/keymint/webhook/check"
)

// TestControllerAndCheckServerAgree drives both sides of the one verdict
// with the same stored objects and instant: the conditions the controller
// writes, and what the check server answers over HTTP for the current token
// and a rotated-out one. Every rule appears, each time boundary at -1 s, at
// the instant and +1 s. The check server is asked twice: with the status as
// stored, and with the status the controller writes from it.
func TestControllerAndCheckServerAgree(t *testing.T) {
	issuedAt := now.Add(-time.Hour)
	type row struct {
		user  func(*keymintv1alpha1.ServiceUser)
		tok   func(*keymintv1alpha1.ApiToken)
		at    time.Time
		noUse bool // the ServiceUser does not exist
		// want is what a user sees: "ok", "expired" or "revoked" for the
		// current token.
		want string
		// wantPrevious: whether the rotated-out token is accepted.
		wantPrevious bool
		// checkSays and checkSaysPrevious, when set, are what the check
		// server answers for the current and the rotated-out token where
		// rules of the check itself (the client's address, a quota's uses)
		// refuse a token the controller rightly calls ready: the
		// controller has no client and counts no uses.
		checkSays, checkSaysPrevious string
	}
	lifetime := func(d time.Duration) func(*keymintv1alpha1.ApiToken) {
		return func(t *keymintv1alpha1.ApiToken) { t.Spec.Lifetime = &metav1.Duration{Duration: d} }
	}
	recorded := func(at time.Time) func(*keymintv1alpha1.ApiToken) {
		return func(t *keymintv1alpha1.ApiToken) { t.Status.ExpiresAt = &metav1.Time{Time: at} }
	}
	both := func(fs ...func(*keymintv1alpha1.ApiToken)) func(*keymintv1alpha1.ApiToken) {
		return func(t *keymintv1alpha1.ApiToken) {
			for _, f := range fs {
				f(t)
			}
		}
	}
	// The rotated-out token was minted 3 h ago and is in grace until +30 m.
	graceEnd := now.Add(30 * time.Minute)
	current, _ := token.Mint("km")
	previous, _ := token.Mint("km")
	reported := func(plain string) func(*keymintv1alpha1.ApiToken) {
		return func(t *keymintv1alpha1.ApiToken) {
			t.Status.LeakReports = append(t.Status.LeakReports, keymintv1alpha1.LeakReport{
				TokenHash: token.HashString(plain), ReportedAt: metav1.NewTime(now.Add(-time.Minute)), Source: "github",
			})
		}
	}
	// Idle from the token's issue, an hour ago, never used: maxIdle 2h
	// and the recording slack from there (a first use is written at once).
	idleAt := issuedAt.Add(2*time.Hour + tokenstate.UseRecordingSlack)
	// After a use, the gap it was recorded under is waited too: the
	// longest when the status does not say.
	idleGap := tokenstate.DefaultUseRecordingGap
	usedAt := func(at time.Time) func(*keymintv1alpha1.ApiToken) {
		return func(t *keymintv1alpha1.ApiToken) { t.Status.LastUsedAt = &metav1.Time{Time: at} }
	}
	usedUnder := func(at time.Time, gap time.Duration) func(*keymintv1alpha1.ApiToken) {
		return func(t *keymintv1alpha1.ApiToken) {
			t.Status.LastUsedAt = &metav1.Time{Time: at}
			t.Status.LastUsedRecording = &keymintv1alpha1.UseRecording{LastUsedAt: metav1.NewTime(at), Gap: metav1.Duration{Duration: gap}}
		}
	}
	requireApproval := func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.RequireApproval = true }
	decided := func(decision string, scopes ...string) func(*keymintv1alpha1.ApiToken) {
		return func(t *keymintv1alpha1.ApiToken) {
			approved := t.Spec.DeepCopy()
			approved.Scopes = scopes
			t.Status.Approval = &keymintv1alpha1.ApprovalStatus{Decision: decision, By: "erin", At: metav1.NewTime(issuedAt), Grant: tokenstate.GrantDigest(approved)}
		}
	}
	rows := map[string]row{
		"valid, no expiry": {at: now, want: "ok", wantPrevious: true},

		"approval required, the spec as approved":          {user: requireApproval, tok: decided(keymintv1alpha1.DecisionApproved), at: now, want: "ok", wantPrevious: true},
		"approval required, issued before the policy":      {user: requireApproval, at: now, want: "ok", wantPrevious: true},
		"approval required, the spec changed since":        {user: requireApproval, tok: decided(keymintv1alpha1.DecisionApproved, "links:read"), at: now, want: "not_approved"},
		"approval required, denied":                        {user: requireApproval, tok: decided(keymintv1alpha1.DecisionDenied), at: now, want: "not_approved"},
		"approval required, approved, and revoked by spec": {user: requireApproval, tok: both(decided(keymintv1alpha1.DecisionApproved), func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = true }), at: now, want: "revoked"},

		// The client is 127.0.0.1 (loopback HTTP; no proxy is trusted).
		"sources, the client inside":                    {tok: sources("127.0.0.0/8"), at: now, want: "ok", wantPrevious: true},
		"sources, the client outside":                   {tok: sources("10.0.0.0/8"), at: now, want: "ok", wantPrevious: true, checkSays: string(check.SourceNotAllowed), checkSaysPrevious: string(check.SourceNotAllowed)},
		"sources, the user's narrower than the token's": {user: userSources("10.0.0.0/8"), tok: sources("127.0.0.0/8"), at: now, want: "ok", wantPrevious: true, checkSays: string(check.SourceNotAllowed), checkSaysPrevious: string(check.SourceNotAllowed)},
		"sources, and revoked":                          {tok: both(sources("10.0.0.0/8"), func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = true }), at: now, want: "revoked"},
		// Each check server is new: the current token's check is the first
		// use, the rotated-out token's the second (one quota per ApiToken).
		"quota, uses left":                  {user: userQuota(2), at: now, want: "ok", wantPrevious: true},
		"quota, spent by the current token": {user: userQuota(1), at: now, want: "ok", wantPrevious: true, checkSaysPrevious: string(check.QuotaExceeded)},
		"quota, and expired":                {user: userQuota(1), tok: both(lifetime(time.Hour), recorded(now)), at: now, want: "expired"},

		"lifetime 2h, 1s before expiry":   {tok: both(lifetime(2*time.Hour), recorded(now.Add(time.Hour))), at: now.Add(time.Hour - time.Second), want: "ok"},
		"lifetime 2h, at expiry":          {tok: both(lifetime(2*time.Hour), recorded(now.Add(time.Hour))), at: now.Add(time.Hour), want: "expired"},
		"lifetime 2h, 1s after expiry":    {tok: both(lifetime(2*time.Hour), recorded(now.Add(time.Hour))), at: now.Add(time.Hour + time.Second), want: "expired"},
		"expiresAt, 1s before":            {tok: both(func(t *keymintv1alpha1.ApiToken) { t.Spec.ExpiresAt = &metav1.Time{Time: now} }, recorded(now)), at: now.Add(-time.Second), want: "ok", wantPrevious: true},
		"expiresAt, at the instant":       {tok: both(func(t *keymintv1alpha1.ApiToken) { t.Spec.ExpiresAt = &metav1.Time{Time: now} }, recorded(now)), at: now, want: "expired", wantPrevious: false},
		"defaultLifetime, 1s before":      {user: defaultLifetime(2 * time.Hour), tok: recorded(now.Add(time.Hour)), at: now.Add(time.Hour - time.Second), want: "ok"},
		"defaultLifetime, at the instant": {user: defaultLifetime(2 * time.Hour), tok: recorded(now.Add(time.Hour)), at: now.Add(time.Hour), want: "expired"},

		"maxLifetime lowered after minting, 1s before its new cap": {user: maxLifetime(90 * time.Minute), at: now.Add(30*time.Minute - time.Second), want: "ok", wantPrevious: false},
		"maxLifetime lowered after minting, at its new cap":        {user: maxLifetime(90 * time.Minute), at: now.Add(30 * time.Minute), want: "expired"},

		"lifetime extended after expiry: still expired, 1s after the minted expiry": {
			tok: both(lifetime(5*time.Hour), recorded(now)), at: now.Add(time.Second), want: "expired", wantPrevious: true,
		},
		"lifetime extended before expiry: the minted expiry holds, 1s before it": {
			tok: both(lifetime(5*time.Hour), recorded(now)), at: now.Add(-time.Second), want: "ok", wantPrevious: true,
		},
		"lifetime extended before expiry: the minted expiry holds, at it": {
			tok: both(lifetime(5*time.Hour), recorded(now)), at: now, want: "expired", wantPrevious: true,
		},

		"revoked by spec":          {tok: func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = true }, at: now, want: "revoked"},
		"user disabled":            {user: func(u *keymintv1alpha1.ServiceUser) { u.Spec.Disabled = true }, at: now, want: "revoked"},
		"user missing":             {noUse: true, at: now, want: "revoked"},
		"user created anew":        {user: func(u *keymintv1alpha1.ServiceUser) { u.UID = "uid-ci-2" }, at: now, want: "revoked"},
		"leaked current token":     {tok: reported(current), at: now, want: "revoked", wantPrevious: true},
		"leaked rotated-out token": {tok: reported(previous), at: now, want: "ok", wantPrevious: false},
		"both leaked":              {tok: both(reported(current), reported(previous)), at: now, want: "revoked", wantPrevious: false},

		"maxIdle, 1s before idle":          {user: maxIdle(2 * time.Hour), at: idleAt.Add(-time.Second), want: "ok"},
		"maxIdle, at idle":                 {user: maxIdle(2 * time.Hour), at: idleAt, want: "revoked"},
		"maxIdle, used since: not idle":    {user: maxIdle(2 * time.Hour), tok: usedAt(now), at: idleAt, want: "ok"},
		"maxIdle, used since, at its idle": {user: maxIdle(2 * time.Hour), tok: usedAt(now), at: now.Add(2*time.Hour + idleGap + tokenstate.UseRecordingSlack), want: "revoked"},
		"maxIdle, used under a 30m gap, 1s before its idle": {user: maxIdle(2 * time.Hour), tok: usedUnder(now, 30*time.Minute),
			at: now.Add(2*time.Hour + 30*time.Minute + tokenstate.UseRecordingSlack - time.Second), want: "ok"},
		"maxIdle, used under a 30m gap, at its idle": {user: maxIdle(2 * time.Hour), tok: usedUnder(now, 30*time.Minute),
			at: now.Add(2*time.Hour + 30*time.Minute + tokenstate.UseRecordingSlack), want: "revoked"},
		"token maxIdle shorter than user's": {user: maxIdle(48 * time.Hour), tok: func(t *keymintv1alpha1.ApiToken) { t.Spec.MaxIdle = &metav1.Duration{Duration: 2 * time.Hour} }, at: idleAt, want: "revoked"},
		"maxIdle, in grace before idle":     {user: maxIdle(2 * time.Hour), at: now, want: "ok", wantPrevious: true},

		"grace: 1s before end": {at: graceEnd.Add(-time.Second), want: "ok", wantPrevious: true},
		"grace: at its end":    {at: graceEnd, want: "ok", wantPrevious: false},
		"grace: 1s after end":  {at: graceEnd.Add(time.Second), want: "ok", wantPrevious: false},
		"grace cut short by a lifetime now shorter than the old token's age": {
			tok: both(lifetime(3*time.Hour+10*time.Minute), recorded(now.Add(2*time.Hour+10*time.Minute))), at: now.Add(10*time.Minute - time.Second), want: "ok", wantPrevious: true,
		},
		"grace cut short, at the old token's new expiry": {
			tok: both(lifetime(3*time.Hour+10*time.Minute), recorded(now.Add(2*time.Hour+10*time.Minute))), at: now.Add(10 * time.Minute), want: "ok", wantPrevious: false,
		},
	}

	for name, r := range rows {
		t.Run(name, func(t *testing.T) {
			user := &keymintv1alpha1.ServiceUser{
				ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "ci", UID: "uid-ci"},
				Spec:       keymintv1alpha1.ServiceUserSpec{Permissions: []string{"links:read"}},
			}
			if r.user != nil {
				r.user(user)
			}
			tok := &keymintv1alpha1.ApiToken{
				ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "app", UID: "uid-app", Generation: 1},
				Spec:       keymintv1alpha1.ApiTokenSpec{ServiceUser: "ci"},
				Status: keymintv1alpha1.ApiTokenStatus{
					Serial: 2, TokenHash: token.HashString(current), TokenPrefix: token.Display(current),
					IssuedAt: &metav1.Time{Time: issuedAt}, ServiceUserUID: "uid-ci",
					PreviousTokens: []keymintv1alpha1.PreviousToken{{
						TokenHash: token.HashString(previous), IssuedAt: metav1.NewTime(now.Add(-3 * time.Hour)), ValidUntil: metav1.NewTime(graceEnd),
					}},
				},
			}
			if r.tok != nil {
				r.tok(tok)
			}
			var userObj *keymintv1alpha1.ServiceUser
			if !r.noUse {
				userObj = user
			}

			// The controller: conditions from the same objects, no action.
			o := observe(tok, userObj, secretState{Hash: token.HashString(current), Holds: true}, false, nil, r.at)
			written := desiredStatus(tok.Status, tok.Generation, "app", o, afterAction(o, decision{}, nil, nil)).Status
			controllerSays := "ok"
			switch {
			case meta.IsStatusConditionTrue(written.Conditions, keymintv1alpha1.ApiTokenConditionRevoked):
				controllerSays = "revoked"
			case meta.IsStatusConditionTrue(written.Conditions, keymintv1alpha1.ApiTokenConditionExpired):
				controllerSays = "expired"
			case hasReason(written.Conditions, keymintv1alpha1.ApiTokenConditionReady, keymintv1alpha1.ApiTokenReasonAwaitingApproval):
				controllerSays = string(check.NotApproved)
			case hasReason(written.Conditions, keymintv1alpha1.ApiTokenConditionReady, keymintv1alpha1.ApiTokenReasonLeaked):
				// A reported token is refused as a revoked one.
				controllerSays = "revoked"
			case !meta.IsStatusConditionTrue(written.Conditions, keymintv1alpha1.ApiTokenConditionReady):
				controllerSays = "not ready"
			}
			controllerKeeps := false
			for _, p := range written.PreviousTokens {
				controllerKeeps = controllerKeeps || p.TokenHash == token.HashString(previous)
			}
			if controllerSays != r.want || controllerKeeps != r.wantPrevious {
				t.Errorf("controller: %s, keeps the rotated-out hash: %v; want %s, %v", controllerSays, controllerKeeps, r.want, r.wantPrevious)
			}

			// The check server, over loopback HTTP: with the status as stored,
			// then after its informer delivers the status the controller
			// writes from it.
			after := tok.DeepCopy()
			after.Status = written
			for _, versions := range [][]*keymintv1alpha1.ApiToken{{tok}, {tok, after}} {
				server := checkServer(t, userObj, versions, r.at)
				label := [...]string{"", "stored", "written"}[len(versions)]
				if got, want := answer(t, server, current), cmp.Or(r.checkSays, r.want); got != want {
					t.Errorf("check server (%s status): current token %s, want %s; controller says %s", label, got, want, controllerSays)
				}
				got := answer(t, server, previous)
				switch {
				case r.checkSaysPrevious != "" && got != r.checkSaysPrevious:
					t.Errorf("check server (%s status): rotated-out token %s, want %s (controller keeps it: %v)", label, got, r.checkSaysPrevious, controllerKeeps)
				case r.checkSaysPrevious == "" && (got == "ok") != r.wantPrevious:
					t.Errorf("check server (%s status): rotated-out token %s, controller keeps it: %v", label, got, controllerKeeps)
				}
			}
		})
	}
}

func sources(cidrs ...string) func(*keymintv1alpha1.ApiToken) {
	return func(t *keymintv1alpha1.ApiToken) { t.Spec.AllowedSourceCIDRs = cidrs }
}

func userSources(cidrs ...string) func(*keymintv1alpha1.ServiceUser) {
	return func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.AllowedSourceCIDRs = cidrs }
}

func userQuota(uses int64) func(*keymintv1alpha1.ServiceUser) {
	return func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.Quota = &keymintv1alpha1.Quota{Uses: uses} }
}

func defaultLifetime(d time.Duration) func(*keymintv1alpha1.ServiceUser) {
	return func(u *keymintv1alpha1.ServiceUser) {
		u.Spec.TokenPolicy.DefaultLifetime = &metav1.Duration{Duration: d}
	}
}

func maxIdle(d time.Duration) func(*keymintv1alpha1.ServiceUser) {
	return func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.MaxIdle = &metav1.Duration{Duration: d} }
}

func maxLifetime(d time.Duration) func(*keymintv1alpha1.ServiceUser) {
	return func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.MaxLifetime = &metav1.Duration{Duration: d} }
}

// checkServer serves /check over loopback HTTP from an index fed with the
// user and the token's versions in order, at the instant at.
func checkServer(t *testing.T, user *keymintv1alpha1.ServiceUser, versions []*keymintv1alpha1.ApiToken, at time.Time) *httptest.Server {
	t.Helper()
	index := check.NewIndex()
	if user != nil {
		index.UpsertUser(user)
	}
	for _, v := range versions {
		index.UpsertToken(v)
	}
	h := check.NewHandler(index, clocktesting.NewFakeClock(at), 1000, prometheus.NewRegistry())
	server := httptest.NewServer(h.ServeMux())
	t.Cleanup(server.Close)
	return server
}

// answer is what the check server says of a token: "ok", or "expired" or
// "revoked" for those refusals, else the error code.
func answer(t *testing.T, server *httptest.Server, plain string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, server.URL+check.CheckPath, nil)
	req.Header.Set("Authorization", "Bearer "+plain)
	resp, err := server.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Error string `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	switch {
	case resp.StatusCode == http.StatusOK:
		return "ok"
	case body.Error == string(check.ExpiredToken):
		return "expired"
	case body.Error == string(check.RevokedToken):
		return "revoked"
	}
	return body.Error
}

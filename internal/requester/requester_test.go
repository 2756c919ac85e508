package requester

import (
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/recordkey"
	"github.com/keymint/keymint/internal/recordkey/recordkeytest"
)

var (
	alice = authenticationv1.UserInfo{Username: "alice", Groups: []string{"devs", "system:authenticated"}, Extra: map[string]authenticationv1.ExtraValue{"scopes": {"a"}}}
	bob   = authenticationv1.UserInfo{Username: "bob", Groups: []string{"system:authenticated"}}
	at    = time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
)

func token(mutate ...func(*keymintv1alpha1.ApiToken)) *keymintv1alpha1.ApiToken {
	t := &keymintv1alpha1.ApiToken{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "t"},
		Spec: keymintv1alpha1.ApiTokenSpec{
			ServiceUser: "billing", Scopes: []string{"invoices:read"},
			Rotation: &keymintv1alpha1.Rotation{RestartTargets: []keymintv1alpha1.RestartTarget{{Kind: "Deployment", Name: "web"}}},
		},
	}
	for _, m := range mutate {
		m(t)
	}
	return t
}

// admitted is tok as admission would store it when who writes it over
// before.
func admitted(r *recordkey.Keyring, before, tok *keymintv1alpha1.ApiToken, who authenticationv1.UserInfo) *keymintv1alpha1.ApiToken {
	tok = tok.DeepCopy()
	Admit(r, before, tok, who, at, time.Time{})
	return tok
}

func TestAdmitKeepsOrReplacesTheRequester(t *testing.T) {
	r := recordkeytest.Keyring(t, "k1")
	created := admitted(r, nil, token(), alice)
	cases := map[string]struct {
		// mutate changes the stored token in bob's write.
		mutate func(*keymintv1alpha1.ApiToken)
		// before overrides the stored object (default: created).
		before *keymintv1alpha1.ApiToken
		want   string
		// wantWeb is who named restart target web afterwards.
		wantWeb string
	}{
		"a description keeps alice":     {mutate: func(t *keymintv1alpha1.ApiToken) { t.Spec.Description = "x" }, want: "alice", wantWeb: "alice"},
		"a rate keeps alice":            {mutate: func(t *keymintv1alpha1.ApiToken) { t.Spec.RequestsPerMinute = new(int32(5)) }, want: "alice", wantWeb: "alice"},
		"the same manifest keeps alice": {mutate: func(*keymintv1alpha1.ApiToken) {}, want: "alice", wantWeb: "alice"},
		"removing rotate keeps alice":   {before: admitted(r, created, token(withRotate("1")), alice), mutate: func(t *keymintv1alpha1.ApiToken) { delete(t.Annotations, keymintv1alpha1.RotateAnnotation) }, want: "alice", wantWeb: "alice"},
		"a new target is bob's alone": {mutate: func(t *keymintv1alpha1.ApiToken) {
			t.Spec.Rotation.RestartTargets = append(t.Spec.Rotation.RestartTargets, keymintv1alpha1.RestartTarget{Kind: "Deployment", Name: "api"})
		}, want: "alice", wantWeb: "alice"},
		"a scope makes bob the requester": {mutate: func(t *keymintv1alpha1.ApiToken) { t.Spec.Scopes = append(t.Spec.Scopes, "admin:all") }, want: "bob", wantWeb: "alice"},
		"a shorter lifetime is asked too": {mutate: func(t *keymintv1alpha1.ApiToken) { t.Spec.Lifetime = &metav1.Duration{Duration: time.Hour} }, want: "bob", wantWeb: "alice"},
		"a rotate request is bob's":       {mutate: withRotate("now"), want: "bob", wantWeb: "alice"},
		"dropping a source allowlist is bob's": {before: admitted(r, created, func() *keymintv1alpha1.ApiToken {
			c := created.DeepCopy()
			c.Spec.AllowedSourceCIDRs = []string{"10.0.0.0/8"}
			return c
		}(), alice), mutate: func(t *keymintv1alpha1.ApiToken) { t.Spec.AllowedSourceCIDRs = nil }, want: "bob", wantWeb: "alice"},
		"metadata the application reads is bob's": {mutate: func(t *keymintv1alpha1.ApiToken) {
			t.Spec.Metadata = map[string]keymintv1alpha1.MetadataValue{"role": "admin"}
		}, want: "bob", wantWeb: "alice"},
		"a longer maxIdle is bob's":         {mutate: func(t *keymintv1alpha1.ApiToken) { t.Spec.MaxIdle = &metav1.Duration{Duration: 9000 * time.Hour} }, want: "bob", wantWeb: "alice"},
		"un-revoking is bob's, targets too": {before: func() *keymintv1alpha1.ApiToken { c := created.DeepCopy(); c.Spec.Revoked = true; return c }(), mutate: func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = false }, want: "bob", wantWeb: "bob"},
		"no record: bob":                    {before: token(), mutate: func(t *keymintv1alpha1.ApiToken) { t.Spec.Description = "x" }, want: "bob", wantWeb: "bob"},
		"an edited record: bob": {before: func() *keymintv1alpha1.ApiToken {
			c := created.DeepCopy()
			c.Annotations[keymintv1alpha1.RequesterAnnotation] = `{"requester":{"username":"root"}}`
			return c
		}(), mutate: func(*keymintv1alpha1.ApiToken) {}, want: "bob", wantWeb: "bob"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			before := created
			if tc.before != nil {
				before = tc.before
			}
			after := before.DeepCopy()
			tc.mutate(after)
			after = admitted(r, before, after, bob)
			rec, p := Read(r, after)
			if p != "" {
				t.Fatalf("the record admission wrote does not verify: %s", p)
			}
			if rec.Requester.Username != tc.want {
				t.Errorf("requester = %q, want %q", rec.Requester.Username, tc.want)
			}
			by, ok := rec.NamedBy(keymintv1alpha1.RestartTarget{Kind: "Deployment", Name: "web"})
			if !ok || by.Username != tc.wantWeb {
				t.Errorf("web named by %q (%v), want %q", by.Username, ok, tc.wantWeb)
			}
			if by, ok := rec.NamedBy(keymintv1alpha1.RestartTarget{Kind: "Deployment", Name: "api"}); ok && by.Username != "bob" {
				t.Errorf("api named by %q, want bob", by.Username)
			}
		})
	}
}

func withRotate(v string) func(*keymintv1alpha1.ApiToken) {
	return func(t *keymintv1alpha1.ApiToken) {
		if t.Annotations == nil {
			t.Annotations = map[string]string{}
		}
		t.Annotations[keymintv1alpha1.RotateAnnotation] = v
	}
}

func TestReadRefusesWhatKeymintDidNotSign(t *testing.T) {
	r := recordkeytest.Keyring(t, "k1")
	good := admitted(r, nil, token(), alice)
	other := recordkeytest.Keyring(t, "k1")
	cases := map[string]struct {
		tok  *keymintv1alpha1.ApiToken
		ring *recordkey.Keyring
		want Problem
	}{
		"admitted":          {tok: good, ring: r},
		"no record":         {tok: token(), ring: r, want: Missing},
		"another key":       {tok: good, ring: other, want: Forged},
		"another name":      {tok: func() *keymintv1alpha1.ApiToken { c := good.DeepCopy(); c.Name = "t2"; return c }(), ring: r, want: Forged},
		"another namespace": {tok: func() *keymintv1alpha1.ApiToken { c := good.DeepCopy(); c.Namespace = "ns2"; return c }(), ring: r, want: Forged},
		"an edited requester": {tok: func() *keymintv1alpha1.ApiToken {
			c := good.DeepCopy()
			c.Annotations[keymintv1alpha1.RequesterAnnotation] = c.Annotations[keymintv1alpha1.RequesterAnnotation][:20] + "X" + c.Annotations[keymintv1alpha1.RequesterAnnotation][21:]
			return c
		}(), ring: r, want: Forged},
		"scopes changed past admission": {tok: func() *keymintv1alpha1.ApiToken {
			c := good.DeepCopy()
			c.Spec.Scopes = []string{"admin:all"}
			return c
		}(), ring: r, want: SpecChanged},
		"revoked since":                   {tok: func() *keymintv1alpha1.ApiToken { c := good.DeepCopy(); c.Spec.Revoked = true; return c }(), ring: r, want: SpecChanged},
		"a rotate request past admission": {tok: func() *keymintv1alpha1.ApiToken { c := good.DeepCopy(); withRotate("x")(c); return c }(), ring: r, want: SpecChanged},
		"a description changed":           {tok: func() *keymintv1alpha1.ApiToken { c := good.DeepCopy(); c.Spec.Description = "d"; return c }(), ring: r},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if _, p := Read(tc.ring, tc.tok); p != tc.want {
				t.Errorf("problem = %q, want %q", p, tc.want)
			}
		})
	}
}

// Records signed before the requester became an authentication/v1
// UserInfo read back as the same user: an upgrade keeps every requester.
func TestARecordOfTheEarlierFormatReadsBack(t *testing.T) {
	r := recordkeytest.Keyring(t, "k1")
	tok := token()
	raw := `{"requester":{"username":"alice","groups":["devs","system:authenticated"],"extra":{"scopes":["a"]}},` +
		`"requestedAt":"2026-12-07T10:00:00Z","spec":"` + SpecDigest(tok) + `"}`
	tok.Annotations = map[string]string{
		keymintv1alpha1.RequesterAnnotation:          raw,
		keymintv1alpha1.RequesterSignatureAnnotation: r.Sign(signedFields(tok, raw)...),
	}
	rec, p := Read(r, tok)
	if p != "" || !sameUser(rec.Requester, alice) {
		t.Errorf("Read = %+v (%s), want alice as recorded", rec, p)
	}
}

// A record signed before the webhook's configuration existed (when writes
// could skip it, and anyone could have had a record of their choosing
// signed) is never kept: the next admitted write records its own writer.
func TestAdmitKeepsNoRecordFromBeforeTheWebhook(t *testing.T) {
	r := recordkeytest.Keyring(t, "k1")
	created := admitted(r, nil, token(), alice)
	after := created.DeepCopy()
	after.Spec.Description = "touched"
	Admit(r, created, after, bob, at.Add(time.Hour), at.Add(time.Minute))
	rec, p := Read(r, after)
	if p != "" || rec.Requester.Username != "bob" {
		t.Errorf("requester %+v (%s), want bob", rec, p)
	}
	after = created.DeepCopy()
	after.Spec.Description = "touched"
	Admit(r, created, after, bob, at.Add(time.Hour), at)
	if rec, _ := Read(r, after); rec.Requester.Username != "alice" {
		t.Errorf("a record signed when the webhook existed was replaced by %q", rec.Requester.Username)
	}
}

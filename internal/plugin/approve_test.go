package plugin_test

import (
	"context"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/plugin"
	"github.com/keymint/keymint/internal/testenv"
)

// TestApproveAndDeny: against a control plane with keymint's controllers
// and admission webhook, status --pending lists the tokens waiting, who
// asked and for what; approve as the user who asked is refused with the
// reason; approve --as an approver mints the token and waits for it;
// deny is final and status says so.
func TestApproveAndDeny(t *testing.T) {
	cl := startCluster(t)
	ctx := context.Background()
	ns := nsApprove
	user := testenv.ServiceUser(ns, "billing", testenv.WithPermissions("invoices:read"), testenv.WithRequireApproval())
	if err := cl.c.Create(ctx, user); err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "approve-billing"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{"keymint.io"}, Resources: []string{"apitokens"}, Verbs: []string{"get", "list", "patch"}},
			{APIGroups: []string{"keymint.io"}, Resources: []string{"serviceusers"}, Verbs: []string{"approve"}, ResourceNames: []string{"billing"}},
		},
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "erin-approves-billing"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "erin"}},
	}
	if err := cl.c.Create(ctx, role); err != nil {
		t.Fatal(err)
	}
	if err := cl.c.Create(ctx, binding); err != nil {
		t.Fatal(err)
	}
	createToken(t, cl, ns, "exporter", "billing", testenv.WithScopes("invoices:read"))
	createToken(t, cl, ns, "writer", "billing")

	eventually(t, "both tokens wait for approval", func() bool {
		r := cl.run(t, plugin.Options{}, "status", "--pending", "-n", ns)
		return r.code == 0 && strings.Contains(r.stdout, "exporter") && strings.Contains(r.stdout, "writer")
	})
	r := cl.run(t, plugin.Options{}, "status", "--pending", "-n", ns)
	rows := table(t, r.stdout)
	if got := rows["exporter"]; got["SCOPES"] != "invoices:read" || got["REQUESTED BY"] == "?" || got["SERVICE USER"] != "billing" {
		t.Errorf("pending row: %v", got)
	}
	if got := rows["writer"]["SCOPES"]; got != "(all)" {
		t.Errorf("a token with no scopes lists %q, want (all)", got)
	}

	r = cl.run(t, plugin.Options{}, "approve", "exporter", "-n", ns)
	if r.code == 0 || !strings.Contains(r.stderr, "asked for this token") {
		t.Errorf("approve by the requester: exit %d, stderr %q; want a refusal naming why", r.code, r.stderr)
	}

	r = cl.run(t, plugin.Options{}, "approve", "exporter", "-n", ns, "--as", "erin", "-m", "ticket OPS-1")
	if r.code != 0 || !strings.Contains(r.stdout, "apitoken.keymint.io/exporter approved") || !strings.Contains(r.stdout, "is accepted") {
		t.Fatalf("approve --as erin: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	tok := &keymintv1alpha1.ApiToken{}
	if err := cl.c.Get(ctx, objectKey(ns, "exporter"), tok); err != nil {
		t.Fatal(err)
	}
	if tok.Status.TokenHash == "" || tok.Status.Approval == nil || tok.Status.Approval.By != "erin" || tok.Status.Approval.Message != "ticket OPS-1" {
		t.Errorf("after approval: hash %q, approval %+v", tok.Status.TokenHash, tok.Status.Approval)
	}

	r = cl.run(t, plugin.Options{}, "deny", "writer", "-n", ns, "--as", "erin")
	if r.code != 0 {
		t.Fatalf("deny --as erin: exit %d, stderr %q", r.code, r.stderr)
	}
	eventually(t, "the denied token shows ApprovalDenied", func() bool {
		r := cl.run(t, plugin.Options{}, "status", "writer", "-n", ns)
		return r.code == 0 && table(t, r.stdout)["writer"]["STATE"] == keymintv1alpha1.ApiTokenReasonApprovalDenied
	})
	r = cl.run(t, plugin.Options{}, "approve", "writer", "-n", ns, "--as", "erin")
	if r.code == 0 || !strings.Contains(r.stderr, "a denial is final") {
		t.Errorf("approving a denied request: exit %d, stderr %q", r.code, r.stderr)
	}
	r = cl.run(t, plugin.Options{}, "status", "--pending", "-n", ns)
	if r.code != 0 || !strings.Contains(r.stderr, "No ApiTokens wait for approval") {
		t.Errorf("status --pending with none waiting: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

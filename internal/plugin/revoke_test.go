package plugin_test

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/creack/pty"
	. "github.com/onsi/gomega"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/plugin"
)

// answerOnTerminal returns the terminal end of a real pseudo-terminal on
// which answer has been typed.
func answerOnTerminal(t *testing.T, answer string) *os.File {
	t.Helper()
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatalf("opening a pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { _ = ptmx.Close(); _ = tty.Close() })
	if _, err := ptmx.WriteString(answer); err != nil {
		t.Fatal(err)
	}
	return tty
}

// revoke against keymint's real controllers.
func TestRevoke(t *testing.T) {
	g := NewWithT(t)
	cl := startCluster(t)
	ctx := context.Background()
	ns := nsRevoke
	createUser(t, cl, ns, "billing")
	createToken(t, cl, ns, "asked", "billing")
	before := issued(t, cl, ns, "asked")
	plain := secretToken(t, cl, ns, "asked")
	specRevoked := func(name string) bool {
		var tok keymintv1alpha1.ApiToken
		g.Expect(cl.c.Get(ctx, objectKey(ns, name), &tok)).To(Succeed())
		return tok.Spec.Revoked
	}

	t.Run("without --yes and no terminal, refuses", func(t *testing.T) {
		r := cl.run(t, plugin.Options{}, "revoke", "asked", "-n", ns)
		g.Expect(r.code).To(Equal(1))
		g.Expect(r.stderr).To(Equal("error: revoking apitoken \"asked\" cannot be undone: pass --yes to confirm (standard input is not a terminal, so there is no one to ask)\n"))
		g.Expect(specRevoked("asked")).To(BeFalse())
	})

	t.Run("on a terminal, asks; no keeps the token", func(t *testing.T) {
		r := cl.run(t, plugin.Options{Streams: streamsIn(answerOnTerminal(t, "n\n"))}, "revoke", "asked", "-n", ns)
		g.Expect(r.code).To(Equal(1))
		g.Expect(r.stderr).To(ContainSubstring("Revoke token " + before.Status.TokenPrefix + "... of apitoken revoke/asked (service user billing)?"))
		g.Expect(r.stderr).To(HaveSuffix("Not revoked.\n"))
		g.Expect(specRevoked("asked")).To(BeFalse())
	})

	t.Run("on a terminal, yes revokes and keymint empties the Secret", func(t *testing.T) {
		r := cl.run(t, plugin.Options{Streams: streamsIn(answerOnTerminal(t, "yes\n"))}, "revoke", "asked", "-n", ns)
		g.Expect(r.code).To(Equal(0), r.stderr)
		g.Expect(r.stdout).To(Equal("apitoken.keymint.io/asked revoked: checks refuse token " + before.Status.TokenPrefix + "... from now on\nSecret asked emptied\n"))
		g.Expect(specRevoked("asked")).To(BeTrue())
		g.Expect(secretToken(t, cl, ns, "asked")).To(BeEmpty())
		g.Expect(r.stdout + r.stderr).NotTo(ContainSubstring(plain))

		r = cl.run(t, plugin.Options{}, "revoke", "asked", "-n", ns)
		g.Expect(r.code).To(Equal(0), r.stderr)
		g.Expect(r.stdout).To(Equal("apitoken.keymint.io/asked already revoked\n"))
	})

	t.Run("--yes does not ask", func(t *testing.T) {
		createToken(t, cl, ns, "scripted", "billing")
		issued(t, cl, ns, "scripted")
		r := cl.run(t, plugin.Options{}, "revoke", "scripted", "-n", ns, "--yes")
		g.Expect(r.code).To(Equal(0), r.stderr)
		g.Expect(r.stderr).To(BeEmpty())
		g.Expect(strings.Split(r.stdout, "\n")[1]).To(Equal("Secret scripted emptied"))
		var tok keymintv1alpha1.ApiToken
		g.Expect(cl.c.Get(ctx, objectKey(ns, "scripted"), &tok)).To(Succeed())
		g.Expect(tok.Status.TokenHash).To(BeEmpty())
	})

	t.Run("a missing ApiToken", func(t *testing.T) {
		r := cl.run(t, plugin.Options{}, "revoke", "missing", "-n", ns, "--yes")
		g.Expect(r.code).To(Equal(1))
		g.Expect(r.stderr).To(Equal("error: apitoken \"missing\" not found in namespace \"revoke\"\n"))
	})
}

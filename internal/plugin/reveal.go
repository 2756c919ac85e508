package plugin

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/token"
)

func newRevealCommand(o Options, k *kube) *cobra.Command {
	var show bool
	cmd := &cobra.Command{
		Use:   "reveal NAME --show-secret",
		Short: "Print an ApiToken's plaintext token from its Secret (needs --show-secret)",
		Long: `Print an ApiToken's plaintext token, read from the Secret its status names.

A token on a screen ends up in scrollback, screen shares and CI logs, so
reveal prints it only with --show-secret, and warns on stderr. It prints only
a token whose hash is the one the ApiToken's status records: a stale or
edited Secret is refused, as checks refuse its token.`,
		Example: `  TOKEN=$(kubectl keymint reveal billing-exporter-prod --show-secret)`,
		Args:    exactlyOneName,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !show {
				return fmt.Errorf("reveal prints a live bearer token of apitoken %q: add --show-secret to print it (it may then end up in your scrollback, shell logs or CI output)", args[0])
			}
			c, ns, err := k.target()
			if err != nil {
				return err
			}
			return reveal(cmd.Context(), c, o, ns, args[0])
		},
	}
	cmd.Flags().BoolVar(&show, "show-secret", false, "Print the plaintext token.")
	return cmd
}

func reveal(ctx context.Context, c client.Client, o Options, ns, name string) error {
	tok, err := getToken(ctx, c, ns, name)
	if err != nil {
		return err
	}
	if tok.Status.TokenHash == "" {
		state := describe(tok, nil, o.now()).State
		return fmt.Errorf("apitoken %q holds no token now (state %s): nothing to reveal", name, state)
	}
	secName := secretName(tok)
	var sec corev1.Secret
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: secName}, &sec); err != nil {
		if apierrors.IsNotFound(err) {
			return fmt.Errorf("apitoken %q names Secret %q, which does not exist (keymint writes it again shortly)", name, secName)
		}
		return err
	}
	plain := string(sec.Data[keymintv1alpha1.SecretTokenKey])
	if _, err := token.Parse(plain); err != nil {
		return fmt.Errorf("secret %q holds no well-formed keymint token under key %q: %w", secName, keymintv1alpha1.SecretTokenKey, err)
	}
	// The status is the record of truth, never the Secret's word.
	if !token.Matches(plain, tok.Status.TokenHash) {
		return errors.New("the token in Secret " + secName + " is not the one apitoken " + name +
			"'s status records (a stale or edited Secret); checks refuse it, so it is not printed")
	}
	fmt.Fprintf(o.Streams.ErrOut, "Warning: printing a live bearer token of service user %s (apitoken %s/%s, %s...). Anyone who sees it can use it until it expires, rotates or is revoked.\n",
		tok.Spec.ServiceUser, ns, name, token.Display(plain))
	fmt.Fprintln(o.Streams.Out, plain)
	return nil
}

package plugin

import (
	"bufio"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

func newRevokeCommand(o Options, k *kube) *cobra.Command {
	var yes, waitFor bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke an ApiToken's token for good (spec.revoked: true)",
		Long: `Revoke an ApiToken's token, the documented way: spec.revoked set to true.
Checks refuse the token as soon as keymint sees the change, keymint empties
its Secret, and the token never comes back (setting spec.revoked back to
false later mints a new one).

Because it cannot be undone, revoke asks for confirmation on a terminal and
refuses to run without --yes anywhere else (scripts, CI). It then waits, up
to --timeout, for keymint to empty the Secret.`,
		Example: `  kubectl keymint revoke billing-exporter-prod
  kubectl keymint revoke billing-exporter-prod -n payments --yes`,
		Args: exactlyOneName,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ns, err := k.target()
			if err != nil {
				return err
			}
			return revoke(cmd.Context(), c, o, ns, args[0], yes, waitFor, timeout)
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "Revoke without asking for confirmation.")
	cmd.Flags().BoolVar(&waitFor, "wait", true, "Wait for keymint to empty the token's Secret.")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "How long to wait for keymint to empty the Secret.")
	return cmd
}

func revoke(ctx context.Context, c client.Client, o Options, ns, name string, yes, waitFor bool, timeout time.Duration) error {
	tok, err := getToken(ctx, c, ns, name)
	if err != nil {
		return err
	}
	out := o.Streams.Out
	if tok.Spec.Revoked && tok.Status.TokenHash == "" {
		fmt.Fprintf(out, "apitoken.keymint.io/%s already revoked\n", name)
		return nil
	}
	prefix := tok.Status.TokenPrefix
	if prefix == "" {
		prefix = "(none issued yet)"
	} else {
		prefix += "..."
	}
	if !tok.Spec.Revoked && !yes {
		if !o.isTerminal() {
			return fmt.Errorf("revoking apitoken %q cannot be undone: pass --yes to confirm (standard input is not a terminal, so there is no one to ask)", name)
		}
		fmt.Fprintf(o.Streams.ErrOut, "Revoke token %s of apitoken %s/%s (service user %s)? Checks refuse it at once and it never comes back. [y/N]: ",
			prefix, ns, name, tok.Spec.ServiceUser)
		answer, _ := bufio.NewReader(o.Streams.In).ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(answer)); a != "y" && a != "yes" {
			fmt.Fprintln(o.Streams.ErrOut, "Not revoked.")
			return &exitError{code: ExitFailed}
		}
	}
	if !tok.Spec.Revoked {
		patch := client.RawPatch(types.MergePatchType, []byte(`{"spec":{"revoked":true}}`))
		if err := c.Patch(ctx, tok, patch); err != nil {
			return apiError(err)
		}
	}
	fmt.Fprintf(out, "apitoken.keymint.io/%s revoked: checks refuse token %s from now on\n", name, prefix)
	if !waitFor {
		return nil
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		if err := c.Get(ctx, client.ObjectKeyFromObject(tok), tok); err != nil {
			return false, apiError(err)
		}
		return tok.Status.TokenHash == "" && meta.IsStatusConditionTrue(tok.Status.Conditions, keymintv1alpha1.ApiTokenConditionRevoked), nil
	})
	if err != nil {
		if ctx.Err() == nil && wait.Interrupted(err) {
			return fmt.Errorf("spec.revoked is set (checks refuse the token), but keymint has not emptied Secret %s within %s: is keymint running?", secretName(tok), timeout)
		}
		return err
	}
	fmt.Fprintf(out, "Secret %s emptied\n", secretName(tok))
	return nil
}

// secretName is the Secret the ApiToken's status names, else the one its
// spec does (spec.secretName, defaulting to the ApiToken's name).
func secretName(tok *keymintv1alpha1.ApiToken) string {
	if tok.Status.SecretName != "" {
		return tok.Status.SecretName
	}
	return tok.SecretNameOrDefault()
}

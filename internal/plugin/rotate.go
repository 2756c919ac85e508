package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

func newRotateCommand(o Options, k *kube) *cobra.Command {
	var waitFor bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "rotate NAME",
		Short: "Replace an ApiToken's token with a new one now",
		Long: `Replace an ApiToken's token with a new one now, the documented way: a new
value of the keymint.io/rotate annotation, which keymint handles once and
records in status.lastRotationRequest.

The old token stays accepted for the ApiToken's rotation.gracePeriod (0s by
default: it stops at once). rotate waits for keymint to rotate, up to
--timeout, and says what changed; --wait=false only asks.`,
		Example: `  kubectl keymint rotate billing-exporter-prod
  kubectl keymint rotate billing-exporter-prod -n payments --wait=false`,
		Args: exactlyOneName,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ns, err := k.target()
			if err != nil {
				return err
			}
			return rotate(cmd.Context(), c, o, ns, args[0], waitFor, timeout)
		},
	}
	cmd.Flags().BoolVar(&waitFor, "wait", true, "Wait for keymint to rotate and report the new token's prefix.")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "How long to wait for keymint to rotate.")
	return cmd
}

func rotate(ctx context.Context, c client.Client, o Options, ns, name string, waitFor bool, timeout time.Duration) error {
	before, err := getToken(ctx, c, ns, name)
	if err != nil {
		return err
	}
	if before.Spec.Revoked {
		// keymint handles no rotation request while revoked: waiting would
		// only time out.
		return fmt.Errorf("apitoken %q is revoked, so there is nothing to rotate: set spec.revoked back to false to mint a new token", name)
	}
	request := o.now().UTC().Format(time.RFC3339Nano)
	for request == before.Annotations[keymintv1alpha1.RotateAnnotation] || request == before.Status.LastRotationRequest {
		request += "+"
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"annotations": map[string]string{keymintv1alpha1.RotateAnnotation: request},
	}})
	if err != nil {
		return err
	}
	tok := before.DeepCopy()
	asked := o.now().Truncate(time.Second)
	if err := c.Patch(ctx, tok, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return apiError(err)
	}
	out := o.Streams.Out
	if !waitFor {
		fmt.Fprintf(out, "apitoken.keymint.io/%s rotation requested (%s=%s)\n", name, keymintv1alpha1.RotateAnnotation, request)
		return nil
	}

	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		if err := c.Get(ctx, client.ObjectKeyFromObject(tok), tok); err != nil {
			return false, apiError(err)
		}
		if denied := notAuthorizedSince(tok, asked); denied != "" {
			return false, fmt.Errorf("rotation requested (%s=%s), but keymint minted nothing: %s", keymintv1alpha1.RotateAnnotation, request, denied)
		}
		return tok.Status.LastRotationRequest == request, nil
	})
	if err != nil {
		if denied := notAuthorizedSince(tok, time.Time{}); ctx.Err() == nil && wait.Interrupted(err) && denied != "" {
			return fmt.Errorf("rotation requested (%s=%s), but keymint has not minted within %s: %s", keymintv1alpha1.RotateAnnotation, request, timeout, denied)
		}
		if ctx.Err() == nil && wait.Interrupted(err) {
			return fmt.Errorf("rotation requested (%s=%s), but keymint has not handled it within %s: is keymint running? `kubectl keymint status %s` shows when it has",
				keymintv1alpha1.RotateAnnotation, request, timeout, name)
		}
		return err
	}
	st := &tok.Status
	if st.TokenPrefix == "" || st.TokenHash == "" {
		fmt.Fprintf(out, "apitoken.keymint.io/%s handled the rotation request but holds no token now; `kubectl keymint status %s` says why\n", name, name)
		return nil
	}
	if before.Status.TokenHash == "" {
		fmt.Fprintf(out, "apitoken.keymint.io/%s issued: serial %d, prefix %s, in Secret %s\n", name, st.Serial, st.TokenPrefix, st.SecretName)
		return nil
	}
	fmt.Fprintf(out, "apitoken.keymint.io/%s rotated: serial %d -> %d, prefix %s -> %s, in Secret %s\n",
		name, before.Status.Serial, st.Serial, before.Status.TokenPrefix, st.TokenPrefix, st.SecretName)
	graceUntil := time.Time{}
	for _, p := range st.PreviousTokens {
		if p.TokenHash == before.Status.TokenHash {
			graceUntil = p.ValidUntil.Time
		}
	}
	if graceUntil.IsZero() {
		fmt.Fprintf(out, "The old token %s... is refused from now on (no rotation.gracePeriod).\n", before.Status.TokenPrefix)
	} else {
		fmt.Fprintf(out, "The old token %s... is accepted until %s (%s).\n",
			before.Status.TokenPrefix, graceUntil.UTC().Format(time.RFC3339), until(graceUntil, o.now(), "ended"))
	}
	return nil
}

// notAuthorizedSince returns the message of the token's Authorized=False
// or Approved=False condition when it last changed at or after since, else
// "": keymint may not mint for the requester, or waits for an approval.
func notAuthorizedSince(tok *keymintv1alpha1.ApiToken, since time.Time) string {
	for _, t := range []string{keymintv1alpha1.ApiTokenConditionAuthorized, keymintv1alpha1.ApiTokenConditionApproved} {
		c := meta.FindStatusCondition(tok.Status.Conditions, t)
		if c != nil && c.Status == metav1.ConditionFalse && !c.LastTransitionTime.Time.Before(since) {
			return c.Message
		}
	}
	return ""
}

// exactlyOneName is cobra.ExactArgs(1) with a message that names what is
// missing.
func exactlyOneName(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("%s takes exactly one ApiToken NAME (got %d arguments); see %s --help", cmd.Name(), len(args), cmd.CommandPath())
	}
	return nil
}

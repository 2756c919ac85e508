package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/approval"
	"github.com/keymint/keymint/internal/requester"
)

// newDecideCommand is approve (decision approval.Approve) or deny.
func newDecideCommand(o Options, k *kube, decision string) *cobra.Command {
	var message string
	var waitFor bool
	var timeout time.Duration
	verb, done := "Approve", "approved"
	if decision == approval.Deny {
		verb, done = "Deny", "denied"
	}
	cmd := &cobra.Command{
		Use:   decision + " NAME",
		Short: verb + " an ApiToken of a ServiceUser that requires approval",
		Long: verb + ` an ApiToken of a ServiceUser with tokenPolicy.requireApproval, as it is
requested now: annotation keymint.io/decision=` + decision + `, which keymint's admission
webhook turns into a signed record of who decided. It needs verb "approve" on
the ServiceUser (RBAC, resourceNames honoured) and "patch" on the ApiToken, and
is refused to the user who asked for the token. A denial is final for the
request; a changed spec is a new request. Any change that needs "mint"
(scopes, audiences, lifetime, a rotation request, un-revoking) needs a new
approval; revoking needs none.

kubectl's --as and --as-group decide as another user, as kubectl does.
` + "`kubectl keymint status --pending`" + ` lists the requests waiting.`,
		Example: `  kubectl keymint ` + decision + ` billing-exporter-prod -n payments
  kubectl keymint ` + decision + ` billing-exporter-prod -m "ticket OPS-123"`,
		Args: exactlyOneName,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ns, err := k.target()
			if err != nil {
				return err
			}
			return decide(cmd.Context(), c, o, ns, args[0], decision, message, done, waitFor && decision == approval.Approve, timeout)
		},
	}
	cmd.Flags().StringVarP(&message, "message", "m", "", fmt.Sprintf("Why (at most %d characters), kept with the decision.", approval.MaxMessage))
	if decision == approval.Approve {
		cmd.Flags().BoolVar(&waitFor, "wait", true, "Wait for keymint to act on the approval (mint, or accept the token again).")
		cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "How long to wait for keymint.")
	}
	return cmd
}

func decide(ctx context.Context, c client.Client, o Options, ns, name, decision, message, done string, waitFor bool, timeout time.Duration) error {
	tok, err := getToken(ctx, c, ns, name)
	if err != nil {
		return err
	}
	// The decision names the request read here, and the patch the version
	// read: a spec changed in between is refused, never decided unseen.
	var req requester.Record
	if err := json.Unmarshal([]byte(tok.Annotations[keymintv1alpha1.RequesterAnnotation]), &req); err != nil {
		return fmt.Errorf("apitoken %q has no request keymint recorded (annotation %s): nothing to decide", name, keymintv1alpha1.RequesterAnnotation)
	}
	annotations := map[string]any{keymintv1alpha1.DecisionAnnotation: decision, keymintv1alpha1.DecisionMessageAnnotation: nil,
		keymintv1alpha1.DecisionRequestAnnotation: req.ID()}
	if message != "" {
		annotations[keymintv1alpha1.DecisionMessageAnnotation] = message
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": annotations, "resourceVersion": tok.ResourceVersion}})
	if err != nil {
		return err
	}
	if err := c.Patch(ctx, tok, client.RawPatch(types.MergePatchType, patch)); err != nil {
		// A refusal is keymint's webhook's (who may not decide, and why)
		// or RBAC's (no patch on the ApiToken): the server's words say.
		if apierrors.IsConflict(err) {
			return fmt.Errorf("apitoken %q was not %s: it changed since it was read; review it again (kubectl keymint status --pending) and decide on it as it is now", name, done)
		}
		return fmt.Errorf("apitoken %q was not %s: %w", name, done, apiError(err))
	}
	fmt.Fprintf(o.Streams.Out, "apitoken.keymint.io/%s %s: the request of %q at %s, for %s\n", name, done,
		req.Requester.Username, req.RequestedAt.UTC().Format(time.RFC3339), grantSummary(&tok.Spec))
	if !waitFor {
		return nil
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		if err := c.Get(ctx, client.ObjectKeyFromObject(tok), tok); err != nil {
			return false, apiError(err)
		}
		c := meta.FindStatusCondition(tok.Status.Conditions, keymintv1alpha1.ApiTokenConditionApproved)
		return c != nil && c.Status == metav1.ConditionTrue && c.ObservedGeneration == tok.Generation &&
			meta.IsStatusConditionTrue(tok.Status.Conditions, keymintv1alpha1.ApiTokenConditionReady), nil
	})
	if err != nil {
		if ctx.Err() == nil && wait.Interrupted(err) {
			return fmt.Errorf("approved, but keymint has not issued or accepted the token within %s: `kubectl keymint status %s` says why", timeout, name)
		}
		return err
	}
	fmt.Fprintf(o.Streams.Out, "Token %s... in Secret %s is accepted.\n", tok.Status.TokenPrefix, tok.Status.SecretName)
	return nil
}

// grantSummary words what a token of spec may do, as an approver decides
// on it.
func grantSummary(s *keymintv1alpha1.ApiTokenSpec) string {
	scopes := listOrAll(s.Scopes)
	if len(s.Scopes) == 0 {
		scopes = "(all the ServiceUser's permissions, now and later)"
	}
	parts := []string{"ServiceUser " + s.ServiceUser, "scopes " + scopes, "audiences " + listOrAll(s.Audiences)}
	switch {
	case s.ExpiresAt != nil:
		parts = append(parts, "expiring at "+s.ExpiresAt.UTC().Format(time.RFC3339))
	case s.Lifetime != nil:
		parts = append(parts, "lifetime "+s.Lifetime.Duration.String())
	}
	if r := s.Rotation; r != nil && r.Every != nil {
		parts = append(parts, "rotated every "+r.Every.Duration.String())
	}
	if s.MaxIdle != nil {
		parts = append(parts, "maxIdle "+s.MaxIdle.Duration.String())
	}
	if len(s.AllowedSourceCIDRs) > 0 {
		parts = append(parts, "from "+strings.Join(s.AllowedSourceCIDRs, ","))
	}
	if len(s.Metadata) > 0 {
		keys := make([]string, 0, len(s.Metadata))
		for k := range s.Metadata {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		parts = append(parts, "metadata "+strings.Join(keys, ","))
	}
	return strings.Join(parts, ", ")
}

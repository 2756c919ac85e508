package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/cli-runtime/pkg/printers"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/tokenstate"
)

func newStatusCommand(o Options, k *kube) *cobra.Command {
	print := genericclioptions.NewPrintFlags("").WithTypeSetter(scheme)
	var allNamespaces, pending bool
	cmd := &cobra.Command{
		Use:   "status [NAME]",
		Short: "Show ApiTokens: state, expiry countdown, last use, prefix and rotation",
		Long: `Show ApiTokens with what checks make of them now: state, when the token
expires, when a check last accepted it, its public prefix and its rotation.

The state is decided by the same rules the check server applies (it reads the
ServiceUsers too; without the right to, it falls back to the conditions
keymint wrote). -o wide adds the Secret, the serial and the issue time;
-o json|yaml|name|jsonpath=...|go-template=... prints the objects.

--pending lists only the requests waiting for approval (ServiceUsers with
tokenPolicy.requireApproval: a new token, a changed spec, a rotation), with
who asked and what for: approve them with kubectl keymint approve NAME, or
deny them.`,
		Example: `  kubectl keymint status
  kubectl keymint status billing-exporter-prod -n payments
  kubectl keymint status -A -o wide
  kubectl keymint status --pending -A
  kubectl keymint status billing-exporter-prod -o yaml`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			output := *print.OutputFormat
			var printer printers.ResourcePrinter
			if output != "" && output != "wide" {
				p, err := print.ToPrinter()
				if err != nil {
					return err
				}
				printer = p
			}
			if allNamespaces && len(args) == 1 {
				return fmt.Errorf("a NAME cannot be looked up across all namespaces: drop -A, or drop the NAME")
			}
			c, ns, err := k.target()
			if err != nil {
				return err
			}
			if allNamespaces {
				ns = ""
			}
			return status(cmd.Context(), c, o, ns, args, output, printer, pending)
		},
	}
	print.AddFlags(cmd)
	cmd.Flags().BoolVarP(&allNamespaces, "all-namespaces", "A", false, "List the ApiTokens of every namespace.")
	cmd.Flags().BoolVar(&pending, "pending", false, "List only the tokens waiting for approval, with who asked and for what.")
	return cmd
}

func status(ctx context.Context, c client.Client, o Options, ns string, args []string, output string, printer printers.ResourcePrinter, pending bool) error {
	var tokens []keymintv1alpha1.ApiToken
	if len(args) == 1 {
		tok, err := getToken(ctx, c, ns, args[0])
		if err != nil {
			return err
		}
		tokens = append(tokens, *tok)
	} else {
		var list keymintv1alpha1.ApiTokenList
		if err := c.List(ctx, &list, client.InNamespace(ns)); err != nil {
			return apiError(err)
		}
		tokens = list.Items
	}

	if pending {
		waiting := tokens[:0:0]
		for i := range tokens {
			if hasReason(&tokens[i], keymintv1alpha1.ApiTokenConditionApproved, keymintv1alpha1.ApiTokenReasonPending) {
				waiting = append(waiting, tokens[i])
			}
		}
		tokens = waiting
	}

	if printer != nil {
		gvk := keymintv1alpha1.GroupVersion.WithKind("ApiToken")
		if len(args) == 1 {
			tokens[0].SetGroupVersionKind(gvk)
			return printer.PrintObj(&tokens[0], o.Streams.Out)
		}
		list := &keymintv1alpha1.ApiTokenList{Items: tokens}
		for i := range list.Items {
			list.Items[i].SetGroupVersionKind(gvk)
		}
		if output == "name" {
			// The name printer takes objects one at a time, as kubectl get
			// -o name prints a list.
			for i := range list.Items {
				if err := printer.PrintObj(&list.Items[i], o.Streams.Out); err != nil {
					return err
				}
			}
			return nil
		}
		return printer.PrintObj(list, o.Streams.Out)
	}

	if len(tokens) == 0 && pending {
		fmt.Fprintln(o.Streams.ErrOut, "No ApiTokens wait for approval.")
		return nil
	}
	if len(tokens) == 0 {
		if ns == "" {
			fmt.Fprintln(o.Streams.ErrOut, "No ApiTokens found.")
		} else {
			fmt.Fprintf(o.Streams.ErrOut, "No ApiTokens found in %s namespace.\n", ns)
		}
		return nil
	}
	users, err := serviceUsers(ctx, c, ns, tokens)
	if err != nil {
		return err
	}
	now := o.now()
	rows := make([]row, 0, len(tokens))
	for i := range tokens {
		tok := &tokens[i]
		var user *tokenstate.User
		if users != nil {
			u := users[types.NamespacedName{Namespace: tok.Namespace, Name: tok.Spec.ServiceUser}]
			user = &u
		}
		rows = append(rows, describe(tok, user, now))
	}
	if pending {
		return printPending(o.Streams, rows, tokens, ns)
	}
	return printTable(o.Streams.Out, rows, ns == "", output == "wide")
}

func getToken(ctx context.Context, c client.Client, ns, name string) (*keymintv1alpha1.ApiToken, error) {
	var tok keymintv1alpha1.ApiToken
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &tok); err != nil {
		if apierrors.IsNotFound(err) && !meta.IsNoMatchError(err) {
			return nil, fmt.Errorf("apitoken %q not found in namespace %q", name, ns)
		}
		return nil, apiError(err)
	}
	return &tok, nil
}

// serviceUsers reads the ServiceUsers the tokens belong to, as the check
// server sees them; a missing one reads as not found. It returns nil when
// the caller may not read ServiceUsers: the conditions are used instead.
func serviceUsers(ctx context.Context, c client.Client, ns string, tokens []keymintv1alpha1.ApiToken) (map[types.NamespacedName]tokenstate.User, error) {
	users := map[types.NamespacedName]tokenstate.User{}
	var list keymintv1alpha1.ServiceUserList
	var err error
	if len(tokens) == 1 {
		// One token: read its user only, which a narrower role may allow.
		var su keymintv1alpha1.ServiceUser
		key := client.ObjectKey{Namespace: tokens[0].Namespace, Name: tokens[0].Spec.ServiceUser}
		err = c.Get(ctx, key, &su)
		if err == nil {
			list.Items = append(list.Items, su)
		} else if apierrors.IsNotFound(err) {
			err = nil
		}
	} else {
		err = c.List(ctx, &list, client.InNamespace(ns))
	}
	switch {
	case apierrors.IsForbidden(err):
		return nil, nil
	case err != nil:
		return nil, apiError(err)
	}
	for i := range list.Items {
		su := &list.Items[i]
		users[types.NamespacedName{Namespace: su.Namespace, Name: su.Name}] = tokenstate.UserFrom(su)
	}
	return users, nil
}

// row is one line of the status table.
type row struct {
	Namespace, Name, ServiceUser, State, Expires, LastUsed, Prefix, Rotation string
	Secret, Serial, Issued, Quota                                            string
}

// describe renders a token as checks see it at now. user is its
// ServiceUser (Found false when it does not exist), nil when unknown.
func describe(tok *keymintv1alpha1.ApiToken, user *tokenstate.User, now time.Time) row {
	t := tokenstate.TokenFrom(&tok.Spec, &tok.Status)
	t.Deleting = tok.DeletionTimestamp != nil
	fromConditions := user == nil
	if fromConditions {
		// The user as the token was minted for it: the spec and the
		// recorded expiry still decide; the user's own state comes from
		// the Revoked condition below.
		user = &tokenstate.User{Found: true, UID: types.UID(tok.Status.ServiceUserUID)}
	}
	v := tokenstate.Evaluate(&t, user, now)
	if fromConditions && v.Revoked == "" {
		if c := meta.FindStatusCondition(tok.Status.Conditions, keymintv1alpha1.ApiTokenConditionRevoked); c != nil && c.Status == "True" {
			v.Revoked, v.Accepted = c.Reason, false
		}
	}

	r := row{
		Namespace: tok.Namespace, Name: tok.Name, ServiceUser: tok.Spec.ServiceUser,
		State: stateOf(tok, &t, &v), Expires: "-", LastUsed: "never", Prefix: "-", Rotation: "-",
		Secret: tok.Status.SecretName, Serial: "-", Issued: "-",
	}
	if r.Secret == "" {
		r.Secret = tok.SecretNameOrDefault()
	}
	if tok.Status.TokenPrefix != "" {
		r.Prefix = tok.Status.TokenPrefix
	}
	if tok.Status.Serial > 0 {
		r.Serial = strconv.FormatInt(tok.Status.Serial, 10)
	}
	if tok.Status.LastUsedAt != nil {
		r.LastUsed = ago(tok.Status.LastUsedAt.Time, now)
	}
	if t.Issued {
		r.Issued = ago(t.IssuedAt, now)
		r.Expires = "never"
		if v.Expires {
			r.Expires = until(v.Expiry, now, "expired")
		}
	}
	r.Rotation = rotationOf(tok, &t, user, &v, now)
	r.Quota = quotaOf(tok, user, now)
	return r
}

// quotaOf is what is left of the token's quota, as a check server last
// recorded it (status.quota: up to about a minute late), and when it
// refills; "-" without a quota. A count from a period that has ended, or
// for other uses than the quota's now, says nothing of this one.
func quotaOf(tok *keymintv1alpha1.ApiToken, user *tokenstate.User, now time.Time) string {
	q := tokenstate.QuotaOf(&tok.Spec, user)
	if q == nil {
		return "-"
	}
	left := q.Uses
	st := tok.Status.Quota
	current := st != nil && st.Uses == q.Uses && (st.RefillsAt == nil || now.Before(st.RefillsAt.Time))
	if current {
		left = st.Remaining
	}
	out := fmt.Sprintf("%d of %d left", left, q.Uses)
	switch {
	case q.Refill == nil:
		return out + ", no refill"
	case current && st.RefillsAt != nil:
		return out + ", refills in " + shortDuration(st.RefillsAt.Sub(now))
	}
	return out + ", refilled every " + shortDuration(q.Refill.Every.Duration)
}

// stateOf names the token's state with the API's own reasons, so that what
// the table says can be looked up in docs/api.md.
func stateOf(tok *keymintv1alpha1.ApiToken, t *tokenstate.Token, v *tokenstate.Verdict) string {
	switch {
	case v.Revoked == keymintv1alpha1.ApiTokenReasonRevokedBySpec:
		return "Revoked"
	case v.Revoked != "":
		return v.Revoked
	case hasReason(tok, keymintv1alpha1.ApiTokenConditionApproved, keymintv1alpha1.ApiTokenReasonDenied):
		return keymintv1alpha1.ApiTokenReasonApprovalDenied
	case v.Unapproved:
		return keymintv1alpha1.ApiTokenReasonAwaitingApproval
	case !t.Issued:
		if c := meta.FindStatusCondition(tok.Status.Conditions, keymintv1alpha1.ApiTokenConditionReady); c != nil && c.Status != "True" && c.Reason != "" {
			return c.Reason
		}
		return keymintv1alpha1.ApiTokenReasonPending
	case v.Expired:
		return "Expired"
	case v.Leaked:
		// Refused already; its replacement is on its way (or waits for
		// authorization: rotation says so).
		return keymintv1alpha1.ApiTokenReasonLeaked
	case meta.IsStatusConditionTrue(tok.Status.Conditions, keymintv1alpha1.ApiTokenConditionExpiringSoon):
		// Accepted, inside its expiry warning window, as keymint last wrote
		// (it knows the window: the user's policy, else its own flag).
		return keymintv1alpha1.ApiTokenConditionExpiringSoon
	}
	return "Ready"
}

// rotationOf says what comes next for the token's rotation: a request not
// yet handled, the next scheduled one, and rotated-out tokens still
// accepted.
func rotationOf(tok *keymintv1alpha1.ApiToken, t *tokenstate.Token, user *tokenstate.User, v *tokenstate.Verdict, now time.Time) string {
	var parts []string
	// A mint keymint would make but may not, for lack of the requester's
	// right: Ready stays True meanwhile, so say it here.
	if c := meta.FindStatusCondition(tok.Status.Conditions, keymintv1alpha1.ApiTokenConditionAuthorized); c != nil && c.Status == metav1.ConditionFalse && t.Issued {
		parts = append(parts, "blocked: "+c.Reason)
	}
	req := tok.Annotations[keymintv1alpha1.RotateAnnotation]
	switch {
	case req != "" && req != tok.Status.LastRotationRequest && v.Revoked == "":
		parts = append(parts, "requested")
	case v.Rotates && v.Revoked == "":
		parts = append(parts, until(v.NextRotation, now, "due"))
	}
	if old := tokenstate.StillAccepted(t, user, v, now); len(old) > 0 {
		last := old[len(old)-1].ValidUntil
		parts = append(parts, "old token accepted for "+shortDuration(last.Sub(now)))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

func printTable(out io.Writer, rows []row, withNamespace, wide bool) error {
	w := printers.GetNewTabWriter(out)
	header := []string{"NAME", "SERVICE USER", "STATE", "EXPIRES", "LAST USED", "PREFIX", "ROTATION"}
	if withNamespace {
		header = append([]string{"NAMESPACE"}, header...)
	}
	if wide {
		header = append(header, "SECRET", "SERIAL", "ISSUED", "QUOTA")
	}
	fmt.Fprintln(w, strings.Join(header, "\t"))
	for _, r := range rows {
		cells := []string{r.Name, r.ServiceUser, r.State, r.Expires, r.LastUsed, r.Prefix, r.Rotation}
		if withNamespace {
			cells = append([]string{r.Namespace}, cells...)
		}
		if wide {
			cells = append(cells, r.Secret, r.Serial, r.Issued, r.Quota)
		}
		fmt.Fprintln(w, strings.Join(cells, "\t"))
	}
	return w.Flush()
}

// hasReason reports whether tok's condition condType has reason.
func hasReason(tok *keymintv1alpha1.ApiToken, condType, reason string) bool {
	c := meta.FindStatusCondition(tok.Status.Conditions, condType)
	return c != nil && c.Reason == reason
}

// printPending lists the tokens waiting for approval: who asked (as
// keymint's admission recorded it), when, and what the token may do.
func printPending(streams genericiooptions.IOStreams, rows []row, tokens []keymintv1alpha1.ApiToken, ns string) error {
	if len(rows) == 0 {
		fmt.Fprintln(streams.ErrOut, "No ApiTokens wait for approval.")
		return nil
	}
	byName := map[types.NamespacedName]*keymintv1alpha1.ApiToken{}
	for i := range tokens {
		byName[types.NamespacedName{Namespace: tokens[i].Namespace, Name: tokens[i].Name}] = &tokens[i]
	}
	w := printers.GetNewTabWriter(streams.Out)
	header := "NAME\tSERVICE USER\tREQUESTED BY\tREQUESTED\tSCOPES\tAUDIENCES"
	if ns == "" {
		header = "NAMESPACE\t" + header
	}
	fmt.Fprintln(w, header)
	for _, r := range rows {
		tok := byName[types.NamespacedName{Namespace: r.Namespace, Name: r.Name}]
		var rec struct {
			Requester   struct{ Username string } `json:"requester"`
			RequestedAt metav1.Time               `json:"requestedAt"`
		}
		// Display only: keymint verifies the signature before acting on it.
		by, at := "?", "?"
		if json.Unmarshal([]byte(tok.Annotations[keymintv1alpha1.RequesterAnnotation]), &rec) == nil && rec.Requester.Username != "" {
			by, at = rec.Requester.Username, rec.RequestedAt.UTC().Format(time.RFC3339)
		}
		cells := []string{r.Name, r.ServiceUser, by, at, listOrAll(tok.Spec.Scopes), listOrAll(tok.Spec.Audiences)}
		if ns == "" {
			cells = append([]string{r.Namespace}, cells...)
		}
		fmt.Fprintln(w, strings.Join(cells, "\t"))
	}
	return w.Flush()
}

func listOrAll(l []string) string {
	if len(l) == 0 {
		return "(all)"
	}
	return strings.Join(l, ",")
}

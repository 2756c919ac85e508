// Package plugin is the kubectl keymint plugin: status, rotate, revoke and
// reveal act on ApiTokens through the user's kubeconfig, as kubectl does;
// scan finds keymint tokens in files. cmd/kubectl-keymint only calls Run.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/approval"
)

// Exit codes. Found is scan's answer when it finds a token; Failed is what
// any command returns on an error (scan's 2 keeps "found" apart from "could
// not look", and its 3 from "found, and keymint was not told").
const (
	ExitOK           = 0
	ExitFound        = 1
	ExitFailed       = 1
	ExitScanError    = 2
	ExitReportFailed = 3
)

// Options are what the plugin reads from its surroundings; tests replace
// them.
type Options struct {
	Streams genericiooptions.IOStreams
	// Now is the instant countdowns are counted from; time.Now when nil.
	Now func() time.Time
	// IsTerminal says whether In is an interactive terminal, where revoke
	// may ask for confirmation; a check of the file descriptor when nil.
	IsTerminal func(in io.Reader) bool
}

func (o *Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

func (o *Options) isTerminal() bool {
	if o.IsTerminal != nil {
		return o.IsTerminal(o.Streams.In)
	}
	f, ok := o.Streams.In.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// exitError carries an exit code other than ExitFailed, with or without a
// message of its own.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

// Run runs the plugin with args (without the program name) and returns its
// exit code. Errors are printed to Streams.ErrOut as kubectl prints them.
func Run(ctx context.Context, args []string, o Options) int {
	cmd := NewCommand(o)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintf(o.Streams.ErrOut, "error: %v\n", ee.err)
		}
		return ee.code
	}
	fmt.Fprintf(o.Streams.ErrOut, "error: %v\n", err)
	return ExitFailed
}

// NewCommand returns the root command with every subcommand.
func NewCommand(o Options) *cobra.Command {
	flags := genericclioptions.NewConfigFlags(true)
	root := &cobra.Command{
		Use:   "kubectl-keymint",
		Short: "Inspect and operate keymint ApiTokens, and scan files for leaked tokens",
		Long: `Inspect and operate keymint ApiTokens, and scan files for leaked tokens.

The cluster commands (status, rotate, revoke, reveal, approve, deny) use your kubeconfig as
kubectl does: --kubeconfig, --context, -n/--namespace and the other kubectl
connection flags. scan needs no cluster.`,
		Annotations:   map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl keymint"},
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(o.Streams.In)
	root.SetOut(o.Streams.Out)
	root.SetErr(o.Streams.ErrOut)
	flags.AddFlags(root.PersistentFlags())
	k := &kube{flags: flags}
	root.AddCommand(
		newStatusCommand(o, k),
		newRotateCommand(o, k),
		newRevokeCommand(o, k),
		newRevealCommand(o, k),
		newDecideCommand(o, k, approval.Approve),
		newDecideCommand(o, k, approval.Deny),
		newScanCommand(o),
	)
	return root
}

// scheme knows the built-in kinds (Secrets) and keymint's.
var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := keymintv1alpha1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}()

// kube makes the cluster client from the kubeconfig flags, once a command
// needs it (scan never does).
type kube struct {
	flags *genericclioptions.ConfigFlags
}

func (k *kube) client() (client.Client, error) {
	cfg, err := k.flags.ToRESTConfig()
	if err != nil {
		return nil, err
	}
	return client.New(cfg, client.Options{Scheme: scheme})
}

// target is the client and the namespace every cluster command acts in.
func (k *kube) target() (client.Client, string, error) {
	c, err := k.client()
	if err != nil {
		return nil, "", err
	}
	ns, err := k.namespace()
	return c, ns, err
}

// namespace is the one -n names, else the kubeconfig context's, else
// "default", as kubectl picks it.
func (k *kube) namespace() (string, error) {
	ns, _, err := k.flags.ToRawKubeConfigLoader().Namespace()
	return ns, err
}

// apiError makes an API error read as advice where there is one.
func apiError(err error) error {
	if meta.IsNoMatchError(err) {
		return fmt.Errorf("this cluster has no ApiToken kind (keymint.io/v1alpha1): are the keymint CRDs installed? (%w)", err)
	}
	return err
}

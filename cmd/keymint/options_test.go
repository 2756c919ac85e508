package main

import (
	"flag"
	"io"
	"strings"
	"testing"
)

// TestValidate: every flag error names the flag, and the defaults start.
func TestValidate(t *testing.T) {
	tests := map[string]struct {
		args    []string
		wantErr string // "" for valid
	}{
		"defaults":                      {},
		"self-managed certificates":     {args: []string{"--self-managed-certs"}},
		"cert-manager's files":          {args: []string{"--check-tls-cert-file=/tls/tls.crt", "--check-tls-key-file=/tls/tls.key"}},
		"staleness zero":                {args: []string{"--max-index-staleness=0s"}, wantErr: "--max-index-staleness must be positive"},
		"no requester webhook":          {args: []string{"--mutating-webhook-configuration="}, wantErr: "--mutating-webhook-configuration"},
		"authorization retry zero":      {args: []string{"--mint-authorization-retry=0s"}, wantErr: "--mint-authorization-retry must be positive"},
		"negative expiry warning":       {args: []string{"--expiry-warning=-1h"}, wantErr: "--expiry-warning must not be negative"},
		"expiry warning off":            {args: []string{"--expiry-warning=0s"}},
		"record key without namespace":  {args: []string{"--record-key-secret=keymint-record-key"}, wantErr: "--record-key-secret must be namespace/name"},
		"serving Secret without name":   {args: []string{"--self-managed-certs", "--serving-certs-secret=keymint-system/"}, wantErr: "--serving-certs-secret must be namespace/name"},
		"serving Secret unused":         {args: []string{"--serving-certs-secret=bad"}},
		"self-managed and a file":       {args: []string{"--self-managed-certs", "--webhook-tls-cert-file=/a/tls.crt", "--webhook-tls-key-file=/a/tls.key"}, wantErr: "--self-managed-certs makes its own certificate"},
		"webhook certificate alone":     {args: []string{"--webhook-tls-cert-file=/a/tls.crt"}, wantErr: "--webhook-tls-key-file"},
		"webhook pair in two places":    {args: []string{"--webhook-tls-cert-file=/a/tls.crt", "--webhook-tls-key-file=/b/tls.key"}, wantErr: "in one directory"},
		"webhook port out of range":     {args: []string{"--webhook-bind-address=:70000"}, wantErr: "--webhook-bind-address"},
		"webhook address without port":  {args: []string{"--webhook-bind-address=localhost"}, wantErr: "--webhook-bind-address"},
		"check server's own validation": {args: []string{"--default-requests-per-minute=0"}, wantErr: "requests"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			o := newOptions()
			fs := flag.NewFlagSet("keymint", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			o.bind(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			err := o.validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.wantErr != "" && err == nil:
				t.Errorf("accepted, want an error naming %q", tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Errorf("error %q does not name %q", err, tc.wantErr)
			}
		})
	}
}

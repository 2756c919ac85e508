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
		"defaults":                             {},
		"self-managed certificates":            {args: []string{"--self-managed-certs"}},
		"cert-manager's files":                 {args: []string{"--check-tls-cert-file=/tls/tls.crt", "--check-tls-key-file=/tls/tls.key"}},
		"staleness zero":                       {args: []string{"--max-index-staleness=0s"}, wantErr: "--max-index-staleness must be positive"},
		"no requester webhook":                 {args: []string{"--mutating-webhook-configuration="}, wantErr: "--mutating-webhook-configuration"},
		"authorization retry zero":             {args: []string{"--mint-authorization-retry=0s"}, wantErr: "--mint-authorization-retry must be positive"},
		"negative expiry warning":              {args: []string{"--expiry-warning=-1h"}, wantErr: "--expiry-warning must not be negative"},
		"expiry warning off":                   {args: []string{"--expiry-warning=0s"}},
		"record key without namespace":         {args: []string{"--record-key-secret=keymint-record-key"}, wantErr: "--record-key-secret must be namespace/name"},
		"serving Secret without name":          {args: []string{"--self-managed-certs", "--serving-certs-secret=keymint-system/"}, wantErr: "--serving-certs-secret must be namespace/name"},
		"serving Secret unused":                {args: []string{"--serving-certs-secret=bad"}},
		"self-managed and a file":              {args: []string{"--self-managed-certs", "--webhook-tls-cert-file=/a/tls.crt", "--webhook-tls-key-file=/a/tls.key"}, wantErr: "--self-managed-certs makes its own certificate"},
		"webhook certificate alone":            {args: []string{"--webhook-tls-cert-file=/a/tls.crt"}, wantErr: "--webhook-tls-key-file"},
		"webhook pair in two places":           {args: []string{"--webhook-tls-cert-file=/a/tls.crt", "--webhook-tls-key-file=/b/tls.key"}, wantErr: "in one directory"},
		"webhook port out of range":            {args: []string{"--webhook-bind-address=:70000"}, wantErr: "--webhook-bind-address"},
		"webhook address without port":         {args: []string{"--webhook-bind-address=localhost"}, wantErr: "--webhook-bind-address"},
		"check server's own validation":        {args: []string{"--default-requests-per-minute=0"}, wantErr: "requests"},
		"uses flushed too seldom for idleness": {args: []string{"--last-used-flush-interval=5m"}, wantErr: "--last-used-flush-interval must be positive and at most 1m0s"},
		"leak reports":                         {args: []string{"--leak-reports"}},
		"leak reports, all set": {args: []string{"--leak-reports", "--leak-report-gitlab-token-file=/gitlab/token",
			"--leak-report-requests-per-minute=60", "--leak-report-client-requests-per-minute=5", "--trusted-proxy-cidrs=10.0.0.0/8, fd00::/8,192.168.1.7"}},
		"GitLab token without leak reports": {args: []string{"--leak-report-gitlab-token-file=/gitlab/token"}, wantErr: "--leak-report-gitlab-token-file serves GitLab's Token Revocation API, which needs --leak-reports"},
		"leak report rate zero":             {args: []string{"--leak-reports", "--leak-report-requests-per-minute=0"}, wantErr: "--leak-report-requests-per-minute must be between 1 and"},
		"leak report rate too high":         {args: []string{"--leak-reports", "--leak-report-requests-per-minute=1000001"}, wantErr: "--leak-report-requests-per-minute must be between 1 and"},
		"leak report client rate negative":  {args: []string{"--leak-reports", "--leak-report-client-requests-per-minute=-1"}, wantErr: "--leak-report-client-requests-per-minute must be between 1 and"},
		"leak report rates unused":          {args: []string{"--leak-report-requests-per-minute=0"}},
		"trusted proxies not CIDRs":         {args: []string{"--trusted-proxy-cidrs=10.0.0.0/8,proxy.example"}, wantErr: `-trusted-proxy-cidrs: "proxy.example" is not a CIDR`},
		"trusted proxies past the bits":     {args: []string{"--trusted-proxy-cidrs=10.0.0.0/33"}, wantErr: `-trusted-proxy-cidrs: "10.0.0.0/33" is not a CIDR`},
		"trusted proxies everyone":          {args: []string{"--trusted-proxy-cidrs=0.0.0.0/0"}, wantErr: "--trusted-proxy-cidrs 0.0.0.0/0 trusts every address"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			o := newOptions()
			fs := flag.NewFlagSet("keymint", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			o.bind(fs)
			// A value a flag cannot take is refused as it is parsed.
			err := fs.Parse(tc.args)
			if err == nil {
				err = o.validate()
			}
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

// TestTrustedProxyCIDRs: the flag takes CIDRs and single addresses, comma
// separated and repeated, and keeps each masked.
func TestTrustedProxyCIDRs(t *testing.T) {
	o := newOptions()
	fs := flag.NewFlagSet("keymint", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.bind(fs)
	if err := fs.Parse([]string{"--trusted-proxy-cidrs=10.1.2.3/8, 192.168.1.7", "--trusted-proxy-cidrs=fd00::1/8,"}); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range o.check.TrustedProxies {
		got = append(got, p.String())
	}
	if want := "10.0.0.0/8 192.168.1.7/32 fd00::/8"; strings.Join(got, " ") != want {
		t.Errorf("trusted proxies %v, want %s", got, want)
	}
}

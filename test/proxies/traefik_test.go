package proxies

// traefik_test.go: config/traefik/dynamic.yaml, read strictly (an unknown
// field fails), then the requests Traefik's ForwardAuth middleware sends with
// it, replayed against a real check server; and config/traefik/middleware.yaml
// (the Kubernetes CRD) checked to say the same.
//
// What Traefik sends and does, from its ForwardAuth reference
// (docs/content/reference/routing-configuration/http/middlewares/forwardauth.md)
// and, where the page is silent, its source (pkg/middlewares/auth/forward.go,
// v3.7):
//   - "If the service answers with a 2XX code, access is granted, and the
//     original request is performed. Otherwise, the response from the
//     authentication server is returned": status, body, and every header but
//     the hop-by-hop ones (forward.go: CopyHeaders then RemoveHeaders).
//   - authResponseHeaders: "List of headers to copy from the authentication
//     server response and set on forwarded request, replacing any existing
//     conflicting headers" (forward.go deletes each first, sent or not).
//   - authRequestHeaders: "List of the headers to copy from the request to the
//     authentication server"; the Forward-Request Headers table: X-Forwarded-
//     Method, -Proto, -Host, -Uri and -For carry the request's properties.
//   - forward.go: the request is http.NewRequestWithContext(GET unless
//     preserveRequestMethod, the address as written, no body unless
//     forwardBody); with trustForwardHeader false the client's X-Forwarded-*
//     are deleted before the middleware sets its own, X-Forwarded-Port
//     included.

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

const (
	traefikDynamic = "config/traefik/dynamic.yaml"
	traefikCRD     = "config/traefik/middleware.yaml"
)

// The fields of Traefik's dynamic configuration the recipe may use, as
// pkg/config/dynamic names them; any other field fails the strict decode.
type traefikConfig struct {
	HTTP struct {
		Routers     map[string]traefikRouter     `json:"routers"`
		Middlewares map[string]traefikMiddleware `json:"middlewares"`
		Services    map[string]struct {
			LoadBalancer struct {
				Servers []struct {
					URL string `json:"url"`
				} `json:"servers"`
			} `json:"loadBalancer"`
		} `json:"services"`
	} `json:"http"`
}

type traefikRouter struct {
	EntryPoints []string `json:"entryPoints"`
	Rule        string   `json:"rule"`
	Middlewares []string `json:"middlewares"`
	Service     string   `json:"service"`
}

type traefikMiddleware struct {
	ForwardAuth *forwardAuth `json:"forwardAuth,omitempty"`
	Headers     *struct {
		CustomRequestHeaders map[string]string `json:"customRequestHeaders"`
	} `json:"headers,omitempty"`
}

type forwardAuth struct {
	Address string `json:"address"`
	TLS     *struct {
		CA       string `json:"ca,omitempty"`
		CASecret string `json:"caSecret,omitempty"`
	} `json:"tls,omitempty"`
	TrustForwardHeader    *bool    `json:"trustForwardHeader,omitempty"`
	AuthResponseHeaders   []string `json:"authResponseHeaders,omitempty"`
	AuthRequestHeaders    []string `json:"authRequestHeaders,omitempty"`
	MaxResponseBodySize   *int64   `json:"maxResponseBodySize,omitempty"`
	ForwardBody           bool     `json:"forwardBody,omitempty"`
	PreserveRequestMethod bool     `json:"preserveRequestMethod,omitempty"`
}

func loadTraefik(t *testing.T) *traefikConfig {
	t.Helper()
	raw, err := os.ReadFile(repoPath(t, traefikDynamic))
	if err != nil {
		t.Fatal(err)
	}
	var c traefikConfig
	if err := yaml.UnmarshalStrict(raw, &c); err != nil {
		t.Fatalf("%s: %v", traefikDynamic, err)
	}
	for name, r := range c.HTTP.Routers {
		if len(r.Middlewares) == 0 {
			t.Fatalf("router %s has no middleware: nothing checks its requests", name)
		}
		fa := c.HTTP.Middlewares[r.Middlewares[0]].ForwardAuth
		if fa == nil {
			t.Fatalf("router %s: its first middleware, %s, is not a forwardAuth", name, r.Middlewares[0])
		}
		if fa.TrustForwardHeader == nil || *fa.TrustForwardHeader || fa.ForwardBody || fa.PreserveRequestMethod {
			t.Fatalf("middleware %s: want trustForwardHeader false and neither forwardBody nor preserveRequestMethod", r.Middlewares[0])
		}
	}
	return &c
}

var pathPrefixRule = regexp.MustCompile("^PathPrefix\\(`([^`]+)`\\)$")

// router is the router Traefik picks for path: of those whose PathPrefix
// the path has, the one with the longest rule (Traefik's default priority is
// the rule's length).
func (c *traefikConfig) router(t *testing.T, path string) traefikRouter {
	t.Helper()
	var best traefikRouter
	for name, r := range c.HTTP.Routers {
		m := pathPrefixRule.FindStringSubmatch(r.Rule)
		if m == nil {
			t.Fatalf("router %s: the replay follows PathPrefix rules only, not %q", name, r.Rule)
		}
		if strings.HasPrefix(path, m[1]) && len(r.Rule) > len(best.Rule) {
			best = r
		}
	}
	if best.Rule == "" {
		t.Fatalf("no router for %s", path)
	}
	return best
}

// hopHeaders are the headers Traefik's forward.go drops both ways.
var hopHeaders = []string{"Connection", "Keep-Alive", "Te", "Trailers", "Transfer-Encoding", "Upgrade"}

// traefikAuthRequest is the request the forwardAuth middleware fa sends for the
// client's r (forward.go, writeHeader with trustForwardHeader false).
func traefikAuthRequest(t *testing.T, fa *forwardAuth, r *http.Request) *http.Request {
	t.Helper()
	out, err := http.NewRequestWithContext(context.Background(), http.MethodGet, fa.Address, nil)
	if err != nil {
		t.Fatalf("address %q: %v", fa.Address, err)
	}
	h := r.Header.Clone()
	for _, name := range hopHeaders {
		h.Del(name)
	}
	for name := range h {
		if strings.HasPrefix(name, "X-Forwarded-") || name == "X-Real-Ip" {
			h.Del(name)
		}
	}
	if _, ok := r.Header["User-Agent"]; !ok {
		h.Set("User-Agent", "")
	}
	if len(fa.AuthRequestHeaders) > 0 {
		kept := http.Header{}
		for _, name := range fa.AuthRequestHeaders {
			if vs := h.Values(name); len(vs) > 0 {
				kept[http.CanonicalHeaderKey(name)] = vs
			}
		}
		h = kept
	}
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		h.Set("X-Forwarded-For", ip)
	}
	h.Set("X-Forwarded-Method", r.Method)
	h.Set("X-Forwarded-Proto", "http")
	h.Set("X-Forwarded-Port", "80")
	h.Set("X-Forwarded-Host", r.Host)
	h.Set("X-Forwarded-Uri", r.URL.RequestURI())
	out.Header = h
	return out
}

// serve is Traefik's answer to the client's r: the router's forwardAuth asks
// keymint, then, on a pass, the router's other middlewares shape the request
// the application gets.
func (c *traefikConfig) serve(t *testing.T, k *keymint, r *http.Request) outcome {
	t.Helper()
	rt := c.router(t, r.URL.Path)
	fa := c.HTTP.Middlewares[rt.Middlewares[0]].ForwardAuth
	// Traefik's client: keymint's CA trusted (tls.ca), the address's host
	// checked against the certificate; here every connection goes to the
	// test's check server, whatever port the address names.
	if fa.TLS == nil || fa.TLS.CA == "" {
		t.Fatalf("middleware %s does not name keymint's CA", rt.Middlewares[0])
	}
	client := &http.Client{
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: k.roots, MinVersion: tls.VersionTLS12},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, k.addr)
			},
		},
	}
	defer client.CloseIdleConnections()
	resp, err := client.Do(traefikAuthRequest(t, fa, r))
	if err != nil {
		t.Fatalf("asking keymint as Traefik does: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if fa.MaxResponseBodySize != nil && int64(len(body)) > *fa.MaxResponseBodySize {
		return outcome{status: http.StatusUnauthorized, header: http.Header{}}
	}
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		header := resp.Header.Clone()
		for _, name := range hopHeaders {
			header.Del(name)
		}
		return outcome{status: resp.StatusCode, header: header, body: string(body)}
	}
	upstream := r.Header.Clone()
	for _, name := range fa.AuthResponseHeaders {
		name = http.CanonicalHeaderKey(name)
		upstream.Del(name)
		if vs := resp.Header[name]; len(vs) > 0 {
			upstream[name] = append([]string(nil), vs...)
		}
	}
	for _, name := range rt.Middlewares[1:] {
		m := c.HTTP.Middlewares[name]
		if m.Headers == nil {
			t.Fatalf("middleware %s: the replay follows forwardAuth and headers only", name)
		}
		for h, v := range m.Headers.CustomRequestHeaders {
			if v == "" {
				upstream.Del(h) // "Set a header to an empty value to remove it"
			} else {
				upstream.Set(h, v)
			}
		}
	}
	return outcome{passed: true, upstream: upstream, header: http.Header{}}
}

func TestTraefikRecipe(t *testing.T) {
	c := loadTraefik(t)
	k := startKeymint(t)
	testRecipe(t, k, func(t *testing.T, r *http.Request) outcome { return c.serve(t, k, r) })

	t.Run("the token's metadata reaches the application; a client's own header of that key never does", func(t *testing.T) {
		for tok, want := range map[string]string{"tagged": "payments", "exporter": ""} {
			got := c.serve(t, k, clientRequest(http.MethodGet, "/reports/2026", "Authorization", k.bearer(tok), "X-Keymint-Meta-Team", "admins"))
			if !got.passed || got.upstream.Get("X-Keymint-Meta-Team") != want {
				t.Errorf("%s: passed %v, the application sees X-Keymint-Meta-Team %q, want %q", tok, got.passed, got.upstream.Get("X-Keymint-Meta-Team"), want)
			}
		}
	})

	t.Run("keymint gets the token and the request's properties, nothing else of the client's", func(t *testing.T) {
		r := clientRequest(http.MethodDelete, "/reports/2026?x=1", "Authorization", k.bearer("exporter"),
			"Cookie", "session=secret", "X-Keymint-Scope", "invoices:read", "X-Forwarded-Uri", "/invoices/2026")
		got := traefikAuthRequest(t, c.HTTP.Middlewares[c.router(t, "/reports/2026").Middlewares[0]].ForwardAuth, r)
		want := http.Header{
			"Authorization":      {k.bearer("exporter")},
			"X-Forwarded-For":    {"192.0.2.7"},
			"X-Forwarded-Method": {"DELETE"},
			"X-Forwarded-Proto":  {"http"},
			"X-Forwarded-Port":   {"80"},
			"X-Forwarded-Host":   {"app.example.com"},
			"X-Forwarded-Uri":    {"/reports/2026?x=1"},
		}
		if got.Method != http.MethodGet || got.URL.Path != "/check" || got.URL.RawQuery != "scope=reports:write" || got.Body != nil || !reflect.DeepEqual(got.Header, want) {
			t.Errorf("Traefik sends keymint %s %s %v, want GET /check?scope=reports:write %v and no body", got.Method, got.URL, got.Header, want)
		}
	})
}

// TestTraefikCRDSaysWhatTheFileSays: the Kubernetes Middleware is the file
// provider's, with keymint's in-cluster address and a CA Secret.
func TestTraefikCRDSaysWhatTheFileSays(t *testing.T) {
	c := loadTraefik(t)
	raw, err := os.ReadFile(repoPath(t, traefikCRD))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for i, doc := range strings.Split(string(raw), "\n---\n") {
		var obj struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
			} `json:"metadata"`
			Spec traefikMiddleware `json:"spec"`
		}
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatalf("%s document %d: %v", traefikCRD, i+1, err)
		}
		if obj.Kind != "Middleware" {
			continue
		}
		if obj.APIVersion != "traefik.io/v1alpha1" {
			t.Errorf("%s: apiVersion %q", obj.Metadata.Name, obj.APIVersion)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), &struct {
			APIVersion string            `json:"apiVersion"`
			Kind       string            `json:"kind"`
			Metadata   map[string]string `json:"metadata"`
			Spec       traefikMiddleware `json:"spec"`
		}{}); err != nil {
			t.Errorf("%s: %v", obj.Metadata.Name, err)
		}
		seen[obj.Metadata.Name] = true
		file, ok := c.HTTP.Middlewares[obj.Metadata.Name]
		if !ok {
			t.Errorf("Middleware %s is not in %s", obj.Metadata.Name, traefikDynamic)
			continue
		}
		crd := obj.Spec
		if crd.ForwardAuth == nil {
			if !reflect.DeepEqual(crd, file) {
				t.Errorf("Middleware %s: %+v, the file says %+v", obj.Metadata.Name, crd, file)
			}
			continue
		}
		crdURL, err1 := url.Parse(crd.ForwardAuth.Address)
		fileURL, err2 := url.Parse(file.ForwardAuth.Address)
		if err1 != nil || err2 != nil || crdURL.Host != "keymint-webhook.keymint-system.svc" || crdURL.Scheme != "https" ||
			crdURL.Path != fileURL.Path || crdURL.RawQuery != fileURL.RawQuery {
			t.Errorf("Middleware %s: address %q, want https://keymint-webhook.keymint-system.svc%s?%s", obj.Metadata.Name, crd.ForwardAuth.Address, fileURL.Path, fileURL.RawQuery)
		}
		if crd.ForwardAuth.TLS == nil || crd.ForwardAuth.TLS.CASecret == "" || crd.ForwardAuth.TLS.CA != "" {
			t.Errorf("Middleware %s: want keymint's CA from a Secret (tls.caSecret)", obj.Metadata.Name)
		}
		a, b := *crd.ForwardAuth, *file.ForwardAuth
		a.Address, a.TLS, b.Address, b.TLS = "", nil, "", nil
		if !reflect.DeepEqual(a, b) {
			t.Errorf("Middleware %s: %+v, the file says %+v", obj.Metadata.Name, a, b)
		}
	}
	for _, name := range []string{"keymint-reports-write", "keymint-drop-token"} {
		if !seen[name] {
			t.Errorf("%s has no Middleware %s", traefikCRD, name)
		}
	}
}

package proxies

// envoy_test.go: config/envoy/envoy.yaml, read with Envoy's own API types
// (go-control-plane) and checked against Envoy's validation rules, then the
// requests Envoy's ext_authz HTTP service sends with it, replayed on the wire
// against a real check server.
//
// What Envoy sends and does, from the ext_authz API reference
// (api/envoy/extensions/filters/http/ext_authz/v3/ext_authz.proto, Envoy
// 1.36):
//   - ExtAuthz.allowed_headers: "For requests to an HTTP authorization
//     server: in addition to the user's supplied matchers, Host, Method,
//     Path, Content-Length, and Authorization are additionally included";
//     "the value of Content-Length will be set to 0 and the request to the
//     authorization server will not have a message body"; with
//     encode_raw_headers false (the default) "Headers with the same key will
//     have their values concatenated into a single comma-separated header".
//   - HttpService.path_prefix: "Sets a prefix to the value of authorization
//     request header Path" (the method is the client's: HttpService has no
//     method of its own before method_override, proposed in envoy#44564).
//   - AuthorizationRequest.headers_to_add: "client request headers with the
//     same key will be overridden".
//   - HttpService: "On authorization response status HTTP 200 OK, the filter
//     will allow traffic ... allowed_upstream_headers ... will be added to the
//     original client request. Note that coexistent headers will be
//     overridden"; allowed_client_headers_on_success go to the client's
//     response; "On other authorization response statuses, the filter will
//     not allow traffic. Additional headers metadata as well as body may be
//     added to the client's response"; allowed_client_headers: "When a header
//     is included in this list, Path, Status, Content-Length, WWWAuthenticate
//     and Location are automatically added".
//   - ExtAuthz.failure_mode_allow / status_on_error: a failed call "or if the
//     authorization service has returned a HTTP 5xx error" is answered
//     status_on_error.
//   - Route based filter chain (docs: intro/arch_overview/http/http_filters):
//     a filter with `disabled: true` runs only on routes whose
//     typed_per_filter_config configures it; FilterConfig{disabled: true}
//     turns a filter off on a route.

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	"github.com/keymint/keymint/webhook/check"
)

const envoyConfig = "config/envoy/envoy.yaml"

// envoyRecipe is the part of the bootstrap a request goes through.
type envoyRecipe struct {
	// strip are the request headers removed before the first ext_authz
	// filter (header_mutation).
	strip   []string
	filters []envoyFilter
	vhost   *routev3.VirtualHost
	tls     *tlsv3.UpstreamTlsContext
}

type envoyFilter struct {
	name     string
	disabled bool
	config   *extauthzv3.ExtAuthz
}

// validated is what proto messages generated with protoc-gen-validate offer.
type validated interface{ ValidateAll() error }

// validateAll runs Envoy's validation rules on m and on every message packed
// in an Any inside it (the rules of a message stop at its Any fields).
func validateAll(t *testing.T, where string, m proto.Message) {
	t.Helper()
	if v, ok := m.(validated); ok {
		if err := v.ValidateAll(); err != nil {
			t.Errorf("%s: %v", where, err)
		}
	}
	var walk func(where string, m protoreflect.Message)
	walk = func(where string, m protoreflect.Message) {
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			visit := func(where string, v protoreflect.Value) {
				if fd.Message() == nil {
					return
				}
				if fd.Message().FullName() == "google.protobuf.Any" {
					inner, err := v.Message().Interface().(*anypb.Any).UnmarshalNew()
					if err != nil {
						t.Errorf("%s: %v", where, err)
						return
					}
					validateAll(t, where+"<"+string(inner.ProtoReflect().Descriptor().FullName())+">", inner)
					return
				}
				walk(where, v.Message())
			}
			switch {
			case fd.IsList():
				for i := 0; i < v.List().Len(); i++ {
					visit(fmt.Sprintf("%s.%s[%d]", where, fd.Name(), i), v.List().Get(i))
				}
			case fd.IsMap():
				if fd.MapValue().Message() == nil {
					return true
				}
				v.Map().Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
					fd := fd.MapValue()
					if fd.Message().FullName() == "google.protobuf.Any" {
						inner, err := v.Message().Interface().(*anypb.Any).UnmarshalNew()
						if err != nil {
							t.Errorf("%s[%s]: %v", where, k, err)
							return true
						}
						validateAll(t, fmt.Sprintf("%s[%s]", where, k), inner)
						return true
					}
					walk(fmt.Sprintf("%s[%s]", where, k), v.Message())
					return true
				})
			default:
				visit(where+"."+string(fd.Name()), v)
			}
			return true
		})
	}
	walk(where, m.ProtoReflect())
}

// loadEnvoy reads the shipped bootstrap as Envoy does (YAML as JSON into its
// API types, unknown fields refused) and checks Envoy's validation rules.
func loadEnvoy(t *testing.T) *envoyRecipe {
	t.Helper()
	raw, err := os.ReadFile(repoPath(t, envoyConfig))
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		t.Fatalf("%s: %v", envoyConfig, err)
	}
	var boot bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &boot); err != nil {
		t.Fatalf("%s is not an Envoy v3 bootstrap: %v", envoyConfig, err)
	}
	validateAll(t, "bootstrap", &boot)
	if t.Failed() {
		t.FailNow()
	}

	listeners := boot.GetStaticResources().GetListeners()
	if len(listeners) != 1 || len(listeners[0].GetFilterChains()) != 1 || len(listeners[0].GetFilterChains()[0].GetFilters()) != 1 {
		t.Fatalf("want one listener with one filter chain of one filter, the HTTP connection manager")
	}
	var hcm hcmv3.HttpConnectionManager
	if err := listeners[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatal(err)
	}
	// A client's X_Keymint_User would reach a CGI-style application as its
	// X-Keymint-User: such headers are refused outright.
	if got := hcm.GetCommonHttpProtocolOptions().GetHeadersWithUnderscoresAction(); got != corev3.HttpProtocolOptions_REJECT_REQUEST {
		t.Errorf("headers_with_underscores_action is %v, want REJECT_REQUEST", got)
	}
	r := &envoyRecipe{}
	for _, f := range hcm.GetHttpFilters() {
		var ea extauthzv3.ExtAuthz
		var hm headermutationv3.HeaderMutation
		if f.GetTypedConfig().MessageIs(&hm) {
			if err := f.GetTypedConfig().UnmarshalTo(&hm); err != nil {
				t.Fatal(err)
			}
			if len(r.filters) > 0 || f.GetDisabled() || hm.GetMutations().GetResponseMutations() != nil {
				t.Fatalf("filter %s: the replay follows request header removal before the ext_authz filters only", f.GetName())
			}
			for _, m := range hm.GetMutations().GetRequestMutations() {
				if m.GetRemove() == "" {
					t.Fatalf("filter %s: the replay follows removals only, not %v", f.GetName(), m)
				}
				r.strip = append(r.strip, m.GetRemove())
			}
			continue
		}
		if f.GetTypedConfig().MessageIs(&ea) {
			if err := f.GetTypedConfig().UnmarshalTo(&ea); err != nil {
				t.Fatal(err)
			}
			r.filters = append(r.filters, envoyFilter{name: f.GetName(), disabled: f.GetDisabled(), config: &ea})
		}
	}
	if len(r.filters) == 0 || r.filters[0].disabled {
		t.Fatal("the first ext_authz filter must be on by default, so that a route checks tokens unless it says otherwise")
	}
	vhosts := hcm.GetRouteConfig().GetVirtualHosts()
	if len(vhosts) != 1 || len(vhosts[0].GetTypedPerFilterConfig()) != 0 {
		t.Fatal("want one virtual host, and filters turned on and off per route only")
	}
	r.vhost = vhosts[0]

	var keymint *clusterv3.Cluster
	for _, c := range boot.GetStaticResources().GetClusters() {
		if c.GetName() == "keymint" {
			keymint = c
		}
	}
	for _, f := range r.filters {
		if got := f.config.GetHttpService().GetServerUri().GetCluster(); got != "keymint" {
			t.Errorf("filter %s asks cluster %q, not keymint", f.name, got)
		}
		if f.config.GetFailureModeAllow() {
			t.Errorf("filter %s lets requests through when keymint cannot be asked", f.name)
		}
	}
	if keymint == nil || keymint.GetTransportSocket() == nil {
		t.Fatal("no keymint cluster over TLS")
	}
	r.tls = &tlsv3.UpstreamTlsContext{}
	if err := keymint.GetTransportSocket().GetTypedConfig().UnmarshalTo(r.tls); err != nil {
		t.Fatal(err)
	}
	// Envoy checks the certificate's names only against these matchers; the
	// replay checks it against the SNI, so they must say the same.
	sans := r.tls.GetCommonTlsContext().GetValidationContext().GetMatchTypedSubjectAltNames()
	if len(sans) != 1 || sans[0].GetMatcher().GetExact() != r.tls.GetSni() || r.tls.GetSni() == "" {
		t.Fatalf("keymint's certificate must be checked for the name sent as SNI (%q), got %v", r.tls.GetSni(), sans)
	}
	return r
}

// route is the first route whose prefix the path has.
func (e *envoyRecipe) route(t *testing.T, path string) *routev3.Route {
	t.Helper()
	for _, rt := range e.vhost.GetRoutes() {
		prefix := rt.GetMatch().GetPrefix()
		if prefix == "" && rt.GetMatch().GetPathSpecifier() != nil {
			t.Fatalf("route %v: the replay follows prefix routes only", rt.GetMatch())
		}
		if strings.HasPrefix(path, prefix) {
			return rt
		}
	}
	t.Fatalf("no route for %s", path)
	return nil
}

// active lists the ext_authz filters that run on rt, in chain order.
func (e *envoyRecipe) active(t *testing.T, rt *routev3.Route) []envoyFilter {
	t.Helper()
	var out []envoyFilter
	for _, f := range e.filters {
		on := !f.disabled
		if cfg, ok := rt.GetTypedPerFilterConfig()[f.name]; ok {
			var fc routev3.FilterConfig
			var per extauthzv3.ExtAuthzPerRoute
			switch {
			case cfg.MessageIs(&fc):
				if err := cfg.UnmarshalTo(&fc); err != nil {
					t.Fatal(err)
				}
				on = !fc.GetDisabled()
			case cfg.MessageIs(&per):
				if err := cfg.UnmarshalTo(&per); err != nil {
					t.Fatal(err)
				}
				if per.GetCheckSettings().GetHttpService() != nil || per.GetCheckSettings().GetGrpcService() != nil {
					t.Fatalf("route %s: the replay does not follow a service override", rt.GetMatch())
				}
				on = per.GetCheckSettings() != nil || !per.GetDisabled()
			default:
				t.Fatalf("route %s: per-filter config %s for %s", rt.GetMatch(), cfg.GetTypeUrl(), f.name)
			}
		}
		if on {
			out = append(out, f)
		}
	}
	return out
}

func matches(list *matcherv3.ListStringMatcher, name string) bool {
	for _, m := range list.GetPatterns() {
		s, want := name, ""
		switch {
		case m.GetExact() != "":
			want = m.GetExact()
		case m.GetPrefix() != "":
			want = m.GetPrefix()
		default:
			panic(fmt.Sprintf("the replay follows exact and prefix matchers only, not %v", m))
		}
		if m.GetIgnoreCase() {
			s, want = strings.ToLower(s), strings.ToLower(want)
		}
		if m.GetExact() != "" && s == want || m.GetPrefix() != "" && strings.HasPrefix(s, want) {
			return true
		}
	}
	return false
}

// envoyAuthRequest is the request filter f sends keymint for the client's r, as
// bytes on the wire: Envoy's HTTP/1 codec writes lower-case header names.
func envoyAuthRequest(f envoyFilter, r *http.Request) string {
	svc := f.config.GetHttpService()
	header := map[string]string{"host": r.Host, "content-length": "0"}
	for name, values := range r.Header {
		if strings.EqualFold(name, "Authorization") || matches(f.config.GetAllowedHeaders(), name) ||
			matches(svc.GetAuthorizationRequest().GetAllowedHeaders(), name) {
			header[strings.ToLower(name)] = strings.Join(values, ",")
		}
	}
	for _, h := range svc.GetAuthorizationRequest().GetHeadersToAdd() {
		header[strings.ToLower(h.GetKey())] = h.GetValue()
	}
	names := make([]string, 0, len(header))
	for name := range header {
		names = append(names, name)
	}
	sort.Strings(names)
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s%s HTTP/1.1\r\n", r.Method, svc.GetPathPrefix(), r.URL.RequestURI())
	for _, name := range names {
		fmt.Fprintf(&b, "%s: %s\r\n", name, header[name])
	}
	b.WriteString("\r\n")
	return b.String()
}

// ask sends keymint filter f's request for r, on a new TLS connection made
// as the keymint cluster makes it (the SNI named, keymint's CA trusted).
func (e *envoyRecipe) ask(t *testing.T, k *keymint, f envoyFilter, r *http.Request) (*http.Response, string) {
	t.Helper()
	conn, err := tls.Dial("tcp", k.addr, &tls.Config{ServerName: e.tls.GetSni(), RootCAs: k.roots, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("connecting to keymint as the keymint cluster does: %v", err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, envoyAuthRequest(f, r)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: r.Method})
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

// serve is Envoy's answer to the client's r: each ext_authz filter on the
// route asks keymint in turn, and the first refusal is the answer.
func (e *envoyRecipe) serve(t *testing.T, k *keymint, r *http.Request) outcome {
	t.Helper()
	rt := e.route(t, r.URL.Path)
	filters := e.active(t, rt)
	if len(filters) == 0 {
		t.Fatalf("route %s is checked by no ext_authz filter", rt.GetMatch())
	}
	upstream, client := r.Header.Clone(), http.Header{}
	for _, name := range e.strip {
		upstream.Del(name)
	}
	for _, f := range filters {
		resp, body := e.ask(t, k, f, r)
		ar := f.config.GetHttpService().GetAuthorizationResponse()
		switch {
		case resp.StatusCode == http.StatusOK:
			for name, values := range resp.Header {
				if matches(ar.GetAllowedUpstreamHeaders(), name) {
					upstream[name] = values
				}
				if matches(ar.GetAllowedClientHeadersOnSuccess(), name) {
					client[name] = values
				}
			}
		case resp.StatusCode >= 500:
			return outcome{status: int(f.config.GetStatusOnError().GetCode()), header: http.Header{}}
		default:
			// Without a list every header goes (but Host); with one, the
			// list's and those Envoy always adds.
			allowed, header := ar.GetAllowedClientHeaders(), http.Header{}
			for name, values := range resp.Header {
				auto := name == "Www-Authenticate" || name == "Location" || name == "Content-Length"
				if allowed == nil || auto || matches(allowed, name) {
					header[name] = values
				}
			}
			return outcome{status: resp.StatusCode, header: header, body: body}
		}
	}
	for _, name := range append(e.vhost.GetRequestHeadersToRemove(), rt.GetRequestHeadersToRemove()...) {
		upstream.Del(name)
	}
	return outcome{passed: true, upstream: upstream, header: client}
}

func TestEnvoyRecipe(t *testing.T) {
	e := loadEnvoy(t)
	k := startKeymint(t)
	testRecipe(t, k, func(t *testing.T, r *http.Request) outcome { return e.serve(t, k, r) })

	t.Run("the token's metadata reaches the application; a client's own identity and metadata headers never do", func(t *testing.T) {
		for tok, want := range map[string]string{"tagged": "payments", "exporter": ""} {
			got := e.serve(t, k, clientRequest(http.MethodGet, "/reports/2026", "Authorization", k.bearer(tok), "X-Keymint-Meta-Team", "admins"))
			if !got.passed || got.upstream.Get("X-Keymint-Meta-Team") != want {
				t.Errorf("%s: passed %v, the application sees X-Keymint-Meta-Team %q, want %q", tok, got.passed, got.upstream.Get("X-Keymint-Meta-Team"), want)
			}
		}
	})

	t.Run("a spent quota is answered 429 quota_exceeded, with the quota's headers at the client", func(t *testing.T) {
		o := e.serve(t, k, clientRequest(http.MethodGet, "/reports/2026", "Authorization", k.bearer("once")))
		if !o.passed || o.header.Get("X-Quota-Remaining") != "0" {
			t.Fatalf("%s; want its one use, X-Quota-Remaining 0 at the client", o)
		}
		o = e.serve(t, k, clientRequest(http.MethodGet, "/reports/2026", "Authorization", k.bearer("once")))
		if o.passed || o.status != http.StatusTooManyRequests || o.header.Get(check.HeaderError) != "quota_exceeded" ||
			o.header.Get("X-Quota-Limit") != "1" || o.header.Get("X-Quota-Remaining") != "0" {
			t.Errorf("%s; want 429 quota_exceeded with X-Quota-Limit 1 and X-Quota-Remaining 0", o)
		}
	})

	t.Run("a pass gives the client the caller's rate", func(t *testing.T) {
		o := e.serve(t, k, clientRequest(http.MethodGet, "/reports/2026", "Authorization", k.bearer("exporter")))
		if !o.passed || o.header.Get("X-RateLimit-Limit") != "500" || o.header.Get("X-RateLimit-Remaining") == "" {
			t.Errorf("%s; want X-RateLimit-Limit 500 and X-RateLimit-Remaining at the client", o)
		}
	})
	t.Run("keymint gets the token and the route's scope, nothing else of the client's", func(t *testing.T) {
		r := clientRequest(http.MethodDelete, "/reports/2026?x=1", "Authorization", k.bearer("exporter"),
			"Cookie", "session=secret", check.HeaderScope, "invoices:read", "X-Forwarded-Authorization", "Bearer other")
		got := envoyAuthRequest(e.active(t, e.route(t, "/reports/2026"))[0], r)
		want := "DELETE /check/envoy/reports/2026?x=1 HTTP/1.1\r\n" +
			"authorization: " + k.bearer("exporter") + "\r\n" +
			"content-length: 0\r\nhost: app.example.com\r\nx-keymint-scope: reports:write\r\n\r\n"
		if got != want {
			t.Errorf("Envoy sends keymint\n%q\nwant\n%q", got, want)
		}
	})
}

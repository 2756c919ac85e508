package main

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// A fake gateway answering as etcd 3.6's does: int64 fields as strings,
// zeros left out, errors as {"error","code","message"}.
func TestEtcdGateway(t *testing.T) {
	var compacted []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req map[string]any
		if err := json.Unmarshal(body, &req); err != nil || r.Method != http.MethodPost {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		switch r.URL.Path {
		case "/v3/maintenance/status":
			io.WriteString(w, `{"header":{"cluster_id":"1","revision":"4242"},"version":"3.6.16","dbSize":"20480","dbSizeInUse":"16384","dbSizeQuota":"2147483648"}`)
		case "/v3/kv/compaction":
			if req["physical"] != true {
				t.Errorf("compaction not physical: %s", body)
			}
			compacted = append(compacted, req["revision"].(string))
			if req["revision"] == "1" {
				w.WriteHeader(http.StatusBadRequest)
				io.WriteString(w, `{"error":"etcdserver: mvcc: required revision has been compacted","code":11,"message":"etcdserver: mvcc: required revision has been compacted"}`)
				return
			}
			io.WriteString(w, `{"header":{"revision":"4242"}}`)
		case "/v3/kv/range":
			key, _ := base64.StdEncoding.DecodeString(req["key"].(string))
			end, _ := base64.StdEncoding.DecodeString(req["range_end"].(string))
			if req["count_only"] != true {
				t.Errorf("range not count_only: %s", body)
			}
			switch string(key) + " " + string(end) {
			case "/registry/events/ /registry/events0":
				io.WriteString(w, `{"header":{"revision":"4242"},"count":"7"}`)
			default:
				io.WriteString(w, `{"header":{"revision":"4242"}}`) // no count: none
			}
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	g := newEtcdGateway(srv.URL + "/")
	ctx := t.Context()

	st, err := g.status(ctx)
	if want := (etcdStatus{Revision: 4242, DBSize: 20480, DBSizeInUse: 16384, DBSizeQuota: 2 << 30}); err != nil || st != want {
		t.Errorf("status = %+v, %v; want %+v", st, err, want)
	}
	if err := g.compact(ctx, 4242); err != nil {
		t.Errorf("compact: %v", err)
	}
	if err := g.compact(ctx, 1); err != nil {
		t.Errorf("compact at a revision already compacted: %v", err)
	}
	if strings.Join(compacted, ",") != "4242,1" {
		t.Errorf("compacted at %v", compacted)
	}
	if n, err := g.count(ctx, "/registry/events/"); n != 7 || err != nil {
		t.Errorf("count of events = %d, %v; want 7", n, err)
	}
	if n, err := g.count(ctx, "/registry/secrets/"); n != 0 || err != nil {
		t.Errorf("count of secrets = %d, %v; want 0", n, err)
	}
	if err := g.defragment(ctx); err == nil || err.Error() != "etcd /v3/maintenance/defragment: 404 Not Found: 404 page not found" {
		t.Errorf("defragment on a gateway without it: %v", err)
	}
	p, err := g.measure(ctx)
	if err != nil || p.history != 16384 || p.live != 16384 || p.keys.events != 7 || p.quota != 2<<30 {
		t.Errorf("measure = %+v, %v", p, err)
	}
}

func TestPrefixEnd(t *testing.T) {
	for in, want := range map[string]string{"/registry/": "/registry0", "a\xff": "b", "\xff\xff": "\x00"} {
		if got := string(prefixEnd(in)); got != want {
			t.Errorf("prefixEnd(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestEtcdReport(t *testing.T) {
	var b strings.Builder
	etcdReport(&b, []memoryPoint{
		{tokens: 0, etcd: etcdPoint{history: 10 << 20, live: 8 << 20, dbSize: 12 << 20, quota: 2 << 30, keys: etcdKeys{events: 100}}},
		{tokens: 10_000, etcd: etcdPoint{history: 200 << 20, live: 50 << 20, quota: 2 << 30, keys: etcdKeys{events: 20_100, floorTokens: 3_000}}},
		{tokens: 100_000, etcd: etcdPoint{history: 900 << 20, live: 400 << 20, dbSize: 1 << 30, quota: 2 << 30,
			keys: etcdKeys{all: 300_000, apiTokens: 100_000, floorTokens: 3_000, secrets: 103_000, events: 200_100}}},
	})
	for _, want := range []string{
		"**What etcd holds per token** (measured: etcd's in-use size from its maintenance API, after a physical compaction",
		"Per token counts the 3,000 ApiTokens of the issuance floor too",
		"| 0 (baseline) | 8.0 MiB | | 10.0 MiB | | 100 | |",
		"| 10000 | 50.0 MiB | 3.31 KB | 200.0 MiB | 14.97 KB | 20100 | 2.00 |",
		"| 100000 | 400.0 MiB | 3.90 KB | 900.0 MiB | 8.85 KB | 200100 | 2.00 |",
		"At 3.90 KB live per token (100,000 tokens), etcd's quota holds about 538,122 tokens at 2 GiB",
		"and 2,152,489 at 8 GiB",
		"a file of 1024.0 MiB after the compaction, 400.0 MiB in use",
		"300,000 under `/registry/`, of which 100,000 keymint ApiTokens, 3,000 floor ApiTokens, 103,000 Secrets, 200,100 Events.",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("etcd block lacks %q:\n%s", want, b.String())
		}
	}
}

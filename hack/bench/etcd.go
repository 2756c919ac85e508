package main

// etcd.go: what the control plane's etcd holds, read through etcd's JSON
// gRPC gateway on its client URL (plain HTTP in envtest): the size of its
// database, before and after a physical compaction, and the keys under a
// few resource prefixes.

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// etcdGateway calls etcd's JSON gateway: POST /v3/<service>/<method> with
// the request as JSON; int64 fields are JSON strings, bytes base64.
type etcdGateway struct {
	url  string // the client URL, such as http://127.0.0.1:2379
	http *http.Client
}

func newEtcdGateway(url string) *etcdGateway {
	return &etcdGateway{url: strings.TrimSuffix(url, "/"), http: &http.Client{}}
}

// etcd is the gateway of the cluster's etcd.
func (cl *cluster) etcd() (*etcdGateway, error) {
	if e := cl.env.ControlPlane.Etcd; e != nil && e.URL != nil {
		return newEtcdGateway(e.URL.String()), nil
	}
	return nil, errors.New("etcd: the control plane has no client URL")
}

// gwInt is an int64 as the gateway writes it: a JSON string ("123"), or a
// number. An absent field (the gateway leaves out zeros) stays 0.
type gwInt int64

func (v *gwInt) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if s == "null" || s == "" {
		return nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return fmt.Errorf("not an int64: %s", b)
	}
	*v = gwInt(n)
	return nil
}

// call posts req to path and decodes the answer into resp (nil: drop it).
// An error names the method and carries the gateway's message.
func (g *etcdGateway) call(ctx context.Context, path string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, g.url+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	r.Header.Set("Content-Type", "application/json")
	res, err := g.http.Do(r)
	if err != nil {
		return fmt.Errorf("etcd %s: %w", path, err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		return fmt.Errorf("etcd %s: reading the answer: %w", path, err)
	}
	if res.StatusCode != http.StatusOK {
		var e struct {
			Message string `json:"message"`
			Error   string `json:"error"`
		}
		if json.Unmarshal(data, &e) == nil && (e.Message != "" || e.Error != "") {
			return fmt.Errorf("etcd %s: %s: %s", path, res.Status, cmp.Or(e.Message, e.Error))
		}
		return fmt.Errorf("etcd %s: %s: %.200s", path, res.Status, bytes.TrimSpace(data))
	}
	if resp == nil {
		return nil
	}
	if err := json.Unmarshal(data, resp); err != nil {
		return fmt.Errorf("etcd %s: decoding %.200s: %w", path, data, err)
	}
	return nil
}

// etcdStatus is what /v3/maintenance/status says of the member.
type etcdStatus struct {
	Revision    int64 // the store's current revision
	DBSize      int64 // the database file, free pages included
	DBSizeInUse int64 // the pages in use
	DBSizeQuota int64 // the backend quota: the NOSPACE alarm fires when DBSize reaches it
}

func (g *etcdGateway) status(ctx context.Context) (etcdStatus, error) {
	var r struct {
		Header struct {
			Revision gwInt `json:"revision"`
		} `json:"header"`
		DBSize      gwInt `json:"dbSize"`
		DBSizeInUse gwInt `json:"dbSizeInUse"`
		DBSizeQuota gwInt `json:"dbSizeQuota"`
	}
	if err := g.call(ctx, "/v3/maintenance/status", struct{}{}, &r); err != nil {
		return etcdStatus{}, err
	}
	if r.Header.Revision == 0 || r.DBSize == 0 {
		return etcdStatus{}, fmt.Errorf("etcd /v3/maintenance/status: no revision or dbSize in the answer")
	}
	return etcdStatus{Revision: int64(r.Header.Revision), DBSize: int64(r.DBSize),
		DBSizeInUse: int64(r.DBSizeInUse), DBSizeQuota: int64(r.DBSizeQuota)}, nil
}

// compact drops every revision before rev, physically: etcd answers once
// the compacted entries are gone from its database. A rev that is already
// compacted is no error: there is nothing more to drop.
func (g *etcdGateway) compact(ctx context.Context, rev int64) error {
	err := g.call(ctx, "/v3/kv/compaction", map[string]any{"revision": strconv.FormatInt(rev, 10), "physical": true}, nil)
	if err != nil && strings.Contains(err.Error(), "required revision has been compacted") {
		return nil
	}
	return err
}

// defragment rewrites the database file without its free pages: dbSize
// falls to about dbSizeInUse.
func (g *etcdGateway) defragment(ctx context.Context) error {
	return g.call(ctx, "/v3/maintenance/defragment", struct{}{}, nil)
}

// count is the number of keys under prefix, at the current revision.
func (g *etcdGateway) count(ctx context.Context, prefix string) (int64, error) {
	var r struct {
		Count gwInt `json:"count"`
	}
	req := map[string]any{
		"key":        base64.StdEncoding.EncodeToString([]byte(prefix)),
		"range_end":  base64.StdEncoding.EncodeToString(prefixEnd(prefix)),
		"count_only": true,
	}
	if err := g.call(ctx, "/v3/kv/range", req, &r); err != nil {
		return 0, fmt.Errorf("counting %s: %w", prefix, err)
	}
	return int64(r.Count), nil
}

// prefixEnd is the range end that covers every key starting with prefix:
// the prefix with its last byte below 0xff incremented (etcd's GetPrefixRangeEnd).
func prefixEnd(prefix string) []byte {
	end := []byte(prefix)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return []byte{0} // every key from prefix on
}

// inUseSettled reads dbSizeInUse until it stops falling: pages a compaction
// frees become free only once no read transaction may still see them, a
// commit or two later. It waits at most about 10 s.
func (g *etcdGateway) inUseSettled(ctx context.Context) (int64, error) {
	st, err := g.status(ctx)
	if err != nil {
		return 0, err
	}
	last := st.DBSizeInUse
	for range 20 {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
		if st, err = g.status(ctx); err != nil {
			return 0, err
		}
		if st.DBSizeInUse >= last {
			return min(last, st.DBSizeInUse), nil
		}
		last = st.DBSizeInUse
	}
	return last, nil
}

// etcdKeys counts keys under kube-apiserver's prefixes.
type etcdKeys struct {
	all, apiTokens, floorTokens, secrets, events int64
}

// etcdPoint is what etcd holds at one memory point.
type etcdPoint struct {
	history int64 // dbSizeInUse as found: every revision since the last compaction
	live    int64 // dbSizeInUse after a physical compaction at the current revision
	dbSize  int64 // the database file after the compaction (not defragmented)
	quota   int64
	keys    etcdKeys
}

// measure records what etcd holds now, with its history, then compacts it
// at the current revision and records what is left: the current objects.
// kube-apiserver keeps compacting every 5 minutes on its own; a compaction
// of its at an older revision than this one fails harmlessly.
func (g *etcdGateway) measure(ctx context.Context) (etcdPoint, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	st, err := g.status(ctx)
	if err != nil {
		return etcdPoint{}, err
	}
	p := etcdPoint{history: st.DBSizeInUse, quota: st.DBSizeQuota}
	if err := g.compact(ctx, st.Revision); err != nil {
		return etcdPoint{}, err
	}
	if p.live, err = g.inUseSettled(ctx); err != nil {
		return etcdPoint{}, err
	}
	if st, err = g.status(ctx); err != nil {
		return etcdPoint{}, err
	}
	p.dbSize = st.DBSize
	// The file keeps the pages the compaction freed: should it near the
	// quota, rewrite it, lest the next points raise etcd's NOSPACE alarm.
	if p.quota > 0 && st.DBSize > p.quota/2 {
		if err := g.defragment(ctx); err != nil {
			return etcdPoint{}, err
		}
	}
	for _, c := range []struct {
		n      *int64
		prefix string
	}{
		{&p.keys.all, "/registry/"},
		{&p.keys.apiTokens, "/registry/keymint.io/apitokens/"},
		{&p.keys.floorTokens, "/registry/" + floorGroup + "/apitokens/"},
		{&p.keys.secrets, "/registry/secrets/"},
		{&p.keys.events, "/registry/events/"},
	} {
		if *c.n, err = g.count(ctx, c.prefix); err != nil {
			return etcdPoint{}, err
		}
	}
	return p, nil
}

// etcdReport is the paragraph and table of what etcd holds per token. Per
// token divides by the ApiTokens added since the baseline: keymint's (the
// memory table's count) and the issuance floor's, which etcd holds with
// their Secrets just the same; Events by keymint's alone.
func etcdReport(b *strings.Builder, points []memoryPoint) {
	if len(points) < 2 {
		return
	}
	base, last := points[0], points[len(points)-1]
	floor := last.etcd.keys.floorTokens - base.etcd.keys.floorTokens
	b.WriteString("**What etcd holds per token** (measured: etcd's in-use size from its maintenance API, after a physical compaction " +
		"at the current revision, against the same cluster with no token; and before it, with the revisions kept since the last compaction, " +
		"kube-apiserver's every 5 minutes or the previous row's)")
	if floor > 0 {
		fmt.Fprintf(b, ". Per token counts the %s ApiTokens of the issuance floor too, stored with their Secrets alike; Events, keymint's alone", thousands(int(floor)))
	}
	b.WriteString(".\n\n")
	b.WriteString("| tokens | live in-use | per token | with history | per token | Events in etcd | per token |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|---:|\n")
	var live float64
	for _, p := range points {
		e := p.etcd
		if p.tokens == base.tokens {
			fmt.Fprintf(b, "| %d (baseline) | %s | | %s | | %d | |\n", p.tokens, mib(e.live), mib(e.history), e.keys.events)
			continue
		}
		n := float64(p.tokens-base.tokens) + float64(e.keys.floorTokens-base.etcd.keys.floorTokens)
		live = float64(e.live-base.etcd.live) / n
		hist := float64(e.history-base.etcd.history) / n
		events := float64(e.keys.events-base.etcd.keys.events) / float64(p.tokens-base.tokens)
		fmt.Fprintf(b, "| %d | %s | %s | %s | %s | %d | %.2f |\n", p.tokens, mib(e.live), kb(live), mib(e.history), kb(hist), e.keys.events, events)
	}
	b.WriteString("\n")
	if live <= 0 {
		return
	}
	quota := last.etcd.quota
	if quota <= 0 {
		quota = 2 << 30
	}
	fmt.Fprintf(b, "At %s live per token (%s tokens), etcd's quota holds about %s tokens at %s (this cluster's, etcd's default) and %s at 8 GiB "+
		"(quota ÷ per token). etcd raises its NOSPACE alarm and refuses writes when its database file reaches the quota; the file also holds "+
		"the history between compactions and the free pages until a defragmentation, so the alarm comes sooner (here, at %s tokens, "+
		"a file of %s after the compaction, %s in use).\n\n",
		kb(live), thousands(last.tokens), thousands(int(float64(quota)/live)), gib(quota), thousands(int(float64(8<<30)/live)),
		thousands(last.tokens), mib(last.etcd.dbSize), mib(last.etcd.live))
	k := last.etcd.keys
	fmt.Fprintf(b, "Keys in etcd at %s tokens: %s under `/registry/`, of which %s keymint ApiTokens, %s floor ApiTokens, %s Secrets, %s Events.\n\n",
		thousands(last.tokens), thousands(int(k.all)), thousands(int(k.apiTokens)), thousands(int(k.floorTokens)), thousands(int(k.secrets)), thousands(int(k.events)))
}

func gib(v int64) string { return strconv.FormatFloat(float64(v)/(1<<30), 'f', -1, 64) + " GiB" }

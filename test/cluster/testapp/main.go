// Command testapp plays both sides of a workload that keymint protects, for
// the in-cluster suite:
//
//	testapp protected: an HTTP service that asks keymint's /check about the
//	  bearer token of every request and answers with /check's status; it
//	  counts the answers, by token fingerprint, at /stats.
//	testapp client: calls a URL over and over with the token in a mounted
//	  Secret's file, re-read for each call, and counts the answers at /stats.
//
// A fingerprint is the first 12 hex digits of the token's SHA-256: enough to
// tell tokens apart, never the token.
package main

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		log.Fatal("usage: testapp protected|client [flags]")
	}
	mode, args := os.Args[1], os.Args[2:]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	listen := fs.String("listen", ":8080", "address to serve on")
	checkURL := fs.String("check-url", "", "protected: keymint's /check URL")
	caFile := fs.String("ca", "", "protected: CA bundle that signed keymint's serving certificate")
	target := fs.String("target", "", "client: URL to call")
	tokenFile := fs.String("token-file", "/var/run/secrets/keymint/token", "client: file holding the token")
	interval := fs.Duration("interval", 100*time.Millisecond, "client: time between calls")
	_ = fs.Parse(args)

	st := &stats{Status: map[string]int{}, Fingerprints: map[string]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/stats", st.serve)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	switch mode {
	case "protected":
		client, err := checkClient(*caFile)
		if err != nil {
			log.Fatal(err)
		}
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			code := check(client, *checkURL, r.Header.Get("Authorization"))
			st.add(code, fingerprint(strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")))
			w.WriteHeader(code)
			fmt.Fprintf(w, "keymint answered %d\n", code)
		})
	case "client":
		go func() {
			for {
				st.add(call(*target, *tokenFile))
				time.Sleep(*interval)
			}
		}()
	default:
		log.Fatalf("unknown mode %q", mode)
	}
	srv := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	log.Fatal(srv.ListenAndServe())
}

// stats counts answers by HTTP status and by token fingerprint.
type stats struct {
	mu           sync.Mutex
	Status       map[string]int `json:"status"`
	Fingerprints map[string]int `json:"fingerprints"`
}

func (s *stats) add(code int, fp string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Status[fmt.Sprint(code)]++
	if fp != "" {
		s.Fingerprints[fp]++
	}
}

func (s *stats) serve(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(s)
}

func fingerprint(token string) string {
	if token == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:6])
}

func checkClient(caFile string) (*http.Client, error) {
	pool := x509.NewCertPool()
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate in %s", caFile)
		}
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
	}}, nil
}

// check asks keymint about authorization and returns its status, or 502
// when keymint could not be reached.
func check(client *http.Client, url, authorization string) int {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return http.StatusInternalServerError
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := client.Do(req)
	if err != nil {
		log.Printf("check: %v", err)
		return http.StatusBadGateway
	}
	resp.Body.Close()
	return resp.StatusCode
}

var plainClient = &http.Client{Timeout: 5 * time.Second}

// call sends one request with the token in tokenFile and returns the status
// (0 when the request failed) and the token's fingerprint.
func call(target, tokenFile string) (int, string) {
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		log.Printf("reading token: %v", err)
		return 0, ""
	}
	t := strings.TrimSpace(string(token))
	req, err := http.NewRequest(http.MethodGet, target, nil)
	if err != nil {
		return 0, ""
	}
	req.Header.Set("Authorization", "Bearer "+t)
	resp, err := plainClient.Do(req)
	if err != nil {
		log.Printf("call: %v", err)
		return 0, fingerprint(t)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		log.Printf("call: %s", resp.Status)
	}
	return resp.StatusCode, fingerprint(t)
}

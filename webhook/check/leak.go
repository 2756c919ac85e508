package check

// leak.go: leak reports → a queue of status writes. What is not a keymint
// token costs a parse and nothing more; a keymint token costs one index
// lookup and one tokenstate.Check; only a token checks accept right now is
// queued, once. leakstatus.go writes the queue to ApiToken status.

import (
	"encoding/base64"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/types"

	"github.com/keymint/keymint/internal/token"
	"github.com/keymint/keymint/internal/tokenstate"
)

// Sources of a leak report: status.leakReports[].source.
const (
	SourceGitHub = "github"
	SourceGitLab = "gitlab"
)

// LeakOutcome is what the report of one presented string came to.
type LeakOutcome uint8

const (
	// LeakQueued: a token checks accept now; its report waits to be
	// written.
	LeakQueued LeakOutcome = iota
	// LeakNotKeymint: not a keymint token, or one whose checksum fails.
	LeakNotKeymint
	// LeakNotAccepted: a keymint token that checks do not accept now
	// (unknown, revoked, expired, past its grace), or one this replica
	// has queued already.
	LeakNotAccepted
	// LeakDropped: a token checks accept, but the queue is full.
	LeakDropped
	numLeakOutcomes
)

// leakOutcomeLabels are the metric labels of the outcomes.
var leakOutcomeLabels = [numLeakOutcomes]string{
	LeakQueued:      "queued",
	LeakNotKeymint:  "not_keymint",
	LeakNotAccepted: "not_accepted",
	LeakDropped:     "dropped",
}

// String is the outcome's metric label.
func (o LeakOutcome) String() string { return leakOutcomeLabels[o] }

const (
	// MaxLeakQueue bounds the ApiTokens whose reports wait to be written;
	// reports of further ones are dropped and counted.
	MaxLeakQueue = 10_000
	// MaxLeakLocation is the longest location kept, in bytes, as the CRD
	// bounds status.leakReports[].location.
	MaxLeakLocation = 512
	// maxRecentLeaks bounds the hashes remembered as queued, and
	// recentLeakTTL how long each is: long enough for this replica's index
	// to see the written report and refuse the token itself.
	maxRecentLeaks = 10_000
	recentLeakTTL  = 10 * time.Minute
)

// leak is one report of one hash, as it will be written.
type leak struct {
	source, location string
	at               time.Time
}

// LeakReporter takes leak reports and queues those of tokens checks accept,
// per ApiToken, for a LeakWriter. Report is a parse, a lookup and a map
// write: the endpoints call it in the request, and never wait for the API.
type LeakReporter struct {
	Index *Index

	mu      sync.Mutex
	pending map[types.NamespacedName]map[hash]leak
	recent  recentLeaks
	// wake tells the writer there is something to write.
	wake    chan struct{}
	dropped atomic.Uint64
}

// NewLeakReporter returns a reporter over the index, with an empty queue.
func NewLeakReporter(ix *Index) *LeakReporter {
	return &LeakReporter{Index: ix, pending: map[types.NamespacedName]map[hash]leak{}, wake: make(chan struct{}, 1)}
}

// Report queues the report that presented leaked, found at location (what
// the reporter said, "" if nothing), received through source at now.
func (r *LeakReporter) Report(presented, source, location string, now time.Time) LeakOutcome {
	// The parse first: garbage goes no further, whatever its length.
	if _, err := token.Parse(presented); err != nil {
		return LeakNotKeymint
	}
	h := token.Hash(presented)
	ref, user, ok := r.Index.lookup(h)
	if !ok || ref.refused {
		return LeakNotAccepted
	}
	if tokenstate.Check(&ref.token.state, stateOf(user), int(ref.which), now) != tokenstate.Accepted {
		return LeakNotAccepted
	}
	return r.enqueue(ref.token.key, h, leak{source: source, location: cleanLocation(location), at: now})
}

// enqueue adds a report of hash h of the ApiToken key, unless h was
// queued within recentLeakTTL.
func (r *LeakReporter) enqueue(key types.NamespacedName, h hash, l leak) LeakOutcome {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.recent.has(h, l.at) {
		return LeakNotAccepted
	}
	leaks := r.pending[key]
	if leaks == nil {
		if len(r.pending) >= MaxLeakQueue {
			r.dropped.Add(1)
			return LeakDropped
		}
		leaks = map[hash]leak{}
		r.pending[key] = leaks
	}
	leaks[h] = l
	r.recent.add(h, l.at)
	select {
	case r.wake <- struct{}{}:
	default: // the writer is woken already
	}
	return LeakQueued
}

// take returns the queue, leaving it empty.
func (r *LeakReporter) take() map[types.NamespacedName]map[hash]leak {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.pending) == 0 {
		return nil
	}
	out := r.pending
	r.pending = map[types.NamespacedName]map[hash]leak{}
	return out
}

// putBack queues again reports the writer could not write yet; past
// MaxLeakQueue they are dropped and counted.
func (r *LeakReporter) putBack(key types.NamespacedName, leaks map[hash]leak) {
	r.mu.Lock()
	defer r.mu.Unlock()
	queued := r.pending[key]
	if queued == nil {
		if len(r.pending) >= MaxLeakQueue {
			r.dropped.Add(1)
			return
		}
		queued = map[hash]leak{}
		r.pending[key] = queued
	}
	for h, l := range leaks {
		if _, ok := queued[h]; !ok {
			queued[h] = l
		}
	}
}

// forget lets the hashes be queued again: the writer gave up on them.
func (r *LeakReporter) forget(leaks map[hash]leak) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for h := range leaks {
		r.recent.forget(h)
	}
}

// Queued returns how many ApiTokens have reports waiting.
func (r *LeakReporter) Queued() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pending)
}

// Dropped returns how many reports were dropped for a full queue.
func (r *LeakReporter) Dropped() uint64 { return r.dropped.Load() }

// recentLeaks remembers the hashes queued lately, the oldest forgotten
// first past maxRecentLeaks, so that a report replayed before this
// replica's index refuses the token is not queued again.
type recentLeaks struct {
	at   map[hash]time.Time
	ring []recentLeak
	next int
}

type recentLeak struct {
	h  hash
	at time.Time
}

func (s *recentLeaks) has(h hash, now time.Time) bool {
	at, ok := s.at[h]
	return ok && now.Sub(at) < recentLeakTTL
}

func (s *recentLeaks) add(h hash, now time.Time) {
	if s.at == nil {
		s.at = map[hash]time.Time{}
	}
	if len(s.ring) < maxRecentLeaks {
		s.ring = append(s.ring, recentLeak{h: h, at: now})
	} else {
		old := s.ring[s.next]
		// Only the slot that put it there takes it out: h may have been
		// added again since.
		if at, ok := s.at[old.h]; ok && at.Equal(old.at) {
			delete(s.at, old.h)
		}
		s.ring[s.next] = recentLeak{h: h, at: now}
		s.next = (s.next + 1) % maxRecentLeaks
	}
	s.at[h] = now
}

func (s *recentLeaks) forget(h hash) { delete(s.at, h) }

// cleanLocation is what of a reporter's location may be stored: valid
// UTF-8, at most MaxLeakLocation bytes cut on a character boundary, and
// nothing at all if it holds a keymint token (a URL with the token in its
// query, say), plain, percent-encoded or base64-encoded: the status is no
// place for one.
func cleanLocation(s string) string {
	// Only what may be kept is read, and enough past it to see a token
	// that the cut would halve.
	if len(s) > MaxLeakLocation+token.MaxLen {
		s = s[:MaxLeakLocation+token.MaxLen]
	}
	s = strings.ToValidUTF8(s, "\uFFFD")
	if containsToken(s) || base64HidesToken(s) {
		return ""
	}
	for decoded, range3 := s, 0; range3 < 3; range3++ {
		d, err := url.PathUnescape(decoded)
		if err != nil || d == decoded {
			break
		}
		if decoded = d; containsToken(decoded) || base64HidesToken(decoded) {
			return ""
		}
	}
	if len(s) > MaxLeakLocation {
		cut := MaxLeakLocation
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}

// base64HidesToken reports whether a run of base64 characters (standard
// or URL-safe) in s decodes to something holding a keymint token: a
// location that carries one encoded. Runs shorter than a token are not
// tried; paths and commit hashes decode to nothing that parses.
func base64HidesToken(s string) bool {
	isB64 := func(c byte) bool {
		return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '-' || c == '_' || c == '='
	}
	for i := 0; i < len(s); {
		j := i
		for j < len(s) && isB64(s[j]) {
			j++
		}
		if run := strings.TrimRight(s[i:j], "="); len(run) >= token.MinLen {
			for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
				for off := range 4 {
					chunk := run[off:]
					chunk = chunk[:len(chunk)-len(chunk)%4]
					if b, err := enc.DecodeString(chunk); err == nil && containsToken(string(b)) {
						return true
					}
				}
			}
		}
		i = j + 1
	}
	return false
}

// containsToken reports whether any part of s parses as a keymint token:
// each "_" with a token's length of secret after it is tried with every
// prefix length before it.
func containsToken(s string) bool {
	const tail = token.SecretLen + token.ChecksumLen
	for i := token.MinPrefixLen; i+1+tail <= len(s); i++ {
		if s[i] != '_' {
			continue
		}
		for start := i - token.MinPrefixLen; start >= 0 && start >= i-token.MaxPrefixLen; start-- {
			if _, err := token.Parse(s[start : i+1+tail]); err == nil {
				return true
			}
		}
	}
	return false
}

package check

import (
	"encoding/json"
	"errors"
	"io"
	"math/rand"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/randfill"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

// DecodeTokenEvent, then StripToken, gives the index exactly what
// client-go's whole decode, then StripToken, gives it: for ApiTokens with
// every field filled at random (so a field added to the types and read by
// the index cannot be dropped by the fast decoder unnoticed), every
// condition type, and the managed fields and annotations kube-apiserver
// sends.
func TestDecodeTokenEventKeepsWhatStripTokenKeeps(t *testing.T) {
	conditionTypes := []string{keymintv1alpha1.ApiTokenConditionReady, keymintv1alpha1.ApiTokenConditionRevoked,
		keymintv1alpha1.ApiTokenConditionExpired, keymintv1alpha1.ApiTokenConditionAuthorized, "Other"}
	fill := randfill.New().RandSource(rand.NewSource(1)).NilChance(0.2).NumElements(0, 4).Funcs(
		func(f *metav1.FieldsV1, c randfill.Continue) { f.Raw = []byte(`{"f:status":{"f:tokenHash":{}}}`) },
		func(tm *metav1.Time, c randfill.Continue) {
			// As JSON carries it: to the second, in UTC.
			*tm = metav1.Unix(c.Int63n(4_000_000_000), 0).Rfc3339Copy()
		},
		func(d *metav1.Duration, c randfill.Continue) {
			d.Duration = time.Duration(c.Int63n(1_000_000)) * time.Second
		},
		func(cond *metav1.Condition, c randfill.Continue) {
			c.FillNoCustom(cond)
			cond.Type = conditionTypes[c.Intn(len(conditionTypes))]
			cond.LastTransitionTime = metav1.Unix(c.Int63n(4_000_000_000), 0).Rfc3339Copy()
		},
	)
	for i := range 2000 {
		tok := &keymintv1alpha1.ApiToken{}
		fill.Fill(tok)
		tok.TypeMeta = metav1.TypeMeta{APIVersion: keymintv1alpha1.GroupVersion.String(), Kind: "ApiToken"}
		typ := []watch.EventType{watch.Added, watch.Modified, watch.Deleted}[i%3]
		frame, err := json.Marshal(map[string]any{"type": typ, "object": tok})
		if err != nil {
			t.Fatal(err)
		}

		var whole struct {
			Type   watch.EventType           `json:"type"`
			Object *keymintv1alpha1.ApiToken `json:"object"`
		}
		if err := json.Unmarshal(frame, &whole); err != nil {
			t.Fatal(err)
		}
		want := StripToken(whole.Object)
		want.TypeMeta = metav1.TypeMeta{}

		gotType, obj, err := DecodeTokenEvent(frame)
		if err != nil {
			t.Fatalf("token %d: %v", i, err)
		}
		got, ok := obj.(*keymintv1alpha1.ApiToken)
		if !ok || gotType != typ {
			t.Fatalf("token %d: a %s of %T, want a %s of an ApiToken", i, gotType, obj, typ)
		}
		if diff := cmp.Diff(want, StripToken(got)); diff != "" {
			t.Fatalf("token %d: the fast decode, stripped, differs from the whole one (-whole +fast):\n%s", i, diff)
		}
	}
}

// An error event gives the reflector the Status kube-apiserver sent (a 410
// makes it list again); a bookmark, its version and the annotation that
// ends a streamed list; anything else is an error, never a token.
func TestDecodeTokenEventOtherEvents(t *testing.T) {
	typ, obj, err := DecodeTokenEvent([]byte(`{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 5 (9)","reason":"Expired","code":410}}`))
	if err != nil || typ != watch.Error {
		t.Fatalf("error event: %s, %v", typ, err)
	}
	if st, ok := obj.(*metav1.Status); !ok || st.Code != http.StatusGone || !apierrors.IsResourceExpired(apierrors.FromObject(obj)) {
		t.Errorf("error event: %#v, want the 410 Status", obj)
	}

	typ, obj, err = DecodeTokenEvent([]byte(`{"type":"BOOKMARK","object":{"kind":"ApiToken","apiVersion":"keymint.io/v1alpha1","metadata":{"resourceVersion":"12345","creationTimestamp":null,"annotations":{"k8s.io/initial-events-end":"true"}},"spec":{"serviceUser":""},"status":{}}}`))
	if err != nil || typ != watch.Bookmark {
		t.Fatalf("bookmark: %s, %v", typ, err)
	}
	if tok := obj.(*keymintv1alpha1.ApiToken); tok.ResourceVersion != "12345" || tok.Annotations[metav1.InitialEventsAnnotationKey] != "true" {
		t.Errorf("bookmark: %+v, want version 12345 and the end of the initial events", tok.ObjectMeta)
	}
	// A token's annotations (a requester record, kubectl's last applied
	// configuration) are not kept.
	_, obj, err = DecodeTokenEvent([]byte(`{"type":"ADDED","object":{"kind":"ApiToken","metadata":{"name":"a","annotations":{"keymint.io/requester":"x"}},"spec":{"serviceUser":"u"}}}`))
	if err != nil || obj.(*keymintv1alpha1.ApiToken).Annotations != nil {
		t.Errorf("a token's annotations: %v, %v; want none kept", obj, err)
	}

	for name, frame := range map[string]string{
		"unknown type":            `{"type":"SURPRISE","object":{}}`,
		"no type":                 `{"object":{"kind":"ApiToken"}}`,
		"another kind":            `{"type":"ADDED","object":{"kind":"Secret","metadata":{"name":"a"}}}`,
		"a field of a wrong type": `{"type":"MODIFIED","object":{"kind":"ApiToken","spec":{"revoked":"yes"}}}`,
		"keys in another case, as client-go refuses them": `{"Type":"ADDED","object":{"kind":"ApiToken"}}`,
		"not JSON": `{"type":"ADDED","object":`,
	} {
		if typ, obj, err := DecodeTokenEvent([]byte(frame)); err == nil {
			t.Errorf("%s: decoded as a %s of %#v, want an error", name, typ, obj)
		}
	}
}

// The stream: events one per line as kube-apiserver writes them, blank
// lines skipped, an event spread over lines read whole, then the end.
func TestTokenEventsReadsAStream(t *testing.T) {
	stream := `{"type":"ADDED","object":{"kind":"ApiToken","metadata":{"name":"a","resourceVersion":"1"},"spec":{"serviceUser":"u"}}}

{"type":"MODIFIED",
  "object":{"kind":"ApiToken","metadata":{"name":"b","resourceVersion":"2"},
            "spec":{"serviceUser":"u","description":"a\nb"}}}
{"type":"DELETED","object":{"kind":"ApiToken","metadata":{"name":"` + strings.Repeat("c", 70_000) + `","resourceVersion":"3"},"spec":{"serviceUser":"u"}}}
`
	d := newTokenEvents(io.NopCloser(strings.NewReader(stream)))
	var got []string
	for {
		typ, obj, err := d.Decode()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("after %v: %v", got, err)
		}
		tok := obj.(*keymintv1alpha1.ApiToken)
		got = append(got, string(typ)+" "+tok.Name[:1]+" "+tok.ResourceVersion)
	}
	if want := []string{"ADDED a 1", "MODIFIED b 2", "DELETED c 3"}; !cmp.Equal(got, want) {
		t.Errorf("events %v, want %v", got, want)
	}

	// Cut off in the middle of an event (kube-apiserver restarting): the
	// watch ends as client-go's does, to resume, never as a decoding error
	// that would make the reflector list everything again.
	d = newTokenEvents(io.NopCloser(strings.NewReader(`{"type":"ADDED","object":{"kind":"ApiToken","metadata":{"name":"a"`)))
	if _, _, err := d.Decode(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("an event cut off: %v, want io.ErrUnexpectedEOF", err)
	}
	// A line that never becomes JSON is refused once it is too long to be
	// an ApiToken, rather than swallowing the events after it.
	d = newTokenEvents(io.NopCloser(strings.NewReader(strings.Repeat("{\n", maxEventBytes/2+1))))
	if _, _, err := d.Decode(); err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("an endless event: %v, want it refused", err)
	}
}

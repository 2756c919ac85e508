package check

// feedwatch.go: the index's ApiToken watch, each event read once into the
// fields the index keeps. client-go reads an event three times over (the
// event, the object's kind, the object) into a whole ApiToken, managed
// fields and condition messages included, which StripToken then drops: at
// 100,000 tokens that was most of a restart's CPU.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	sigsjson "sigs.k8s.io/json"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

// WatchTokens watches ApiTokens through rc (a REST client of keymint.io/
// v1alpha1 that accepts JSON) and decodes each event with DecodeTokenEvent.
func WatchTokens(ctx context.Context, rc rest.Interface, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	body, err := rc.Get().Resource("apitokens").VersionedParams(&opts, metav1.ParameterCodec).Stream(ctx)
	if err != nil {
		return nil, err
	}
	return watch.NewStreamWatcher(newTokenEvents(body),
		apierrors.NewClientErrorReporter(http.StatusInternalServerError, http.MethodGet, "ClientWatchDecoding")), nil
}

// tokenEvents reads a JSON watch stream event by event. kube-apiserver
// writes each event on a line of its own; an event spread over lines (a
// server that indents) is read on until it is whole.
type tokenEvents struct {
	body  io.ReadCloser
	r     *bufio.Reader
	frame []byte
}

// newTokenEvents reads body, buffered: an event of 4 KB, a few to a read.
func newTokenEvents(body io.ReadCloser) *tokenEvents {
	return &tokenEvents{body: body, r: bufio.NewReaderSize(body, 64<<10)}
}

func (d *tokenEvents) Decode() (watch.EventType, runtime.Object, error) {
	d.frame = d.frame[:0]
	for {
		line, err := d.r.ReadSlice('\n')
		d.frame = append(d.frame, line...)
		if len(d.frame) > maxEventBytes {
			return "", nil, fmt.Errorf("a watch event of more than %d bytes", maxEventBytes)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if len(bytes.TrimSpace(d.frame)) == 0 {
			if err != nil {
				return "", nil, err // io.EOF: the watch ended
			}
			continue
		}
		typ, obj, derr := DecodeTokenEvent(d.frame)
		switch {
		case derr == nil:
			return typ, obj, nil
		case err != nil && errors.Is(err, io.EOF):
			// Cut off in the middle of an event: as client-go does, a
			// watch that ended, to resume from the last version seen.
			return "", nil, io.ErrUnexpectedEOF
		case err != nil:
			return "", nil, err // the connection's own error
		case !json.Valid(d.frame):
			continue // not a whole event yet
		}
		return "", nil, derr
	}
}

// maxEventBytes bounds one watch event. An ApiToken's spec and status are
// at most about 68 KB of JSON, but its annotations may hold 256 KiB (more
// once escaped) and its managed fields more; etcd takes objects of up to
// 1.5 MiB by default. A larger event fails the watch, and the index goes
// stale rather than wrong.
const maxEventBytes = 16 << 20

func (d *tokenEvents) Close() { d.body.Close() }

// DecodeTokenEvent decodes one JSON watch event of ApiTokens, as
// kube-apiserver sends it, case-sensitively as client-go does: an error
// event's object into a Status; any other's into an ApiToken holding only
// its identity, version, generation and deletion, its spec, and its status
// with every condition's type and status (all StripToken keeps, and a
// little more); a bookmark's also with its end-of-initial-events annotation.
func DecodeTokenEvent(frame []byte) (watch.EventType, runtime.Object, error) {
	var ev struct {
		Type   watch.EventType `json:"type"`
		Object feedToken       `json:"object"`
	}
	err := sigsjson.UnmarshalCaseSensitivePreserveInts(frame, &ev)
	switch ev.Type {
	case watch.Error:
		// A Status: its "status" is a string, which ev could not hold.
		var st struct {
			Object metav1.Status `json:"object"`
		}
		if err := sigsjson.UnmarshalCaseSensitivePreserveInts(frame, &st); err != nil {
			return "", nil, fmt.Errorf("decoding an error event: %w", err)
		}
		return watch.Error, &st.Object, nil
	case watch.Added, watch.Modified, watch.Deleted, watch.Bookmark:
		if err != nil {
			return "", nil, fmt.Errorf("decoding a %s event: %w", ev.Type, err)
		}
		if k := ev.Object.Kind; k != "" && k != "ApiToken" {
			return "", nil, fmt.Errorf("a %s event of a %s in a watch of ApiTokens", ev.Type, k)
		}
		return ev.Type, ev.Object.apiToken(), nil
	case "":
		if err != nil {
			return "", nil, fmt.Errorf("decoding a watch event: %w", err)
		}
	}
	return "", nil, fmt.Errorf("a watch event of unknown type %q", ev.Type)
}

// feedToken is the part of an ApiToken's JSON the index may read. Fields
// the JSON has and feedToken lacks (managed fields, annotations other than
// a bookmark's, condition messages) are skipped unread.
type feedToken struct {
	Kind     string `json:"kind"`
	Metadata struct {
		Name              string       `json:"name"`
		Namespace         string       `json:"namespace"`
		UID               types.UID    `json:"uid"`
		ResourceVersion   string       `json:"resourceVersion"`
		Generation        int64        `json:"generation"`
		DeletionTimestamp *metav1.Time `json:"deletionTimestamp"`
		Annotations       struct {
			InitialEventsEnd string `json:"k8s.io/initial-events-end"`
		} `json:"annotations"`
	} `json:"metadata"`
	Spec   keymintv1alpha1.ApiTokenSpec `json:"spec"`
	Status struct {
		keymintv1alpha1.ApiTokenStatus
		// Shadows the status's conditions: their type and status alone.
		Conditions []struct {
			Type   string                 `json:"type"`
			Status metav1.ConditionStatus `json:"status"`
		} `json:"conditions"`
	} `json:"status"`
}

func (f *feedToken) apiToken() *keymintv1alpha1.ApiToken {
	m := &f.Metadata
	t := &keymintv1alpha1.ApiToken{
		ObjectMeta: metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion,
			Generation: m.Generation, DeletionTimestamp: m.DeletionTimestamp},
		Spec:   f.Spec,
		Status: f.Status.ApiTokenStatus,
	}
	if v := m.Annotations.InitialEventsEnd; v != "" {
		t.Annotations = map[string]string{metav1.InitialEventsAnnotationKey: v}
	}
	if len(f.Status.Conditions) > 0 {
		t.Status.Conditions = make([]metav1.Condition, len(f.Status.Conditions))
		for i, c := range f.Status.Conditions {
			t.Status.Conditions[i] = metav1.Condition{Type: c.Type, Status: c.Status}
		}
	}
	return t
}

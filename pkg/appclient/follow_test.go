package appclient

import (
	"strings"
	"testing"
)

func TestReadEvents(t *testing.T) {
	in := ": keep-alive\n\nid: 1\nevent: endpoint-assigned\ndata: {\"a\":1}\n\nid: 2\nevent: x\ndata: one\ndata:two\n\nevent: cut"
	var got []string
	err := ReadEvents(strings.NewReader(in), func(n Notification) { got = append(got, n.Event+"="+string(n.Data)) })
	if err == nil {
		t.Error("the end of the stream is not reported")
	}
	want := []string{`endpoint-assigned={"a":1}`, "x=one\ntwo"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("events %q, want %q", got, want)
	}
}

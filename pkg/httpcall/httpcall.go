// Package httpcall sends a test's HTTP request and hands back the reply's status and whole
// body, so that a test of a REST API reads as a table of requests and expected replies. A
// request that gets no reply at all fails the test: every caller's server is its own.
package httpcall

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// Do sends req with client (http.DefaultClient when nil) and returns the status code and the
// body. It fails the test when the request cannot be sent or the body cannot be read.
func Do(t testing.TB, client *http.Client, req *http.Request) (int, string) {
	t.Helper()
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read the reply: %v", req.Method, req.URL, err)
	}
	return resp.StatusCode, string(b)
}

// New makes a request for Do, failing the test on a malformed method or URL. contentType, when
// not empty, is sent as the Content-Type whether or not there is a body: tests of a strict API
// send it on empty bodies too.
func New(t testing.TB, method, url, contentType, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return req
}

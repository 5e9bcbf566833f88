package appserve

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"net/http"
	"testing"

	"github.com/rs/zerolog"
)

func TestRunExitCodes(t *testing.T) {
	ok := func([]string, io.Writer) (Flags, error) { return Flags{LogLevel: "info", LogFormat: "json"}, nil }
	for _, tc := range []struct {
		name  string
		parse func([]string, io.Writer) (Flags, error)
		serve error
		want  int
	}{
		{"help", func([]string, io.Writer) (Flags, error) { return Flags{}, flag.ErrHelp }, nil, 0},
		{"bad flags", func([]string, io.Writer) (Flags, error) { return Flags{}, errors.New("bad") }, nil, 2},
		{"bad log level", func([]string, io.Writer) (Flags, error) { return Flags{LogLevel: "loud"}, nil }, nil, 2},
		{"serve fails", ok, errors.New("boom"), 1},
		{"clean", ok, nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if got := Run("app", nil, &stderr, tc.parse, func(Flags, zerolog.Logger) error { return tc.serve }); got != tc.want {
				t.Fatalf("Run = %d, want %d (stderr %q)", got, tc.want, stderr.String())
			}
		})
	}
}

func TestListenServesHealthzUntilShutdown(t *testing.T) {
	srv, err := Listen(t.Context(), "127.0.0.1:0", http.NewServeMux())
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + srv.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if string(body) != "ok\n" {
		t.Fatalf("healthz = %q", body)
	}
	drained := false
	if err := srv.Shutdown(t.Context(), func(ctx context.Context) { drained = true }); err != nil {
		t.Fatal(err)
	}
	if !drained {
		t.Fatal("Shutdown did not wait for the app's handlers")
	}
	if err := <-srv.Failed(); !errors.Is(err, http.ErrServerClosed) {
		t.Fatalf("Serve ended with %v, want ErrServerClosed", err)
	}
}

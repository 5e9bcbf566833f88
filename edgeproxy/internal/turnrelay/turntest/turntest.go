// Package turntest starts the pion/turn clients that tests relay through the edge's TURN relay
// with, so each test says only where the client connects and with which credential.
package turntest

import (
	"testing"

	"github.com/pion/turn/v4"
)

// Client makes a client of cfg and starts it listening on cfg.Conn; the client and cfg.Conn
// are closed when the test ends.
func Client(t testing.TB, cfg *turn.ClientConfig) *turn.Client {
	t.Helper()
	t.Cleanup(func() { _ = cfg.Conn.Close() })
	cl, err := turn.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	if err := cl.Listen(); err != nil {
		t.Fatal(err)
	}
	return cl
}

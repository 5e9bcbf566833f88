package natsembed

import (
	"context"
	"net"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestStartWithJetStream(t *testing.T) {
	s, err := Start(Options{Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	store := s.tempDir
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := js.AccountInfo(ctx); err != nil {
		t.Fatalf("JetStream not enabled: %v", err)
	}
	nc.Close()
	s.Shutdown()
	if _, err := os.Stat(store); !os.IsNotExist(err) {
		t.Fatalf("temporary store %s left behind: %v", store, err)
	}
}

func TestStartPortInUse(t *testing.T) {
	s, err := Start(Options{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	port := s.ns.Addr().(*net.TCPAddr).Port
	if s2, err := Start(Options{Port: port, StoreDir: t.TempDir()}); err == nil {
		s2.Shutdown()
		t.Fatalf("second server on port %d started", port)
	}
}

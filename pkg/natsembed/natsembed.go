// Package natsembed runs a NATS server with JetStream inside the process: the edge's
// --nats-embedded single-host mode, and the tests.
package natsembed

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Options for the embedded server.
type Options struct {
	// Host to listen on; empty means 127.0.0.1.
	Host string
	// Port to listen on; 0 means 4222, -1 a random free port.
	Port int
	// StoreDir keeps JetStream data; empty means a fresh temporary directory, removed on Shutdown.
	StoreDir string
	// ServerName identifies the server in monitoring; empty means "livegate-embedded".
	ServerName string
}

// Server is a running embedded server.
type Server struct {
	ns      *server.Server
	tempDir string
}

// Start starts the server and waits until it accepts clients.
func Start(o Options) (*Server, error) {
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.Port == 0 {
		o.Port = 4222
	}
	if o.ServerName == "" {
		o.ServerName = "livegate-embedded"
	}
	if o.Port > 0 {
		// The server reports a busy port only by never becoming ready; say it at once instead.
		l, err := net.Listen("tcp", net.JoinHostPort(o.Host, strconv.Itoa(o.Port)))
		if err != nil {
			return nil, fmt.Errorf("embedded nats: %w", err)
		}
		_ = l.Close()
	}
	s := &Server{}
	if o.StoreDir == "" {
		dir, err := os.MkdirTemp("", "livegate-nats-")
		if err != nil {
			return nil, fmt.Errorf("embedded nats: store dir: %w", err)
		}
		o.StoreDir, s.tempDir = dir, dir
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: o.ServerName,
		Host:       o.Host,
		Port:       o.Port,
		JetStream:  true,
		StoreDir:   o.StoreDir,
		NoSigs:     true,
		NoLog:      true,
	})
	if err != nil {
		s.removeTemp()
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	s.ns = ns
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		s.removeTemp()
		return nil, errors.New("embedded nats: not ready after 10s (is the port in use?)")
	}
	return s, nil
}

// ClientURL is the nats:// URL clients connect to.
func (s *Server) ClientURL() string { return s.ns.ClientURL() }

// Shutdown stops the server and waits for it to finish.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
	s.removeTemp()
}

func (s *Server) removeTemp() {
	if s.tempDir != "" {
		_ = os.RemoveAll(s.tempDir)
	}
}

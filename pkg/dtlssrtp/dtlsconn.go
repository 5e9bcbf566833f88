package dtlssrtp

import (
	"net"
	"os"
	"sync"
	"time"

	"github.com/pion/transport/v5/deadline"
)

// dtlsConn is the net.PacketConn a pion DTLS Conn runs over when its UDP socket also carries SRTP:
// the socket's reader pushes DTLS datagrams in, writes go straight to the socket. It serves one
// remote address.
type dtlsConn struct {
	local, remote net.Addr
	write         func([]byte) (int, error)

	in           chan []byte
	readDeadline *deadline.Deadline
	closeOnce    sync.Once
	closed       chan struct{}
}

// dtlsQueue bounds how many DTLS datagrams wait for the handshake; a flight is a handful.
const dtlsQueue = 64

func newDTLSConn(local, remote net.Addr, write func([]byte) (int, error)) *dtlsConn {
	return &dtlsConn{
		local:        local,
		remote:       remote,
		write:        write,
		in:           make(chan []byte, dtlsQueue),
		readDeadline: deadline.New(),
		closed:       make(chan struct{}),
	}
}

// push hands a DTLS datagram to the DTLS Conn; it copies b and drops it when the queue is full, as
// a congested socket would.
func (c *dtlsConn) push(b []byte) {
	select {
	case c.in <- append([]byte(nil), b...):
	default:
	}
}

func (c *dtlsConn) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case <-c.closed:
		return 0, nil, net.ErrClosed
	case <-c.readDeadline.Done():
		return 0, nil, os.ErrDeadlineExceeded
	case p := <-c.in:
		return copy(b, p), c.remote, nil
	}
}

func (c *dtlsConn) WriteTo(b []byte, _ net.Addr) (int, error) {
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	return c.write(b)
}

func (c *dtlsConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return nil
}

func (c *dtlsConn) LocalAddr() net.Addr { return c.local }

func (c *dtlsConn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

func (c *dtlsConn) SetReadDeadline(t time.Time) error {
	c.readDeadline.Set(t)
	return nil
}

// SetWriteDeadline is a no-op: writes go to a UDP socket shared with other associations, whose
// deadline is not this Conn's to set, and UDP writes do not block for long.
func (c *dtlsConn) SetWriteDeadline(time.Time) error { return nil }

package probe

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
)

// MediaAddr turns udp://HOST:PORT into HOST:PORT.
func MediaAddr(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "udp" || u.Host == "" || u.Path != "" || u.RawQuery != "" {
		return "", fmt.Errorf("media address %q: want udp://HOST:PORT", raw)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || host == "" {
		return "", fmt.Errorf("media address %q: want udp://HOST:PORT", raw)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return "", fmt.Errorf("media address %q: port %q is not 1-65535", raw, port)
	}
	return u.Host, nil
}

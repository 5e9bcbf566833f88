package dataplaneapi

import (
	"errors"
	"flag"

	"github.com/rs/zerolog"

	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
)

// Flags are the driver's command-line settings.
type Flags struct {
	URL, User, PasswordFile string
}

// Register declares --dataplaneapi-url, --dataplaneapi-user and --dataplaneapi-password-file.
func (f *Flags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.URL, "dataplaneapi-url", "http://127.0.0.1:5555", "Data Plane API v2 address of the dataplaneapi driver; /v2 is added")
	fs.StringVar(&f.User, "dataplaneapi-user", "", "Data Plane API user (basic auth)")
	fs.StringVar(&f.PasswordFile, "dataplaneapi-password-file", "", "file holding the Data Plane API user's password; read again when the API answers 401")
}

// Driver builds the driver for the HAProxy configuration c: its map file names the map, and its
// frontend and backend are what the set-up transaction creates.
func (f *Flags) Driver(c haproxy.Config, log zerolog.Logger, opts ...Option) (*Driver, error) {
	if f.PasswordFile == "" {
		return nil, errors.New("--dataplaneapi-password-file is required with the dataplaneapi driver")
	}
	password, err := ReadPasswordFile(f.PasswordFile)
	if err != nil {
		return nil, err
	}
	proxy, err := LivegateProxy(c)
	if err != nil {
		return nil, err
	}
	return New(Config{URL: f.URL, User: f.User, Password: password, PasswordFile: f.PasswordFile, Map: MapName(c.MapFile), Proxy: &proxy},
		append([]Option{WithLogger(log)}, opts...)...)
}

package cli

import (
	"flag"

	settingsload "github.com/livegate/livegate/pkg/settings"
)

// EnvPrefix starts the environment variable of every flag: --nats-url is LIVEGATE_EDGEPROXY_NATS_URL.
const EnvPrefix = "LIVEGATE_EDGEPROXY_"

// configFlag names the settings file.
const configFlag = settingsload.ConfigFlag

// loader holds the edge's rules beyond its flags: flags win over the environment, the
// environment over the --config file (keyed by flag name), as for livegate-agent.
var loader = settingsload.Loader{
	EnvPrefix: EnvPrefix,
	// Precedence is decided per setting, so an alias counts as its flag: setting either sets both.
	Aliases: map[string]string{"haproxy-driver": "driver"},
}

// EnvName is the environment variable that sets flag name.
func EnvName(name string) string { return loader.EnvName(name) }

// applySources parses args and fills what they left unset from environ and the --config file.
func applySources(fs *flag.FlagSet, args, environ []string) error {
	_, err := loader.Load(fs, args, environ)
	return err
}

package cli

import (
	"flag"

	"github.com/livegate/livegate/pkg/natsconn"
	settingsload "github.com/livegate/livegate/pkg/settings"
)

// EnvPrefix starts the environment variable of every flag: --nats-url is LIVEGATE_EDGEPROXY_NATS_URL.
const EnvPrefix = "LIVEGATE_EDGEPROXY_"

// configFlag names the settings file.
const configFlag = settingsload.ConfigFlag

// aliases are the second names of settings. Precedence is decided per setting, so an alias counts
// as its flag: setting either sets both.
var aliases = map[string]string{"haproxy-driver": "driver"}

// EnvName is the environment variable that sets flag name.
func EnvName(name string) string {
	l := settingsload.Loader{EnvPrefix: EnvPrefix}
	return l.EnvName(name)
}

// commandLoader holds the edge's rules beyond a command's flag set fs, for every command:
// flags win over the environment, the environment over the --config file (keyed by flag name),
// as for livegate-agent. own are the command's switches, which only the command line sets;
// others are the settings of run that fs lacks, which the environment and the file may hold
// (they serve every command) and which this command leaves alone. Annotate is done here.
func commandLoader(fs *flag.FlagSet, others []string, own ...string) *settingsload.Loader {
	l := &settingsload.Loader{
		EnvPrefix: EnvPrefix,
		Aliases:   aliases,
		Secrets:   set(natsconn.Secret),
		FlagsOnly: set(own),
		Ignored:   map[string]bool{},
	}
	for _, name := range others {
		if fs.Lookup(name) == nil {
			l.Ignored[name] = true
		}
	}
	l.Annotate(fs)
	return l
}

// settingNames are the names of every setting of run, with h's drivers' flags.
func (h Hooks) settingNames() []string {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	defineSettings(fs)
	for _, x := range h.driverFlags() {
		x(fs)
	}
	var out []string
	fs.VisitAll(func(f *flag.Flag) { out = append(out, f.Name) })
	return out
}

func set(names []string) map[string]bool {
	out := make(map[string]bool, len(names))
	for _, n := range names {
		out[n] = true
	}
	return out
}

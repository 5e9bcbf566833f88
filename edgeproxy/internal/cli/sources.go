package cli

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// EnvPrefix starts the environment variable of every flag: --nats-url is LIVEGATE_EDGEPROXY_NATS_URL.
const EnvPrefix = "LIVEGATE_EDGEPROXY_"

// configFlag names the settings file; it is read before the other flags are resolved, so it
// cannot itself come from the file.
const configFlag = "config"

// EnvName is the environment variable that sets flag name.
func EnvName(name string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// applySources gives every flag the command line left unset its value from the environment,
// then from the --config file: flags win over the environment, the environment over the file,
// as for livegate-agent. Every error names the variable or the file and key it came from.
func applySources(fs *flag.FlagSet, lookupEnv func(string) (string, bool)) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		v, ok := lookupEnv(EnvName(f.Name))
		if !ok {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("environment %s: %w", EnvName(f.Name), err))
			return
		}
		set[f.Name] = true
	})
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	path := fs.Lookup(configFlag).Value.String()
	if path == "" {
		return nil
	}
	return applyFile(fs, path, set)
}

// applyFile sets the flags not in set from the TOML file at path. Its keys are the flag names
// (`nats-url = "nats://..."`); lists may be TOML arrays, durations strings ("30s").
func applyFile(fs *flag.FlagSet, path string, set map[string]bool) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	var raw map[string]any
	if _, err := toml.Decode(string(b), &raw); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var errs []error
	for _, k := range keys {
		f := fs.Lookup(k)
		if f == nil || k == configFlag {
			errs = append(errs, fmt.Errorf("config file %s: unknown setting %q (the keys are the flag names; `livegate-edgeproxy run -h` lists them)", path, k))
			continue
		}
		if set[k] {
			continue
		}
		v, err := tomlValue(raw[k])
		if err == nil {
			err = fs.Set(k, v)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("config file %s: %s: %w", path, k, err))
		}
	}
	return errors.Join(errs...)
}

// tomlValue turns a decoded TOML value into the text its flag parses.
func tomlValue(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case bool:
		return strconv.FormatBool(v), nil
	case int64:
		return strconv.FormatInt(v, 10), nil
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			s, ok := e.(string)
			if !ok {
				return "", fmt.Errorf("want a list of strings, got %T in it", e)
			}
			parts[i] = s
		}
		return strings.Join(parts, ","), nil
	}
	return "", fmt.Errorf("want a string, number, boolean or list of strings, got %T", v)
}

// annotateUsage adds each flag's environment variable to its help text.
func annotateUsage(fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		f.Usage += " [env " + EnvName(f.Name) + "]"
	})
}

package cli

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

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

// aliases maps each flag's second name to the flag it shares a variable with. Precedence is
// decided per setting, so an alias counts as its flag: setting either sets both.
var aliases = map[string]string{"haproxy-driver": "driver"}

// canonical is the flag that name sets.
func canonical(name string) string {
	if c, ok := aliases[name]; ok {
		return c
	}
	return name
}

// applySources gives every flag the command line left unset its value from the environment,
// then from the --config file: flags win over the environment, the environment over the file,
// as for livegate-agent. A LIVEGATE_EDGEPROXY_* variable that names no flag is an error, as a
// misspelt one would otherwise be ignored. Every error names the variable or the file and key
// it came from.
func applySources(fs *flag.FlagSet, environ []string) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[canonical(f.Name)] = true })
	env, err := envSettings(fs, environ)
	errs := []error{err}
	for _, e := range env {
		if set[canonical(e.flag)] {
			continue
		}
		if err := fs.Set(e.flag, e.value); err != nil {
			errs = append(errs, fmt.Errorf("environment %s: %w", e.name, badValue(fs.Lookup(e.flag), e.value, err)))
			continue
		}
		set[canonical(e.flag)] = true
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	path := fs.Lookup(configFlag).Value.String()
	if path == "" {
		return nil
	}
	return applyFile(fs, path, set)
}

// envSetting is one LIVEGATE_EDGEPROXY_* variable and the flag it sets.
type envSetting struct{ name, value, flag string }

// envSettings picks the LIVEGATE_EDGEPROXY_* variables out of environ ("NAME=value" entries),
// sorted by name. A variable that names no flag, or one of a flag and its alias both set, is
// left out and reported in the error.
func envSettings(fs *flag.FlagSet, environ []string) ([]envSetting, error) {
	byName := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) { byName[EnvName(f.Name)] = f.Name })
	var found []envSetting
	seen := map[string]bool{}
	for _, kv := range environ {
		name, value, _ := strings.Cut(kv, "=")
		// The first entry of a repeated name is the one getenv returns.
		if !strings.HasPrefix(name, EnvPrefix) || seen[name] {
			continue
		}
		seen[name] = true
		found = append(found, envSetting{name: name, value: value, flag: byName[name]})
	}
	sort.Slice(found, func(i, j int) bool { return found[i].name < found[j].name })
	var out []envSetting
	var errs []error
	bySetting := map[string]string{}
	for _, e := range found {
		if e.flag == "" {
			errs = append(errs, fmt.Errorf("environment: unknown variable %q (the variables are %s and a flag name in upper case, - as _; `-h` lists them)", e.name, EnvPrefix))
			continue
		}
		c := canonical(e.flag)
		if other, dup := bySetting[c]; dup {
			errs = append(errs, fmt.Errorf("environment: %s and %s both set --%s; keep one", other, e.name, c))
			continue
		}
		bySetting[c] = e.name
		out = append(out, e)
	}
	return out, errors.Join(errs...)
}

// badValue adds the refused value and, for the standard flag types, the form they take to the
// flag package's terse error ("parse error"). Repeating the value is safe: only durations,
// numbers, booleans and addresses can fail to parse, and no secret is one of those (the edge
// reads every secret from a file its flag names).
func badValue(f *flag.Flag, value string, err error) error {
	want := ""
	if g, ok := f.Value.(flag.Getter); ok {
		switch g.Get().(type) {
		case time.Duration:
			want = "; want a duration such as 30s, 1m30s or 500ms"
		case int:
			want = "; want a whole number"
		case bool:
			want = "; want true or false"
		}
	}
	return fmt.Errorf("value %q: %w%s", value, err, want)
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
	bySetting := map[string]string{}
	for _, k := range keys {
		f := fs.Lookup(k)
		if f == nil || k == configFlag {
			errs = append(errs, fmt.Errorf("config file %s: unknown setting %q (the keys are the flag names; `livegate-edgeproxy run -h` lists them)", path, k))
			continue
		}
		c := canonical(k)
		if other, dup := bySetting[c]; dup {
			errs = append(errs, fmt.Errorf("config file %s: %q and %q both set --%s; keep one", path, other, k, c))
			continue
		}
		bySetting[c] = k
		if set[c] {
			continue
		}
		v, err := tomlValue(raw[k])
		if err == nil {
			if err = fs.Set(k, v); err != nil {
				err = badValue(f, v, err)
			}
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

package cli

import (
	"errors"
	"flag"
	"fmt"
	"regexp"
)

// badFlagValue matches the flag package's errors for a value a flag refused.
var badFlagValue = regexp.MustCompile(`^invalid (?:boolean )?value ("(?:[^"\\]|\\.)*") for (?:flag )?-([^:]+): (.*)$`)

// explainParseError rewrites the flag package's error for a refused value as the environment and
// the --config file report theirs: the flag, the value and the form it wants.
func explainParseError(fs *flag.FlagSet, err error) error {
	m := badFlagValue.FindStringSubmatch(err.Error())
	if m == nil {
		return err
	}
	f := fs.Lookup(m[2])
	if f == nil {
		return err
	}
	var value string
	if _, scanErr := fmt.Sscanf(m[1], "%q", &value); scanErr != nil {
		value = m[1]
	}
	return fmt.Errorf("--%s: %w", f.Name, badValue(f, value, errors.New(m[3])))
}

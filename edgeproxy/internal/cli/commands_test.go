package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestHelpListsCommands: --help without a command lists the commands, not run's flags.
func TestHelpListsCommands(t *testing.T) {
	commands := Commands(Hooks{}, nil)
	for _, arg := range []string{"--help", "-h", "help"} {
		var out, errOut bytes.Buffer
		if code := Dispatch(context.Background(), commands, []string{arg}, &out, &errOut); code != 0 {
			t.Fatalf("%s: exit %d", arg, code)
		}
		text := out.String()
		for name := range commands {
			if !strings.Contains(text, "  "+name+" ") {
				t.Errorf("%s: command %s not listed:\n%s", arg, name, text)
			}
		}
		if strings.Contains(text+errOut.String(), "-tunnel-timeout") {
			t.Errorf("%s printed run's flags", arg)
		}
	}
}

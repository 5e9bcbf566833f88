package pionlog

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/rs/zerolog"
)

func TestLevels(t *testing.T) {
	var buf bytes.Buffer
	l := Factory(zerolog.New(&buf).Level(zerolog.TraceLevel), Levels{
		Trace: zerolog.TraceLevel, Debug: zerolog.TraceLevel, Info: zerolog.DebugLevel, Warn: zerolog.WarnLevel, Error: zerolog.ErrorLevel,
	}).NewLogger("dtls")
	for _, tc := range []struct {
		log  func()
		want string
	}{
		{func() { l.Trace("t") }, "trace"},
		{func() { l.Debugf("%s", "d") }, "trace"},
		{func() { l.Info("i") }, "debug"},
		{func() { l.Warnf("w %d", 1) }, "warn"},
		{func() { l.Error("e") }, "error"},
	} {
		buf.Reset()
		tc.log()
		var line struct{ Level, Component, Message string }
		if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
			t.Fatalf("%q: %v", buf.String(), err)
		}
		if line.Level != tc.want || line.Component != "pion_dtls" || line.Message == "" {
			t.Fatalf("line %+v, want level %s from pion_dtls", line, tc.want)
		}
	}
}

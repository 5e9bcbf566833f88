package dtlssrtp

import (
	"github.com/rs/zerolog"

	"github.com/livegate/livegate/pkg/logging/pionlog"
)

// pionLevels log pion's DTLS lines one level down: pion reports per-packet trouble that this
// package already turns into its own, better-scoped log lines and errors.
var pionLevels = pionlog.Levels{
	Trace: zerolog.TraceLevel, Debug: zerolog.TraceLevel, Info: zerolog.DebugLevel, Warn: zerolog.DebugLevel, Error: zerolog.DebugLevel,
}

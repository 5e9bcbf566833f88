// Package pionlog sends the logs of pion's libraries (DTLS, TURN) to zerolog, each pion level at
// the zerolog level its caller chooses: pion reports per-packet trouble that its callers mostly
// turn into their own, better-scoped log lines and errors.
package pionlog

import (
	"github.com/pion/logging"
	"github.com/rs/zerolog"
)

// Levels are the zerolog levels pion's levels are logged at.
type Levels struct {
	Trace, Debug, Info, Warn, Error zerolog.Level
}

// Factory is the logger factory to hand pion: each scope's lines carry component pion_<scope>.
func Factory(log zerolog.Logger, levels Levels) logging.LoggerFactory {
	return factory{log: log, levels: levels}
}

type factory struct {
	log    zerolog.Logger
	levels Levels
}

func (f factory) NewLogger(scope string) logging.LeveledLogger {
	return logger{log: f.log.With().Str("component", "pion_"+scope).Logger(), levels: f.levels}
}

type logger struct {
	log    zerolog.Logger
	levels Levels
}

func (l logger) Trace(msg string) { l.log.WithLevel(l.levels.Trace).Msg(msg) }
func (l logger) Tracef(format string, args ...any) {
	l.log.WithLevel(l.levels.Trace).Msgf(format, args...)
}
func (l logger) Debug(msg string) { l.log.WithLevel(l.levels.Debug).Msg(msg) }
func (l logger) Debugf(format string, args ...any) {
	l.log.WithLevel(l.levels.Debug).Msgf(format, args...)
}
func (l logger) Info(msg string) { l.log.WithLevel(l.levels.Info).Msg(msg) }
func (l logger) Infof(format string, args ...any) {
	l.log.WithLevel(l.levels.Info).Msgf(format, args...)
}
func (l logger) Warn(msg string) { l.log.WithLevel(l.levels.Warn).Msg(msg) }
func (l logger) Warnf(format string, args ...any) {
	l.log.WithLevel(l.levels.Warn).Msgf(format, args...)
}
func (l logger) Error(msg string) { l.log.WithLevel(l.levels.Error).Msg(msg) }
func (l logger) Errorf(format string, args ...any) {
	l.log.WithLevel(l.levels.Error).Msgf(format, args...)
}

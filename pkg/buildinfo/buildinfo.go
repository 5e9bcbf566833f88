// Package buildinfo reports what was built: the version stamped by `make build` and the Go
// module data the toolchain records.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// Version is set at link time: -X github.com/livegate/livegate/pkg/buildinfo.Version=v1.2.3.
var Version = "dev"

// Revision is set at link time (-X github.com/livegate/livegate/pkg/buildinfo.Revision=<commit>)
// by builds without the toolchain's VCS data: make build turns that off (-buildvcs=false), which
// would otherwise leave every binary at revision "unknown".
var Revision = ""

// String is the one line both binaries print for --version.
func String(binary string) string {
	return fmt.Sprintf("%s %s (revision %s, %s, %s/%s)", binary, Version, revision(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// revision is the VCS revision the toolchain recorded, else Revision, else "unknown".
func revision() string {
	var settings []debug.BuildSetting
	if bi, ok := debug.ReadBuildInfo(); ok {
		settings = bi.Settings
	}
	return revisionOf(settings, Revision)
}

func revisionOf(settings []debug.BuildSetting, linked string) string {
	for _, s := range settings {
		if s.Key == "vcs.revision" && s.Value != "" {
			return s.Value
		}
	}
	if linked != "" {
		return linked
	}
	return "unknown"
}

// Collector is livegate_build_info{binary,version,revision,go_version}, always 1: dashboards
// join on it to show which build each instance runs.
func Collector(binary string) prometheus.Collector {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "livegate_build_info",
		Help: "Always 1; the build that is running.",
	}, []string{"binary", "version", "revision", "go_version"})
	g.WithLabelValues(binary, Version, revision(), runtime.Version()).Set(1)
	return g
}

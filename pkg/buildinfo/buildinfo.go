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

// String is the one line both binaries print for --version.
func String(binary string) string {
	return fmt.Sprintf("%s %s (revision %s, %s, %s/%s)", binary, Version, revision(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// revision is the VCS revision the toolchain recorded, or "unknown" (a build with -buildvcs=false).
func revision() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
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

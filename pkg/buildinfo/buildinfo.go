// Package buildinfo reports what was built: the version stamped by `make build` and the Go
// module data the toolchain records.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version is set at link time: -X github.com/livegate/livegate/pkg/buildinfo.Version=v1.2.3.
var Version = "dev"

// String is the one line both binaries print for --version.
func String(binary string) string {
	rev := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				rev = s.Value
			}
		}
	}
	return fmt.Sprintf("%s %s (revision %s, %s, %s/%s)", binary, Version, rev, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

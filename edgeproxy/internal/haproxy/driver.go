// Package haproxy drives the HAProxy that carries signaling: the runtime-socket client and driver,
// the atomically written map file, the rendered configuration and the supervisor that runs HAProxy
// in master-worker mode.
package haproxy

import "context"

// Driver changes HAProxy's session map without reloads. Keys are session ids already accepted by
// sessionid.Validate; values are backends already parsed as netip.AddrPort and printed as "ip:port"
// ("[v6]:port" for IPv6). Implementations: RuntimeDriver here (HAProxy's stats socket) and the
// Data Plane API driver in package dataplaneapi.
type Driver interface {
	// Apply sets (adds or replaces) the entries of set and deletes the keys of del. Deleting a key
	// that is not in the map is not an error. A key in both set and del is set.
	Apply(ctx context.Context, set map[string]string, del []string) error
	// List reads back the live map.
	List(ctx context.Context) (map[string]string, error)
}

// KnownApplier is a Driver that can use what the caller believes the map holds to save a round
// trip: a key it believes absent is added at once instead of after a failed replace.
type KnownApplier interface {
	Driver
	// ApplyKnown is Apply, told that current is what the map held after the caller's last
	// successful Apply or List. Keys of set missing from current are added without first trying
	// to replace them; one that is in the map after all is replaced, never duplicated.
	ApplyKnown(ctx context.Context, set map[string]string, del []string, current map[string]string) error
}

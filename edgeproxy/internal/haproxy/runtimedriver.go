package haproxy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// payloadChunk bounds the lines of one `add map` payload: HAProxy holds a payload in one buffer
// (tune.bufsize, 16 kB by default) and a line is at most ~180 bytes.
const payloadChunk = 64

// pipelineChunk bounds the commands sent on one connection.
const pipelineChunk = 2000

// RuntimeDriver is the Driver over HAProxy's runtime API.
type RuntimeDriver struct {
	client *Client
	mapID  string
}

// NewRuntimeDriver drives the map mapID (the map file's path as HAProxy's configuration names it,
// or "#<id>") through client.
func NewRuntimeDriver(client *Client, mapID string) (*RuntimeDriver, error) {
	if err := checkWord(mapID); err != nil {
		return nil, fmt.Errorf("map id: %w", err)
	}
	return &RuntimeDriver{client: client, mapID: mapID}, nil
}

var _ KnownApplier = (*RuntimeDriver)(nil)

// Apply replaces existing keys with `set map` and deletes with `del map`, all on one connection,
// then adds the keys that were missing with `add map` payloads. A replaced key never disappears
// from the map, so its requests never see a 404 in between.
func (d *RuntimeDriver) Apply(ctx context.Context, set map[string]string, del []string) error {
	return d.ApplyKnown(ctx, set, del, nil)
}

// ApplyKnown implements KnownApplier. A few keys believed absent get `del map` then `add map` in
// the same pipeline as the replacements and deletions, so a route that is new to the map costs
// one connection: the deletion only matters when the belief was wrong, and then stands in for
// the replace (that key alone may miss for the instant between the two commands). Past
// payloadChunk new keys, Apply's path is faster: one `add map` payload per chunk.
func (d *RuntimeDriver) ApplyKnown(ctx context.Context, set map[string]string, del []string, current map[string]string) error {
	setKeys := slices.Sorted(maps.Keys(set))
	fresh := 0
	if current != nil {
		for _, k := range setKeys {
			if _, known := current[k]; !known {
				fresh++
			}
		}
	}
	// Many new keys go faster as payloads (a cold start): they take the replace-then-add path.
	addNow := fresh > 0 && fresh <= payloadChunk
	var cmds []Command
	for _, k := range setKeys {
		var words [][]string
		if _, known := current[k]; known || !addNow {
			words = [][]string{{"set", "map", d.mapID, k, set[k]}}
		} else {
			words = [][]string{{"del", "map", d.mapID, k}, {"add", "map", d.mapID, k, set[k]}}
		}
		for _, w := range words {
			c, err := NewCommand(w...)
			if err != nil {
				return err
			}
			cmds = append(cmds, c)
		}
	}
	for _, k := range del {
		if _, ok := set[k]; ok {
			continue
		}
		c, err := NewCommand("del", "map", d.mapID, k)
		if err != nil {
			return err
		}
		cmds = append(cmds, c)
	}
	var missing []string
	var errs []error
	for start := 0; start < len(cmds); start += pipelineChunk {
		chunk := cmds[start:min(start+pipelineChunk, len(cmds))]
		answers, err := d.client.Pipeline(ctx, chunk)
		if err != nil {
			return err
		}
		for i, a := range answers {
			c := chunk[i]
			switch {
			case a == "":
			case c.words[0] == "set" && strings.HasPrefix(a, "entry not found"):
				missing = append(missing, c.words[3])
			case c.words[0] == "del" && strings.HasPrefix(a, "Key not found"):
			default:
				errs = append(errs, fmt.Errorf("haproxy %q: %s", c.String(), a))
			}
		}
	}
	for start := 0; start < len(missing); start += payloadChunk {
		keys := missing[start:min(start+payloadChunk, len(missing))]
		lines := make([][]string, len(keys))
		for i, k := range keys {
			lines[i] = []string{k, set[k]}
		}
		base, err := NewCommand("add", "map", d.mapID)
		if err != nil {
			return err
		}
		c, err := base.WithPayload(lines)
		if err != nil {
			return err
		}
		a, err := d.client.Exec(ctx, c)
		if err != nil {
			return err
		}
		if a != "" {
			errs = append(errs, fmt.Errorf("haproxy add map (%d entries): %s", len(keys), a))
		}
	}
	return errors.Join(errs...)
}

// List reads the live map with `show map`. When a key appears twice, the first entry is the one
// HAProxy matches, so it wins.
func (d *RuntimeDriver) List(ctx context.Context) (map[string]string, error) {
	c, err := NewCommand("show", "map", d.mapID)
	if err != nil {
		return nil, err
	}
	out, err := d.client.Exec(ctx, c)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for line := range strings.SplitSeq(out, "\n") {
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 || !strings.HasPrefix(f[0], "0x") {
			return nil, fmt.Errorf("haproxy show map %s: unexpected line %q", d.mapID, line)
		}
		if _, dup := m[f[1]]; !dup {
			m[f[1]] = f[2]
		}
	}
	return m, nil
}

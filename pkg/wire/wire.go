// Package wire is the encoding of every NATS message and KV value livegate writes: protojson, so
// an operator can read them with the nats CLI.
package wire

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// MaxSize bounds what Unmarshal accepts; livegate's messages are a few hundred bytes.
const MaxSize = 64 << 10

var (
	marshal   = protojson.MarshalOptions{UseProtoNames: false}
	unmarshal = protojson.UnmarshalOptions{DiscardUnknown: true}
)

// Marshal encodes m as protojson.
func Marshal(m proto.Message) ([]byte, error) {
	b, err := marshal.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", m.ProtoReflect().Descriptor().Name(), err)
	}
	return b, nil
}

// Unmarshal decodes protojson into m. Unknown fields are dropped so an older binary keeps working
// next to a newer one.
func Unmarshal(b []byte, m proto.Message) error {
	name := m.ProtoReflect().Descriptor().Name()
	if len(b) > MaxSize {
		return fmt.Errorf("decode %s: %d bytes, more than %d", name, len(b), MaxSize)
	}
	if err := unmarshal.Unmarshal(b, m); err != nil {
		return fmt.Errorf("decode %s: %w", name, err)
	}
	return nil
}

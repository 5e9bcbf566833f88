module github.com/livegate/livegate/e2e

go 1.26.0

require golang.org/x/sys v0.49.0

require (
	github.com/livegate/livegate/pkg v0.0.0-00010101000000-000000000000
	github.com/livegate/livegate/proto v0.0.0-00010101000000-000000000000
	github.com/nats-io/nats.go v1.55.0
	google.golang.org/protobuf v1.36.12
)

require (
	github.com/klauspost/compress v1.20.3 // indirect
	github.com/nats-io/nkeys v0.4.16 // indirect
	github.com/nats-io/nuid v1.0.1 // indirect
	golang.org/x/crypto v0.58.0 // indirect
)

replace github.com/livegate/livegate/pkg => ../pkg

replace github.com/livegate/livegate/proto => ../proto

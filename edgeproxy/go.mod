module github.com/livegate/livegate/edgeproxy

go 1.26.0

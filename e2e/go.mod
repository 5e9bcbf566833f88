module github.com/livegate/livegate/e2e

go 1.26.0

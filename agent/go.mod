module github.com/livegate/livegate/agent

go 1.26.0

# Benchmarks (included from the root Makefile). Each prints livegate's figures next to a baseline
# measured in the same run; docs/benchmarks.md records the latest figures. Root only: they create
# network namespaces (prefix lgb) and nftables and iptables rules inside them, never on the host.
BENCH_FLAGS ?=
# wrk drives the agent's REST API; coturn is the userspace relay baseline. The bench runs its own
# turnserver inside a namespace, so the packaged service is stopped and disabled where systemd
# started it.
BENCH_TOOLS = command -v wrk >/dev/null && command -v turnserver >/dev/null || { echo "bench: installing wrk coturn"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk coturn >/dev/null; \
	if [ -d /run/systemd/system ]; then systemctl disable --now coturn >/dev/null 2>&1 || true; fi; }

.PHONY: bench bench-quick bench-scale

bench: deps build ## Every benchmark at the issue's durations (about 4-5 minutes)
	@if [ "$$(id -u)" != 0 ]; then echo "make bench: run as root (network namespaces, nftables and iptables inside them)" >&2; exit 1; fi
	@$(BENCH_TOOLS)
	cd e2e && go run ./bench/cmd/livegate-bench --bin ../bin $(BENCH_FLAGS)

bench-quick: deps build ## The pre-release subset of the benchmarks (under 2 minutes)
	@if [ "$$(id -u)" != 0 ]; then echo "make bench-quick: run as root (network namespaces, nftables and iptables inside them)" >&2; exit 1; fi
	@$(BENCH_TOOLS)
	cd e2e && go run ./bench/cmd/livegate-bench --quick --bin ../bin $(BENCH_FLAGS)

bench-scale: deps build ## Optional: 3 edges on a 3-node NATS cluster, 3x9,500 sessions, node loss (about 3 minutes)
	@if [ "$$(id -u)" != 0 ]; then echo "make bench-scale: run as root (network namespaces, nftables and iptables inside them)" >&2; exit 1; fi
	cd e2e && go run ./bench/cmd/livegate-bench --only scale --bin ../bin $(BENCH_FLAGS)

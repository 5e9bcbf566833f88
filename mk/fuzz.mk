# Native Go fuzzing (included from the root Makefile). Each target below checks properties of one
# entry point for untrusted input; docs/fuzzing.md says which. `go test` fuzzes one target per
# package per run, so the recipes loop. A failing input is written by go test to the package's
# testdata/fuzz/<Target>/ and the loop stops; commit it once fixed, it then runs in every `make unit`.
FUZZ_TARGETS := \
	pkg/sessionid:FuzzValidateSinks \
	pkg/wire:FuzzWireRoundTrip \
	pkg/events:FuzzEventMessage \
	agent/internal/creds:FuzzCredsParse \
	agent/internal/restapi:FuzzRESTBody \
	agent/internal/appapi:FuzzAppAPIRequest \
	agent/internal/appapi:FuzzEndpointEvent \
	agent/internal/settings:FuzzSettingsTOML \
	agent/internal/settings:FuzzSettingsArgs \
	agent/internal/settings:FuzzSettingsEnv \
	edgeproxy/internal/routes:FuzzRouteParse \
	edgeproxy/internal/haproxy:FuzzRuntimeApply \
	edgeproxy/internal/haproxy:FuzzCommand \
	edgeproxy/internal/dataplaneapi:FuzzDPAEntry \
	edgeproxy/internal/iptables:FuzzQuoteSplit \
	edgeproxy/internal/iptables:FuzzParseSave \
	edgeproxy/internal/mediaplane:FuzzMediaSync

# FUZZTIME is per target for `make fuzz`; FUZZTIME_SHORT per target for `make fuzz-short`, sized
# so that the whole short run stays under a minute on two cores once the test binaries are built.
FUZZTIME ?= 1m
FUZZTIME_SHORT ?= 2s
# FUZZ selects targets by name (an extended regexp), e.g. make fuzz FUZZ='Settings|Route'.
FUZZ ?= .

# $(call fuzz_run,TIME,VERBOSE,FRESH): fuzz every selected target for TIME; VERBOSE=1 streams go
# test's progress lines, otherwise only a summary line per target is printed (and the full output
# when it fails). FRESH=1 starts from the committed corpus alone, in a throw-away cache directory:
# the corpus go test keeps in GOCACHE grows with every long run, and replaying all of it first
# would leave a short run no time to fuzz.
define fuzz_run
	@targets=$$(printf '%s\n' $(FUZZ_TARGETS) | grep -E -- '$(FUZZ)' || true); \
	if [ -z "$$targets" ]; then echo "fuzz: no target matches FUZZ='$(FUZZ)'" >&2; exit 1; fi; \
	n=$$(echo "$$targets" | wc -l); i=0; start=$$SECONDS; log=$$(mktemp); cache=$$(mktemp -d); \
	trap 'rm -rf $$log $$cache' EXIT; extra=""; if [ "$(3)" = 1 ]; then extra="-args -test.fuzzcachedir=$$cache"; fi; \
	for t in $$targets; do \
	  i=$$((i+1)); pkg=$${t%%:*}; name=$${t##*:}; mod=$${pkg%%/*}; rel=./$${pkg#*/}; t0=$$SECONDS; \
	  echo "fuzz [$$i/$$n] $$pkg $$name for $(1)"; \
	  if [ "$(2)" = 1 ]; then \
	    (cd $$mod && go test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(1) $$rel $$extra) 2>&1 | tee $$log || { \
	      echo "fuzz: $$name failed; the input is in $$pkg/testdata/fuzz/$$name/ (replay: cd $$mod && go test -run '$$name/<file>' $$rel)" >&2; exit 1; }; \
	  else \
	    (cd $$mod && go test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(1) $$rel $$extra) >$$log 2>&1 || { cat $$log >&2; \
	      echo "fuzz: $$name failed; the input is in $$pkg/testdata/fuzz/$$name/ (replay: cd $$mod && go test -run '$$name/<file>' $$rel)" >&2; exit 1; }; \
	  fi; \
	  last=$$(grep -E '^fuzz: elapsed: .*execs: ' $$log | tail -1 | sed -E 's/^fuzz: elapsed: [^,]*, //; s/ \([0-9]+\/sec\)//' || true); \
	  echo "fuzz [$$i/$$n] $$name: ok in $$((SECONDS-t0))s: $${last:-no execs reported}"; \
	done; \
	echo "fuzz: $$n targets, $$((SECONDS-start))s, no failure"
endef

.PHONY: fuzz fuzz-short

fuzz: ## Fuzz every target for FUZZTIME each (default 1m; FUZZ=regexp picks targets)
	$(call fuzz_run,$(FUZZTIME),1,0)

fuzz-short: ## A few seconds of fuzzing per target, part of make test (under a minute)
	$(call fuzz_run,$(FUZZTIME_SHORT),0,1)

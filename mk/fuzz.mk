# Native Go fuzzing (included from the root Makefile). Each target below checks properties of one
# entry point for untrusted input; docs/fuzzing.md says which. `go test` fuzzes one target per
# package per run, so the recipes loop. A failing input is written by go test to the package's
# testdata/fuzz/<Target>/ and the loop stops; commit it once fixed, it then runs in every `make unit`.
FUZZ_TARGETS := \
	pkg/sessionid:FuzzValidateSinks \
	pkg/sessiontoken:FuzzVerify \
	pkg/wire:FuzzWireRoundTrip \
	pkg/events:FuzzEventMessage \
	agent/internal/creds:FuzzCredsParse \
	agent/internal/restapi:FuzzRESTBody \
	agent/internal/appapi:FuzzAppAPIRequest \
	agent/internal/appapi:FuzzEndpointEvent \
	agent/internal/settings:FuzzSettingsTOML \
	agent/internal/settings:FuzzSettingsArgs \
	agent/internal/settings:FuzzSettingsEnv \
	edgeproxy/internal/cli:FuzzEdgeSettings \
	edgeproxy/internal/routes:FuzzRouteParse \
	edgeproxy/internal/desired:FuzzEdgeWatchValues \
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
# The short run fuzzes two targets at a time with one worker each: linking a fuzz-instrumented
# test binary and gathering its baseline coverage take longer than the fuzzing itself, and that
# wait overlaps the other target's fuzzing.
FUZZ_JOBS_SHORT ?= 2

# $(call fuzz_run,TIME,VERBOSE,FRESH,JOBS,PARALLEL): fuzz every selected target for TIME, JOBS
# targets at a time, each with PARALLEL workers (empty: go test's default, one per core).
# VERBOSE=1 streams go test's progress lines, otherwise only a summary line per target is printed
# (and the full output when it fails). FRESH=1 starts from the committed corpus alone, in a
# throw-away cache directory: the corpus go test keeps in GOCACHE grows with every long run, and
# replaying all of it first would leave a short run no time to fuzz. A target that fails with
# nothing but go test's own "context deadline exceeded" as -fuzztime runs out, and writes no
# input, hit go.dev/issue/75804 (a race in the fuzzing coordinator under CPU load, fixed in Go
# 1.27): that is said, not counted as a failure. The test for it: no new file in the target's
# corpus (a real finding always writes one) and no failing seed (`--- FAIL: Name/seed`).
# `-args -test.fuzzcachedir` works because the test binary takes the last copy of a flag, and
# go test passes its own cache directory before -args.
define fuzz_run
	@targets=$$(printf '%s\n' $(FUZZ_TARGETS) | grep -E -- '$(FUZZ)' || true); \
	if [ -z "$$targets" ]; then echo "fuzz: no target matches FUZZ='$(FUZZ)'" >&2; exit 1; fi; \
	n=$$(echo "$$targets" | wc -l); start=$$SECONDS; dir=$$(mktemp -d); trap 'rm -rf $$dir' EXIT; \
	extra=""; if [ "$(3)" = 1 ]; then mkdir $$dir/cache; extra="-args -test.fuzzcachedir=$$dir/cache"; fi; \
	par=""; if [ -n "$(5)" ]; then par="-parallel $(5)"; fi; \
	one() { \
	  local i=$$1 pkg=$${2%%:*} name=$${2##*:} t0=$$SECONDS log=$$dir/$$1.log; local mod=$${pkg%%/*} rel=./$${pkg#*/}; \
	  echo "fuzz [$$i/$$n] $$pkg $$name for $(1)"; \
	  local corpus=$$pkg/testdata/fuzz/$$name rc=0; local before=$$(ls $$corpus 2>/dev/null | wc -l); \
	  if [ "$(2)" = 1 ]; then \
	    (cd $$mod && go test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(1) $$par $$rel $$extra) 2>&1 | tee $$log || rc=$$?; \
	  else \
	    (cd $$mod && go test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(1) $$par $$rel $$extra) >$$log 2>&1 || rc=$$?; \
	  fi; \
	  if [ $$rc != 0 ]; then \
	    if [ "$$(ls $$corpus 2>/dev/null | wc -l)" = "$$before" ] && grep -qx '    context deadline exceeded' $$log && ! grep -q -- "--- FAIL: $$name/" $$log; then \
	      echo "fuzz [$$i/$$n] $$name: go test hit its own deadline race as fuzzing ended (go.dev/issue/75804); no failing input"; \
	    else \
	      if [ "$(2)" != 1 ]; then cat $$log >&2; fi; touch $$dir/failed; \
	      echo "fuzz: $$name failed; the input is in $$corpus/ (replay: cd $$mod && go test -run '$$name/<file>' $$rel)" >&2; return 1; \
	    fi; \
	  fi; \
	  local last=$$(grep -E '^fuzz: elapsed: .*execs: ' $$log | tail -1 | sed -E 's/^fuzz: elapsed: [^,]*, //; s/ \([0-9]+\/sec\)//' || true); \
	  echo "fuzz [$$i/$$n] $$name: ok in $$((SECONDS-t0))s: $${last:-no execs reported}"; \
	}; \
	i=0; for t in $$targets; do \
	  i=$$((i+1)); \
	  while [ $$(jobs -rp | wc -l) -ge $(4) ]; do wait -n || true; done; \
	  if [ -e $$dir/failed ]; then break; fi; \
	  one $$i $$t & \
	done; wait; \
	if [ -e $$dir/failed ]; then exit 1; fi; \
	echo "fuzz: $$n targets, $$((SECONDS-start))s, no failure"
endef

.PHONY: fuzz fuzz-short fuzz-check

fuzz: fuzz-check ## Fuzz every target for FUZZTIME each (default 1m; FUZZ=regexp picks targets)
	$(call fuzz_run,$(FUZZTIME),1,0,1,)

fuzz-short: fuzz-check ## A few seconds of fuzzing per target, part of make test (about 2.5 minutes with its builds)
	$(call fuzz_run,$(FUZZTIME_SHORT),0,1,$(FUZZ_JOBS_SHORT),1)

# A target missing from FUZZ_TARGETS would only run its seeds, never be fuzzed; one listed but
# gone would fail only when its turn comes.
fuzz-check: ## Fail when FUZZ_TARGETS differs from the func Fuzz* in the tree
	@found=$$(grep -rHoE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(' $(MODULES) | sed -E 's|/[^/]*:func (Fuzz[A-Za-z0-9_]*)\($$|:\1|' | sort); \
	listed=$$(printf '%s\n' $(FUZZ_TARGETS) | sort); \
	if [ "$$found" != "$$listed" ]; then \
	  echo "fuzz-check: mk/fuzz.mk FUZZ_TARGETS and the tree's fuzz targets differ (< listed only, > in the tree only):" >&2; \
	  diff <(echo "$$listed") <(echo "$$found") | grep '^[<>]' >&2; exit 1; \
	fi

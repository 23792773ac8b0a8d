# framebus — every developer and CI entry point. `make` alone prints help.

GO        ?= go
FLATC     ?= flatc
FUZZTIME  ?= 5m
BENCHCOUNT ?= 5
BENCHOUT  ?= bench.out
E2EBENCHCOUNT ?= 5
E2EBENCHOUT ?= bench-e2e.out
SUBBENCHOUT ?= bench-sub.out
UPBENCHOUT ?= bench-uplink.out
DEMOTIME  ?= 20s
CHAOSOUT  ?= chaos.out
SOAKTIME  ?= 10m
SOAKOUT   ?= docs/soak
BIN       := bin

# Packages with fuzz targets, and their targets (kept in sync by `make fuzz-list`).
FUZZ_TARGETS := schema:FuzzVerify schema:FuzzParseJSON shm:FuzzSegmentHeader shm:FuzzRingConsumer sidecar:FuzzFilter

.DEFAULT_GOAL := help
.PHONY: help build test test-perf fmt-check deps-check vet generate generate-check test-race test-allocs bench bench-e2e bench-sub bench-uplink fuzz fuzz-list lint demo clean chaos soak

help: ## Show this help.
	@echo "framebus — shared-memory message bus for multiprocess IoT gateways"
	@echo
	@echo "Targets:"
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | awk -F'\t' '{printf "  %-16s %s\n", $$1, $$2}'
	@echo
	@echo "Variables: FUZZTIME=$(FUZZTIME) (per fuzz target), BENCHCOUNT=$(BENCHCOUNT), DEMOTIME=$(DEMOTIME)"

build: ## Build every package, bin/framebus and bin/framebus-modbus.
	$(GO) build ./...
	$(GO) build -o $(BIN)/framebus ./cmd/framebus
	$(GO) build -o $(BIN)/framebus-modbus ./cmd/framebus-modbus

test: fmt-check vet fuzz-list deps-check generate-check deploy-check test-allocs test-perf test-race test-arm64 ## What CI runs: gofmt, vet, fuzz-target list, generated-code check, allocation, performance-ratio and full-count tests, race tests (with the quick chaos suite), arm64 tests under qemu.

.PHONY: deploy-check
deploy-check: ## Check deploy/: promtool check/test rules and check config, systemd-analyze verify of the units (the Go side is TestDeploy* in ./test).
	@deploy/check.sh

fmt-check: ## Fail if gofmt would change a file.
	@out=$$(gofmt -l $$(find . -name '*.go' -not -path './.git/*')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; echo "run: gofmt -w ."; exit 1; fi

deps-check: ## Fail if the driver-side packages (shm, schema, client) pull in bbolt or prometheus.
	@pkgs=$$(ls -d shm schema client 2>/dev/null | sed 's|^|./|; s|$$|/...|'); \
	heavy=$$($(GO) list -deps $$pkgs | grep -E 'bbolt|prometheus' || true); \
	if [ -n "$$heavy" ]; then echo "driver-side packages depend on: $$heavy"; exit 1; fi

vet: ## go vet ./...
	$(GO) vet ./...

generate: ## Regenerate schema/fb from schema/framebus.fbs with flatc.
	$(GO) generate ./schema

generate-check: ## Fail if `make generate` would change the committed generated code.
	@command -v $(FLATC) >/dev/null || { echo "flatc not found: apt-get install flatbuffers-compiler"; exit 1; }
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	$(FLATC) --go --go-namespace fb -o $$tmp schema/framebus.fbs && gofmt -w $$tmp/fb && \
	diff -ru -x doc.go schema/fb $$tmp/fb || { echo "schema/fb is stale: run make generate and commit"; exit 1; }

test-race: ## go test -race ./...
	$(GO) test -race -count 1 -timeout 20m ./...

test-allocs: ## Allocation tests, without -race (its instrumentation allocates, so they skip under it).
	$(GO) test -count 1 -run 'Allocs' ./schema ./shm ./wal

test-perf: ## Tests that compare throughput or need full counts, without -race (its instrumentation distorts the ratios and slows the counts; under -race they check only correctness, at smaller counts): the slow subscriber, and 1 M frames through the uplink with a kill -9.
	$(GO) test -count 1 -run 'TestSlowSubscriber|TestUplink$$' ./test

# The emulator that runs the arm64 test binaries (Debian: apt-get install qemu-user-static).
QEMU_ARM64 ?= qemu-aarch64-static

.PHONY: test-arm64
test-arm64: ## Cross-compile the shm, schema and wal tests for linux/arm64 and run them under qemu-user (QEMU_ARM64=qemu-aarch64-static); no -race: on arm64 it needs cgo and a cross compiler.
	@command -v $(QEMU_ARM64) >/dev/null || { echo "$(QEMU_ARM64) not found: apt-get install qemu-user-static"; exit 1; }
	@dir=$$(mktemp -d); trap 'rm -rf $$dir' EXIT; failed=; \
	for p in shm schema wal; do \
		CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) test -c -o $$dir/$$p.test ./$$p || exit 1; \
	done; \
	for p in shm schema wal; do \
		start=$$(date +%s); \
		if (cd $$p && FRAMEBUS_TEST_EXEC=$(QEMU_ARM64) $(QEMU_ARM64) $$dir/$$p.test -test.count=1 -test.timeout=20m); \
		then echo "ok    $$p (linux/arm64, $(QEMU_ARM64)) $$(( $$(date +%s) - start ))s"; \
		else echo "FAIL  $$p (linux/arm64, $(QEMU_ARM64))"; failed="$$failed $$p"; fi; \
	done; \
	if [ -n "$$failed" ]; then echo "test-arm64 failed:$$failed"; exit 1; fi

bench: ## Benchmarks (shm rings vs Unix socket, encoders); results into $(BENCHOUT) and a median table.
	$(GO) test -run '^$$' -bench . -benchmem -count $(BENCHCOUNT) -timeout 60m ./shm ./schema ./wal | tee $(BENCHOUT)
	$(GO) run ./cmd/benchreport < $(BENCHOUT)

bench-sub: ## Subscribers and commands vs embedded NATS core: live latency, fan-out, command round trip; $(SUBBENCHOUT) and medians.
	$(GO) test -run '^$$' -bench 'LiveLatency|FanOut|CommandRoundTrip' -count $(E2EBENCHCOUNT) -timeout 60m ./test | tee $(SUBBENCHOUT)
	$(GO) run ./cmd/benchreport < $(SUBBENCHOUT)

bench-uplink: ## Uplink forwarding into a local JetStream vs a sync and an async nats.go publisher; $(UPBENCHOUT) and medians.
	$(GO) test -run '^$$' -bench 'Uplink' -count $(E2EBENCHCOUNT) -timeout 60m ./test | tee $(UPBENCHOUT)
	$(GO) run ./cmd/benchreport < $(UPBENCHOUT)

bench-e2e: ## End-to-end durable ingest (driver process → sidecar → WAL) vs embedded JetStream and the disk; $(E2EBENCHOUT) and ratios.
	$(GO) test -run '^$$' -bench EndToEnd -count $(E2EBENCHCOUNT) -timeout 60m ./test | tee $(E2EBENCHOUT)
	$(GO) run ./cmd/benchreport < $(E2EBENCHOUT)

.PHONY: bench-report
bench-report: build ## framebus bench: the standard scenarios against the real binaries, peers in the same run (about 2 minutes; idle machine): docs/bench.md and docs/bench-*.png.
	$(BIN)/framebus bench --out docs

chaos: ## The reliability suite at full counts (TestChaos*: 50 sidecar kills, 200 driver kills, hostile client, disk faults, access control), race on; one CHAOS line per fault, log in $(CHAOSOUT).
	@$(GO) test -race -count 1 -timeout 60m -v -run 'Chaos' ./test ./sidecar -chaos.full > $(CHAOSOUT) 2>&1; rc=$$?; \
	grep -E -- '--- FAIL|^FAIL' $(CHAOSOUT); grep '^CHAOS' $(CHAOSOUT); \
	if [ $$rc -ne 0 ]; then echo "chaos failed: details in $(CHAOSOUT)"; fi; exit $$rc

soak: ## SOAKTIME (10m) at half the maximum throughput with drivers and a subscriber coming and going: RSS, goroutines, fds within ±10 %; writes $(SOAKOUT).csv and .png, log in soak.out.
	@$(GO) test -count 1 -timeout 60m -v -run 'TestSoak$$' ./test -soak $(SOAKTIME) -soak.out $(abspath $(SOAKOUT)) > soak.out 2>&1; rc=$$?; \
	grep -E -- '^(CHAOS|--- |FAIL)|soak_test.go' soak.out; exit $$rc

fuzz: ## Run every fuzz target for FUZZTIME each (seeds in */testdata/fuzz).
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t#*:}; \
		echo "== $$pkg $$name for $(FUZZTIME)"; \
		$(GO) test ./$$pkg -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -parallel 1; \
	done

fuzz-list: ## Check that FUZZ_TARGETS lists every fuzz target in the tree.
	@found=$$(grep -rhoE '^func (Fuzz[A-Za-z0-9_]+)' --include='*_test.go' . | sed 's/func //' | sort); \
	listed=$$(echo $(FUZZ_TARGETS) | tr ' ' '\n' | sed 's/.*://' | sort); \
	[ "$$found" = "$$listed" ] || { echo "FUZZ_TARGETS differs from the fuzz targets in the tree:"; echo "found: $$found"; exit 1; }

lint: fmt-check vet ## gofmt, go vet and staticcheck.
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

demo: ## A sidecar, the Modbus driver polling a simulated PLC (tail, a setpoint write), then simulated drivers for DEMOTIME with live throughput; prints where the WAL is.
	$(GO) build -o $(BIN)/framebus ./cmd/framebus && $(GO) build -o $(BIN)/framebus-modbus ./cmd/framebus-modbus && $(BIN)/framebus demo --duration $(DEMOTIME)

clean: ## Remove build output.
	rm -rf $(BIN) $(BENCHOUT) $(CHAOSOUT) soak.out

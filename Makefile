# relayd — run `make` or `make help` for the targets.

GO        ?= go
PREFIX    ?= /usr/local
DESTDIR   ?=
BIN       := bin
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# The worker is forked once per message: build it lean and static.
WORKER_FLAGS := -trimpath -ldflags='-s -w'
RUN_FLAGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show the targets.
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build relayd, worker and echo into bin/.
	$(GO) build -o $(BIN)/ ./cmd/relayd ./cmd/echo
	CGO_ENABLED=0 $(GO) build $(WORKER_FLAGS) -o $(BIN)/ ./cmd/worker

.PHONY: run
run: build ## Start relayd on a private socket and open the echo REPL; relayd stops when the REPL ends.
	@dir=$$(mktemp -d "$${TMPDIR:-/tmp}/relayd.XXXXXX"); sock="$$dir/relayd.sock"; \
	$(BIN)/relayd --socket "$$sock" $(RUN_FLAGS) 2>"$$dir/relayd.log" & pid=$$!; \
	trap 'kill -TERM $$pid 2>/dev/null; wait $$pid; rm -rf "$$dir"' EXIT INT TERM; \
	for i in $$(seq 100); do [ -S "$$sock" ] && break; sleep 0.05; done; \
	echo "relayd $$pid on $$sock (log: $$dir/relayd.log)"; \
	RELAY_SOCKET="$$sock" $(BIN)/echo

.PHONY: test
test: ## Run every test: gofmt, vet, staticcheck, unit and end-to-end tests with the race detector, a short fuzz run, the unit-file and install checks, a benchmark smoke run.
	@fmt=$$(gofmt -l .); if [ -n "$$fmt" ]; then echo "gofmt would change:"; echo "$$fmt"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	deploy/systemd/check.sh
	deploy/check-install.sh
	$(MAKE) --no-print-directory bench-smoke
	$(GO) test -run='^$$' -fuzz=FuzzDecodeRequest -fuzztime=10s ./ipc/
	GODEBUG=execwait=2 $(GO) test -count=1 ./supervisor/
	$(GO) test -race -count=1 ./...

BENCH_FLAGS ?=

.PHONY: bench
bench: build ## Run the benchmark of issue 5 (about 5 minutes; report also in bin/bench.md); installs s6 for its peer when root with apt-get.
	@command -v s6-ipcserver >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  echo "installing s6 (for the s6-ipcserver peer)" && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq s6 >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq s6 >/dev/null 2>&1; }; }; } || true
	$(GO) run ./bench --bin $(BIN) --out $(BIN)/bench.md $(BENCH_FLAGS)

.PHONY: bench-smoke
bench-smoke: build ## Run the benchmark on a few dozen messages, to prove that every measurement works.
	$(GO) run ./bench --bin $(BIN) --smoke

.PHONY: lint
lint: ## Run go vet, the gofmt check and staticcheck.
	$(GO) vet ./...
	@fmt=$$(gofmt -l .); if [ -n "$$fmt" ]; then echo "gofmt would change:"; echo "$$fmt"; exit 1; fi
	$(GO) run $(STATICCHECK) ./...

.PHONY: install
install: build ## Install relayd, relay-echo, the worker (libexec) and the systemd units under $(DESTDIR)$(PREFIX).
	install -D -m 0755 $(BIN)/relayd $(DESTDIR)$(PREFIX)/bin/relayd
	install -D -m 0755 $(BIN)/echo $(DESTDIR)$(PREFIX)/bin/relay-echo
	install -D -m 0755 $(BIN)/worker $(DESTDIR)$(PREFIX)/libexec/relayd/worker
	deploy/systemd/render.sh $(PREFIX) $(DESTDIR)$(PREFIX)/lib/systemd/system

.PHONY: clean
clean: ## Remove bin/.
	rm -rf $(BIN)

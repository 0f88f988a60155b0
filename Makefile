# relayd — run `make` or `make help` for the targets.

GO        ?= go
PREFIX    ?= /usr/local
DESTDIR   ?=
BIN       := bin
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# The code generators of `make proto`, pinned: protoc-gen-go matches the protobuf module in go.mod,
# and protoc-gen-go-grpc 1.3 writes code that the gRPC module in go.mod accepts.
PROTOC_GEN_GO      := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PROTOC_GEN_GO_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.3.0
# The worker is forked once per message: build it lean and static.
WORKER_FLAGS := -trimpath -ldflags='-s -w'
RUN_FLAGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show the targets.
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-13s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build relayd, worker, worker-plugin (the worker's go-plugin mode) and echo into bin/.
	$(GO) build -o $(BIN)/ ./cmd/relayd ./cmd/echo
	CGO_ENABLED=0 $(GO) build $(WORKER_FLAGS) -o $(BIN)/ ./cmd/worker
	CGO_ENABLED=0 $(GO) build $(WORKER_FLAGS) -tags goplugin -o $(BIN)/worker-plugin ./cmd/worker

.PHONY: run
run: build ## Start relayd on a private socket and open the echo REPL; relayd stops when the REPL ends.
	@dir=$$(mktemp -d "$${TMPDIR:-/tmp}/relayd.XXXXXX"); sock="$$dir/relayd.sock"; log="$$dir/relayd.log"; \
	{ $(BIN)/relayd --socket "$$sock" $(RUN_FLAGS) 2>"$$log" & echo $$! >"$$dir/pid"; wait $$!; echo $$? >"$$dir/exit"; } & \
	trap 'kill -TERM $$(cat "$$dir/pid") 2>/dev/null; wait; rm -rf "$$dir"' EXIT; trap 'exit 130' INT TERM; \
	i=0; until [ -S "$$sock" ]; do \
	  if [ -e "$$dir/exit" ] || [ $$i -ge 200 ]; then \
	    if [ -e "$$dir/exit" ]; then echo "relayd exited with status $$(cat "$$dir/exit") before it listened:" >&2; \
	    else echo "relayd did not listen on $$sock within 10 s; its log so far:" >&2; fi; \
	    cat "$$log" >&2; exit 1; \
	  fi; i=$$((i+1)); sleep 0.05; \
	done; \
	echo "relayd $$(cat "$$dir/pid") on $$sock (log: $$log, removed when the REPL ends)"; \
	RELAY_SOCKET="$$sock" $(BIN)/echo

.PHONY: run-cluster
run-cluster: build ## Start an embedded NATS server (JetStream on) and three relayd nodes on it, and open the echo REPL through NATS; it shows which node answered. All of it stops when the REPL ends.
	$(GO) run ./internal/runcluster --bin $(BIN) --relayd-args "$(RUN_FLAGS)"

.PHONY: bench-cluster
bench-cluster: ## Measure cluster mode (about a minute): throughput of 1, 2 and 3 relayd nodes on NATS and the NATS hop against the socket; table in bin/bench-cluster.md.
	@mkdir -p $(BIN)
	RELAYD_CLUSTER_BENCH=1 RELAYD_CLUSTER_BENCH_OUT=$(abspath $(BIN))/bench-cluster.md $(GO) test -count=1 -run '^TestScale$$' -v ./cluster/
	@cat $(BIN)/bench-cluster.md

.PHONY: test
test: ## Run every test: gofmt, vet, staticcheck, unit and end-to-end tests with the race detector, a short fuzz run, the unit-file and install checks, a benchmark smoke run.
	@fmt=$$(gofmt -l .); if [ -n "$$fmt" ]; then echo "gofmt would change:"; echo "$$fmt"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags goplugin ./cmd/worker
	$(GO) run $(STATICCHECK) ./...
	deploy/systemd/check.sh
	deploy/check-install.sh
	$(MAKE) --no-print-directory bench-smoke
	$(GO) test -run='^$$' -fuzz=FuzzDecodeRequest -fuzztime=10s ./ipc/
	GODEBUG=execwait=2 $(GO) test -count=1 ./supervisor/
	$(GO) test -race -count=1 ./...

BENCH_FLAGS ?=

.PHONY: bench
bench: build ## Run the benchmark (about 4 minutes, longer on a busy machine; report also in bin/bench.md, pictures in bin/bench.svg). It installs nothing: see bench-deps.
	@command -v s6-ipcserver >/dev/null 2>&1 || echo "s6-ipcserver is not installed: its peer is skipped (make bench-deps installs it)"
	$(GO) run ./bench --bin $(BIN) --out $(BIN)/bench.md --svg $(BIN)/bench.svg $(BENCH_FLAGS)

.PHONY: bench-deps
bench-deps: ## Install what the benchmark's peers need but Go does not bring: s6 (apt-get; needs root).
	@command -v s6-ipcserver >/dev/null 2>&1 && echo "s6-ipcserver is installed" || \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq s6 || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq s6; }; }

.PHONY: bench-smoke
bench-smoke: build ## Run the benchmark on a few dozen messages, to prove that every measurement works.
	$(GO) run ./bench --bin $(BIN) --smoke --svg $(BIN)/bench-smoke.svg --profile=$(BIN)/bench-smoke.pprof

.PHONY: proto
proto: ## Regenerate the plugin service's Go code and the Python example's module from sdk/plugin/pluginpb/worker.proto (needs protoc: installs protobuf-compiler when root with apt-get).
	@command -v protoc >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  echo "installing protobuf-compiler (for protoc)" && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null 2>&1; }; }; } || \
	  { echo "make proto needs protoc (Debian: apt-get install protobuf-compiler)"; exit 1; }
	GOBIN=$(abspath $(BIN))/tools $(GO) install $(PROTOC_GEN_GO)
	GOBIN=$(abspath $(BIN))/tools $(GO) install $(PROTOC_GEN_GO_GRPC)
	PATH="$(abspath $(BIN))/tools:$$PATH" protoc -I sdk --go_out=sdk --go_opt=paths=source_relative \
	  --go-grpc_out=sdk --go-grpc_opt=paths=source_relative plugin/pluginpb/worker.proto
	protoc -I sdk/plugin/pluginpb --python_out=examples/python-plugin worker.proto

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
	install -D -m 0755 $(BIN)/worker-plugin $(DESTDIR)$(PREFIX)/libexec/relayd/worker-plugin
	deploy/systemd/render.sh $(PREFIX) $(DESTDIR)$(PREFIX)/lib/systemd/system

.PHONY: clean
clean: ## Remove bin/.
	rm -rf $(BIN)

# Every target is a thin alias for go commands a reviewer could type by hand;
# `go install` never needs make.
GVTAG   := v0.8.9
GVMOD   := github.com/containers/gvisor-tap-vsock
CCVER   := 2.1.332
BIN     := $(CURDIR)/bin
FUZZTIME ?= 10s
# make install copies smolbottle and its tools here, side by side: the
# lookup (findProgram) searches smolbottle's own directory first.
PREFIX  ?= $(HOME)/.local
BINDIR  ?= $(PREFIX)/bin
# Every binary is built static (CGO_ENABLED=0), with or without gcc:
# smolbottle is copied into the guest, whatever image it runs, and gvproxy
# runs in a jail with no loader or libc.
STATIC  := CGO_ENABLED=0

.PHONY: build test check deps vet race verify fuzz bench tools install demo clean

# bin/smolbottle beside bin/gvproxy and bin/gvforwarder (make tools), where
# every subcommand looks first.
build:
	$(STATIC) go build -buildvcs=auto -o $(BIN)/smolbottle .

# The README's test command: everything CI runs.
test: tools check

check: vet deps race verify

vet:
	test -z "$$(gofmt -l .)" || { gofmt -l .; exit 1; }
	go vet ./...

# Zero dependencies, enforced: go list -m all prints only this module.
deps:
	test "$$(go list -m all)" = "$$(go list -m)"

race:
	go test -race -count=1 ./...

verify:
	if [ -f verify/go.mod ]; then cd verify && go vet ./... && go test -count=1 ./...; fi

# Bounded fuzzing: each target for $(FUZZTIME). go test -fuzz takes one
# target at a time. New failures land in testdata/fuzz/<Target>/ (in verify/
# for FuzzRoundTrip); commit them, and the normal test run replays them.
FUZZ_TARGETS := FuzzTomlString FuzzTomlKey FuzzYamlString FuzzYamlKey \
	FuzzRenderSmolfile FuzzRenderGvproxy FuzzRenderPipelock

fuzz:
	for f in $(FUZZ_TARGETS); do \
		go test -run='^$$' -fuzz="^$$f\$$" -fuzztime=$(FUZZTIME) . || exit 1; \
	done
	cd verify && go test -run='^$$' -fuzz='^FuzzRoundTrip$$' -fuzztime=$(FUZZTIME) .

bench:
	go test -run='^$$' -bench=. -benchmem .

# gvproxy and its guest agent gvforwarder (cmd/vm), pinned, into bin/; not
# recorded in go.mod. pipelock too, from its source archive, and Claude Code
# from npm for the tests that run the real client.
tools: $(BIN)/gvproxy $(BIN)/gvforwarder pipelock $(BIN)/claude

# Static (CGO_ENABLED=0): the jail holds the binary and nothing else, no
# loader or libc.
$(BIN)/gvproxy:
	$(STATIC) GOBIN=$(BIN) go install $(GVMOD)/cmd/gvproxy@$(GVTAG)

$(BIN)/gvforwarder:
	$(STATIC) GOBIN=$(BIN) go install $(GVMOD)/cmd/vm@$(GVTAG)
	mv $(BIN)/vm $(BIN)/gvforwarder

# Claude Code, pinned, for the tests that run the real client. npm warns
# that the package wants node >= 22; the native binary linked here does not
# run on node.
$(BIN)/claude:
	npm install --prefix $(BIN)/claude-code --no-save --no-fund --no-audit @anthropic-ai/claude-code@$(CCVER)
	ln -sf claude-code/node_modules/@anthropic-ai/claude-code-linux-x64/claude $@

# pipelock from a source archive of its v2.3.0 tag (git archive
# --prefix=pipelock-v2.3.0/ v2.3.0 | gzip): the Go module proxy refuses to
# `go install` it (its go.mod path lacks the /v2 its tags need). Static, and
# version-stamped so `pipelock version` says 2.3.0 (on stderr), as the
# release binaries do. PIPELOCK_SRC unset: nothing is built.
PIPELOCK_SRC ?=
PIPELOCK_VER := 2.3.0
PIPELOCK_PKG := github.com/luckyPipewrench/pipelock/internal
.PHONY: pipelock
pipelock:
	@if [ -x $(BIN)/pipelock ]; then echo "$(BIN)/pipelock: $$($(BIN)/pipelock version 2>&1 | head -1)"; exit 0; fi; \
	if [ -z "$(PIPELOCK_SRC)" ]; then \
		echo "make tools: skipping pipelock: PIPELOCK_SRC is unset. Install pipelock $(PIPELOCK_VER)'s release binary as $(BIN)/pipelock, or run make tools PIPELOCK_SRC=/path/to/pipelock-v$(PIPELOCK_VER).tar.gz (git archive of its v$(PIPELOCK_VER) tag)"; \
		exit 0; \
	fi; \
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	tar -xzf "$(PIPELOCK_SRC)" -C "$$tmp"; \
	cd "$$tmp/pipelock-v$(PIPELOCK_VER)" && CGO_ENABLED=0 go build -trimpath \
		-ldflags "-s -w -X $(PIPELOCK_PKG)/cliutil.Version=$(PIPELOCK_VER) -X $(PIPELOCK_PKG)/proxy.Version=$(PIPELOCK_VER)" \
		-o $(BIN)/pipelock ./cmd/pipelock; \
	$(BIN)/pipelock version 2>&1 | grep -x "pipelock version $(PIPELOCK_VER)" || { rm -f $(BIN)/pipelock; exit 1; }

# The README's main-job command: the reachability matrix of a confined
# gvproxy with the real guest agent, in namespaces it creates.
demo: build tools
	$(BIN)/smolbottle selftest

# Until the module is published, this is how to install from a clone:
# smolbottle, gvproxy and gvforwarder together in $(BINDIR) (pipelock and
# smolvm come from their own releases, on PATH).
install: build tools
	mkdir -p $(BINDIR)
	install -m 0755 $(BIN)/smolbottle $(BIN)/gvproxy $(BIN)/gvforwarder $(BINDIR)/

clean:
	rm -rf smolbottle bin

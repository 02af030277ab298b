# Every target is a thin alias for go commands a reviewer could type by hand;
# `go install` never needs make.
GVTAG   := v0.8.9
GVMOD   := github.com/containers/gvisor-tap-vsock
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
# recorded in go.mod.
tools: $(BIN)/gvproxy $(BIN)/gvforwarder

# Static (CGO_ENABLED=0): the jail holds the binary and nothing else, no
# loader or libc.
$(BIN)/gvproxy:
	$(STATIC) GOBIN=$(BIN) go install $(GVMOD)/cmd/gvproxy@$(GVTAG)

$(BIN)/gvforwarder:
	$(STATIC) GOBIN=$(BIN) go install $(GVMOD)/cmd/vm@$(GVTAG)
	mv $(BIN)/vm $(BIN)/gvforwarder

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

# Flotilla: the two set-up commands are `make up` and `make test`. Both install what they need.

SHELL := /bin/bash
# Keep the build cache outside the clone so RocksDB (10-40 min cold) is built once per machine.
export CARGO_TARGET_DIR ?= /var/cache/flotilla/target
CARGO ?= cargo
# Debian packages: clang/libclang for RocksDB's bindings; protoc and etcd for the etcd side of the benchmark.
DEB_PACKAGES := build-essential clang libclang-dev protobuf-compiler etcd-server etcd-client
UP_DIR ?= $(CURDIR)/.flotilla

.PHONY: deps build test lint up down bench

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@mkdir -p "$(CARGO_TARGET_DIR)"

build: deps
	$(CARGO) build --workspace --all-targets

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Every test: formatting, lints, unit tests and the end-to-end tests (real processes).
test: lint
	$(CARGO) build --bin flotilla
	$(CARGO) test --workspace --no-fail-fast

# A local 3-node cluster on loopback, data under .flotilla/ (`make down` stops it).
up: deps
	$(CARGO) build --bin flotilla
	UP_DIR="$(UP_DIR)" FLOTILLA_BIN="$(CARGO_TARGET_DIR)/debug/flotilla" deploy/local-cluster.sh up

down:
	UP_DIR="$(UP_DIR)" deploy/local-cluster.sh down

bench: deps
	$(CARGO) build --release --bin flotilla --bin flotilla-bench
	FLOTILLA_BIN="$(CARGO_TARGET_DIR)/release/flotilla" "$(CARGO_TARGET_DIR)/release/flotilla-bench" store --json bench-store.json

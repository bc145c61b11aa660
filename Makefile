# Flotilla: the two set-up commands are `make up` and `make test`. Both install what they need.

SHELL := /bin/bash
# Keep the build cache outside the clone so RocksDB (10-40 min cold) is built once per machine.
export CARGO_TARGET_DIR ?= /var/cache/flotilla/target
CARGO ?= cargo
# CI builds a fresh clone once: incremental state would only fill the shared cache's disk.
ifdef CI
export CARGO_INCREMENTAL := 0
endif
# Debian packages: clang/libclang for RocksDB's bindings; protoc and etcd for the etcd side of the benchmark.
DEB_PACKAGES := build-essential clang libclang-dev protobuf-compiler etcd-server etcd-client stress-ng iproute2 nftables busybox-static runc crun tzdata bind9-dnsutils tmux docker-registry skopeo apache2-utils
UP_DIR ?= $(CURDIR)/.flotilla

# RocksDB's C++ is compiled once per machine, optimised, into a static archive outside cargo's
# fingerprints: every build (dev, test, clippy, release) links that one archive, so a change of
# features or profile never recompiles it. The version follows Cargo.lock.
ROCKSDB_VERSION := $(shell sed -n '/^name = "librocksdb-sys"/{n;s/^version = "\(.*\)"/\1/p}' Cargo.lock)
ROCKSDB_PREFIX ?= /var/cache/flotilla/rocksdb-$(ROCKSDB_VERSION)-release
export ROCKSDB_LIB_DIR := $(ROCKSDB_PREFIX)
export ROCKSDB_STATIC := 1

.PHONY: deps bench-deps rocksdb build test lint up down bench busybox-image

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@mkdir -p "$(CARGO_TARGET_DIR)"

rocksdb: deps $(ROCKSDB_PREFIX)/librocksdb.a

$(ROCKSDB_PREFIX)/librocksdb.a:
	@echo "building RocksDB $(ROCKSDB_VERSION) once for this machine (optimised; about 25 min on 2 cores) ..."
	mkdir -p "$(ROCKSDB_PREFIX)"
	env -u ROCKSDB_LIB_DIR -u ROCKSDB_STATIC CARGO_TARGET_DIR="$(ROCKSDB_PREFIX)/build" \
	  $(CARGO) build --release -p librocksdb-sys
	cp "$$(find "$(ROCKSDB_PREFIX)/build/release/build" -path '*librocksdb-sys-*/out/librocksdb.a' | head -1)" "$@.tmp"
	mv "$@.tmp" "$@"
	rm -rf "$(ROCKSDB_PREFIX)/build"
	# rustc bundles the archive into librocksdb-sys's rlib: drop any built against an older one.
	$(CARGO) clean -p librocksdb-sys

# A busybox image as an OCI archive (and a docker-save one), made from Debian's busybox-static.
busybox-image: deps
	sh deploy/busybox-image.sh "$(CARGO_TARGET_DIR)/busybox-oci.tar"
	sh deploy/busybox-image.sh "$(CARGO_TARGET_DIR)/busybox-docker.tar" docker
	@echo "flotilla image import $(CARGO_TARGET_DIR)/busybox-oci.tar --name busybox"

build: rocksdb
	$(CARGO) build --workspace --all-targets

lint: rocksdb
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Every test: formatting, lints, unit tests and the end-to-end tests (real processes). The
# end-to-end tests run the `flotilla` binary built beside them.
test: lint
	$(CARGO) build --workspace --all-targets
	set -o pipefail; $(CARGO) test --workspace --no-fail-fast 2>&1 | tee "$(CARGO_TARGET_DIR)/test-output.log"
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$(CARGO_TARGET_DIR)/test-output.log"

# A local 3-node cluster, each node in its own network namespace, data under .flotilla/
# (`make down` stops it and removes it).
up: rocksdb busybox-image
	$(CARGO) build --workspace --bins
	"$(CARGO_TARGET_DIR)/debug/flotilla" up --nodes 3 --dir "$(UP_DIR)" --image busybox="$(CARGO_TARGET_DIR)/busybox-oci.tar"

down:
	"$(CARGO_TARGET_DIR)/debug/flotilla" up --down --dir "$(UP_DIR)"

# The peers the benchmarks run against that `make test` does not need: Docker (its daemon is
# started by the bench in a namespace of its own, never as a host service).
BENCH_PACKAGES := docker.io dnsperf nsd

bench-deps: deps
	@missing=""; for p in $(BENCH_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing (no service is started)"; \
	  made=0; [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made=1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  [ $$made = 1 ] && rm -f /usr/sbin/policy-rc.d; true; \
	fi

bench: rocksdb bench-deps
	$(CARGO) build --release --workspace --bins
	FLOTILLA_BIN="$(CARGO_TARGET_DIR)/release/flotilla" "$(CARGO_TARGET_DIR)/release/flotilla-bench" store --json bench-store.json
	FLOTILLA_BIN="$(CARGO_TARGET_DIR)/release/flotilla" "$(CARGO_TARGET_DIR)/release/flotilla-bench" membership --json bench-membership.json
	FLOTILLA_BIN="$(CARGO_TARGET_DIR)/release/flotilla" "$(CARGO_TARGET_DIR)/release/flotilla-bench" api --json bench-api.json
	FLOTILLA_BIN="$(CARGO_TARGET_DIR)/release/flotilla" "$(CARGO_TARGET_DIR)/release/flotilla-bench" runtime --json bench-runtime.json
	FLOTILLA_BIN="$(CARGO_TARGET_DIR)/release/flotilla" "$(CARGO_TARGET_DIR)/release/flotilla-bench" failover --json bench-failover.json
	FLOTILLA_BIN="$(CARGO_TARGET_DIR)/release/flotilla" "$(CARGO_TARGET_DIR)/release/flotilla-bench" pods --json bench-pods.json
	FLOTILLA_BIN="$(CARGO_TARGET_DIR)/release/flotilla" "$(CARGO_TARGET_DIR)/release/flotilla-bench" scheduler --json bench-scheduler.json
	FLOTILLA_BIN="$(CARGO_TARGET_DIR)/release/flotilla" "$(CARGO_TARGET_DIR)/release/flotilla-bench" dns --json bench-dns.json

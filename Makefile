SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Stamp that records which dependency files the venv was last installed from.
VENV_STAMP := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto' | sort)
GEN_OUT ?= gen
PROTODEPS := .build/protodeps
WEB := web
# Stamp npm ci writes: the web app's dependencies match the committed lockfile.
WEB_DEPS := $(WEB)/node_modules/.package-lock.json
WEB_API_OUT ?= $(WEB)/src/api

help: ## Show this help
	@grep -hE '^[a-z][a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

# Debian packages the platform needs beyond pip: the jail's Python runtime (the sandbox binds
# Debian's world-readable /usr/bin/python3.11 and its stdlib into each run).
SYSTEM_PACKAGES := python3.11-minimal libpython3.11-stdlib
# promtool (alert rules and their unit tests): Debian's prometheus package, unpacked under
# .build/ without installing it, so no Prometheus server is set up or started.
PROMTOOL := .build/prometheus/usr/bin/promtool

system-deps: ## Install the Debian packages the sandbox needs (as root; no-op when present)
	@if ! [ -x /usr/bin/python3.11 ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $(SYSTEM_PACKAGES); \
	  else echo "install $(SYSTEM_PACKAGES) (apt-get, as root) for the sandbox" >&2; exit 1; fi; \
	fi

$(PROMTOOL):
	@mkdir -p .build/prometheus-deb
	@if ! ls .build/prometheus-deb/prometheus_*.deb >/dev/null 2>&1; then \
	  (cd .build/prometheus-deb && apt-get download prometheus 2>/dev/null) || \
	  { apt-get update -qq && cd .build/prometheus-deb && apt-get download prometheus; }; \
	fi
	dpkg -x .build/prometheus-deb/prometheus_*.deb .build/prometheus
	@touch $@

promtool: $(PROMTOOL) ## Unpack promtool from Debian's prometheus package into .build/

$(VENV_STAMP): pyproject.toml
	@$(MAKE) system-deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

venv: $(VENV_STAMP) ## Create .venv and install the project with its development tools

run: $(VENV_STAMP) web ## Run the whole platform (embedded PostgreSQL and Redis unless URLs are given)
	$(VENV)/bin/foretell up

test: $(VENV_STAMP) $(PROMTOOL) web ## Run the whole test suite: pytest (real PostgreSQL, Redis, Envoy, Chromium) and vitest
	cd $(WEB) && node_modules/.bin/vitest run
	$(PY) -m pytest $(PYTEST_ARGS)

# Seconds of load the fault-injection suite keeps up while it kills each part of the stack.
CHAOS_LOAD_S ?= 60

chaos: $(VENV_STAMP) ## Fault injection: kill -9 and restart each part of a private stack under load (CHAOS_LOAD_S)
	CHAOS_LOAD_S=$(CHAOS_LOAD_S) $(PY) -m pytest -m chaos tests/test_chaos.py -s $(PYTEST_ARGS)

lint: $(VENV_STAMP) protodeps $(WEB_DEPS) ## ruff, mypy --strict, the import layers, buf lint and format, vue-tsc
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/buf lint
	$(VENV)/bin/buf format --diff --exit-code protos
	cd $(WEB) && node_modules/.bin/vue-tsc --build

fmt: $(VENV_STAMP) ## Format Python and protos in place
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/buf format -w protos

protodeps: $(VENV_STAMP) ## Copy google/api and google/rpc protos out of the installed package (for buf)
	@rm -rf $(PROTODEPS) && mkdir -p $(PROTODEPS)/google
	@site=$$($(PY) -c 'import google.api, os; print(os.path.dirname(list(google.api.__path__)[0]))'); \
	  for d in api rpc; do mkdir -p $(PROTODEPS)/google/$$d; cp $$site/$$d/*.proto $(PROTODEPS)/google/$$d/; done

$(WEB_DEPS): $(WEB)/package.json $(WEB)/package-lock.json
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

web-deps: $(WEB_DEPS) ## Install the web app's npm dependencies from the lockfile

WEB_SOURCES := $(shell find $(WEB)/src $(WEB)/public -type f 2>/dev/null) $(WEB)/index.html \
  $(WEB)/vite.config.ts $(WEB)/package-lock.json

$(WEB)/dist/index.html: $(WEB_DEPS) $(WEB_SOURCES)
	cd $(WEB) && node_modules/.bin/vite build --logLevel warn

web: $(WEB)/dist/index.html ## Build the web app into web/dist (Envoy serves it)

gen: $(VENV_STAMP) $(WEB_DEPS) ## Regenerate gen/ (stubs, descriptor set, OpenAPI) and the web app's API types
	$(PY) -m foretell._gen $(GEN_OUT)
	@mkdir -p $(WEB_API_OUT)
	$(WEB)/node_modules/.bin/openapi-typescript $(GEN_OUT)/openapi/foretell.openapi.json \
	  -o $(WEB_API_OUT)/schema.d.ts 2>/dev/null

gen-check: $(VENV_STAMP) ## Fail when gen/ or the web app's API types are stale
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	  $(MAKE) gen GEN_OUT=$$tmp/gen WEB_API_OUT=$$tmp/api >/dev/null; \
	  diff -r -x __pycache__ $$tmp/gen gen || { echo "gen/ is stale: run 'make gen' and commit"; exit 1; }; \
	  diff $$tmp/api/schema.d.ts $(WEB_API_OUT)/schema.d.ts \
	    || { echo "$(WEB_API_OUT)/schema.d.ts is stale: run 'make gen' and commit"; exit 1; }

# The contract a change is checked against: the previous commit of main by default.
BREAKING_REF ?= HEAD~1

breaking: $(VENV_STAMP) protodeps ## buf breaking (FILE rules) against BREAKING_REF, default HEAD~1
	@if git cat-file -e "$(BREAKING_REF):protos" 2>/dev/null; then \
	  tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	  git archive "$(BREAKING_REF)" protos buf.yaml | tar -x -C $$tmp; \
	  mkdir -p $$tmp/.build && cp -r $(PROTODEPS) $$tmp/.build/; \
	  (cd $$tmp && $(CURDIR)/$(VENV)/bin/buf build -o $$tmp/against.binpb); \
	  $(VENV)/bin/buf build -o $$tmp/current.binpb; \
	  $(VENV)/bin/buf breaking $$tmp/current.binpb --against $$tmp/against.binpb --exclude-imports; \
	  echo "buf breaking: no breaking change against $(BREAKING_REF)"; \
	else echo "buf breaking: $(BREAKING_REF) has no protos, nothing to compare"; fi

docs: $(VENV_STAMP) ## Regenerate docs/configuration.md from the settings code
	$(PY) -m foretell._settings_doc docs/configuration.md

bench: $(VENV_STAMP) ## Print the RPC throughput and latency figures (bench/README.md)
	@command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client; }
	$(PY) bench/rpc.py

# Kubernetes version the manifests are validated against (user namespaces are GA from 1.36).
K8S_VERSION ?= 1.36.0

manifests: $(VENV_STAMP) ## Render every deploy/kubernetes overlay and validate it (--strict, K8S_VERSION)
	@for overlay in deploy/kubernetes/overlays/*/; do \
	  name=$$(basename $$overlay); mkdir -p .build/manifests; \
	  $(VENV)/bin/kubectl kustomize $$overlay > .build/manifests/$$name.yaml; \
	  $(VENV)/bin/kubernetes-validate --strict --quiet -k $(K8S_VERSION) .build/manifests/$$name.yaml; \
	  echo "$$name: .build/manifests/$$name.yaml rendered and valid for Kubernetes $(K8S_VERSION) (KEDA kinds: tests/test_deploy.py)"; \
	done

IMAGE ?= localhost/foretell:0.1.0
IMAGE_PACKAGES := podman mmdebstrap uidmap runc
# Where the machine's cgroups are a v1/v2 hybrid, crun refuses to start containers: runc works.
# Without CAP_SYS_RESOURCE (as in these sandboxes), podman's default rlimits (above the hard
# limit) cannot be set: ask for ones below it.
PODMAN ?= podman --runtime runc
PODMAN_ULIMITS ?= --ulimit nofile=4096:4096 --ulimit nproc=4096:4096
export PODMAN PODMAN_ULIMITS

image-tools:
	@command -v podman >/dev/null && command -v mmdebstrap >/dev/null && command -v runc >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq $(IMAGE_PACKAGES); }

wheels: $(VENV_STAMP) ## Wheels of foretell[server] at the pinned versions, for the image (.build/wheels)
	rm -rf .build/wheels
	$(PY) -m pip wheel --quiet --wheel-dir .build/wheels \
	  --constraint deploy/image/constraints.txt ".[server]" async-timeout

image: image-tools wheels ## Build the OCI image (Debian base from mmdebstrap, then podman build) as IMAGE
	sh deploy/image/build-base.sh .build/image
	$(PODMAN) build -f deploy/Containerfile --network=host $(PODMAN_ULIMITS) \
	  --build-arg REVISION=$$(git rev-parse HEAD) -t $(IMAGE) .

image-test: $(VENV_STAMP) image-tools ## Start IMAGE with podman: gRPC health SERVING and a REST answer through Envoy
	$(PY) -m tests.image_smoke $(IMAGE)

image-lock: $(VENV_STAMP) ## Pin the image's Python packages to this virtualenv's (deploy/image/constraints.txt)
	$(PY) deploy/image/lock.py deploy/image/constraints.txt

clean: ## Remove the virtualenv, build leftovers and the local data directory
	rm -rf $(VENV) .build .foretell .pytest_cache .mypy_cache .ruff_cache

.PHONY: help system-deps venv web-deps web run test chaos lint fmt protodeps gen gen-check breaking docs bench manifests promtool image-tools wheels image image-test image-lock clean

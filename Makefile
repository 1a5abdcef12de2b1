# Two commands set everything up: `make run` (the platform with the pack) and `make test` (every check).
PYTHON ?= python3
VENV := .venv
SDK_VENV := .venv-sdk
SDK_VERSION := 1.39.13
PY := $(VENV)/bin/python
SDK := $(SDK_VENV)/bin/demisto-sdk
export DEMISTO_SDK_IGNORE_CONTENT_WARNING := 1

.PHONY: run test lint validate pack pytest pack-pythons bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

$(SDK_VENV)/.installed:
	$(PYTHON) -m venv $(SDK_VENV)
	$(SDK_VENV)/bin/pip install -q --upgrade pip
	$(SDK_VENV)/bin/pip install -q 'demisto-sdk==$(SDK_VERSION)'
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/xsoar-local up

test: lint validate pack pytest pack-pythons

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

pytest: $(VENV)/.installed
	$(PY) -m pytest -q

# The pack's unit tests on Python 3.10 and 3.12 too (the image's Python is not ours to choose).
pack-pythons:
	scripts/pack-pythons.sh

bench: $(VENV)/.installed
	$(PY) -m bench

clean:
	rm -rf build .xsoar-local .venv-py310 .venv-py312

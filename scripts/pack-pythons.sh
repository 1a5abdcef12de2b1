#!/usr/bin/env bash
# The pack's unit tests on the other Pythons the integration's docker image (demisto/fastapi) may have: the
# script must run unchanged there. Each gets a venv with the image's libraries (fastapi, uvicorn[standard]) and
# the test tools. A version this machine does not have is reported as skipped; a failing one fails `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
    local version=$1 candidate
    if command -v "python$version" >/dev/null 2>&1 && "python$version" -c '' >/dev/null 2>&1; then
        echo "python$version"
        return
    fi
    for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python; do
        [ -x "$candidate" ] && echo "$candidate" && return
    done
    return 0
}

status=0
for version in ${IMAGE_PYTHONS:-3.10 3.12}; do
    interpreter=$(find_python "$version")
    if [ -z "$interpreter" ]; then
        echo "pack tests on Python $version: SKIPPED (no Python $version on this machine)"
        continue
    fi
    venv=".venv-py${version//./}"
    if [ ! -f "$venv/.installed" ]; then
        "$interpreter" -m venv "$venv"
        "$venv/bin/pip" install -q --upgrade pip
        "$venv/bin/pip" install -q fastapi 'uvicorn[standard]' httpx pytest pytest-mock pytest-timeout trustme \
            hypothesis prometheus-client
        touch "$venv/.installed"
    fi
    echo "pack tests on $("$venv/bin/python" --version)"
    "$venv/bin/python" -m pytest -q Packs || status=1
done
exit $status

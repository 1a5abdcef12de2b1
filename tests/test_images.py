"""The pin files of the integrations' docker images (xsoar_local/images/*.txt), their resolution, and .venv-image."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from xsoar_local import images
from xsoar_local.images import ImageError, find_python, integration_image, pin_files, resolve_image

REPO = Path(__file__).resolve().parents[1]
INTEGRATION_YML = REPO / "Packs" / "GenericWebhook" / "Integrations" / "GenericWebhook" / "GenericWebhook.yml"
IMAGE_VENV = REPO / ".venv-image"
EXACT_PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*$")
# The image demisto-sdk's integration template names (`script.dockerimage`), and the base of the fastapi image.
SDK_TEMPLATE_IMAGE = "demisto/python3:3.12.13.10116658"
# docker/python3/Pipfile's [packages] of demisto/dockerfiles (requests[socks] brings pysocks).
PYTHON3_PIPFILE = {"requests", "pysocks", "olefile", "python-dateutil", "dateparser", "pyyaml", "funcy", "tldextract"}
PYTHON3_PIPFILE |= {"more-itertools", "defusedxml", "deepmerge", "wheel"}
PIN_FILE_PATHS = sorted(path for path in images.IMAGES_DIR.glob("*.txt") if path != images.TEST_TOOLS)


def write_pins(directory: Path, name: str, image: str, tags: str, python: str = "3.12", pins: str = "a==1\n") -> Path:
    path = directory / name
    path.write_text(f"# image: {image}\n# tags: {tags}\n# python: {python}\n\n{pins}")
    return path


def resolved_by_one_pin_file(ref: str) -> images.ImagePins:
    """The pin file `ref` resolves to, checked to be the only one of xsoar_local/images claiming its tag."""
    repo, tag = images.split_reference(ref)
    claiming = [pins for pins in pin_files() if pins.image == repo and tag in pins.tags]
    assert len(claiming) == 1, [pins.pins_path.name for pins in claiming]
    resolved = resolve_image(ref)
    assert resolved == claiming[0]
    assert resolved.pins_path.parent == images.IMAGES_DIR
    return resolved


def test_the_integrations_image_resolves_to_exactly_one_pin_file() -> None:
    """
    Given: the integration YAML's `script.dockerimage`
    When: resolving it
    Then: exactly one pin file of xsoar_local/images claims its tag, and it pins the image's web stack
    """
    resolved = resolved_by_one_pin_file(integration_image(INTEGRATION_YML))
    assert {"fastapi", "starlette", "uvicorn", "h11", "pydantic", "pyyaml"} <= resolved.pins.keys()


def test_the_sdk_template_image_resolves_to_exactly_one_pin_file() -> None:
    """
    Given: demisto/python3 at the tag demisto-sdk's integration template names
    When: resolving it, and the same image at a tag nobody pinned
    Then: exactly one pin file claims the tag, with the image's Python 3.12 and every library of its Pipfile; the
      unknown tag's error names the pinned one
    """
    resolved = resolved_by_one_pin_file(SDK_TEMPLATE_IMAGE)
    assert resolved.python == "3.12"
    assert resolved.pins.keys() >= PYTHON3_PIPFILE, sorted(PYTHON3_PIPFILE - resolved.pins.keys())
    with pytest.raises(
        ImageError, match=r"no pin file for demisto/python3:3\.12\.0 \(pinned tags: .*3\.12\.13\.10116658"
    ):
        resolve_image("demisto/python3:3.12.0")


@pytest.mark.parametrize("path", PIN_FILE_PATHS, ids=lambda path: path.name)
def test_every_pin_file_pins_pyyaml_and_setuptools_last(path: Path) -> None:
    """
    Given: one pin file of xsoar_local/images
    When: reading its pins
    Then: it has an `# image:` header, pins pyyaml (the platform's runner imports it in every image env) and pins
      setuptools last (the images upgrade it after their requirements)
    """
    pins = images.parse_pin_file(path)

    assert pins is not None, f"{path.name} has no `# image:` header"
    assert "pyyaml" in pins.pins, f"{path.name} does not pin pyyaml"
    assert images.normalize_name(pins.requirements[-1].split("==")[0]) == "setuptools", pins.requirements[-1]


def test_every_pin_file_has_its_headers_and_only_exact_pins() -> None:
    """
    Given: every .txt of xsoar_local/images with an `# image:` header (test-tools.txt has none: it is skipped)
    When: reading it
    Then: it names the image, at least one tag and a major.minor Python, and every requirement is `name==version`
    """
    files = pin_files()
    assert files, "no pin file in xsoar_local/images"
    assert images.TEST_TOOLS.exists() and images.parse_pin_file(images.TEST_TOOLS) is None
    for pins in files:
        assert re.fullmatch(r"[a-z0-9][a-z0-9._/-]*", pins.image), pins.pins_path.name
        assert pins.tags, pins.pins_path.name
        assert re.fullmatch(r"\d+\.\d+", pins.python), pins.pins_path.name
        assert pins.requirements, pins.pins_path.name
        lines = [line.strip() for line in pins.pins_path.read_text().splitlines()]
        requirements = [line for line in lines if line and not line.startswith("#")]
        assert requirements == list(pins.requirements)
        assert all(EXACT_PIN.match(line) for line in requirements), pins.pins_path.name
        names = [images.normalize_name(line.split("==")[0]) for line in requirements]
        assert len(names) == len(set(names)), f"{pins.pins_path.name} pins a library twice"


def test_no_tag_is_claimed_twice() -> None:
    """
    Given: every pin file
    When: collecting the (image, tag) pairs of their `# tags:` lines
    Then: each pair appears once
    """
    claimed = [(pins.image, tag) for pins in pin_files() for tag in pins.tags]

    assert len(claimed) == len(set(claimed)), sorted(claimed)


def test_resolve_errors_name_the_cause(tmp_path: Path) -> None:
    """
    Given: pin files for one image, two of which claim the same tag
    When: resolving an unknown tag, an unknown image, a reference without a tag, and the doubly claimed tag
    Then: each error names what was asked, what is known and the file(s) concerned
    """
    write_pins(tmp_path, "fastapi-1.txt", "demisto/fastapi", "1.0.1 1.0.2")
    write_pins(tmp_path, "fastapi-2.txt", "demisto/fastapi", "2.0.1, 1.0.2")
    (tmp_path / "test-tools.txt").write_text("pytest>=8\n")

    assert resolve_image("demisto/fastapi:2.0.1", tmp_path).pins_path.name == "fastapi-2.txt"
    with pytest.raises(
        ImageError, match=r"no pin file for demisto/fastapi:9\.9 \(pinned tags: 1\.0\.1, 1\.0\.2, 2\.0\.1\)"
    ):
        resolve_image("demisto/fastapi:9.9", tmp_path)
    with pytest.raises(ImageError, match=r"no pin file for image demisto/nope; pinned images: demisto/fastapi"):
        resolve_image("demisto/nope:1.0.1", tmp_path)
    with pytest.raises(ImageError, match=r"'demisto/fastapi' has no tag"):
        resolve_image("demisto/fastapi", tmp_path)
    with pytest.raises(ImageError, match=r"tag 1\.0\.2 of demisto/fastapi .* \(fastapi-1\.txt, fastapi-2\.txt\)"):
        resolve_image("demisto/fastapi:1.0.2", tmp_path)


def test_the_real_pin_files_refuse_an_unknown_tag_and_image() -> None:
    """
    Given: the repository's pin files
    When: resolving a tag nobody pinned, and an image nobody pinned
    Then: the errors name the tag or the image
    """
    with pytest.raises(ImageError, match=r"demisto/fastapi:0\.0\.0\.1"):
        resolve_image("demisto/fastapi:0.0.0.1")
    with pytest.raises(ImageError, match=r"image demisto/no-such-image"):
        resolve_image("demisto/no-such-image:1.0")


def test_a_pin_file_with_a_loose_requirement_or_without_python_is_refused(tmp_path: Path) -> None:
    """
    Given: a pin file with a `>=` requirement, and one without `# python:`
    When: reading them
    Then: the errors name the file, the line and what is wrong
    """
    loose = write_pins(tmp_path, "loose.txt", "demisto/x", "1", pins="a==1\nb>=2\n")
    no_python = tmp_path / "no-python.txt"
    no_python.write_text("# image: demisto/x\n# tags: 2\na==1\n")

    with pytest.raises(ImageError, match=r"loose\.txt line 6: 'b>=2' is not an exact pin"):
        images.parse_pin_file(loose)
    with pytest.raises(ImageError, match=r"no-python\.txt: header without python"):
        images.parse_pin_file(no_python)


def test_the_dockerimage_is_read_without_yaml(tmp_path: Path) -> None:
    """
    Given: integration YAMLs with a quoted dockerimage, none, and two different ones
    When: reading the image
    Then: the quoted one is found; the others are errors naming what was found
    """
    quoted = tmp_path / "a.yml"
    quoted.write_text("script:\n  type: python\n  dockerimage: 'demisto/fastapi:1.2.3'  # the image\n")
    none = tmp_path / "b.yml"
    none.write_text("script:\n  type: python\n")
    two = tmp_path / "c.yml"
    two.write_text("script:\n  dockerimage: demisto/a:1\n  dockerimage: demisto/b:2\n")

    assert integration_image(quoted) == "demisto/fastapi:1.2.3"
    with pytest.raises(ImageError, match=r"b\.yml must name one `dockerimage:` \(found none\)"):
        integration_image(none)
    with pytest.raises(ImageError, match=r"found demisto/a:1, demisto/b:2"):
        integration_image(two)


def test_find_python_skips_a_shim_that_does_not_run_and_names_the_missing_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Given: a PATH whose only python3.99 is a shim that fails (as pyenv's does for a version not selected), and no
      pyenv version 3.99
    When: looking for Python 3.99
    Then: the one-line error names the version, who needs it and the fix
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "python3.99"
    shim.write_text("#!/bin/sh\necho 'pyenv: python3.99: command not found' >&2\nexit 127\n")
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))

    with pytest.raises(ImageError) as raised:
        find_python("3.99", needed_by="demisto/fastapi:9.9")

    message = str(raised.value)
    assert message.startswith("Python 3.99 not found (needed by demisto/fastapi:9.9): install it")
    assert "pyenv install 3.99" in message and "python3.99 on PATH" in message
    assert "\n" not in message


def test_find_python_finds_a_pyenv_version_when_path_has_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Given: an empty PATH and a pyenv root holding this interpreter as version X.Y.Z
    When: looking for Python X.Y
    Then: the pyenv one is found, with its full version
    """
    major, minor, micro = sys.version_info[:3]
    bin_dir = tmp_path / "pyenv" / "versions" / f"{major}.{minor}.{micro}" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))

    found = find_python(f"{major}.{minor}")

    assert found.path == str(bin_dir / "python")
    assert found.version == f"{major}.{minor}.{micro}"


def test_the_marker_tells_a_changed_pin_file(tmp_path: Path) -> None:
    """
    Given: a venv directory whose marker records a pin file's hash, with a Python that runs
    When: the pin file is unchanged, then changed
    Then: the venv counts as current, then not
    """
    pins_path = write_pins(tmp_path, "x.txt", "demisto/x", "1")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    marker = images.build_marker(images.parse_pin_file(pins_path), test_tools=True)
    (venv / images.MARKER_NAME).write_text(json.dumps(marker))

    assert images.is_current(venv, images.build_marker(images.parse_pin_file(pins_path), test_tools=True))
    assert not images.is_current(venv, images.build_marker(images.parse_pin_file(pins_path), test_tools=False))
    pins_path.write_text(pins_path.read_text() + "b==2\n")
    assert not images.is_current(venv, images.build_marker(images.parse_pin_file(pins_path), test_tools=True))


@pytest.mark.skipif(
    not (IMAGE_VENV / "bin" / "python").exists(), reason=".venv-image is missing (make .venv-image builds it)"
)
def test_the_image_venv_holds_exactly_the_pins_and_no_httptools_or_uvloop() -> None:
    """
    Given: .venv-image, built by `make .venv-image` from the integration image's pin file
    When: listing its distributions (importlib.metadata, what `pip freeze` reads)
    Then: every pinned library has exactly its pinned version, the Python is the image's, and neither httptools nor
      uvloop is there (the image's uvicorn serves with h11 on plain asyncio)
    """
    pins = resolve_image(integration_image(INTEGRATION_YML))
    python = IMAGE_VENV / "bin" / "python"

    installed = images.installed_versions(python)

    wrong = {
        name: (installed.get(name), version) for name, version in pins.pins.items() if installed.get(name) != version
    }
    assert not wrong, f"installed vs pinned: {wrong}"
    assert "httptools" not in installed and "uvloop" not in installed
    version = images.interpreter_version(str(python))
    assert version is not None and version.startswith(f"{pins.python}."), version
    assert os.path.isfile(IMAGE_VENV / images.MARKER_NAME)

"""Integrations' docker images, replicated as virtualenvs: one pin file per image, one venv built from it.

The platform runs an integration inside the docker image its YAML names (`script.dockerimage`, `repo:tag`). Each
file `xsoar_local/images/*.txt` holds the Python libraries of one image as exact pins, under a header naming the
image, the tags it covers and the image's Python:

    # image: demisto/fastapi
    # tags: 0.125.0.10158186
    # python: 3.12

`resolve_image(ref)` finds the one file that claims a tag, `find_python(version)` the interpreter on this machine,
and `build_env(pins, venv_dir, ...)` a virtualenv with exactly those pins (optionally plus the test tools of
`images/test-tools.txt`, installed with the pins as constraints so they cannot move one). A marker file in the venv
records what it was built from: a changed pin file rebuilds it, an unchanged one is reused.

Standard library only: this runs before, and without, any other environment of the repository.

    python -m xsoar_local.images resolve demisto/fastapi:0.125.0.10158186
    python -m xsoar_local.images venv --integration Packs/.../GenericWebhook.yml .venv-image --test-tools
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from xsoar_local import bounds
from xsoar_local.errors import XsoarLocalError

IMAGES_DIR = Path(__file__).resolve().parent / "images"
TEST_TOOLS = IMAGES_DIR / "test-tools.txt"
# Written last by build_env (so a half-built venv has none); also the file `make` depends on.
MARKER_NAME = ".installed"

_HEADER = re.compile(r"^#\s*(image|tags|python)\s*:\s*(.*?)\s*$")
_EXACT_PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*$")
_PYTHON_VERSION = re.compile(r"^\d+\.\d+$")
_DOCKERIMAGE = re.compile(r"""^\s*dockerimage\s*:\s*["']?([^"'\s#]+)""", re.MULTILINE)
# pip's noise on machines whose pip.conf names local indexes that do not exist.
_PIP_NOISE = re.compile(r"^WARNING: Location '[^']*' is ignored")

Progress = Callable[[str], None]


def say(message: str) -> None:
    """The default progress: one line on stdout, at once (pip's output goes to stderr in between)."""
    print(message, flush=True)


class ImageError(XsoarLocalError):
    """An image reference, a pin file or the Python it needs is not usable. `problem` is the cause alone, `fix`
    what to do; the message joins them."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem}: {fix}" if fix else problem)


@dataclass(frozen=True)
class ImagePins:
    """One pin file: the image it describes, the tags it covers, the image's Python (`3.12`) and its pins."""

    image: str
    tags: tuple[str, ...]
    python: str
    pins_path: Path
    requirements: tuple[str, ...]  # `name==version`, in file order

    @property
    def pins(self) -> dict[str, str]:
        """Pinned versions by normalized distribution name (PEP 503: `typing_extensions` -> `typing-extensions`)."""
        return {normalize_name(name): version for name, version in (line.split("==", 1) for line in self.requirements)}

    @property
    def sha256(self) -> str:
        return file_sha256(self.pins_path)


@dataclass(frozen=True)
class Interpreter:
    path: str
    version: str  # the full version, `3.12.1`


def normalize_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def split_reference(ref: str) -> tuple[str, str]:
    """`demisto/fastapi:0.125.0.10158186` -> (`demisto/fastapi`, `0.125.0.10158186`); a tag is required."""
    repo, sep, tag = ref.strip().rpartition(":")
    if not sep or not repo or not tag or "/" in tag:
        raise ImageError(
            f"image reference {ref!r} has no tag: write it as repository:tag, e.g. demisto/fastapi:0.125.0"
        )
    return repo, tag


def parse_pin_file(path: Path) -> ImagePins | None:
    """The pin file's header and pins; None for a file without an `# image:` header (such as test-tools.txt)."""
    headers: dict[str, str] = {}
    lines: list[tuple[int, str]] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if line.startswith("#"):
            match = _HEADER.match(line)
            if match and match.group(1) not in headers:
                headers[match.group(1)] = match.group(2)
        elif line.split(" #", 1)[0].strip():
            lines.append((number, line.split(" #", 1)[0].strip()))
    if "image" not in headers:
        return None
    for number, line in lines:
        if not _EXACT_PIN.match(line):
            raise ImageError(f"{path.name} line {number}: {line!r} is not an exact pin: write it as name==version")
    requirements = [line for _, line in lines]
    missing = [key for key in ("tags", "python") if not headers.get(key)]
    if missing or not headers["image"]:
        raise ImageError(f"{path.name}: header without {', '.join(missing or ['image'])}: see {IMAGES_DIR.name}/*.txt")
    if not _PYTHON_VERSION.match(headers["python"]):
        raise ImageError(f"{path.name}: `# python: {headers['python']}` must be major.minor, e.g. 3.12")
    tags = tuple(tag for tag in re.split(r"[,\s]+", headers["tags"]) if tag)
    return ImagePins(headers["image"], tags, headers["python"], path, tuple(requirements))


def pin_files(images_dir: Path | None = None) -> list[ImagePins]:
    """Every pin file of `images_dir` (default IMAGES_DIR; files without an `# image:` header are skipped)."""
    images_dir = images_dir or IMAGES_DIR
    found = (parse_pin_file(path) for path in sorted(images_dir.glob("*.txt")))
    return [pins for pins in found if pins is not None]


def resolve_image(ref: str, images_dir: Path | None = None) -> ImagePins:
    """The one pin file whose `# image:` is the reference's repository and whose `# tags:` holds its tag."""
    repo, tag = split_reference(ref)
    files = pin_files(images_dir)
    of_repo = [pins for pins in files if pins.image == repo]
    claiming = [pins for pins in of_repo if tag in pins.tags]
    if len(claiming) == 1:
        return claiming[0]
    if claiming:
        names = ", ".join(pins.pins_path.name for pins in claiming)
        raise ImageError(f"tag {tag} of {repo} is claimed by more than one pin file ({names}): keep it in one")
    if of_repo:
        known = ", ".join(dict.fromkeys(tag for pins in of_repo for tag in pins.tags))
        raise ImageError(
            f"no pin file for {repo}:{tag} (pinned tags: {known})",
            f"add the tag to the `# tags:` line of the file in {_shown(images_dir or IMAGES_DIR)} whose pins it has,"
            " or add a file with its pins",
        )
    known = ", ".join(sorted({pins.image for pins in files})) or "none"
    raise ImageError(
        f"no pin file for image {repo}; pinned images: {known}", f"add one to {_shown(images_dir or IMAGES_DIR)}"
    )


def integration_image(integration_yml: Path) -> str:
    """`script.dockerimage` of an integration YAML (read with a regex: this runs without PyYAML)."""
    try:
        data = bounds.read_at_most(integration_yml, bounds.MAX_YAML_BYTES)
    except OSError as exc:
        raise ImageError(f"cannot read {integration_yml}: {exc.strerror}") from None
    if len(data) > bounds.MAX_YAML_BYTES:
        raise ImageError(
            f"{integration_yml} is more than {bounds.size_text(bounds.MAX_YAML_BYTES)} (MAX_YAML_BYTES)",
            f"give the integration's YAML, or raise {bounds.bound_name('MAX_YAML_BYTES')}",
        )
    text = data.decode("utf-8")
    refs = sorted(set(_DOCKERIMAGE.findall(text)))
    if len(refs) != 1:
        found = "none" if not refs else ", ".join(refs)
        raise ImageError(f"{integration_yml} must name one `dockerimage:` (found {found})")
    return refs[0]


def find_python(version: str, *, needed_by: str | None = None) -> Interpreter:
    """Python `version` (`3.12`) on this machine: `python3.12` on PATH if it really runs (a pyenv shim for a version
    that is installed but not selected does not), else the newest `${PYENV_ROOT:-~/.pyenv}/versions/3.12.*`."""
    candidates: list[str] = []
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(on_path)
    pyenv_root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    installed = [path for path in (pyenv_root / "versions").glob(f"{version}.*/bin/python") if path.is_file()]
    candidates += [str(path) for path in sorted(installed, key=lambda path: _version_key(path.parts[-3]), reverse=True)]
    for candidate in candidates:
        found = interpreter_version(candidate)
        if found is not None and (found == version or found.startswith(f"{version}.")):
            return Interpreter(candidate, found)
    needed = f" (needed by {needed_by})" if needed_by else ""
    raise ImageError(
        f"Python {version} not found{needed}: install it, e.g. `pyenv install {version}`, "
        f"or put python{version} on PATH"
    )


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else -1 for part in re.split(r"[.]", text))


def interpreter_version(executable: str) -> str | None:
    try:
        result = subprocess.run(
            [executable, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def build_marker(pins: ImagePins, *, test_tools: bool, image: str | None = None) -> dict[str, str | None]:
    """What a venv built from `pins` records: the pin file and its content hash (and the test tools' hash)."""
    return {
        "image": image or f"{pins.image}:{pins.tags[0]}",
        "pins_file": pins.pins_path.name,
        "pins_sha256": pins.sha256,
        "test_tools_sha256": file_sha256(TEST_TOOLS) if test_tools else None,
    }


def _same_build(recorded: dict[str, object], marker: dict[str, str | None]) -> bool:
    return all(recorded.get(key) == marker[key] for key in ("pins_file", "pins_sha256", "test_tools_sha256"))


def recorded_build(venv_dir: Path) -> dict[str, object]:
    """What the venv's marker records (pin file, hashes, image, Python); empty when it has none or it is unreadable."""
    try:
        recorded = json.loads((venv_dir / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def is_current(venv_dir: Path, marker: dict[str, str | None]) -> bool:
    """Whether `venv_dir` was built from the same pin file content (and test tools), and its Python still runs."""
    recorded = recorded_build(venv_dir)
    if not recorded or not _same_build(recorded, marker):
        return False
    return interpreter_version(str(venv_python(venv_dir))) is not None


def build_env(
    pins: ImagePins,
    venv_dir: Path,
    *,
    test_tools: bool = False,
    image: str | None = None,
    progress: Progress = say,
    python: Interpreter | None = None,
    announce_reuse: bool = True,
) -> Path:
    """A virtualenv in `venv_dir` with exactly `pins` (plus the test tools, constrained by the pins); reused when
    its marker shows it was built from the same pin file content. Returns the venv's python."""
    ref = image or f"{pins.image}:{pins.tags[0]}"
    marker = build_marker(pins, test_tools=test_tools, image=ref)
    marker_path = venv_dir / MARKER_NAME
    if is_current(venv_dir, marker):
        _write_marker(marker_path, {**recorded_build(venv_dir), "image": ref})  # also tells `make` it is up to date
        if announce_reuse:
            progress(f"{venv_dir} is up to date for {ref} ({pins.pins_path.name})")
        return venv_python(venv_dir)
    interpreter = python or find_python(pins.python, needed_by=ref)
    progress(f"building {venv_dir} for {ref} on Python {interpreter.version} ({interpreter.path}) ...")
    _remove_venv(venv_dir)
    _run([interpreter.path, "-m", "venv", str(venv_dir)], what=f"creating the virtualenv {venv_dir}")
    pip = [str(venv_python(venv_dir)), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    progress(f"  installing {len(pins.requirements)} pins of {_shown(pins.pins_path)} ...")
    _run([*pip, "-r", str(pins.pins_path)], what=f"installing {pins.pins_path.name}")
    if test_tools:
        progress(f"  installing the test tools of {_shown(TEST_TOOLS)} (the pins as constraints) ...")
        _run([*pip, "-r", str(TEST_TOOLS), "-c", str(pins.pins_path)], what=f"installing {TEST_TOOLS.name}")
    wrong = _version_mismatches(venv_dir, pins)
    if wrong:
        raise ImageError(f"{venv_dir} does not hold the pins of {pins.pins_path.name}: {'; '.join(wrong)}")
    _write_marker(marker_path, {**marker, "python": interpreter.version})
    progress(f"{venv_dir} ready: Python {interpreter.version}, {len(pins.requirements)} pins of {pins.pins_path.name}")
    return venv_python(venv_dir)


def installed_versions(python: Path | str) -> dict[str, str]:
    """Distribution versions installed for an interpreter, by normalized name (what `pip freeze` would list)."""
    code = (
        "import importlib.metadata as m, json, re\n"
        "print(json.dumps({re.sub(r'[-_.]+', '-', d.metadata['Name']).lower(): d.version"
        " for d in m.distributions() if d.metadata['Name']}))"
    )
    result = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, env=_clean_env(), timeout=60, check=False
    )
    if result.returncode != 0:
        raise ImageError(f"cannot list the libraries of {python}: {_last_line(result.stderr)}")
    return json.loads(result.stdout)


def _version_mismatches(venv_dir: Path, pins: ImagePins) -> list[str]:
    installed = installed_versions(venv_python(venv_dir))
    return [
        f"{name} {installed.get(name, 'missing')} instead of {version}"
        for name, version in pins.pins.items()
        if installed.get(name) != version
    ]


def _write_marker(path: Path, content: dict[str, object]) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _remove_venv(venv_dir: Path) -> None:
    """Remove an old venv before building; refuse anything that does not look like one."""
    if not venv_dir.exists():
        return
    if venv_dir.is_dir() and ((venv_dir / "pyvenv.cfg").exists() or not any(venv_dir.iterdir())):
        shutil.rmtree(venv_dir)
        return
    raise ImageError(f"{venv_dir} exists and is not a virtualenv: remove it or choose another directory")


def _clean_env() -> dict[str, str]:
    """This environment without what would let another environment's libraries in (PYTHONPATH, user site)."""
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    return env


def _run(command: list[str], *, what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, env=_clean_env(), check=False)
    output = [
        line for line in (result.stdout + result.stderr).splitlines() if line.strip() and not _PIP_NOISE.match(line)
    ]
    if result.returncode != 0:
        sys.stderr.write("".join(f"    {line}\n" for line in output[-40:]))
        raise ImageError(f"{what} failed (exit {result.returncode}): {_last_line(result.stderr or result.stdout)}")
    if output:
        sys.stderr.write("".join(f"    {line}\n" for line in output))


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip() and not _PIP_NOISE.match(line)]
    return lines[-1].strip() if lines else "no output"


def _shown(path: Path) -> str:
    """A path relative to the working directory when it is below it (shorter messages), else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xsoar_local.images", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    resolve = commands.add_parser("resolve", help="the pin file and Python of an image reference (repo:tag)")
    resolve.add_argument("ref", help="image reference, e.g. demisto/fastapi:0.125.0.10158186")
    venv = commands.add_parser("venv", help="build (or reuse) a virtualenv replicating an image")
    source = venv.add_mutually_exclusive_group(required=True)
    source.add_argument("--integration", type=Path, help="integration YAML whose `dockerimage:` names the image")
    source.add_argument("--image", help="image reference, e.g. demisto/fastapi:0.125.0.10158186")
    venv.add_argument("venv_dir", type=Path, help="the virtualenv's directory")
    venv.add_argument("--test-tools", action="store_true", help=f"also install {TEST_TOOLS.name} (constrained)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        if args.command == "resolve":
            pins = resolve_image(args.ref)
            try:
                interpreter = find_python(pins.python)
                found = f"{interpreter.path} ({interpreter.version})"
            except ImageError:
                found = "not found on this machine"
            print(f"image: {args.ref}")
            print(f"pins: {_shown(pins.pins_path)} ({len(pins.requirements)} pins, tags {' '.join(pins.tags)})")
            print(f"python: {pins.python}: {found}")
        else:
            ref = args.image or integration_image(args.integration)
            build_env(resolve_image(ref), args.venv_dir, test_tools=args.test_tools, image=ref)
    except XsoarLocalError as exc:
        print(f"xsoar_local.images: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write ./validation_config.toml: demisto-sdk's content-repo rule set, minus what needs the network.

Run it with the sdk venv's interpreter from the repository root:

    .venv-sdk/bin/python .ci/gen_validation_config.py

The result is pinned to the installed demisto-sdk version; re-run it after upgrading the sdk, because new graph or
network validators may appear.
"""

from pathlib import Path

import demisto_sdk
import toml

SDK_CONFIG = Path(demisto_sdk.__file__).parent / "commands/validate/sdk_validation_config.toml"
OUTPUT = Path("validation_config.toml")

# Validators that need the content graph (neo4j plus an APOC download), Docker Hub or GitHub.
NETWORK_CODES = {
    "AG116", "IF117", "LO100", "PA124", "PA133", "PB131", "PB133", "RN106", "RN107", "SC109", "SC110",  # graph
    "DO100", "DO103", "DO105", "DO106",  # Docker Hub / GitHub
}  # fmt: skip


def offline(code: str) -> bool:
    return not code.startswith("GR") and code not in NETWORK_CODES


def needs_git_history(code: str) -> bool:
    # Backwards-compatibility and release-notes checks compare with the file on origin/master; `-a` has no old file.
    return code.startswith(("BC", "RN")) or code in {"PA114", "BA114"}


def main() -> None:
    cfg = toml.load(SDK_CONFIG)
    path_based = {c for c in cfg["path_based_validations"]["select"] if offline(c)}
    use_git = {c for c in cfg["use_git"]["select"] if offline(c)}
    out = {
        "ignorable_errors": cfg["ignorable_errors"],
        "Custom_Categories": {"select": [], "warning": []},
        "path_based_validations": {
            # `-a` also gets the file-presence checks (README, image, sectionorder) that upstream runs only with `-g`.
            "select": sorted(path_based | {c for c in use_git if not needs_git_history(c)}),
            "warning": [c for c in cfg["path_based_validations"]["warning"] if offline(c)],
        },
        "use_git": {
            "select": sorted(use_git),
            "warning": [c for c in cfg["use_git"]["warning"] if offline(c)],
        },
        "support_level": cfg.get("support_level", {}),
    }
    OUTPUT.write_text(toml.dumps(out))
    print(
        f"wrote {OUTPUT}: path_based {len(out['path_based_validations']['select'])} select"
        f" + {len(out['path_based_validations']['warning'])} warning; use_git {len(out['use_git']['select'])} select"
        f" + {len(out['use_git']['warning'])} warning"
    )


if __name__ == "__main__":
    main()

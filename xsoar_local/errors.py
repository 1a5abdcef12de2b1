"""Errors a user can cause: each message names the cause and the fix, and the CLI prints it as one line."""


class XsoarLocalError(Exception):
    """A problem with the user's config, packs or environment, reported without a traceback."""


class ConfigError(XsoarLocalError):
    """The config file, an instance's params or its ports are not usable; nothing was started.

    Carries every problem found, so one run reports them all; `str()` joins them into one line.
    """

    def __init__(self, *problems: str) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(problems))


class PackError(XsoarLocalError):
    """A pack folder or zip cannot be read, or does not hold the integration asked for."""

"""The script environment: demistomock and the CommonServerPython helpers the integration relies on."""

import base64
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import demistomock as demisto
import pytest
from CommonServerPython import (
    CommandResults,
    IntegrationLogger,
    arg_to_number,
    argToBoolean,
    entryTypes,
    get_integration_context,
    get_integration_context_with_version,
    return_error,
    return_results,
    set_integration_context,
    set_to_integration_context_with_retries,
    tableToMarkdown,
)
from pytest_mock import MockerFixture

from xsoar_local.runner import run_script, runner_env

SCRIPT_ENV = Path(__file__).resolve().parents[1] / "xsoar_local" / "script_env"


def stderr_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


# --- configuration from environment variables ---


def test_environment_variables_are_read_at_import(tmp_path: Path) -> None:
    """
    Given: DEMISTO_PARAMS, DEMISTO_COMMAND, DEMISTO_ARGS, DEMISTO_INSTANCE_NAME and DEMISTO_RESULTS_FILE
    When: a new process imports the script environment
    Then: params(), command(), args() and integrationInstance() return them, and results()/incidents() are appended
          to the results file as JSON lines
    """
    results_file = tmp_path / "results.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": str(SCRIPT_ENV),
        "DEMISTO_PARAMS": json.dumps({"longRunningPort": "8000", "credentials": {"identifier": "u", "password": "p"}}),
        "DEMISTO_COMMAND": "long-running-execution",
        "DEMISTO_ARGS": json.dumps({"limit": "5"}),
        "DEMISTO_INSTANCE_NAME": "webhook-1",
        "DEMISTO_IS_FETCH_SAMPLES": "true",
        "DEMISTO_RESULTS_FILE": str(results_file),
    }
    code = """
        import json
        from CommonServerPython import *
        demisto.results("ok")
        demisto.incidents([{"name": "sample"}])
        print(json.dumps([demisto.params(), demisto.command(), demisto.args(), demisto.integrationInstance(),
                          demisto.isFetchSamples(), demisto.callingContext]))
    """
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=60, check=True
    )

    params, command, args, instance, is_fetch_samples, calling_context = json.loads(completed.stdout)
    assert params == {"longRunningPort": "8000", "credentials": {"identifier": "u", "password": "p"}}
    assert (command, args, instance, is_fetch_samples) == ("long-running-execution", {"limit": "5"}, "webhook-1", True)
    assert calling_context["context"]["IntegrationInstance"] == "webhook-1"
    assert [json.loads(line) for line in results_file.read_text().splitlines()] == [
        {"kind": "results", "value": "ok"},
        {"kind": "incidents", "value": [{"name": "sample"}]},
    ]


def test_defaults_without_environment_variables() -> None:
    """
    Given: an environment without any DEMISTO_* variable
    When: loading the configuration
    Then: empty params and args, the test-module command, the `local` instance
    """
    demisto.load_env({}, with_store=False)

    assert (demisto.params(), demisto.args(), demisto.command()) == ({}, {}, "test-module")
    assert demisto.integrationInstance() == "local"
    assert demisto.demistoVersion() == {"version": "8.9.0", "buildNumber": "local"}


def test_params_can_be_patched(mocker: MockerFixture) -> None:
    """
    Given: params patched the way unit tests do it
    When: reading a param
    Then: the patched value is returned
    """
    mocker.patch.object(demisto, "params", return_value={"incidentType": "Phishing"})

    assert demisto.getParam("incidentType") == "Phishing"


# --- logging ---


def test_log_lines_honor_the_log_level(capsys: pytest.CaptureFixture[str]) -> None:
    """
    Given: DEMISTO_LOG_LEVEL=info
    When: logging at every level, with a multi-line message
    Then: one `<time> <LEVEL> <text>` line per message at info and above, and each further line of a message as
          `<time> <LEVEL>+ <text>` (text inside a message cannot pass for an entry); a final newline adds no line
    """
    demisto.load_env({"DEMISTO_LOG_LEVEL": "info"}, with_store=False)
    demisto.debug("hidden")
    demisto.info("started\nlistening\n2026-01-01T00:00:00.000Z ERROR forged")
    demisto.error("failed\n")

    lines = stderr_lines(capsys)
    assert [line.split(" ", 1)[1] for line in lines] == [
        "INFO started",
        "INFO+ listening",
        "INFO+ 2026-01-01T00:00:00.000Z ERROR forged",
        "ERROR failed",
    ]
    assert lines[0].split(" ", 1)[0].endswith("Z")
    assert lines[0].split(" ", 1)[0] == lines[1].split(" ", 1)[0]


def test_debug_level_writes_debug_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """
    Given: DEMISTO_LOG_LEVEL=debug
    When: logging a debug message
    Then: it is written and debug mode is on
    """
    demisto.load_env({"DEMISTO_LOG_LEVEL": "debug"}, with_store=False)
    demisto.debug("details")

    assert stderr_lines(capsys)[0].endswith(" DEBUG details")
    assert demisto.is_debug_mode()


# --- incidents, results, module health ---


def test_create_incidents_and_last_run() -> None:
    """
    Given: the in-memory store
    When: creating incidents with a last run
    Then: they come back with ids and the instance, and the last run is stored
    """
    created = demisto.createIncidents([{"name": "one"}, {"name": "two"}], lastRun={"t": 1})

    assert [(item["id"], item["name"], item["instance"]) for item in created] == [
        ("1", "one", "local"),
        ("2", "two", "local"),
    ]
    assert demisto.getLastRun() == {"t": 1}


def test_create_incidents_from_threads_get_unique_ids(tmp_path: Path) -> None:
    """
    Given: the SQLite store
    When: ten worker threads create incidents at once, as the integration's request handlers do
    Then: every incident has a distinct id
    """
    demisto.use_store(tmp_path / "store.db")
    ids: list[str] = []
    lock = threading.Lock()

    def create() -> None:
        for _ in range(20):
            created = demisto.createIncidents([{"name": "x"}])
            with lock:
                ids.extend(item["id"] for item in created)

    threads = [threading.Thread(target=create) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(map(int, ids)) == list(range(1, 201))


def test_update_module_health_accepts_text_and_dicts() -> None:
    """
    Given: a text and a dict health update
    When: updating module health
    Then: the store keeps the text, and the dict as JSON
    """
    demisto.updateModuleHealth("listen port 8000 is already in use", is_error=True)
    health = demisto.get_store().get_module_health("local") or {}
    assert (health["message"], health["is_error"]) == ("listen port 8000 is already in use", True)

    demisto.updateModuleHealth({"eventsPulled": 3})
    assert (demisto.get_store().get_module_health("local") or {})["message"] == '{"eventsPulled": 3}'


def test_values_that_are_not_json_raise_like_a_server_round_trip() -> None:
    """
    Given: values JSON cannot hold (a datetime, a set)
    When: returning them as results or incidents, or storing them as context, last run or module health
    Then: TypeError, as the real server's JSON round trip would fail, and nothing is recorded or stored
    """
    moment = datetime.now()
    for call in (
        lambda: demisto.results({"when": moment}),
        lambda: demisto.incidents([{"name": "x", "tags": {"a"}}]),
        lambda: demisto.setIntegrationContext({"when": moment}),
        lambda: demisto.setLastRun({"when": moment}),
        lambda: demisto.updateModuleHealth({"when": moment}),
        lambda: demisto.createIncidents([{"name": "x", "occurred": moment}]),
    ):
        with pytest.raises(TypeError):
            call()
    assert demisto.RESULTS == []
    assert demisto.INCIDENTS == []
    assert demisto.getIntegrationContext() == {}
    assert demisto.getLastRun() == {}
    assert demisto.get_store().get_module_health("local") is None


def test_return_results_records_entries() -> None:
    """
    Given: a string, a CommandResults and a list
    When: returning them
    Then: demisto.results receives the string, the entry, and each list item
    """
    return_results("ok")
    return_results(CommandResults(outputs_prefix="Webhook", outputs={"id": 1}, readable_output="done"))
    return_results(["a", {"Type": 1}])

    assert demisto.RESULTS[0] == "ok"
    assert demisto.RESULTS[1]["EntryContext"] == {"Webhook": {"id": 1}}
    assert demisto.RESULTS[1]["HumanReadable"] == "done"
    assert demisto.RESULTS[2:] == ["a", {"Type": 1}]


def test_table_to_markdown() -> None:
    """
    Given: rows with a pipe in a value
    When: rendering a markdown table
    Then: a header row, a separator row and escaped cells
    """
    assert tableToMarkdown("Events", [{"a": 1, "b": "x|y"}]) == "### Events\n|a|b|\n|---|---|\n| 1 | x\\|y |\n"
    assert tableToMarkdown("Empty", []) == "### Empty\n**No entries.**\n"


# --- return_error ---


@pytest.mark.parametrize("command", ["long-running-execution", "fetch-incidents", "fetch-indicators"])
def test_return_error_raises_in_long_running_and_fetch(mocker: MockerFixture, command: str) -> None:
    """
    Given: the long-running-execution or fetch-incidents command
    When: calling return_error
    Then: it raises Exception with the message, so the restart loop can report it
    """
    mocker.patch.object(demisto, "command", return_value=command)

    with pytest.raises(Exception, match=r"^listen port 8000 is already in use$"):
        return_error("listen port 8000 is already in use")


def test_return_error_reports_and_exits_otherwise(mocker: MockerFixture) -> None:
    """
    Given: the test-module command
    When: calling return_error
    Then: an error entry is returned and the script exits with code 0
    """
    mocker.patch.object(demisto, "command", return_value="test-module")

    with pytest.raises(SystemExit) as exited:
        return_error("Port must be an integer")

    assert exited.value.code == 0
    assert demisto.RESULTS[-1]["Type"] == entryTypes["error"]
    assert demisto.RESULTS[-1]["Contents"] == "Port must be an integer"


# --- integration context ---


def test_versioned_context_conflict_raises_value_error() -> None:
    """
    Given: an integration context read at version 1 and then changed by another writer
    When: setting it with the stale version
    Then: ValueError is raised and the other writer's context stays
    """
    demisto.setIntegrationContextVersioned({"k": "first"})
    read = demisto.getIntegrationContextVersioned()
    demisto.setIntegrationContextVersioned({"k": "other writer"}, version=read["version"])

    with pytest.raises(ValueError):
        demisto.setIntegrationContextVersioned({"k": "stale"}, version=read["version"])

    assert demisto.getIntegrationContext() == {"k": "other writer"}


def test_integration_context_helpers() -> None:
    """
    Given: an empty integration context
    When: setting and reading it through the helpers
    Then: the context and its version round trip
    """
    set_integration_context({"a": "1"})
    set_integration_context({"a": "2"}, version=1)

    assert get_integration_context() == {"a": "2"}
    assert get_integration_context(with_version=True) == {"context": {"a": "2"}, "version": 2}
    assert get_integration_context_with_version() == ({"a": "2"}, 2)


def test_set_with_retries_merges_and_json_encodes() -> None:
    """
    Given: an integration context holding another key
    When: setting a list value with retries
    Then: the list is stored JSON-encoded beside the existing key
    """
    demisto.setIntegrationContext({"other": "kept"})

    set_to_integration_context_with_retries({"sample_events": [{"a": 1}], "note": "text"})

    assert demisto.getIntegrationContext() == {"other": "kept", "sample_events": '[{"a": 1}]', "note": "text"}


def test_set_with_retries_recovers_from_one_conflict(mocker: MockerFixture) -> None:
    """
    Given: another writer changing the context once between our read and our write
    When: setting the context with retries
    Then: the second attempt succeeds with both writers' keys
    """
    sleep = mocker.patch("CommonServerPython.time.sleep")
    real_set = demisto.setIntegrationContextVersioned
    calls = []

    def set_after_another_writer(context: dict[str, Any], version: int = -1, sync: bool = False) -> None:
        if not calls:
            real_set({"other": "writer"})
        calls.append(version)
        real_set(context, version, sync)

    mocker.patch.object(demisto, "setIntegrationContextVersioned", side_effect=set_after_another_writer)

    set_to_integration_context_with_retries({"mine": "value"})

    assert calls == [0, 1]
    assert sleep.call_count == 1
    assert demisto.getIntegrationContext() == {"other": "writer", "mine": "value"}


def test_set_with_retries_gives_up_after_max_retries(mocker: MockerFixture) -> None:
    """
    Given: every write hitting a version conflict
    When: setting the context with retries
    Then: max_retry_times attempts, then the platform's exact error message
    """
    mocker.patch("CommonServerPython.time.sleep")
    set_versioned = mocker.patch.object(demisto, "setIntegrationContextVersioned", side_effect=ValueError("conflict"))

    with pytest.raises(Exception) as raised:
        set_to_integration_context_with_retries({"k": "v"}, max_retry_times=3)

    assert str(raised.value) == "Failed updating integration context. Max retry attempts exceeded."
    assert set_versioned.call_count == 3


# --- IntegrationLogger ---

SECRET_PARAMS = {
    "credentials": {"identifier": "admin", "password": "pa$$word-1"},
    "api_token": "tok-123456",
    "client_secret": "shh-secret",
    "incidentType": "Phishing",
    "insecure_key_check": "true",
}


def test_integration_logger_masks_secrets(mocker: MockerFixture, capsys: pytest.CaptureFixture[str]) -> None:
    """
    Given: params with credentials, a token, a secret and ordinary values
    When: logging messages that contain them, unbuffered
    Then: the password, token, secret, base64 user:password and added strings are masked; the rest is kept
    """
    mocker.patch.object(demisto, "params", return_value=SECRET_PARAMS)
    basic = base64.b64encode(b"admin:pa$$word-1").decode()
    logger = IntegrationLogger()
    logger.set_buffering(False)
    logger.add_replace_strs("extra-hidden")

    logger(f"Authorization: Basic {basic} password=pa$$word-1 token=tok-123456")
    logger.write('{"secret": "shh-secret", "type": "Phishing", "more": "extra-hidden"}\n')

    err = capsys.readouterr().err
    for secret in (basic, "pa$$word-1", "tok-123456", "shh-secret", "extra-hidden"):
        assert secret not in err
    assert "Authorization: Basic <XX_REPLACED> password=<XX_REPLACED> token=<XX_REPLACED>" in err
    assert '"type": "Phishing"' in err
    assert "true" in logger.encode("verify=true")


def test_integration_logger_buffers_until_print_log(mocker: MockerFixture) -> None:
    """
    Given: a buffering logger
    When: logging two messages, then printing the log
    Then: nothing reaches demisto.info until print_log, which sends both at once
    """
    info = mocker.patch.object(demisto, "info")
    logger = IntegrationLogger()
    logger("one")
    logger("two")
    assert info.call_count == 0

    logger.print_log()

    info.assert_called_once_with("one\ntwo")


def test_integration_logger_is_a_stream_for_logging_handlers(
    mocker: MockerFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    Given: an unbuffered logger used as the stream of a logging.StreamHandler
    When: a library logs a line containing the password
    Then: the line reaches stderr masked
    """
    mocker.patch.object(demisto, "params", return_value=SECRET_PARAMS)
    logger = IntegrationLogger()
    logger.set_buffering(False)
    library_logger = logging.getLogger("test.library")
    library_logger.addHandler(logging.StreamHandler(logger))  # type: ignore[arg-type]
    library_logger.propagate = False

    library_logger.warning("GET / 200 Authorization: pa$$word-1")

    assert stderr_lines(capsys)[-1].endswith(" INFO GET / 200 Authorization: <XX_REPLACED>")


def test_integration_logger_as_a_stream_holds_text_until_a_newline(mocker: MockerFixture) -> None:
    """
    Given: an unbuffered logger used as a stream
    When: text is written in pieces, the last with newlines inside and at the end
    Then: nothing is sent until a piece holds a newline; then the pieces go in one message without the last
          newline (as the real IntegrationLogger does); a piece left without a newline reaches print_log
    """
    info = mocker.patch.object(demisto, "info")
    logger = IntegrationLogger()
    logger.set_buffering(False)
    logger.write("GET / ")
    logger.write("200")
    assert info.call_count == 0
    logger.write(" ok\nPOST / 201\n")
    info.assert_called_once_with("GET / 200 ok\nPOST / 201")
    logger.write("held")
    logger.print_log()
    assert info.call_args_list[-1] == mocker.call("held")


# --- argument helpers ---


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), ("true", True), ("False", False), ("YES", True), ("no", False)],
)
def test_arg_to_boolean(value: Any, expected: bool) -> None:
    """
    Given: a boolean-like value
    When: converting it
    Then: the boolean it means
    """
    assert argToBoolean(value) is expected


@pytest.mark.parametrize("value", ["maybe", "", " true", "false\n"])
def test_arg_to_boolean_rejects_other_text(value: Any) -> None:
    """
    Given: text that is not boolean-like (whitespace is not stripped, as in the real CSP)
    When: converting it
    Then: ValueError
    """
    with pytest.raises(ValueError, match=r"^Argument does not contain a valid boolean-like value$"):
        argToBoolean(value)


@pytest.mark.parametrize("value", [None, 1, 0.0, ["true"]])
def test_arg_to_boolean_rejects_what_is_neither_text_nor_bool(value: Any) -> None:
    with pytest.raises(ValueError, match=r"^Argument is neither a string nor a boolean$"):
        argToBoolean(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("8000", 8000), (42, 42), ("3.0", 3), ("2.7", 2), ("-5", -5), (None, None), ("", None), (True, True)],
)
def test_arg_to_number(value: Any, expected: int | None) -> None:
    """
    Given: a number-like value or nothing
    When: converting it
    Then: the integer, or None when it is absent
    """
    assert arg_to_number(value, "limit") == expected


def test_arg_to_number_errors_name_the_argument() -> None:
    """
    Given: an invalid value, and a missing required value
    When: converting them
    Then: ValueError naming the argument
    """
    with pytest.raises(ValueError, match="longRunningPort"):
        arg_to_number("eighty", "longRunningPort")
    with pytest.raises(ValueError, match="longRunningPort"):
        arg_to_number(None, "longRunningPort", required=True)


def test_arg_to_number_is_as_strict_as_the_real_one() -> None:
    """
    Given: a float, and invalid or missing values without an argument name
    When: converting them
    Then: ValueError, with the real CSP's messages
    """
    with pytest.raises(ValueError, match=r'^Invalid number: "limit"="2.7"$'):
        arg_to_number(2.7, "limit")
    with pytest.raises(ValueError, match=r'^"2.7" is not a valid number$'):
        arg_to_number(2.7)
    with pytest.raises(ValueError, match=r'^"eighty" is not a valid number$'):
        arg_to_number("eighty")
    with pytest.raises(ValueError, match=r'^"inf" is not a valid number$'):
        arg_to_number("inf")
    with pytest.raises(ValueError, match=r"^Missing required argument$"):
        arg_to_number(None, required=True)
    assert arg_to_number(False) is False


def test_the_listen_port_reaches_the_script_as_text() -> None:
    """
    Given: an instance's params with the listen port as an int (as xsoar-local keeps it)
    When: building the runner's environment
    Then: DEMISTO_PARAMS holds it as a string, as the real server gives a short-text param
    """
    env = runner_env(
        instance="i", integration="I", params={"longRunningPort": 8123, "n": 1}, command="test-module", store_path=None
    )

    assert json.loads(env["DEMISTO_PARAMS"]) == {"longRunningPort": "8123", "n": 1}


def test_scripts_run_with_the_platform_module_name(tmp_path: Path) -> None:
    """
    Given: a script with the platform's entry-point guard, and one guarded by `__name__ == "__main__"` only
    When: the runner runs them
    Then: `__name__` is "builtins", as on the real platform: only the platform's guard runs main
    """
    run_script('if __name__ in ("__main__", "__builtin__", "builtins"):\n    demisto.results(__name__)\n', "a.py")
    run_script('if __name__ == "__main__":\n    demisto.results("main")\n', "b.py")

    assert demisto.RESULTS == ["builtins"]
    echo = (Path(__file__).parent / "data/packs/EchoWebhook/Integrations/EchoWebhook/EchoWebhook.py").read_text()
    assert 'if __name__ in ("__main__", "__builtin__", "builtins"):' in echo


def test_star_import_brings_the_platform_names() -> None:
    """
    Given: an integration script's globals
    When: running `from CommonServerPython import *`
    Then: demisto, the helpers, the standard modules and typing names are in scope
    """
    scope: dict[str, Any] = {}
    exec("from CommonServerPython import *", scope)

    expected = {"demisto", "json", "os", "time", "sys", "base64", "re", "traceback", "Any", "Dict", "List"}
    expected |= {"Optional", "Tuple", "Union", "Callable", "return_results", "IntegrationLogger", "DemistoException"}
    assert expected <= scope.keys()
    assert scope["demisto"] is demisto

"""gen-attributes against a local OpenAI-compatible server, through the real `openai` client over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from sempt_cli.cli.app import app
from sempt_cli.errors import SemptError
from sempt_cli.knowledge import (
    EndpointError,
    GenerationError,
    all_classnames,
    generate_attributes,
    make_client,
    write_attribute_file,
)
from sempt_cli.knowledge.budget import TokenBudget, context_prefix
from sempt_cli.settings import Settings
from tests.knowledge.conftest import SECRET, files_under
from tests.knowledge.fake_llm import FakeLLM, Reply, perfect_answer, request_kind, requested_classes
from tests.knowledge.jsonschema_lite import validate

SCHEMA = json.loads((Path(__file__).parents[2] / "attributes" / "schema.json").read_text())
NAMES = all_classnames("demo")
runner = CliRunner()
Hook = Callable[[dict[str, Any], int], Reply | None]


def _user(body: dict[str, Any], index: int = -1) -> str:
    return [m["content"] for m in body["messages"] if m["role"] == "user"][index]


def _first_batch_with(label: int, hook_state: dict[str, bool]) -> Callable[[dict[str, Any]], bool]:
    """True once: for the first description request that asks for class `label`."""

    def match(body: dict[str, Any]) -> bool:
        if hook_state.get("done") or request_kind(body) not in ("two-step", "one-step"):
            return False
        if label in [i for i, _ in requested_classes(body)]:
            hook_state["done"] = True
            return True
        return False

    return match


def _edit_answer(body: dict[str, Any], label: int, edit: Callable[[dict[str, Any]], None]) -> str:
    answer = json.loads(perfect_answer(body))
    for entry in answer["classes"]:
        if entry["id"] == label:
            edit(entry)
    return json.dumps(answer)


def _run(settings: Settings, console: Console) -> Any:
    return generate_attributes(settings, client=make_client(settings, console), console=console)


# ------------------------------------------------------------------------------------------------ happy path


def test_two_step_happy_path_and_free_rerun(make_settings: Callable[..., Settings], fake_llm: FakeLLM,
                                            quiet: Console, tmp_path: Path) -> None:
    settings = make_settings()
    first = _run(settings, quiet)
    assert [request_kind(h.body) for h in fake_llm.hits] == ["vocabulary"] + ["two-step"] * 4
    assert all(h.authorization == f"Bearer {SECRET}" and h.path == "/v1/chat/completions" for h in fake_llm.hits)
    step1 = _user(fake_llm.hits[0].body)
    assert all(json.dumps({"id": i, "name": n}) in step1 for i, n in enumerate(NAMES))  # seen and unseen classes
    body = fake_llm.hits[1].body
    assert body["model"] == "gpt-4o" and body["temperature"] == 0.7 and body["seed"] == 0
    assert body["response_format"]["type"] == "json_schema"
    assert first.vocabulary == [f"aspect {i}" for i in range(16)] and first.classnames == NAMES
    assert [len(c.descriptions) for c in first.classes] == [6] * 40
    assert all(d.attributes and set(d.attributes) <= set(first.vocabulary) for c in first.classes
               for d in c.descriptions)
    assert first.generator.kind == "llm" and first.generator.endpoint == fake_llm.base_url
    assert first.prompt_version == "v1" and first.strategy == "two-step"
    validate(first.to_json(), SCHEMA)

    again = _run(settings, quiet)  # everything replayed from the request cache
    assert len(fake_llm.hits) == 5
    assert again.classes == first.classes and again.vocabulary == first.vocabulary


def test_one_step_asks_for_descriptions_directly(make_settings: Callable[..., Settings], fake_llm: FakeLLM,
                                                 quiet: Console) -> None:
    result = _run(make_settings(llm__strategy="one-step", llm__classes_per_request=20), quiet)
    assert [request_kind(h.body) for h in fake_llm.hits] == ["one-step"] * 2
    assert result.vocabulary == [] and all(d.attributes == [] for c in result.classes for d in c.descriptions)
    validate(result.to_json(), SCHEMA)


def test_long_class_lists_are_chunked_then_merged(make_settings: Callable[..., Settings], fake_llm: FakeLLM,
                                                  quiet: Console) -> None:
    result = _run(make_settings(llm__names_per_request=15, llm__classes_per_request=40), quiet)
    kinds = [request_kind(h.body) for h in fake_llm.hits]
    assert kinds == ["vocabulary"] * 3 + ["merge", "two-step"]
    groups = [[i for i, _ in requested_classes(h.body)] for h in fake_llm.hits[:3]]
    assert sorted(i for g in groups for i in g) == list(range(40))  # every class seen once
    assert all(max(g) - min(g) >= 36 for g in groups)  # strided: each group spans base and novel classes
    merge = _user(fake_llm.hits[3].body)
    assert "aspect 0 (proposed for 3 of 3 groups)" in merge
    assert result.vocabulary == [f"merged aspect {i}" for i in range(16)]


# ------------------------------------------------------------------------------------------------ re-asks


def test_malformed_json_then_valid_answer(make_settings: Callable[..., Settings], fake_llm: FakeLLM,
                                          quiet: Console) -> None:
    match = _first_batch_with(0, {})
    fake_llm.hook = lambda body, hit: Reply(content='{"classes": [{"id": 0, "name": ') if match(body) else None
    result = _run(make_settings(llm__max_concurrency=1), quiet)
    assert len(fake_llm.hits) == 6
    reask = fake_llm.hits[2].body
    assert reask["messages"][-2] == {"role": "assistant", "content": '{"classes": [{"id": 0, "name": '}
    assert "not valid JSON" in _user(reask)
    assert [i for i, _ in requested_classes(reask)] == list(range(10))
    validate(result.to_json(), SCHEMA)


def test_wrong_number_of_descriptions_is_reasked_for_that_class_only(
    make_settings: Callable[..., Settings], fake_llm: FakeLLM, quiet: Console
) -> None:
    match = _first_batch_with(3, {})

    def hook(body: dict[str, Any], hit: int) -> Reply | None:
        if match(body):
            return Reply(content=_edit_answer(body, 3, lambda e: e["descriptions"].pop()))
        return None

    fake_llm.hook = hook
    result = _run(make_settings(llm__max_concurrency=1), quiet)
    reask = fake_llm.hits[2].body
    assert [i for i, _ in requested_classes(reask)] == [3]
    assert 'id 3 ("vrokish"): It has 5 descriptions; exactly 6 are required.' in _user(reask)
    assert len(result.classes[3].descriptions) == 6 and len(fake_llm.hits) == 6


def test_overlong_description_is_reasked(make_settings: Callable[..., Settings], fake_llm: FakeLLM,
                                         quiet: Console) -> None:
    long_text = " ".join(["extraordinarily"] * 40)
    match = _first_batch_with(5, {})

    def hook(body: dict[str, Any], hit: int) -> Reply | None:
        if match(body):
            return Reply(content=_edit_answer(body, 5, lambda e: e["descriptions"][0].update(text=long_text)))
        return None

    fake_llm.hook = hook
    settings = make_settings(llm__max_concurrency=1)
    result = _run(settings, quiet)
    feedback = _user(fake_llm.hits[2].body)
    assert "CLIP tokens long" in feedback and "that fit; shorten it" in feedback
    budget = TokenBudget(context_prefix(settings.prompts.text_depth, settings.prompts.text_length,
                                        settings.prompts.ctx_init))
    assert all(budget.problem(d.text) is None for c in result.classes for d in c.descriptions)
    assert long_text not in {d.text for d in result.classes[5].descriptions}


def test_invalid_vocabulary_is_reasked(make_settings: Callable[..., Settings], fake_llm: FakeLLM,
                                       quiet: Console) -> None:
    fake_llm.hook = lambda body, hit: Reply(content=json.dumps({"attributes": ["colour", "colour"]})) \
        if hit == 1 else None
    result = _run(make_settings(), quiet)
    feedback = _user(fake_llm.hits[1].body)
    assert "It lists 2 attributes; exactly 16 are required." in feedback and '"colour" is listed twice.' in feedback
    assert len(result.vocabulary) == 16


def test_cut_off_answer_splits_the_batch(make_settings: Callable[..., Settings], fake_llm: FakeLLM,
                                         quiet: Console) -> None:
    match = _first_batch_with(0, {})
    fake_llm.hook = lambda body, hit: Reply(content='{"classes": [', finish_reason="length") if match(body) else None
    _run(make_settings(llm__max_concurrency=1), quiet)
    sizes = [len(requested_classes(h.body)) for h in fake_llm.hits[1:4]]
    assert sizes == [10, 5, 5]


def test_cut_off_reask_is_split_and_earlier_problems_are_forgotten(
    make_settings: Callable[..., Settings], fake_llm: FakeLLM, quiet: Console
) -> None:
    def hook(body: dict[str, Any], hit: int) -> Reply | None:
        if hit == 2:  # first batch: classes 3 and 4 short of a description
            return Reply(content=_short(_edit_answer(body, 3, lambda e: e["descriptions"].pop()), 4))
        if hit == 3:  # the re-ask for [3, 4] is cut off
            return Reply(content='{"classes": [', finish_reason="length")
        return None

    fake_llm.hook = hook
    result = _run(make_settings(llm__max_concurrency=1), quiet)
    assert [[i for i, _ in requested_classes(h.body)] for h in fake_llm.hits[2:5]] == [[3, 4], [3], [4]]
    assert len(result.classes[3].descriptions) == len(result.classes[4].descriptions) == 6


def _short(answer: str, label: int) -> str:
    data = json.loads(answer)
    for entry in data["classes"]:
        if entry["id"] == label:
            entry["descriptions"].pop()
    return json.dumps(data)


def test_gives_up_naming_missing_classes_then_rerun_asks_only_again(
    make_settings: Callable[..., Settings], fake_llm: FakeLLM, quiet: Console, tmp_path: Path
) -> None:
    def always_short(body: dict[str, Any], hit: int) -> Reply | None:
        if request_kind(body) == "two-step" and 3 in [i for i, _ in requested_classes(body)]:
            return Reply(content=_edit_answer(body, 3, lambda e: e["descriptions"].pop()))
        return None

    fake_llm.hook = always_short
    settings = make_settings()
    with pytest.raises(GenerationError) as failure:
        _run(settings, quiet)
    message = str(failure.value)
    assert "Gave up on 1 of 40 classes after 2 re-asks: 'vrokish' (id 3: It has 5 descriptions" in message
    assert "Nothing was written" in message
    first_run = {h.key for h in fake_llm.answered()}
    assert len(fake_llm.hits) == 5 + 2  # two re-asks for class 3

    fake_llm.hook = None
    count = len(fake_llm.hits)
    result = _run(settings, quiet)
    second_run = [h.key for h in fake_llm.hits[count:]]
    assert len(second_run) == 1 and second_run[0] in first_run  # only the dropped last re-ask is asked again
    assert len(result.classes[3].descriptions) == 6


# ------------------------------------------------------------------------------------------------ transport


def test_rate_limit_honours_retry_after(make_settings: Callable[..., Settings], fake_llm: FakeLLM,
                                        quiet: Console) -> None:
    fake_llm.hook = lambda body, hit: Reply(status=429, headers={"Retry-After": "1"}) if hit == 1 else None
    _run(make_settings(), quiet)
    first, second = fake_llm.hits[:2]
    assert first.status == 429 and second.status == 200 and first.key == second.key
    assert second.time - first.time >= 0.95  # waited as told, not the 0.05 s backoff
    assert "HTTP 429" in quiet.file.getvalue()  # type: ignore[attr-defined]


def test_server_errors_are_retried_with_backoff(make_settings: Callable[..., Settings], fake_llm: FakeLLM,
                                                quiet: Console) -> None:
    fake_llm.hook = lambda body, hit: Reply(status=500) if hit in (2, 3) else None
    result = _run(make_settings(llm__max_concurrency=1), quiet)
    assert [h.status for h in fake_llm.hits] == [200, 500, 500, 200, 200, 200, 200]
    assert fake_llm.hits[1].key == fake_llm.hits[2].key == fake_llm.hits[3].key
    assert len(result.classes) == 40


def test_timeouts_are_retried(make_settings: Callable[..., Settings], fake_llm: FakeLLM, quiet: Console) -> None:
    fake_llm.hook = lambda body, hit: Reply(delay=1.5) if hit == 1 else None
    _run(make_settings(llm__timeout=0.5), quiet)
    assert fake_llm.hits[0].key == fake_llm.hits[1].key
    assert "no answer within 0.5 s" in quiet.file.getvalue()  # type: ignore[attr-defined]


@pytest.mark.parametrize("headers", [False, True], ids=["body", "headers"])
def test_a_trickling_endpoint_ends_within_the_total_timeout(make_settings: Callable[..., Settings],
                                                            fake_llm: FakeLLM, quiet: Console, headers: bool) -> None:
    # one byte every 0.1 s never trips a 0.5 s gap timeout; only a bound on the whole request ends it
    fake_llm.hook = lambda body, hit: Reply(trickle=0.1, trickle_headers=headers)
    with pytest.raises(EndpointError, match=r"failed 2 times in a row \(no answer within 0.5 s\)"):
        _run(make_settings(llm__timeout=0.5, llm__retries=1, llm__max_concurrency=1), quiet)
    # timed from the first request's arrival (importing the tokenizer before it may take seconds): two attempts
    # of 0.5 s, the backoff, and some slack
    assert time.monotonic() - fake_llm.hits[0].time < 2 * 0.5 + 0.6
    assert files_under(make_settings().paths.cache_dir / "llm-requests") == []


def test_an_enormous_answer_is_refused_unread_and_not_cached(make_settings: Callable[..., Settings],
                                                            fake_llm: FakeLLM, quiet: Console) -> None:
    import tracemalloc

    size = 50 * 1024 * 1024
    fake_llm.hook = lambda body, hit: Reply(size=size)
    settings = make_settings(llm__max_answer_mb=2, llm__max_concurrency=1)
    tracemalloc.start()
    try:
        with pytest.raises(EndpointError, match=r"larger than llm.max_answer_mb \(2 MB\).*not cached"):
            _run(settings, quiet)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024  # bounded by the cap, not by the 50 MB answer
    assert len(fake_llm.hits) == 1  # neither retried nor re-asked (so never echoed back)
    assert fake_llm.hits[0].bytes_sent < size  # the client stopped reading
    assert files_under(settings.paths.cache_dir / "llm-requests") == []


def test_retries_exhausted_is_one_clear_error(make_settings: Callable[..., Settings], fake_llm: FakeLLM,
                                              quiet: Console) -> None:
    fake_llm.hook = lambda body, hit: Reply(status=503)
    with pytest.raises(EndpointError, match=r"failed 3 times in a row \(HTTP 503\)"):
        _run(make_settings(llm__retries=2), quiet)


def test_rejected_key_is_not_retried(make_settings: Callable[..., Settings], fake_llm: FakeLLM,
                                     quiet: Console) -> None:
    fake_llm.hook = lambda body, hit: Reply(status=401, raw={"error": {"message": "Incorrect API key"}})
    with pytest.raises(EndpointError, match=r"rejected the API key.*Incorrect API key"):
        _run(make_settings(), quiet)
    assert len(fake_llm.hits) == 1


def test_missing_key_names_the_variable(make_settings: Callable[..., Settings], fake_llm: FakeLLM, quiet: Console,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(SemptError, match="set OPENAI_API_KEY"):
        _run(make_settings(llm__api_key=None), quiet)
    assert fake_llm.hits == []


# ------------------------------------------------------------------------------------------------ CLI


def _cli_env(tmp_path: Path, fake_llm: FakeLLM) -> list[str]:
    return ["--dataset", "demo", "--cache-dir", str(tmp_path / "cache"), "--base-url", fake_llm.base_url,
            "--backoff", "0.05", "--timeout", "5"]


def test_dry_run_sends_nothing_and_shows_exact_requests(fake_llm: FakeLLM, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a dry run needs no key
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["gen-attributes", *_cli_env(tmp_path, fake_llm), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert fake_llm.hits == []
    assert result.output.count(f"POST {fake_llm.base_url}/chat/completions") == 5
    assert '"model": "gpt-4o"' in result.output and "Nothing was sent." in result.output
    assert "placeholder" in result.output and not (tmp_path / "attributes").exists()

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert runner.invoke(app, ["gen-attributes", *_cli_env(tmp_path, fake_llm)]).exit_code == 0
    sent = len(fake_llm.hits)
    replay = runner.invoke(app, ["gen-attributes", *_cli_env(tmp_path, fake_llm), "--dry-run"])
    assert replay.output.count("cached: replayed for free") == 5 and "placeholder" not in replay.output
    assert len(fake_llm.hits) == sent
    # what the dry run printed is exactly what was sent
    printed = sorted(json.dumps(b, sort_keys=True) for b in _printed_bodies(replay.output))
    assert printed == sorted(h.key for h in fake_llm.hits)  # (sent concurrently, so in any order)


def _printed_bodies(output: str) -> list[dict[str, Any]]:
    bodies, lines = [], output.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("POST "):
            end = lines.index("}", index)
            bodies.append(json.loads("\n".join(lines[index + 1 : end + 1])))
    return bodies


@pytest.mark.parametrize("strategy", ["two-step", "one-step", "names"])
def test_cli_strategies_write_files_that_validate(strategy: str, fake_llm: FakeLLM, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    out = tmp_path / f"{strategy}.json"
    result = runner.invoke(app, ["gen-attributes", *_cli_env(tmp_path, fake_llm), "--strategy", strategy,
                                 "--output", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    validate(data, SCHEMA)
    assert data["strategy"] == strategy and len(data["classes"]) == 40
    assert (fake_llm.hits == []) == (strategy == "names")
    again = runner.invoke(app, ["gen-attributes", *_cli_env(tmp_path, fake_llm), "--strategy", strategy,
                                "--output", str(out)])
    assert "up to date" in again.output
    other = runner.invoke(app, ["gen-attributes", *_cli_env(tmp_path, fake_llm), "--strategy", strategy,
                                "--output", str(out), "--num-descriptions", "5"])
    assert other.exit_code != 0 and "--force" in str(other.exception or other.output)


def test_interrupted_run_resumes_without_repeating_a_request(fake_llm: FakeLLM, tmp_path: Path) -> None:
    """kill -9 while the 4th request is in flight; the re-run sends only what was never answered."""
    release = threading.Event()

    def block_fourth(body: dict[str, Any], hit: int) -> Reply | None:
        if hit == 4:
            release.wait(timeout=60)
            return Reply(status=503)  # never reaches the killed client: not an answer
        return None

    fake_llm.hook = block_fourth
    out = tmp_path / "attributes" / "demo.json"
    args = ["gen-attributes", *_cli_env(tmp_path, fake_llm), "--max-concurrency", "1", "--output", str(out)]
    env = {**os.environ, "OPENAI_API_KEY": SECRET, "COLUMNS": "200"}
    process = subprocess.Popen([sys.executable, "-m", "sempt_cli", *args], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(fake_llm.hits) < 4 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert len(fake_llm.hits) == 4, process.communicate(timeout=10)[0] if process.poll() is not None else ""
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        release.set()
        if process.poll() is None:
            process.kill()
    assert not out.exists()
    answered = {h.key for h in fake_llm.hits[:3]}
    assert [h.status for h in fake_llm.hits[:3]] == [200, 200, 200]

    fake_llm.hook = None
    before = len(fake_llm.hits)
    result = runner.invoke(app, ["gen-attributes", *_cli_env(tmp_path, fake_llm), "--output", str(out)],
                           env={"OPENAI_API_KEY": SECRET})
    assert result.exit_code == 0, result.output
    resent = [h.key for h in fake_llm.hits[before:]]
    assert len(resent) == 2 and not answered & set(resent)  # batches 3 and 4 only; nothing paid twice
    assert "3 answered from the cache" in result.output
    validate(json.loads(out.read_text()), SCHEMA)


def test_api_key_is_never_written(fake_llm: FakeLLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    env = {"SEMPT_LLM__API_KEY": SECRET}
    result = runner.invoke(app, ["gen-attributes", *_cli_env(tmp_path, fake_llm)], env=env)
    assert result.exit_code == 0, result.output
    assert fake_llm.hits and all(h.authorization == f"Bearer {SECRET}" for h in fake_llm.hits)
    shown = runner.invoke(app, ["config", "show", "--json"], env=env)
    assert json.loads(shown.output)["llm.api_key"]["value"] == "**********"
    written = files_under(tmp_path)
    assert (tmp_path / "attributes" / "demo.json") in written and len(written) > 5
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in result.output and SECRET not in shown.output


def test_write_is_atomic_and_validated(make_settings: Callable[..., Settings], quiet: Console,
                                       tmp_path: Path) -> None:
    result = _run(make_settings(llm__strategy="names"), quiet)
    broken = result.model_copy(update={"num_descriptions": 7})
    target = tmp_path / "out.json"
    with pytest.raises(ValueError):
        write_attribute_file(broken, target)
    assert not target.exists() and list(tmp_path.glob(".out.json*")) == []

"""The attribute-file schema, the shipped demo file, the no-LLM strategies, class-list checks, LLM settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sempt_cli.errors import SemptError, SettingsError
from sempt_cli.knowledge import (
    all_classnames,
    check_against_data,
    demo_attribute_file,
    generate_attributes,
    json_schema,
    load_attribute_file,
    names_file,
    plan_requests,
)
from sempt_cli.knowledge.answers import validate_descriptions
from sempt_cli.knowledge.budget import TokenBudget, context_prefix
from sempt_cli.knowledge.prompts import available_versions, load_templates
from sempt_cli.settings import fields, load_settings
from tests.knowledge.jsonschema_lite import validate

ATTRIBUTES = Path(__file__).parents[2] / "attributes"


def test_schema_file_is_generated_from_the_model() -> None:
    assert json.loads((ATTRIBUTES / "schema.json").read_text()) == json_schema()


def test_shipped_files_are_only_the_demo_and_the_schema() -> None:
    """Real datasets get no file an LLM did not actually write through gen-attributes."""
    assert sorted(p.name for p in ATTRIBUTES.iterdir()) == ["demo.json", "schema.json"]


def test_demo_file_is_the_ground_truth_and_fits_clip() -> None:
    shipped = load_attribute_file(ATTRIBUTES / "demo.json")
    validate(json.loads((ATTRIBUTES / "demo.json").read_text()), json_schema())
    assert shipped.model_dump(exclude={"created_at", "sempt_version"}) == \
        demo_attribute_file().model_dump(exclude={"created_at", "sempt_version"})
    assert shipped.generator.kind == "ground-truth" and "no LLM" in shipped.generator.note
    assert shipped.classnames == all_classnames("demo") and shipped.vocabulary == list(
        ["shape", "color", "pattern", "size", "background"])
    budget = TokenBudget(context_prefix(9, 4, "a photo of a"))
    assert all(budget.problem(d.text) is None for c in shipped.classes for d in c.descriptions)
    from sempt_cli.data.demo import demo_world

    world = demo_world()
    for entry, cls in zip(shipped.classes, world.classes, strict=True):
        for description in entry.descriptions:  # every listed attribute's true value is in the text
            for dim in description.attributes:
                value = cls.attributes[dim]
                assert value in description.text or dim in ("pattern", "background"), (description, dim)


def test_names_strategy_repeats_the_class_name() -> None:
    names = all_classnames("oxford_pets")
    result = names_file("oxford_pets", names, 6)
    validate(result.to_json(), json_schema())
    assert result.classes[1].descriptions[0].text == "american bulldog" and result.vocabulary == []
    assert {d.text for d in result.classes[1].descriptions} == {"american bulldog"}


def test_ground_truth_exists_only_for_the_demo() -> None:
    settings = load_settings({"data.dataset": "flowers102", "llm.strategy": "ground-truth"}, env={}).settings
    with pytest.raises(SettingsError, match="only for the demo world"):
        generate_attributes(settings)


def test_shipped_class_lists_cover_every_dataset() -> None:
    from sempt_cli.data import dataset_names, get_dataset_info

    for name in dataset_names():
        names = all_classnames(name)
        if name != "demo":
            assert len(names) == get_dataset_info(name).num_classes, name


def _eurosat_root(root: Path, names: list[str]) -> Path:
    folder = root / "eurosat"
    (folder / "2750").mkdir(parents=True)  # images need not exist for the class list
    rows = [[f"{n.replace(' ', '')}/{n.replace(' ', '')}_1.jpg", i, n] for i, n in enumerate(names)]
    (folder / "split_zhou_EuroSAT.json").write_text(json.dumps({"train": rows, "val": rows, "test": rows}))
    return root


def test_class_list_is_checked_against_the_data_root(tmp_path: Path) -> None:
    names = all_classnames("eurosat")
    assert check_against_data("eurosat", names, _eurosat_root(tmp_path / "ok", names)) is None
    swapped = [names[1], names[0], *names[2:]]
    with pytest.raises(SemptError, match="label 0 is 'Forest' there and 'Annual Crop Land' in the shipped list"):
        check_against_data("eurosat", names, _eurosat_root(tmp_path / "bad", swapped))
    note = check_against_data("eurosat", names, tmp_path / "empty")
    assert note is not None and "Using the class list sempt ships" in note


def test_invalid_attribute_files_fail_in_one_sentence(tmp_path: Path) -> None:
    good = demo_attribute_file().to_json()
    path = tmp_path / "a.json"
    path.write_text("{")
    with pytest.raises(SemptError, match="is not valid JSON"):
        load_attribute_file(path)
    good["classes"][2]["descriptions"].pop()
    path.write_text(json.dumps(good))
    with pytest.raises(SemptError, match="class 'quairux' has 5 descriptions, expected 6"):
        load_attribute_file(path)
    with pytest.raises(SemptError, match="does not exist"):
        load_attribute_file(tmp_path / "missing.json")


def test_a_foreign_dataset_field_is_one_sentence(tmp_path: Path) -> None:
    data = demo_attribute_file().to_json()
    data["dataset"] = "../../etc/passwd"
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SemptError, match=r"invalid at the file: '../../etc/passwd' is not a dataset sempt knows"):
        load_attribute_file(path)


def test_enormous_values_are_quoted_by_a_short_prefix(tmp_path: Path) -> None:
    data = demo_attribute_file().to_json()
    data["classes"][0]["descriptions"][0]["attributes"] = ["x" * 1_000_000]
    data["y" * 1_000_000] = 1
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SemptError) as info:
        load_attribute_file(path)
    assert len(str(info.value)) < 600 and str(tmp_path) in str(info.value)


def test_descriptions_must_use_distinct_vocabulary_combinations() -> None:
    names = ["a", "b"]
    answer = {"classes": [{"id": 0, "name": "a", "descriptions": [
        {"text": "red round", "attributes": ["colour"]},
        {"text": "bright red", "attributes": ["Colour"]},
        {"text": "spotted", "attributes": ["texture", "smell"]},
    ]}]}
    verdict = validate_descriptions(json.dumps(answer), [0, 1], names, 3, TokenBudget(), ["colour", "texture"])
    assert verdict.accepted == {}
    assert any("same attribute combination" in p for p in verdict.problems[0])
    assert any('"smell", which is not in the vocabulary' in p for p in verdict.problems[0])
    assert verdict.problems[1] == ["The answer has no entry for this id."]


def test_llm_settings_have_unique_flags_and_never_dump_the_key() -> None:
    flags = [f.flag for f in fields().values()]
    assert len(flags) == len(set(flags))
    assert fields()["llm.seed"].flag == "--llm-seed" and fields()["llm.base_url"].flag == "--base-url"
    settings = load_settings({"llm.temperature": "none"}, env={"SEMPT_LLM__API_KEY": "sk-x-123"}).settings
    assert settings.llm.api_key is not None and settings.llm.api_key.get_secret_value() == "sk-x-123"
    assert settings.llm.temperature is None
    assert "sk-x-123" not in settings.model_dump_json() and "sk-x-123" not in repr(settings.model_dump())
    assert settings.model_dump(mode="json")["llm"]["api_key"] is None
    with pytest.raises(SettingsError, match=r"llm\.base_url"):
        load_settings({"llm.base_url": "localhost:8000"}, env={})


def test_prompt_templates_are_versioned_package_data(tmp_path: Path) -> None:
    assert "v1" in available_versions()
    assert set(load_templates("v1")) >= {"system", "attributes", "descriptions", "one_step"}
    settings = load_settings({"data.dataset": "flowers102", "llm.prompt_version": "v0",
                              "paths.cache_dir": str(tmp_path)}, env={}).settings
    with pytest.raises(SettingsError, match="Unknown prompt-template version 'v0'; available: v1"):
        plan_requests(settings)


def test_imagenet_dry_run_plans_chunks_and_a_merge(tmp_path: Path) -> None:
    settings = load_settings({"data.dataset": "imagenet", "paths.cache_dir": str(tmp_path)}, env={}).settings
    plan = plan_requests(settings)
    steps = [r.what for r in plan.requests if r.step == "step 1"]
    assert steps == [f"attribute discovery, group {i}/4" for i in range(1, 5)] + ["merge"]
    assert len(plan.requests) == 5 + 100 and plan.cost > 0 and plan.input_tokens > 0

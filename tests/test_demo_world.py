"""The demo world: ground-truth constraints, deterministic rendering, the cached on-disk layout, the corpus
and the attribute descriptions. Small image sizes keep the whole file to a few seconds."""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sempt_cli.data import demo
from sempt_cli.data.demo import (
    ATTRIBUTES,
    DemoWorld,
    check_world,
    demo_attribute_descriptions,
    demo_world,
    ensure_demo_world,
    generate_pretraining_corpus,
    generate_pretraining_samples,
    hamming,
    load_demo_world,
    render_attributes,
    render_class_image,
)
from sempt_cli.data.registry import DATASETS, DEMO_KEY
from sempt_cli.errors import DatasetError

TINY = {"train": 3, "val": 1, "test": 1}


@pytest.fixture(scope="module")
def world_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One full-size world (all 40 classes x 100 images) at 32 px, shared by the layout tests."""
    return ensure_demo_world(tmp_path_factory.mktemp("cache"), size=32, seed=0)


# ------------------------------------------------------------------------------------------- the world


def test_world_satisfies_the_benchmark_constraints() -> None:
    world = demo_world()
    assert check_world(world) == []
    assert len(world.classes) == DATASETS[DEMO_KEY].num_classes
    base = {tuple(sorted(c.attributes.items())) for c in world.base_classes}
    assert len(base) == len(world.base_classes) == len(world.novel_classes)
    assert not base & {tuple(sorted(c.attributes.items())) for c in world.novel_classes}
    for dim, values in ATTRIBUTES.items():
        for half in (world.base_classes, world.novel_classes):
            assert {c.attributes[dim] for c in half} == set(values), (dim, half)


def test_classes_are_hard_to_tell_apart() -> None:
    classes = demo_world().classes
    nearest = [min(hamming(c.attributes, o.attributes) for o in classes if o is not c) for c in classes]
    assert sum(d <= 2 for d in nearest) >= 0.7 * len(classes)
    assert sum(d == 1 for d in nearest) >= 0.25 * len(classes)


def test_names_are_unique_invented_and_attribute_free() -> None:
    names = demo_world().classnames
    assert len(set(names)) == len(names)
    words = {w for values in ATTRIBUTES.values() for v in values for w in v.split()} | set(ATTRIBUTES)
    for name in names:
        assert re.fullmatch(r"[a-z]{5,9}", name), name
        assert not [w for w in words if w in name], name
        assert not [o for o in names if o != name and o in name], name


def test_names_are_not_words_clip_knows() -> None:
    """CLIP's BPE vocabulary holds common English words whole; an invented name must not be one of them."""
    spec = importlib.util.find_spec("open_clip")  # read its vocabulary file without importing torch
    if spec is None or spec.origin is None:
        pytest.skip("open_clip is not installed")
    vocab_file = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(vocab_file, "rt", encoding="utf-8") as handle:
        merges = handle.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    whole_words = {"".join(m.split()) for m in merges}
    assert "circle</w>" in whole_words and "photo</w>" in whole_words
    for name in demo_world().classnames:
        assert f"{name}</w>" not in whole_words, f"{name} is a single CLIP token, so probably a real word"


def test_world_round_trips_through_its_dict() -> None:
    world = demo_world()
    assert DemoWorld.from_dict(json.loads(json.dumps(world.to_dict()))) == world


def test_name_frequencies_are_a_long_tail_shared_by_base_and_novel() -> None:
    world = demo_world()
    rates = world.name_rates
    assert max(rates.values()) / min(rates.values()) > 5
    base = sum(rates[c.name] for c in world.base_classes)
    novel = sum(rates[c.name] for c in world.novel_classes)
    assert abs(base - novel) / (base + novel) < 0.1


# ------------------------------------------------------------------------------------------- rendering


def test_rendering_is_deterministic_in_seed_class_and_index() -> None:
    world = demo_world()
    a = render_class_image(world, 3, 7, seed=0, size=32)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render_class_image(world, 3, 7, seed=0, size=32))
    assert not np.array_equal(a, render_class_image(world, 3, 7, seed=1, size=32))
    assert not np.array_equal(a, render_class_image(world, 3, 8, seed=0, size=32))
    assert render_class_image(world, 3, 7, size=48).shape == (48, 48, 3)


@pytest.mark.parametrize("dim", list(ATTRIBUTES))
def test_every_attribute_value_is_visible(dim: str) -> None:
    """Changing one value, all nuisances equal, changes the image visibly (no value is a no-op)."""
    base = {d: values[0] for d, values in ATTRIBUTES.items()}
    base.update({d: v for d, v in (("pattern", "striped"), ("size", "large")) if d != dim})
    images = {
        v: render_attributes({**base, dim: v}, np.random.default_rng(5), 48).astype(float) for v in ATTRIBUTES[dim]
    }
    for v in ATTRIBUTES[dim]:
        for w in ATTRIBUTES[dim]:
            if v < w:
                assert np.abs(images[v] - images[w]).mean() > 2.0, (dim, v, w)


def test_a_linear_probe_on_pixels_is_far_from_perfect() -> None:
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    world = demo_world()
    n_train, n_test, n = 16, 8, len(world.classes)
    pixels = np.stack(
        [
            render_class_image(world, label, i, size=32).ravel() / 255.0
            for label in range(n)
            for i in range(n_train + n_test)
        ]
    ).reshape(n, n_train + n_test, -1)
    x_train, x_test = pixels[:, :n_train].reshape(n * n_train, -1), pixels[:, n_train:].reshape(n * n_test, -1)
    y_train, y_test = np.repeat(np.arange(n), n_train), np.repeat(np.arange(n), n_test)
    probe = make_pipeline(StandardScaler(), PCA(24, random_state=0), LogisticRegression(C=0.1, max_iter=200))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probe.fit(x_train, y_train)
    accuracy = probe.score(x_test, y_test)
    assert 3.0 / n < accuracy < 0.9


# --------------------------------------------------------------------------------------------- on disk


def test_split_file_is_coop_format_and_matches_world_json(world_root: Path) -> None:
    dataset = world_root / "demo"
    text = (dataset / "split_zhou_Demo.json").read_text()
    assert text.startswith('{\n    "train": [\n        [\n            "')
    split = json.loads(text)
    assert list(split) == ["train", "val", "test"]
    facts = json.loads((dataset / "world.json").read_text())
    names = [c["name"] for c in facts["classes"]]
    assert names == demo_world().classnames
    assert facts["base"] == names[:20] and facts["novel"] == names[20:]
    assert [c["label"] for c in facts["classes"]] == list(range(40))
    assert facts["attributes"] == {k: list(v) for k, v in ATTRIBUTES.items()}
    assert facts["generator"]["hash"] == world_root.name and facts["generator"]["size"] == 32
    for key, per_class in demo.IMAGES_PER_CLASS.items():
        rows = split[key]
        assert Counter(label for _, label, _ in rows) == dict.fromkeys(range(40), per_class)
        assert [label for _, label, _ in rows] == sorted(label for _, label, _ in rows)
        for rel, label, name in rows:
            assert name == names[label] and rel.startswith(f"{name}/{name}_") and rel.endswith(".png")
    listed = {rel for rows in split.values() for rel, _, _ in rows}
    on_disk = {p.relative_to(dataset / "images").as_posix() for p in (dataset / "images").rglob("*.png")}
    assert listed == on_disk and len(listed) == 40 * sum(demo.IMAGES_PER_CLASS.values())
    assert load_demo_world(world_root) == DemoWorld.from_dict(facts)


def test_the_generic_reader_reads_the_world(world_root: Path) -> None:
    from sempt_cli.data.readers import load_dataset

    data = load_dataset("demo", world_root)
    assert data.classnames == demo_world().classnames
    assert (len(data.train), len(data.val), len(data.test)) == (1600, 400, 2000)


def test_files_on_disk_are_the_rendered_images(world_root: Path) -> None:
    from PIL import Image

    world = demo_world()
    name = world.classnames[5]
    with Image.open(world_root / "demo" / "images" / name / f"{name}_0042.png") as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), render_class_image(world, 5, 42, seed=0, size=32))


def test_a_completed_world_is_reused_instantly(world_root: Path) -> None:
    marker = world_root / "demo" / "world.json"
    before = marker.stat().st_mtime_ns
    start = time.perf_counter()
    again = ensure_demo_world(world_root.parent.parent, size=32, seed=0)
    assert again == world_root
    assert time.perf_counter() - start < 0.5
    assert marker.stat().st_mtime_ns == before


def test_same_seed_same_bytes_other_seed_other_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "IMAGES_PER_CLASS", TINY)
    first = ensure_demo_world(tmp_path / "a", size=32, seed=0)
    second = ensure_demo_world(tmp_path / "b", size=32, seed=0)
    other = ensure_demo_world(tmp_path / "c", size=32, seed=1)
    assert first.name == second.name != other.name
    name = demo_world().classnames[0]
    for index in range(3):
        rel = Path("demo/images") / name / f"{name}_{index:04d}.png"
        assert (first / rel).read_bytes() == (second / rel).read_bytes()
        assert (first / rel).read_bytes() != (other / rel).read_bytes()


def test_a_generator_change_regenerates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "IMAGES_PER_CLASS", TINY)
    old = ensure_demo_world(tmp_path, size=32)
    monkeypatch.setattr(demo, "GENERATOR_VERSION", demo.GENERATOR_VERSION + 1)
    new = ensure_demo_world(tmp_path, size=32)
    assert new != old and (new / "demo" / "world.json").is_file()
    assert json.loads((new / "demo" / "world.json").read_text())["generator"]["version"] == demo.GENERATOR_VERSION
    monkeypatch.setattr(demo, "_source_digest", lambda: "edited renderer")
    assert ensure_demo_world(tmp_path, size=32) not in {old, new}
    assert demo.generator_hash(32, 0) != demo.generator_hash(40, 0)


def test_an_interrupted_generation_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "IMAGES_PER_CLASS", TINY)
    calls = {"n": 0}
    real = demo.render_class_image

    def flaky(*args: object, **kwargs: object) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 30:
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(demo, "render_class_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo_world(tmp_path, size=32)
    assert list((tmp_path / "demo-world").iterdir()) == []
    root = ensure_demo_world(tmp_path, size=32)
    assert (root / "demo" / "world.json").is_file()


def test_a_damaged_world_is_regenerated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "IMAGES_PER_CLASS", TINY)
    root = ensure_demo_world(tmp_path, size=32)
    (root / "demo" / "world.json").unlink()
    assert ensure_demo_world(tmp_path, size=32) == root
    assert (root / "demo" / "world.json").is_file()


def test_too_small_images_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError):
        ensure_demo_world(tmp_path, size=16)


# ------------------------------------------------------------------------------------ pre-training corpus


@pytest.fixture(scope="module")
def corpus() -> list[demo.CorpusSample]:
    return generate_pretraining_samples(800, seed=0, size=24)


_VALUE_WORDS = {
    "stripes": "striped",
    "dots": "dotted",
    "checker": "checkered",
    "rings": "ringed",
    "sand": "sandy",
    "grass": "grassy",
    "black": "dark",
}
_VALUE_WORDS.update({v: v for values in ATTRIBUTES.values() for v in values})
_DIM_OF = {v: d for d, values in ATTRIBUTES.items() for v in values}


def _mentioned(text: str) -> dict[str, set[str]]:
    """Attribute values a caption or description states, by dimension ("with stripes" -> striped)."""
    found: dict[str, set[str]] = {}
    for word in re.findall(r"[a-z]+", text):
        value = _VALUE_WORDS.get(word)
        if value is not None:
            found.setdefault(_DIM_OF[value], set()).add(value)
    return found


def test_corpus_covers_combinations_outside_the_benchmark(corpus: list[demo.CorpusSample]) -> None:
    outside = [s for s in corpus if s.classname is None]
    assert 0.3 * len(corpus) < len(outside) < 0.7 * len(corpus)
    assert len({tuple(sorted(s.attributes.items())) for s in outside}) > 200
    for s in outside:
        assert s.named is None and not any(n in s.caption for n in demo_world().classnames)


def test_corpus_names_base_and_novel_classes_with_noise(corpus: list[demo.CorpusSample]) -> None:
    world = demo_world()
    named = [s for s in corpus if s.named]
    assert {s.named for s in named} & {c.name for c in world.base_classes}
    assert {s.named for s in named} & {c.name for c in world.novel_classes}
    for s in named:
        assert s.named in s.caption and s.classname is not None
        assert (s.named == s.classname) == (s.noise != "wrong-name")
    with_attributes = [s for s in corpus if _mentioned(s.caption)]
    wrong = [s for s in with_attributes if s.noise == "wrong-attribute"]
    assert 0.04 < len(wrong) / len(with_attributes) < 0.2
    for s in with_attributes:
        stated = _mentioned(s.caption)
        false = [d for d, vs in stated.items() if vs != {s.attributes[d]}]
        assert (len(false) == 1) == (s.noise == "wrong-attribute"), (s.caption, s.attributes)
    dropped = [s for s in corpus if sum(len(v) for v in _mentioned(s.caption).values()) < len(ATTRIBUTES)]
    assert len(dropped) > 0.7 * len(corpus)


def test_corpus_is_deterministic_and_chunkable(corpus: list[demo.CorpusSample]) -> None:
    again = generate_pretraining_samples(20, seed=0, size=24, start=100)
    for s, t in zip(corpus[100:120], again, strict=True):
        assert s.caption == t.caption and np.array_equal(s.image, t.image)
    other = generate_pretraining_samples(20, seed=1, size=24)
    assert [s.caption for s in other] != [s.caption for s in corpus[:20]]
    pairs = generate_pretraining_corpus(5, seed=0, size=24)
    assert all(isinstance(img, np.ndarray) and img.shape == (24, 24, 3) and isinstance(cap, str) for img, cap in pairs)


def test_rarer_novel_names_are_only_an_option(corpus: list[demo.CorpusSample]) -> None:
    novel = {c.name for c in demo_world().novel_classes}
    scaled = generate_pretraining_samples(800, seed=0, size=24, novel_name_scale=0.0)
    assert not any(s.named in novel and s.noise != "wrong-name" for s in scaled)
    assert any(s.named in novel for s in corpus)


# ----------------------------------------------------------------------------------- descriptions


def test_descriptions_state_only_true_attributes() -> None:
    world = demo_world()
    descriptions = demo_attribute_descriptions(world, num_descriptions=6, seed=0)
    assert list(descriptions) == world.classnames
    for cls in world.classes:
        texts = descriptions[cls.name]
        assert len(texts) == 6 and len(set(texts)) == 6
        for text in texts:
            assert 0 < len(text.split()) <= 20  # common words, one CLIP token each: far below 77
            assert not any(name in text for name in world.classnames)
            for dim, values in _mentioned(text).items():
                assert values == {cls.attributes[dim]}, (cls.name, text)
        assert sum(len(_mentioned(t)) >= 2 for t in texts) >= 4
    assert demo_attribute_descriptions(world, seed=0) == descriptions
    assert demo_attribute_descriptions(world, seed=1) != descriptions
    assert any(not _mentioned(t) or len(_mentioned(t)) == 1 for texts in descriptions.values() for t in texts)

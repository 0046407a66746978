"""Readers: every benchmark's real layout, label order, class names and the promised error messages."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import DEFAULT_PER_CLASS
from fabricate import (
    BENCHMARKS,
    JSON_SPLIT,
    TEST_ONLY,
    classnames_of,
    expected_sizes,
    fabricate_dataset,
    read_split_json,
    write_imagenet_classnames,
    write_split_json,
)

from sempt_cli.data import (
    DatasetSplits,
    MissingDataError,
    bundled_wnid_subset,
    get_dataset_info,
    load_dataset,
    prompt_name,
)
from sempt_cli.errors import DatasetError

NUM_CLASSES = {
    "imagenet": 1000,
    "caltech101": 100,
    "oxford_pets": 37,
    "stanford_cars": 196,
    "oxford_flowers": 102,
    "food101": 101,
    "fgvc_aircraft": 100,
    "sun397": 397,
    "dtd": 47,
    "eurosat": 10,
    "ucf101": 101,
    "imagenetv2": 1000,
    "imagenet_sketch": 1000,
    "imagenet_a": 200,
    "imagenet_r": 200,
}

# (dataset, label, class name as stored, name in the prompt) — straight from spec §1.2, §1.3 and §2.
KNOWN_LABELS = [
    ("caltech101", 0, "face", "face"),
    ("caltech101", 1, "leopard", "leopard"),
    ("caltech101", 2, "motorbike", "motorbike"),
    ("caltech101", 3, "accordion", "accordion"),
    ("caltech101", 4, "airplane", "airplane"),
    ("caltech101", 99, "yin_yang", "yin yang"),
    ("eurosat", 0, "Annual Crop Land", "Annual Crop Land"),
    ("eurosat", 3, "Highway or Road", "Highway or Road"),
    ("eurosat", 9, "Sea or Lake", "Sea or Lake"),
    ("oxford_pets", 0, "abyssinian", "abyssinian"),
    ("oxford_pets", 2, "american_pit_bull_terrier", "american pit bull terrier"),
    ("oxford_pets", 36, "yorkshire_terrier", "yorkshire terrier"),
    ("stanford_cars", 0, "2000 AM General Hummer SUV", "2000 AM General Hummer SUV"),
    ("stanford_cars", 195, "2012 smart fortwo Convertible", "2012 smart fortwo Convertible"),
    ("oxford_flowers", 0, "pink primrose", "pink primrose"),
    ("food101", 0, "apple_pie", "apple pie"),
    ("food101", 100, "waffles", "waffles"),
    ("fgvc_aircraft", 0, "707-320", "707-320"),
    ("sun397", 0, "abbey", "abbey"),
    ("dtd", 0, "banded", "banded"),
    ("dtd", 46, "zigzagged", "zigzagged"),
    ("ucf101", 0, "Apply_Eye_Makeup", "Apply Eye Makeup"),
    ("imagenet", 0, "tench", "tench"),
    ("imagenetv2", 0, "tench", "tench"),
    ("imagenet_sketch", 999, "toilet paper", "toilet paper"),
    ("imagenet_a", 3, "American robin", "American robin"),
    ("imagenet_r", 0, "goldfish", "goldfish"),
]


@pytest.fixture(scope="module")
def loaded(benchmark_root: Path) -> dict[str, DatasetSplits]:
    return {name: load_dataset(name, benchmark_root) for name in BENCHMARKS}


def build(name: str, root: Path, per_class: tuple[int, int, int] = (2, 1, 1)) -> Path:
    return fabricate_dataset(name, root, per_class)


def split_path(name: str, root: Path) -> Path:
    info = get_dataset_info(name)
    assert info.split_file is not None
    return info.dataset_dir(root) / info.split_file


# ------------------------------------------------------------------------------------------ every dataset


@pytest.mark.parametrize("name", BENCHMARKS)
def test_class_count_and_names_are_the_real_ones(name: str, loaded: dict[str, DatasetSplits]) -> None:
    splits = loaded[name]
    assert splits.name == name
    assert splits.num_classes == NUM_CLASSES[name] == get_dataset_info(name).num_classes
    assert splits.classnames == classnames_of(name)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_split_sizes(name: str, loaded: dict[str, DatasetSplits]) -> None:
    splits = loaded[name]
    train, val, test = expected_sizes(name, DEFAULT_PER_CLASS)
    assert (len(splits.train), len(splits.test)) == (train, test)
    if name in TEST_ONLY:
        assert splits.val is None
    else:
        assert splits.val is not None and len(splits.val) == val


@pytest.mark.parametrize("name", BENCHMARKS)
def test_samples_are_absolute_existing_paths_with_consistent_labels(
    name: str, loaded: dict[str, DatasetSplits], benchmark_root: Path
) -> None:
    splits = loaded[name]
    for sample in [*splits.train, *(splits.val or []), *splits.test]:
        assert sample.path.is_absolute() and sample.path.is_file()
        assert sample.path.is_relative_to(benchmark_root / get_dataset_info(name).folder)
        assert splits.classnames[sample.label] == sample.classname
    labels = {s.label for s in splits.test}
    assert labels == set(range(NUM_CLASSES[name]))


@pytest.mark.parametrize(("name", "label", "classname", "prompt"), KNOWN_LABELS)
def test_known_label_names(
    name: str, label: int, classname: str, prompt: str, loaded: dict[str, DatasetSplits]
) -> None:
    splits = loaded[name]
    assert splits.classnames[label] == classname
    assert prompt_name(splits.classnames[label]) == prompt


def test_prompt_name_only_replaces_underscores() -> None:
    assert prompt_name("indoor_procenium theater") == "indoor procenium theater"
    assert prompt_name("Apply_Eye_Makeup") == "Apply Eye Makeup"
    assert prompt_name("F/A-18") == "F/A-18"
    assert prompt_name("American robin") == "American robin"  # no lower-casing


@pytest.mark.parametrize(
    ("name", "template"),
    [
        ("oxford_pets", "a photo of a {}, a type of pet."),
        ("oxford_flowers", "a photo of a {}, a type of flower."),
        ("fgvc_aircraft", "a photo of a {}, a type of aircraft."),
        ("dtd", "{} texture."),
        ("eurosat", "a centered satellite photo of {}."),
        ("food101", "a photo of {}, a type of food."),
        ("ucf101", "a photo of a person doing {}."),
        ("caltech101", "a photo of a {}."),
        ("imagenet", "a photo of a {}."),
        ("sun397", "a photo of a {}."),
    ],
)
def test_zero_shot_templates(name: str, template: str) -> None:
    assert get_dataset_info(name).template == template


# ------------------------------------------------------------------------------------- per-layout facts


def test_caltech_keeps_original_folders_and_ignores_two(loaded: dict[str, DatasetSplits]) -> None:
    splits = loaded["caltech101"]
    by_label = {s.label: s for s in splits.train}
    assert by_label[0].path.parent.name == "Faces" and by_label[0].classname == "face"
    assert by_label[1].path.parent.name == "Leopards"
    assert by_label[2].path.parent.name == "Motorbikes"
    assert by_label[4].path.parent.name == "airplanes" and by_label[4].classname == "airplane"
    assert by_label[0].path.parent.parent.name == "101_ObjectCategories"
    folders = {s.path.parent.name for s in [*splits.train, *splits.test]}
    assert "BACKGROUND_Google" not in folders and "Faces_easy" not in folders


def test_stanford_cars_resolves_against_the_dataset_folder(
    loaded: dict[str, DatasetSplits], benchmark_root: Path
) -> None:
    splits = loaded["stanford_cars"]
    folder = benchmark_root / "stanford_cars"
    assert splits.image_root == folder
    assert all(s.path.parent == folder / "cars_train" for s in splits.train)
    assert all(s.path.parent == folder / "cars_test" for s in splits.test)
    rel = read_split_json(split_path("stanford_cars", benchmark_root))["train"][0][0]
    assert rel.startswith("cars_train/") and splits.train[0].path == folder / rel


@pytest.mark.parametrize("name", ["oxford_flowers", "stanford_cars"])
def test_unsorted_json_order_is_kept(name: str, loaded: dict[str, DatasetSplits], benchmark_root: Path) -> None:
    rows = read_split_json(split_path(name, benchmark_root))["train"]
    labels = [s.label for s in loaded[name].train]
    assert labels == [row[1] for row in rows]
    assert labels != sorted(labels)


def test_json_rows_map_one_to_one(loaded: dict[str, DatasetSplits], benchmark_root: Path) -> None:
    rows = read_split_json(split_path("ucf101", benchmark_root))
    splits = loaded["ucf101"]
    assert rows["train"][0] == ["Apply_Eye_Makeup/v_ApplyEyeMakeup_g01_c01.jpg", 0, "Apply_Eye_Makeup"]
    image_root = benchmark_root / "ucf101" / "UCF-101-midframes"
    assert splits.train[0].path == image_root / "Apply_Eye_Makeup" / "v_ApplyEyeMakeup_g01_c01.jpg"
    assert [[s.path.relative_to(image_root).as_posix(), s.label, s.classname] for s in splits.test] == rows["test"]


def test_eurosat_original_folders(loaded: dict[str, DatasetSplits]) -> None:
    first = loaded["eurosat"].train[0]
    assert (first.label, first.classname, first.path.parent.name) == (0, "Annual Crop Land", "AnnualCrop")
    assert first.path.parent.parent.name == "2750"


def test_sun397_names_and_paths(loaded: dict[str, DatasetSplits]) -> None:
    splits = loaded["sun397"]
    label = splits.classnames.index("outdoor apartment_building")
    assert label == 8
    sample = next(s for s in splits.train if s.label == label)
    assert sample.path.parent.as_posix().endswith("SUN397/a/apartment_building/outdoor")
    assert prompt_name("indoor_procenium theater") in [prompt_name(c) for c in splits.classnames]


def test_oxford_pets_flat_image_folder(loaded: dict[str, DatasetSplits], benchmark_root: Path) -> None:
    assert all(s.path.parent == benchmark_root / "oxford_pets" / "images" for s in loaded["oxford_pets"].test)


def test_fgvc_reads_official_text_files(loaded: dict[str, DatasetSplits], benchmark_root: Path) -> None:
    splits = loaded["fgvc_aircraft"]
    folder = benchmark_root / "fgvc_aircraft"
    first_line = (folder / "images_variant_val.txt").read_text().splitlines()[0]
    image_id, variant = first_line.split(" ", 1)
    assert splits.val is not None
    assert splits.val[0].path == folder / "images" / f"{image_id}.jpg"
    assert splits.val[0].classname == variant
    assert "F/A-18" in splits.classnames and "BAE 146-200" in splits.classnames
    assert splits.classnames.index("F/A-18") == [ln.strip() for ln in (folder / "variants.txt").open()].index("F/A-18")


def test_imagenet_layout(loaded: dict[str, DatasetSplits], benchmark_root: Path) -> None:
    splits = loaded["imagenet"]
    assert splits.val is splits.test and splits.val_is_test
    wnid_of = [s.path.parent.name for s in splits.train]
    assert wnid_of[0] == "n01440764" and splits.train[0].classname == "tench"
    assert {s.path.parent.parent.name for s in splits.train} == {"train"}
    assert {s.path.parent.parent.name for s in splits.test} == {"val"}
    crane = splits.classnames.index("crane bird")
    assert next(s for s in splits.train if s.label == crane).path.parent.name == "n02012849"
    # duplicated CLIP names are harmless: lookups are by wnid
    assert splits.classnames.count("missile") == 2 and splits.classnames.count("sunglasses") == 2


def test_imagenet_reader_details(scratch: Path) -> None:
    """One tree (1000 wnid folders are costly to create): bundled fallback, precedence, sorting, pickles."""
    root = fabricate_dataset("imagenet", scratch, (1, 0, 1), write_classnames=False)
    folder = root / "imagenet"
    assert not (folder / "classnames.txt").exists()
    assert load_dataset("imagenet", root).classnames == classnames_of("imagenet")

    write_imagenet_classnames(folder / "classnames.txt")
    path = folder / "classnames.txt"
    path.write_text(path.read_text().replace("n01440764 tench", "n01440764 tinca tinca"))
    assert load_dataset("imagenet", root).classnames[0] == "tinca tinca"

    (folder / "preprocessed.pkl").write_bytes(b"\x80\x05not a pickle we would ever load")
    (folder / "split_fewshot").mkdir()
    (folder / "split_fewshot" / "shot_16-seed_1.pkl").write_bytes(b"garbage")
    class_dir = folder / "images" / "train" / "n01440764"
    for name in ("Zz.JPEG", "aa.JPEG", "n01440764_10.JPEG", ".hidden.JPEG"):
        shutil.copy(class_dir / "n01440764_1.JPEG", class_dir / name)
    (class_dir / "not_a_file").mkdir()
    splits = load_dataset("imagenet", root)
    names = [s.path.name for s in splits.train if s.label == 0]
    assert names == ["Zz.JPEG", "aa.JPEG", "n01440764_1.JPEG", "n01440764_10.JPEG"]  # case-sensitive
    assert len(splits.train) == 1003 and len(splits.test) == 1000


def test_imagenet_variants_fall_back_to_bundled_classnames_and_validate(scratch: Path) -> None:
    for name in ("imagenet_sketch", "imagenetv2", "imagenet_a"):
        fabricate_dataset(name, scratch, (0, 0, 1), write_classnames=False)
        assert not (get_dataset_info(name).dataset_dir(scratch) / "classnames.txt").exists()
        assert load_dataset(name, scratch).classnames == classnames_of(name)

    v2_root = scratch / "imagenetv2" / "imagenetv2-matched-frequency-format-val"
    shutil.rmtree(v2_root / "517")
    with pytest.raises(DatasetError, match=r"format-val/517 does not exist \(folders 0\.\.999 are needed\)"):
        load_dataset("imagenetv2", scratch)

    path = scratch / "imagenet-sketch" / "classnames.txt"
    write_imagenet_classnames(path)
    path.write_text(path.read_text().replace("n01443537 goldfish", "n01443537"))
    with pytest.raises(DatasetError, match=r"classnames.txt has line 2 'n01443537', not '<wnid> <class name>'"):
        load_dataset("imagenet_sketch", scratch)
    write_imagenet_classnames(path)
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(DatasetError, match=r"has 999 class lines, expected 1000"):
        load_dataset("imagenet_sketch", scratch)
    path.unlink()
    for image in (scratch / "imagenet-sketch" / "images" / "n01440764").iterdir():
        image.unlink()
    with pytest.raises(DatasetError, match=r"images/n01440764 contains no images"):
        load_dataset("imagenet_sketch", scratch)


def test_imagenetv2_uses_integer_folder_order(loaded: dict[str, DatasetSplits]) -> None:
    splits = loaded["imagenetv2"]
    assert all(int(s.path.parent.name) == s.label for s in splits.test)
    by_label = {s.label: s.path.parent.name for s in splits.test}
    assert (by_label[2], by_label[10], by_label[100], by_label[999]) == ("2", "10", "100", "999")
    # a lexicographic ImageFolder would have given label 2 to folder "10"
    assert sorted(str(k) for k in range(1000))[2] == "10"
    assert splits.classnames[2] == "great white shark" and splits.train == []


@pytest.mark.parametrize("name", ["imagenet_a", "imagenet_r"])
def test_imagenet_a_r_are_200_way_and_ignore_readme(name: str, loaded: dict[str, DatasetSplits]) -> None:
    splits = loaded[name]
    subset = bundled_wnid_subset(name)
    assert splits.num_classes == len(subset) == 200
    assert splits.classnames == [row[2] for row in subset]
    assert all(s.path.parent.name == subset[s.label][0] for s in splits.test)
    assert all(s.path.name != "README.txt" for s in splits.test)
    indices = [row[1] for row in subset]
    assert indices == sorted(indices)
    assert indices[:5] == ([6, 11, 13, 15, 17] if name == "imagenet_a" else [1, 2, 4, 6, 8])


def test_aliases_and_data_root_expansion(benchmark_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(benchmark_root.parent))
    splits = load_dataset("Flowers102", Path("~") / benchmark_root.name)
    assert splits.name == "oxford_flowers" and splits.num_classes == 102


def test_demo_uses_the_json_reader_with_its_own_class_count(scratch: Path) -> None:
    rows = {
        split: [[f"c{y}/{split}_{i}.png", y, f"blorp_{y}"] for y in range(4) for i in range(n)]
        for split, n in (("train", 3), ("val", 1), ("test", 2))
    }
    from fabricate import write_image

    for split_rows in rows.values():
        for rel, _y, _c in split_rows:
            write_image(scratch / "demo" / "images" / rel)
    write_split_json(scratch / "demo" / "split_zhou_Demo.json", rows)
    splits = load_dataset("demo", scratch)
    assert splits.classnames == ["blorp_0", "blorp_1", "blorp_2", "blorp_3"]
    assert (len(splits.train), len(splits.test)) == (12, 8)


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("name", BENCHMARKS)
def test_missing_folder_names_the_path_and_the_download(name: str, scratch: Path) -> None:
    with pytest.raises(MissingDataError) as info:
        load_dataset(name, scratch)
    folder = scratch / get_dataset_info(name).folder
    assert info.value.message == f"Dataset {name}: folder {folder} does not exist."
    assert info.value.hint is not None
    assert get_dataset_info(name).download in info.value.hint and str(folder) in info.value.hint


@pytest.mark.parametrize("name", JSON_SPLIT)
def test_missing_split_file(name: str, scratch: Path) -> None:
    root = build(name, scratch, (1, 1, 1))
    path = split_path(name, root)
    path.unlink()
    with pytest.raises(MissingDataError, match="split file") as info:
        load_dataset(name, root)
    assert str(path) in info.value.message
    assert info.value.hint is not None and "Google Drive" in info.value.hint


def test_unknown_dataset(scratch: Path) -> None:
    with pytest.raises(DatasetError, match="Unknown dataset 'mnist'"):
        load_dataset("mnist", scratch)


def corrupt_split(root: Path, name: str, mutate) -> Path:  # type: ignore[no-untyped-def]
    path = split_path(name, root)
    data = read_split_json(path)
    mutate(data)
    write_split_json(path, data)
    return path


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.pop("val"), r'must be a JSON object with "train", "val" and "test" lists'),
        (lambda d: d["train"].__setitem__(0, ["AnnualCrop/x.jpg", 0]), r'entry 0 of "train" = .* not \[relative_path'),
        (lambda d: d["test"][1].__setitem__(1, 10), r'entry 1 of "test" with label 10 outside 0\.\.9'),
        (lambda d: d["val"][0].__setitem__(1, "0"), r"label '0', not an integer"),
        (
            lambda d: d["val"][0].__setitem__(2, "Annual Crops"),
            r"naming label 0 'Annual Crops' but earlier entries name it 'Annual Crop Land'",
        ),
        (
            lambda d: d.update({k: [r for r in v if r[1] != 9] for k, v in d.items()}),
            r'has 9 classes in "train", expected 10',
        ),
        (
            lambda d: d.__setitem__("train", [r for r in d["train"] if r[1] != 9]),
            r'has entry 9 of "val" with label 9, which no train entry has',
        ),
        (lambda d: d["train"][0].__setitem__(0, "/abs/AnnualCrop_1.jpg"), r"absolute path"),
        (lambda d: d["train"][0].__setitem__(0, "../AnnualCrop_1.jpg"), r"leaves the image folder"),
    ],
)
def test_malformed_split_json(scratch: Path, mutate, expected: str) -> None:  # type: ignore[no-untyped-def]
    root = build("eurosat", scratch)
    path = corrupt_split(root, "eurosat", mutate)
    with pytest.raises(DatasetError, match=expected) as info:
        load_dataset("eurosat", root)
    assert not isinstance(info.value, MissingDataError)
    assert info.value.message.startswith(f"Dataset eurosat: {path} ")


def test_invalid_json(scratch: Path) -> None:
    root = build("dtd", scratch)
    path = split_path("dtd", root)
    path.write_text('{"train": [["banded/banded_0001.jpg", 0, "banded"],')
    with pytest.raises(DatasetError, match=r"is not valid JSON \(.* at line 1 column \d+\)") as info:
        load_dataset("dtd", root)
    assert str(path) in info.value.message


@pytest.mark.parametrize("name", [*JSON_SPLIT, "fgvc_aircraft"])
def test_missing_image_names_its_path(name: str, scratch: Path) -> None:
    root = build(name, scratch, (1, 1, 1))
    victim = load_dataset(name, root).test[-1].path
    victim.unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset(name, root)
    assert f"image {victim} listed in" in info.value.message
    assert "does not exist (1 of " in info.value.message
    assert len(load_dataset(name, root, check_files=False).test) == expected_sizes(name, (1, 1, 1))[2]


def test_missing_image_folder_is_missing_data(scratch: Path) -> None:
    root = build("oxford_pets", scratch, (1, 1, 1))
    shutil.rmtree(root / "oxford_pets" / "images")
    with pytest.raises(MissingDataError, match=r"image folder .*oxford_pets/images does not exist"):
        load_dataset("oxford_pets", root)


def test_fgvc_errors(scratch: Path) -> None:
    root = build("fgvc_aircraft", scratch, (1, 1, 1))
    folder = root / "fgvc_aircraft"
    lines = (folder / "images_variant_test.txt").read_text().splitlines()
    lines[3] = lines[3].split(" ")[0] + " Boeing 797"
    (folder / "images_variant_test.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"images_variant_test.txt has line 4 naming variant 'Boeing 797'"):
        load_dataset("fgvc_aircraft", root)
    (folder / "variants.txt").write_text("\n".join(classnames_of("fgvc_aircraft")[:99]) + "\n")
    with pytest.raises(DatasetError, match=r"variants.txt lists 99 variants, expected 100"):
        load_dataset("fgvc_aircraft", root)
    (folder / "variants.txt").unlink()
    with pytest.raises(MissingDataError, match=r"class list .*variants.txt does not exist"):
        load_dataset("fgvc_aircraft", root)


def test_imagenet_a_r_strays(scratch: Path) -> None:
    root = build("imagenet_r", scratch, (0, 0, 1))
    image_root = root / "imagenet-rendition" / "imagenet-r"
    (image_root / "notes.txt").write_text("stray")
    with pytest.raises(DatasetError, match=r"notes.txt is a file where only class folders are expected"):
        load_dataset("imagenet_r", root)
    (image_root / "notes.txt").unlink()
    first = bundled_wnid_subset("imagenet_r")[0][0]
    (image_root / first).rename(image_root / "n01440764")  # tench: an ImageNet class, but not in R
    with pytest.raises(DatasetError, match=r"n01440764 is not one of the 200 ImageNet-R classes"):
        load_dataset("imagenet_r", root)
    shutil.rmtree(image_root / "n01440764")
    with pytest.raises(DatasetError, match=r"imagenet-r has 199 class folders, expected 200"):
        load_dataset("imagenet_r", root)


def test_imagenet_structure_errors(scratch: Path) -> None:
    root = build("imagenet", scratch, (1, 0, 1))
    train = root / "imagenet" / "images" / "train"
    val = root / "imagenet" / "images" / "val"
    shutil.rmtree(train / "n01440764")
    with pytest.raises(DatasetError, match=r"images/train has 999 class folders, expected 1000"):
        load_dataset("imagenet", root)
    shutil.copytree(train / "n01443537", train / "n00000000")
    with pytest.raises(DatasetError, match=r"differ from train \(n00000000 and 1 more\)"):
        load_dataset("imagenet", root)
    shutil.copytree(val / "n01440764", val / "n00000000")
    shutil.rmtree(val / "n01440764")
    with pytest.raises(DatasetError, match=r"n00000000 is not a class folder: 'n00000000' is not a wnid in"):
        load_dataset("imagenet", root)
    for class_dir in list(val.iterdir()):
        for image in class_dir.iterdir():
            image.rename(val / image.name)
        class_dir.rmdir()
    with pytest.raises(DatasetError, match=r"images/val has no wnid folders \(the official val archive is flat"):
        load_dataset("imagenet", root)

"""One settings tree for every command: the single source of truth for defaults and validation.

Values are resolved with this precedence (highest first)::

    command-line flag  >  environment (SEMPT_<SECTION>__<FIELD>)  >  config file (TOML)  >  preset  >  default

A *preset* is the official hyper-parameter set a method declares for a setting (e.g. PromptSRC on
base-to-novel); it sits just above the defaults so that anything the user says wins. `load_settings`
records where every value came from, which `sempt config show` prints.

Library use::

    from sempt_cli.settings import load_settings
    resolved = load_settings({"sempt.alpha": 0.4})
    resolved.settings.sempt.alpha  # 0.4
    resolved.sources["sempt.alpha"]  # "flag --alpha"
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    SerializationInfo,
    ValidationError,
    create_model,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from sempt_cli.data.registry import canonical_dataset_name, dataset_names
from sempt_cli.errors import SettingsError
from sempt_cli.plugins import load_plugins

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

ENV_PREFIX = "SEMPT_"
ENV_NESTED_DELIMITER = "__"
CONFIG_ENV_VAR = "SEMPT_CONFIG"
DEFAULT_CONFIG_FILE = Path("sempt.toml")
STANDARD_SHOTS = (1, 2, 4, 8, 16)

Precision = Literal["auto", "fp32", "bf16", "fp16", "amp"]
EvalSetting = Literal["base2novel", "cross-dataset", "cross-domain", "few-shot"]
Subsample = Literal["all", "base", "new"]


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/sempt` (usually `~/.cache/sempt`): caches survive across checkouts and runs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sempt"


def _unknown_dataset(name: str, quote: bool) -> str:
    """Why a dataset name is refused; a folder path gets the command that registers it."""
    if "/" in name or os.sep in name or Path(name).expanduser().is_dir():
        return f"{name!r} is a path, not a dataset name; register the folder once with `sempt data add NAME {name}`"
    shown = f" {name!r}" if quote else ""
    return f"unknown dataset{shown}; choose one of {', '.join(dataset_names())} (or register yours: `sempt data add`)"


class SettingsSection(BaseModel):
    """Base of every settings section. A method's own section subclasses it, names itself with `section` (its
    TOML table, `SEMPT_<SECTION>__*` prefix and `settings.<section>`) and sets `title` for help panels."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)
    section: ClassVar[str] = ""


SectionT = TypeVar("SectionT", bound=SettingsSection)


class PathSettings(SettingsSection):
    """Where data, caches and results live."""

    model_config = ConfigDict(title="Paths")

    data_root: Path = Field(
        Path("~/data"),
        description="Folder holding the datasets in the CoOp layout (the `DATA/` of CoOp/PromptSRC/PromptKD).",
    )
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="Content-addressed caches: demo world, few-shot splits, text embeddings, teacher features.",
    )
    output_dir: Path = Field(Path("runs"), description="Where trained checkpoints and run logs are written.")
    attributes_dir: Path = Field(
        Path("attributes"), description="Attribute files <dataset>.json written by gen-attributes and read by SemPT."
    )

    @field_validator("data_root", "cache_dir", "output_dir", "attributes_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()


class ModelSettings(SettingsSection):
    """The backbone a command trains or evaluates."""

    model_config = ConfigDict(title="Model")

    backbone: str = Field(
        "sempt-demo-teacher",
        description="open_clip model name, e.g. ViT-L-14-quickgelu (use -quickgelu names for OpenAI weights).",
    )
    pretrained: str | None = Field(
        "demo",
        description="open_clip pretrained tag (e.g. openai), 'demo' for the built-in tiny CLIPs, 'none' for random.",
    )
    checkpoint: Path | None = Field(None, description="Local weights file for the backbone (overrides --pretrained).")
    precision: Precision = Field(
        "auto", description="auto = bf16 autocast on CUDA when supported, fp32 otherwise; fp16 = the official "
        "PromptSRC/PromptKD arithmetic (fp16 weights and activations, no loss scaling; also on CPU); amp = fp16 "
        "autocast over fp32 weights with loss scaling (MMRL's PREC amp).",
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")

    @field_validator("pretrained", mode="before")
    @classmethod
    def _none_means_random(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() in {"", "none"} else value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value in {"auto", "cpu", "cuda"} or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("must be auto, cpu, cuda or cuda:N")


class DataSettings(SettingsSection):
    """Which data, which evaluation protocol, and how it is batched."""

    model_config = ConfigDict(title="Data")

    dataset: str = Field("demo", description="Dataset key (see `sempt data list`).")
    setting: EvalSetting = Field("base2novel", description="Evaluation protocol.")
    shots: int = Field(16, ge=0, description="Labelled images per class (0 = the whole training split).")
    allow_any_shots: bool = Field(False, description="Accept shot counts outside 1, 2, 4, 8, 16.")
    seed: int = Field(1, ge=0, description="Seed for few-shot sampling, initialisation and augmentation.")
    subsample: Subsample = Field("base", description="Class subset to train on: all, base or new.")
    batch_size: int = Field(4, ge=1, description="Training batch size.")
    eval_batch_size: int = Field(100, ge=1, description="Evaluation batch size.")
    workers: int = Field(
        default_factory=lambda: min(8, os.cpu_count() or 1),
        ge=0, description="DataLoader worker processes (default: the official 8, at most one per CPU core).",
    )
    crop_scale_min: float = Field(
        0.08, gt=0.0, le=1.0,
        description="Smallest area fraction of the random resized crop (Dassl 0.08; MMRL's configs use 0.5).",
    )
    on_corrupt: Literal["error", "skip"] = Field(
        "error", description="A corrupt or missing image stops the run (error) or is skipped and counted (skip)."
    )

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        key = canonical_dataset_name(value)
        if key is None:
            raise ValueError(_unknown_dataset(value, quote=False))
        return key

    @model_validator(mode="after")
    def _standard_shots(self) -> DataSettings:
        if self.shots and self.shots not in STANDARD_SHOTS and not self.allow_any_shots:
            raise ValueError(
                f"shots={self.shots} is not one of 1, 2, 4, 8, 16 (or 0 for all images); "
                "pass --allow-any-shots to use it anyway"
            )
        return self


class SemptHyperParameters(SettingsSection):
    """SemPT (spec/sempt-method.md); every [choice] of the spec is a field here."""

    model_config = ConfigDict(title="SemPT")

    enabled: bool = Field(
        True, description="Apply SemPT on top of the baseline (--no-sempt for the pure baseline).",
        json_schema_extra={"flag": "sempt"},
    )
    alpha: float = Field(0.2, ge=0.0, le=1.0, description="Residual weight α of the fused embedding.")
    beta: float = Field(
        0.6, ge=0.0, le=1.0,
        description="Weight β of L_enh (paper: 0.4 in the text, 0.6 in Table 4d; 0.6 gives the headline HM).",
    )
    top_k: int = Field(2, ge=1, description="K descriptions selected per class and image.")
    num_descriptions: int = Field(6, ge=1, description="S descriptions per class.")
    num_attributes: int = Field(16, ge=1, description="M_a attributes in the shared vocabulary.")
    tau_sa: float = Field(0.01, gt=0.0, description="Temperature of the semantic-alignment softmax.")
    fusion: Literal["mlp", "linear"] = Field("mlp", description="Fusion module: 2-layer MLP (GELU) or linear.")
    attr_encoder: Literal["teacher-prompted", "teacher-frozen"] = Field(
        "teacher-prompted", description="Text encoder for attribute descriptions."
    )
    attributes: Path | None = Field(
        None, description="Attribute file of the training dataset (default: <attributes-dir>/<dataset>.json).",
        json_schema_extra={"flag": "attributes"},
    )
    inference: Literal["hybrid", "label", "enhanced", "calibrated"] = Field(
        "hybrid", description="Class embeddings at inference (Table 4a): hybrid = T_lbl for seen classes and T_enh "
        "for unseen ones; label = T_lbl for all; enhanced = T_enh for all; calibrated = hybrid with the unseen "
        "classes' logits put on the seen classes' scale (fitted on unlabelled training images; not in the paper).",
    )

    @model_validator(mode="after")
    def _k_below_s(self) -> SemptHyperParameters:
        if self.top_k >= self.num_descriptions:
            raise ValueError(
                f"top_k (K={self.top_k}) must be smaller than num_descriptions (S={self.num_descriptions})"
            )
        return self


class TrainSettings(SettingsSection):
    """Optimisation; a method's preset replaces these defaults with its official values."""

    model_config = ConfigDict(title="Training")

    epochs: int = Field(20, ge=1, description="Training epochs.")
    lr: float = Field(0.0025, gt=0.0, description="Peak learning rate.")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="Optimizer.")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum.")
    weight_decay: float = Field(5e-4, ge=0.0, description="Weight decay (applied to prompts too, as Dassl does).")
    warmup_epochs: int = Field(1, ge=0, description="Constant-LR warm-up epochs.")
    warmup_lr: float = Field(1e-5, gt=0.0, description="Learning rate during warm-up.")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    checkpoint_every: int = Field(50, ge=1, description="Optimizer steps between resumable checkpoints.")
    select: Literal["last", "official-best"] = Field(
        "last", description="Model kept at the end: last = the final epoch's; official-best = the epoch with the best "
        "base-class accuracy on the *test* split, as the official PromptKD code selects (selects on test data).",
    )
    tensorboard: bool = Field(
        True, description="Write TensorBoard event files (train/<loss>, train/lr, per-epoch timing) into the run "
        "folder, beside metrics.jsonl (always written).",
    )
    compile: Literal["auto", "off", "compile", "cuda-graphs"] = Field(
        "auto", description="How the training step runs: off = eager PyTorch; compile = torch.compile of the "
        "method's forward and loss; cuda-graphs = the same, replayed as CUDA graphs (mode reduce-overhead; CUDA "
        "only); auto = cuda-graphs on CUDA, off on CPU. Results agree up to floating-point rounding.",
    )
    read_every: int = Field(
        10, ge=1, description="Optimizer steps between reading the loss back from the device (progress bar, "
        "finite-loss check; also before every checkpoint and at each epoch's end): 1 waits for the device every "
        "step.",
    )


class PromptSettings(SettingsSection):
    """Deep-prompt geometry (IVLP): depth counts the input-level set, so depth 9 = input + blocks 1..8."""

    model_config = ConfigDict(title="Prompts")

    vision_depth: int = Field(9, ge=0, description="Vision prompt depth (0 = no vision prompts).")
    text_depth: int = Field(9, ge=0, description="Text prompt depth (0 = no text prompts).")
    vision_length: int = Field(4, ge=1, description="Vision prompt tokens per layer.")
    text_length: int = Field(4, ge=1, description="Text context tokens per layer.")
    ctx_init: str | None = Field("a photo of a", description="Words that initialise the layer-0 text context.")


class LLMSettings(SettingsSection):
    """The LLM that writes attribute descriptions (`sempt gen-attributes`, spec §1): any OpenAI-compatible endpoint.

    The API key is read from `api_key` (config file or SEMPT_LLM__API_KEY) or else $OPENAI_API_KEY; it is never
    written anywhere: dumps show it masked (Python) or as null (JSON), and request caches never contain it.
    """

    model_config = ConfigDict(title="LLM (gen-attributes)")

    strategy: Literal["two-step", "one-step", "names", "ground-truth"] = Field(
        "two-step",
        description="Knowledge construction (paper Table 4b): two-step (shared attribute vocabulary, then "
        "descriptions), one-step (descriptions directly), names (class names only, no LLM), ground-truth "
        "(demo world only, from its true attributes, no LLM).",
    )
    base_url: str = Field("https://api.openai.com/v1", description="OpenAI-compatible endpoint (vLLM, Ollama, ...).")
    model: str = Field("gpt-4o", description="Chat model name at the endpoint (the paper used GPT-4o).")
    api_key: SecretStr | None = Field(
        None, description="API key (config file or SEMPT_LLM__API_KEY; else $OPENAI_API_KEY). No flag on purpose: "
        "command lines show in process lists and shell histories.",
        json_schema_extra={"flag": None},
    )
    temperature: float | None = Field(
        0.7, ge=0.0, le=2.0, description="Sampling temperature ('none' omits it, for models that reject it)."
    )
    seed: int | None = Field(
        0, description="`seed` request parameter (best-effort determinism; 'none' omits it).",
        json_schema_extra={"flag": "llm-seed"},
    )
    max_concurrency: int = Field(4, ge=1, description="Requests in flight at once.")
    timeout: float = Field(
        120.0, gt=0.0, description="Seconds one request may take in all (headers and answer) before it is retried."
    )
    max_answer_mb: float = Field(
        8.0, gt=0.0, description="Largest answer accepted, in MB; a larger one is discarded unread and stops the run."
    )
    retries: int = Field(5, ge=0, description="Retries per request on rate limits (429), timeouts and 5xx errors.")
    backoff: float = Field(
        1.0, ge=0.0, description="First retry delay in seconds, doubled per retry (a Retry-After header wins)."
    )
    reasks: int = Field(3, ge=0, description="Re-asks per request when an answer is invalid (the error is fed back).")
    classes_per_request: int = Field(10, ge=1, description="Classes described per request (step 2, one-step).")
    names_per_request: int = Field(
        250, ge=2, description="Class names per attribute-discovery request; longer lists are chunked and merged."
    )
    response_format: Literal["json_schema", "json_object", "text"] = Field(
        "json_schema", description="How JSON is requested: strict JSON schema, JSON mode, or the prompt alone."
    )
    prompt_version: str = Field("v1", description="Prompt-template version (sempt_cli/knowledge/prompts/<version>).")
    input_price: float = Field(2.5, ge=0.0, description="USD per 1M input tokens, for --dry-run (gpt-4o list price).")
    output_price: float = Field(
        10.0, ge=0.0, description="USD per 1M output tokens, for --dry-run (gpt-4o list price)."
    )

    @field_validator("temperature", "seed", mode="before")
    @classmethod
    def _none_omits(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() in {"", "none"} else value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_serializer("api_key")
    def _never_dump_key(self, value: SecretStr | None, info: SerializationInfo) -> str | None:
        """JSON dumps (run metadata, caches) get null; Python dumps (`config show`) a mask that says it is set."""
        if value is None or info.mode == "json":
            return None
        return "**********"


def _comma_list(value: object) -> object:
    """Flags and environment variables arrive as text: 'a, b' is the list ['a', 'b'] (TOML gives a real list)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class EvalSettings(SettingsSection):
    """`sempt eval`: which datasets to score, where records go, how results are aggregated and shown."""

    model_config = ConfigDict(title="Evaluation")

    datasets: list[str] | None = Field(
        None, description="Comma-separated datasets to score instead of the setting's own list "
        "(base2novel/few-shot: the training dataset; cross-dataset: source + 10 targets; cross-domain: source + 4).",
    )
    results_dir: Path = Field(
        Path("results/runs"), description="Where evaluation records (JSON) are written and looked up for reuse."
    )
    reuse: bool = Field(True, description="Reuse the record of an identical earlier evaluation instead of recomputing.")
    round_per_seed: bool = Field(
        False, description="Round each seed's accuracy to 0.1 before averaging, as CoOp's parse_test_res does "
        "(default: average the exact per-seed values).",
    )
    format: Literal["table", "json", "csv", "markdown"] = Field("table", description="Output format of the results.")
    plots: Path | None = Field(
        None, description="Folder to write PNG figures into (few-shot curves, HM bars vs the papers); none = no plots."
    )
    compare: list[str] | None = Field(
        None, description="Paper methods to compare with, comma-separated as named in results/paper/ "
        "(e.g. 'PromptKD,PromptKD w/ SemPT'); 'all' (default) or 'none'.",
    )

    @field_validator("datasets", mode="before")
    @classmethod
    def _dataset_list(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in {"", "none"}:
            return None
        value = _comma_list(value)
        if isinstance(value, list):
            keys = []
            for name in value:
                key = canonical_dataset_name(str(name))
                if key is None:
                    raise ValueError(_unknown_dataset(str(name), quote=True))
                keys.append(key)
            return keys or None
        return value

    @field_validator("plots", mode="before")
    @classmethod
    def _no_plots(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() in {"", "none"} else value

    @field_validator("compare", mode="before")
    @classmethod
    def _compare_list(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() == "all":
            return None
        if isinstance(value, str) and value.strip().lower() == "none":
            return []
        return _comma_list(value)

    @field_validator("results_dir", "plots")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser()


class Settings(BaseSettings):
    """Everything a command can be told: the core sections below plus one section per method plug-in that
    declares settings (`settings_model()` adds those). `load_settings` adds the config file, presets, flags and
    provenance."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED_DELIMITER, extra="forbid", case_sensitive=False
    )

    paths: PathSettings = Field(default_factory=PathSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    sempt: SemptHyperParameters = Field(default_factory=SemptHyperParameters)
    train: TrainSettings = Field(default_factory=TrainSettings)
    prompts: PromptSettings = Field(default_factory=PromptSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)

    def section(self, model: type[SectionT]) -> SectionT:
        """The values of the section declared by `model` (a method's own settings: `settings.section(MMRLSettings)`)."""
        for name, declared in sections().items():
            if declared is model:
                value = getattr(self, name)
                assert isinstance(value, model)
                return value
        raise SettingsError(f"No settings section is declared by {model.__name__}; is its method registered?")


def _section_model(annotation: object) -> type[SettingsSection]:
    assert isinstance(annotation, type) and issubclass(annotation, SettingsSection), annotation
    return annotation


CORE_SECTIONS: dict[str, type[SettingsSection]] = {
    name: _section_model(field.annotation) for name, field in Settings.model_fields.items()
}
_PLUGIN_SECTIONS: dict[str, type[SettingsSection]] = {}
_MODELS: dict[tuple[str, ...], type[Settings]] = {}


def register_section(model: type[SettingsSection]) -> None:
    """Add a plug-in's settings section (a method's own hyper-parameters) to the settings tree, under
    `model.section`."""
    name = model.section
    if not name.isidentifier() or name in CORE_SECTIONS or _PLUGIN_SECTIONS.get(name, model) is not model:
        raise SettingsError(f"The settings section {name!r} of {model.__name__} is taken or not a valid name.")
    _PLUGIN_SECTIONS[name] = model


def sections() -> dict[str, type[SettingsSection]]:
    """Every settings section: the core ones, then those of the registered method plug-ins (loaded on first use)."""
    load_plugins()
    return {**CORE_SECTIONS, **_PLUGIN_SECTIONS}


def settings_model() -> type[Settings]:
    """The `Settings` class with one field per registered plug-in section, built once per set of sections."""
    load_plugins()
    key = tuple(_PLUGIN_SECTIONS)
    if key not in _MODELS:
        fields: dict[str, Any] = {
            name: (model, Field(default_factory=model)) for name, model in _PLUGIN_SECTIONS.items()
        }
        _MODELS[key] = create_model("Settings", __base__=Settings, __doc__=Settings.__doc__, **fields)
    return _MODELS[key]


def section_title(name: str) -> str:
    """How help screens title a section (its model's `title`, e.g. "PromptSRC")."""
    return str(sections()[name].model_config.get("title") or name)


@dataclass(frozen=True)
class SettingField:
    """One leaf setting, with every name a user can give it by."""

    section: str
    name: str
    description: str
    default: Any
    annotation: Any
    flag_name: str | None

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def flag(self) -> str:
        return "--" + self.flag_name if self.flag_name else "(no flag)"

    @property
    def env_var(self) -> str:
        return f"{ENV_PREFIX}{self.section}{ENV_NESTED_DELIMITER}{self.name}".upper()

    @property
    def is_bool(self) -> bool:
        return self.annotation is bool


def iter_fields(only: Iterable[str] | None = None) -> Iterator[SettingField]:
    """Every leaf setting, or those named in `only` (a section name, or `section.field` for a single setting)."""
    chosen = None if only is None else set(only)
    for section, model in sections().items():
        for name, field in model.model_fields.items():
            if chosen is not None and section not in chosen and f"{section}.{name}" not in chosen:
                continue
            default = field.get_default(call_default_factory=True)
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            flag = extra.get("flag", name.replace("_", "-"))
            flag_name = None if flag is None else str(flag)
            yield SettingField(section, name, field.description or "", default, field.annotation, flag_name)


def fields() -> dict[str, SettingField]:
    """Every leaf setting by dotted key (`sempt.alpha`). Two settings may not share a flag: a plug-in whose field
    would shadow another's flag is refused, naming both (give it `json_schema_extra={"flag": ...}`)."""
    known: dict[str, SettingField] = {}
    by_flag: dict[str, str] = {}
    for field in iter_fields():
        if field.flag_name is not None:
            other = by_flag.setdefault(field.flag_name, field.key)
            if other != field.key:
                raise SettingsError(f"The settings {other} and {field.key} both want the flag {field.flag}; "
                                    f"give the {field.section} section's field a flag of its own.")
        known[field.key] = field
    return known


@dataclass(frozen=True)
class ResolvedSettings:
    """Validated settings plus, for every leaf key, a phrase saying where its value came from."""

    settings: Settings
    sources: dict[str, str]

    def rows(self) -> list[tuple[str, Any, str]]:
        dumped = self.settings.model_dump()
        return [(key, dumped[f.section][f.name], self.sources[key]) for key, f in fields().items()]


def _config_file_values(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise SettingsError(f"The config file {path} does not exist.") from None
    except IsADirectoryError:
        raise SettingsError(f"The config file {path} is a folder, not a TOML file.") from None
    except UnicodeDecodeError:
        raise SettingsError(f"The config file {path} is not UTF-8 text (TOML files must be UTF-8).") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"The config file {path} is not valid TOML ({exc}).") from None
    except OSError as exc:
        raise SettingsError(f"The config file {path} cannot be read ({exc.strerror or exc}).") from None
    values: dict[str, Any] = {}
    known_sections, known = sections(), fields()
    for section, table in raw.items():
        if section not in known_sections or not isinstance(table, dict):
            raise SettingsError(
                f"The config file {path} has an unknown section [{section}]; "
                f"known sections are {', '.join(known_sections)}."
            )
        for name, value in table.items():
            key = f"{section}.{name}"
            if key not in known:
                raise SettingsError(f"The config file {path} sets an unknown setting {key}.")
            values[key] = value
    return values


def _environment_values(env: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    upper = {name.upper(): value for name, value in env.items()}
    known = fields()
    unknown = sorted(
        name for name in upper
        if name.startswith(ENV_PREFIX) and ENV_NESTED_DELIMITER in name
        and name not in {f.env_var for f in known.values()}
    )
    if unknown:
        raise SettingsError(f"The environment variable {unknown[0]} names no setting (see `sempt config show`).")
    return {key: (upper[f.env_var], f.env_var) for key, f in known.items() if f.env_var in upper}


def _flag_as_given(field: SettingField, value: Any) -> str:
    if field.is_bool and value is False:
        return f"--no-{field.flag_name}"
    return field.flag


def find_config_file(explicit: Path | None, env: Mapping[str, str]) -> Path | None:
    """An explicit --config wins, then $SEMPT_CONFIG, then ./sempt.toml if present."""
    if explicit is not None:
        return explicit
    if env.get(CONFIG_ENV_VAR):
        return Path(env[CONFIG_ENV_VAR])
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    preset: Mapping[str, Any] | None = None,
    preset_name: str = "preset",
) -> ResolvedSettings:
    """Resolve settings from every source and validate them, or raise one-sentence `SettingsError`.

    `overrides` and `preset` are keyed by dotted names (``"sempt.alpha"``); `overrides` are the command-line
    flags, so their source reads as the flag. `env` defaults to `os.environ`.
    """
    env = os.environ if env is None else env
    known = fields()
    layers: list[tuple[dict[str, Any], dict[str, str]]] = []

    def add_layer(values: Mapping[str, Any], describe: Any) -> None:
        for key in values:
            if key not in known:
                raise SettingsError(f"{key} is not a setting (see `sempt config show`).")
        layers.append((dict(values), {key: describe(key) for key in values}))

    add_layer(preset or {}, lambda _key: preset_name)
    path = find_config_file(config_file, env)
    if path is not None:
        add_layer(_config_file_values(path), lambda _key: f"config file {path}")
    env_values = _environment_values(env)
    add_layer({k: v for k, (v, _) in env_values.items()}, lambda key: f"environment {env_values[key][1]}")
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    add_layer(flags, lambda key: f"flag {_flag_as_given(known[key], flags[key])}")

    merged: dict[str, dict[str, Any]] = {section: {} for section in sections()}
    sources = {key: "default" for key in known}
    for values, described in layers:
        for key, value in values.items():
            section, name = key.split(".", 1)
            merged[section][name] = value
            sources[key] = described[key]
    try:
        settings = settings_model().model_validate(merged)
    except ValidationError as exc:
        raise SettingsError(_explain(exc, merged, sources, known)) from None
    return ResolvedSettings(settings, sources)


def _explain(
    exc: ValidationError, merged: Mapping[str, Mapping[str, Any]], sources: Mapping[str, str],
    known: Mapping[str, SettingField],
) -> str:
    """Turn pydantic's report into one sentence naming the setting, its value and where it came from."""
    error = exc.errors(include_url=False)[0]
    loc = [str(part) for part in error["loc"]]
    message = str(error["msg"]).removeprefix("Value error, ")
    message = message[0].lower() + message[1:] if message else message
    if len(loc) >= 2 and f"{loc[0]}.{loc[1]}" in known:
        key = f"{loc[0]}.{loc[1]}"
        value = merged[loc[0]].get(loc[1], known[key].default)
        return f"Invalid setting {key} = {value!r} (from {sources[key]}): {message}."
    section = loc[0] if loc else "settings"
    given = sorted({sources[k] for k in known if k.startswith(section + ".") and sources[k] != "default"})
    origin = f" (set by {', '.join(given)})" if given else ""
    return f"Invalid {section} settings{origin}: {message}."

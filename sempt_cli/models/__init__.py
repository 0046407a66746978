"""CLIP backbones (open_clip) and the deep-prompted towers every prompt-learning method configures.

Importing this package registers the demo world's tiny CLIP configs (`sempt-demo-teacher`,
`sempt-demo-student`) with open_clip, so `load_clip("sempt-demo-teacher", None)` works anywhere.
"""

from sempt_cli.models.checkpoint import (
    LearnedCheckpoint,
    check_state,
    checkpoint_paths,
    learned_state_dict,
    load_learned,
    load_learned_into,
    save_learned,
)
from sempt_cli.models.factory import (
    DEMO_STUDENT,
    DEMO_TEACHER,
    LoadedClip,
    Preprocess,
    load_clip,
    read_state_dict,
    register_builtin_configs,
    register_model_config,
    register_pretrained_file,
    resolve_pretrained,
)
from sempt_cli.models.prompted import (
    BlockHook,
    ClassPrompts,
    DeepPrompts,
    PromptedTextTower,
    PromptedVisionTower,
    PromptSource,
    PromptSpec,
    TowerOutput,
)

register_builtin_configs()

__all__ = [
    "DEMO_STUDENT",
    "DEMO_TEACHER",
    "BlockHook",
    "ClassPrompts",
    "DeepPrompts",
    "LearnedCheckpoint",
    "LoadedClip",
    "Preprocess",
    "PromptSource",
    "PromptSpec",
    "PromptedTextTower",
    "PromptedVisionTower",
    "TowerOutput",
    "check_state",
    "checkpoint_paths",
    "learned_state_dict",
    "load_clip",
    "load_learned",
    "load_learned_into",
    "read_state_dict",
    "register_builtin_configs",
    "register_model_config",
    "register_pretrained_file",
    "resolve_pretrained",
    "save_learned",
]

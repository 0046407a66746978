"""End-to-end jobs the CLI commands run (library API: everything a command does, Python can call).

* `pipeline.data`     — resolve the data root (demo world or user data), few-shot and base/novel splits.
* `pipeline.backbone` — load the backbone a settings tree names (open_clip tag, local file or demo weights).
* `pipeline.teacher`  — `train_teacher`: train a prompt learner, save it, evaluate it.
* `pipeline.embed`    — `embed_classes`: cache a trained teacher's class vectors for every class.
"""

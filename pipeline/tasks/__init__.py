"""Tasks, one module each: `classification` (the default), `regression`, `text-classification`, `detection`; or a user plug-in
`--task FILE.py:NAME` naming a `pipeline.tasks.base.Task` subclass (code outside this repository needs
--trust-model, as for model files)."""
from __future__ import annotations

import importlib
from pathlib import Path

from pipeline.errors import UserError
from pipeline.tasks.base import Metric, Task  # noqa: F401

REGISTRY = {"classification": "pipeline.tasks.classification:Classification",
            "regression": "pipeline.tasks.regression:Regression",
            "text-classification": "pipeline.tasks.text_classification:TextClassification",
            "detection": "pipeline.tasks.detection:Detection"}


def resolve(spec: str, trust: bool = False) -> Task:
    """The task named by `--task`: a registered name or FILE.py:NAME."""
    if spec in REGISTRY:
        module, cls = REGISTRY[spec].split(":")
        return getattr(importlib.import_module(module), cls)()
    if ":" in spec:
        from pipeline.models import import_user_attr
        file, name = spec.rsplit(":", 1)
        obj = import_user_attr(Path(file), name, trust, what="task plug-in")
        task = obj() if isinstance(obj, type) else obj
        if not isinstance(task, Task):
            raise UserError(f"{spec} is not a pipeline.tasks.base.Task", "subclass Task and implement its methods")
        if not task.metrics:
            raise UserError(f"task {spec} declares no metrics", "set metrics = (Metric(name, higher_is_better), ...)")
        return task
    raise UserError(f"unknown task '{spec}'", f"use one of {', '.join(REGISTRY)} or FILE.py:NAME")

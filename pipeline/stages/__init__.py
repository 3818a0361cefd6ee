"""One module per stage. `plan` lists the stages of a run in order, for its model and targets."""
from __future__ import annotations

from pipeline.runner import Context, Stage

ORDER = ("load", "prune", "distill", "quantize", "compile", "evaluate", "report", "handoff")


def plan(ctx: Context, model_trainable: bool) -> list[Stage]:
    from pipeline.stages.compile import CompileStage
    from pipeline.stages.distill import DistillStage
    from pipeline.stages.evaluate import EvaluateStage
    from pipeline.stages.handoff import HandoffStage
    from pipeline.stages.load import LoadStage
    from pipeline.stages.prune import PruneStage
    from pipeline.stages.quantize import QuantizeStage
    from pipeline.stages.report import ReportStage

    stages: list[Stage] = [LoadStage()]
    source = "load"
    # prune.enabled=false ships the loaded model (distilling an unpruned copy of the teacher buys
    # nothing); distill.enabled=false ships the pruned model untrained.
    if model_trainable and ctx.config.prune.enabled:
        stages.append(PruneStage())
        source = "prune"
        if ctx.config.distill.enabled:
            stages.append(DistillStage())
            source = "distill"
    per_target = []
    for t in ctx.targets:
        per_target += [QuantizeStage(t, source), CompileStage(t, source)]
    stages += per_target
    measured = [s.name for s in stages]
    stages.append(EvaluateStage(measured))
    stages.append(ReportStage(measured + ["evaluate"]))
    stages.append(HandoffStage(["load", "evaluate", *[s.name for s in per_target]]))
    return stages


def kind(stage_name: str) -> str:
    """'quantize-jetson' -> 'quantize'."""
    return stage_name.split("-", 1)[0]

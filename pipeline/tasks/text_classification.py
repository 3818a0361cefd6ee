"""text-classification: classification of token sequences (input_ids, attention_mask), top-1/top-5.

The same metric, loss and checks as `classification`; what differs is the run's defaults: with no
--model the bundled text encoder (pipeline/models/text-default: 4 layers, hidden 256, 4 heads, its own
WordPiece vocabulary), with no --data Amazon fine-food reviews (Debian r-cran-modeldata's
small_fine_foods, tokenized with that vocabulary at 128 tokens), and a check that the inputs are token
ids, so an image model run with this task is refused in one line.
"""
from __future__ import annotations

from pipeline.errors import UserError
from pipeline.tasks.classification import Classification

DEFAULT_MODEL, DEFAULT_DATA = "text-default", "fine-foods"


class TextClassification(Classification):
    name = "text-classification"

    def check_outputs(self, outputs, ds) -> None:
        if not any(s.kind == "int" for s in ds.specs):
            raise UserError(f"--task text-classification wants integer token ids; the data's inputs are "
                            f"{', '.join(f'{s.name} {s.kind} {list(s.shape)}' for s in ds.specs)}",
                            "pass tokenized data (input_ids_<split>, attention_mask_<split>) or --task classification")
        super().check_outputs(outputs, ds)

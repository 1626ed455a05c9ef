"""`leader distill`: train the LEADER student from a teacher's features into a MODEL_DIR."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from leader.cli import app
from leader.commands import console
from leader.commands.options import Calibration, MaxDrugs, Threshold, config_options
from leader.commands.tables import fit_table, training_line
from leader.models.student import StudentConfig
from leader.pipelines import fit_model


@app.command("distill")
@config_options(StudentConfig)
def distill_cmd(
    data: Annotated[Path, typer.Option(help="Prepared DATA_DIR (the teacher's data).")],
    out: Annotated[Path, typer.Option(help="MODEL_DIR to write (the student bundle).")],
    config: StudentConfig,
    teacher: Annotated[
        Path | None,
        typer.Option(
            help="TEACHER_DIR with exported features (not needed with --alpha 0).",
            show_default=False,
        ),
    ] = None,
    threshold: Threshold = None,
    max_drugs: MaxDrugs = None,
    calibration: Calibration = "none",
    force: Annotated[
        bool,
        typer.Option(help="Replace an existing MODEL_DIR / discard a checkpoint of other options."),
    ] = False,
) -> None:
    """Distill the LEADER student; rerun the same command to resume after a kill."""
    result = fit_model("student", data, out, config, teacher=teacher, threshold=threshold,
                       max_drugs=max_drugs, force=force, calibration=calibration)
    cfg = result.model.config
    console.print(f"{training_line(result)}; preset {cfg.preset}, α {cfg.alpha:g}, "
                  f"β {cfg.beta:g}", highlight=False)
    console.print(fit_table(result))

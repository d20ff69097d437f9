"""Phases adapter and adapter_tune: the KFI adapter trained on the demo backbone by :func:`kfi_core.training.train`,
exactly as a user trains one, then fine-tuned in rounds, each on the data clips plus its own extra clips."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from kfi_core.errors import TrainConfigError
from kfi_core.training.checkpoints import list_checkpoints
from kfi_core.training.config import TrainConfig, config_from_dict

from .data import write_dataset
from .recipe import PACKAGE_ADAPTER, DemoRecipe, TuneRound

DATA_FOLDER = "data"  # under <out>: the data phase's clips; the adapter_tune rounds' are TuneRound.data_folder
ADAPTER_FOLDER = "adapter"  # the adapter phase's; the adapter_tune rounds' are TuneRound.adapter_folder


def adapter_config(
    recipe: DemoRecipe, backbone: Path, data: Path, out: Path, tune_from: Path | None = None, tune_round: int = 1
):
    """The adapter phase's kfi_core.training config; with ``tune_from`` (an adapter file) the adapter_tune phase's round
    ``tune_round``: the adapter phase's settings with that round's changes, starting from that file."""
    values = {
        "stages": [{"name": "demo", "steps": 1000, "resolution": list(recipe.resolution), "batch_size": 1}],
        "seed": recipe.seed,
        **recipe.adapter,
    }
    section, changes, set_here = "adapter", recipe.adapter, ("model", "data", "out", "resume")
    if tune_from is not None:
        tune = recipe.tune_round(tune_round)
        section, changes, set_here = tune.label, tune.changes, set_here + ("from_adapter",)
    for key in set_here:
        if key in changes:
            raise TrainConfigError(f"recipe {section}.{key}: set by the demo-model run; remove it from the recipe.")
    if tune_from is not None:
        values.update(changes, from_adapter=str(tune_from))
    values.update(model=str(backbone), data=str(data), out=str(out))
    config = config_from_dict(values, source=f"recipe {section}")
    if list_checkpoints(out):
        config.resume = "latest"
    return config


def tune_dataset(recipe: DemoRecipe, out: Path, tune_round: int = 1) -> Path:
    """Write the data of the adapter_tune phase's round ``tune_round``, ``<out>/data_tune`` (``data_tune<k>``): the
    data folder's clips plus that round's ``recolour_clips`` recoloured ones (the next recoloured seeds) and
    ``removal_clips`` removal ones (the next removal seeds), so the tuned
    adapter still sees every clip the adapter phase did. Clips already written to the data folder or an earlier
    round's are linked from there."""
    tune = recipe.tune_round(tune_round)
    earlier = tuple(out / r.data_folder for r in reversed(recipe.tune_rounds()[: tune_round - 1]))
    earlier += (out / DATA_FOLDER,)
    return write_dataset(
        out / tune.data_folder,
        recipe,
        recolour_clips=tune.recolour_clips,
        removal_clips=tune.removal_clips,
        reuse=earlier,
    )


_RUN_PATHS = ("model", "data", "out", "from_adapter", "resume")  # TrainConfig fields that the run sets


def check_finished_round(recipe: DemoRecipe, out: Path, tune: TuneRound, backbone: Path, start: Path) -> None:
    """Refuse a finished round whose saved settings (``train_config.json``) are not the ones ``recipe`` gives that
    round: another recipe's round of the same number trained in ``out``, which the run would otherwise skip and ship
    as this one. Paths are not compared (a run
    folder may be moved)."""
    saved_path = out / tune.adapter_folder / "train_config.json"
    if not saved_path.is_file():
        return
    # a setting added to TrainConfig after the round was trained is missing from its file: it ran with the default
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    saved = {**json.loads(json.dumps(defaults, default=str)), **json.loads(saved_path.read_text())}
    want = json.loads(
        json.dumps(
            adapter_config(
                recipe,
                backbone,
                out / tune.data_folder,
                out / tune.adapter_folder,
                tune_from=start,
                tune_round=tune.number,
            ).to_dict(),
            default=str,
        )
    )
    differ = sorted(k for k in want if k not in _RUN_PATHS and saved.get(k) != want[k])
    if differ:
        shown = ", ".join(f"{k} {saved.get(k)!r} (the recipe: {want[k]!r})" for k in differ[:4])
        raise TrainConfigError(
            f"{tune.label}: {out / tune.adapter_folder} was trained with other settings: {shown}"
            f"{' ...' if len(differ) > 4 else ''}: another recipe's round {tune.number}, or this "
            "round changed since it finished. Move that folder (and its data folder) aside to "
            "train it again, or give this recipe another --out."
        )


def trained_adapters(recipe: DemoRecipe, out: Path) -> dict[str, Path]:
    """The adapter files the package ships, by the name each gets there: the rounds' that set ``package_as``, or,
    where none does, the adapter_tune phase's last round's (the adapter phase's without rounds) as
    :data:`PACKAGE_ADAPTER`."""
    rounds = recipe.tune_rounds()
    named = {
        tune.package_as: out / tune.adapter_folder / "adapter.safetensors"
        for tune in rounds
        if tune.package_as is not None
    }
    if named:
        return named
    return {PACKAGE_ADAPTER: out / (rounds[-1].adapter_folder if rounds else ADAPTER_FOLDER) / "adapter.safetensors"}

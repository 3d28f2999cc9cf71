"""Training configuration: a recipe's defaults, merged with a ``--config`` YAML, then flags.

    training/configs/<recipe>.yaml   each paper's settings (under version control)
    --config RUN.yaml                any subset of the keys below (nested dicts merge key-wise)
    --epochs, --lr, ... flags        win over both

Unknown keys are refused with the valid ones listed, so a typo never silently trains with a
default. The merged config is written to RUN/config.yaml and stored in the checkpoints and the
bundle's provenance; ``--resume`` refuses a config that differs from the checkpoint's.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from eri.errors import EriError

#: Recipe used when neither --recipe, --arch nor the --config YAML names one.
DEFAULT_RECIPE = "dual_branch"
LOSS_NAMES = ("mse", "pcc", "ccc")
OPTIMIZERS = ("adam", "adamw")
AUDIO_NORMS = ("token", "dataset")
DEVICES = ("auto", "cpu", "cuda")
#: Keys that may change between a run and its ``--resume`` (they do not change the maths of
#: what is already computed): more epochs, where it runs and how data is fed.
RESUMABLE_CHANGES = ("epochs", "branch_epochs", "device", "workers", "threads", "in_memory")


class ConfigError(EriError, ValueError):
    """A training config that cannot be used; the message names the key and the fix."""


@dataclass
class TrainConfig:
    """Every setting of a training run (the recipe YAMLs document each paper's choice)."""

    recipe: str = DEFAULT_RECIPE
    #: architecture options (``eri models``), e.g. ``spatial_layers``; see models/<arch>.py
    model: dict[str, Any] = field(default_factory=dict)
    #: WindowSpec fields (num_samples, context_s) and CropSpec fields (size, margin)
    window: dict[str, Any] = field(default_factory=dict)
    crop: dict[str, Any] = field(default_factory=dict)
    epochs: int = 30  # epochs of the last (or only) stage
    branch_epochs: int = 30  # dual_branch: epochs of each branch stage
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.0
    optimizer: str = "adam"
    loss: str = "mse"
    lr_factor: float = 0.5  # lr multiplied by this when the val mean PCC stalls
    lr_patience: int = 10  # ... for this many epochs
    early_stop: int | None = None  # stop a stage after this many epochs without improvement
    grad_clip: float | None = None
    folds: int = 0  # 0: train on train_split, validate on val_split; K >= 2: k-fold
    train_split: str = "Train"
    val_split: str = "Val"
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # fp16 autocast + GradScaler on CUDA (always off on CPU)
    workers: int = 0  # DataLoader worker processes
    threads: int | None = None  # torch intra-op threads (None: CPU cores / local processes)
    in_memory: bool | None = None  # keep cached windows in RAM (None: when they fit 2 GiB)
    audio_norm: str = "token"  # "dataset": z-score audio tokens with the Train statistics
    pretrained: str | None = None  # backbone weights file (torchvision-style / AffectNet)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse values no run can use, naming the key."""
        checks = [
            ("loss", self.loss, LOSS_NAMES),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("audio_norm", self.audio_norm, AUDIO_NORMS),
            ("device", self.device, DEVICES),
        ]
        for key, value, allowed in checks:
            if value not in allowed:
                raise ConfigError(
                    f"Config {key}: {value!r} is not one of {', '.join(allowed)}; fix it in the "
                    "--config YAML or the flag."
                )
        for key in ("epochs", "branch_epochs", "batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"Config {key} must be a whole number >= 1, got {value!r}.")
        if not isinstance(self.folds, int) or self.folds < 0 or self.folds == 1:
            raise ConfigError(
                f"Config folds must be 0 (use the dataset's splits) or at least 2, got "
                f"{self.folds!r}."
            )
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ConfigError(f"Config lr must be a number > 0, got {self.lr!r}.")
        for key in ("model", "window", "crop"):
            if not isinstance(getattr(self, key), dict):
                raise ConfigError(
                    f"Config {key} must be a mapping of options, got {getattr(self, key)!r}."
                )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> TrainConfig:
        check_keys(data, where)
        return cls(**data)


def valid_keys() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def check_keys(data: dict[str, Any], where: str) -> None:
    """Refuse keys TrainConfig does not have, listing the valid ones."""
    unknown = sorted(set(data) - set(valid_keys()))
    if unknown:
        raise ConfigError(
            f"{where} has unknown key(s) {', '.join(unknown)}; valid keys are: "
            f"{', '.join(valid_keys())}."
        )


def recipe_defaults(recipe: str) -> dict[str, Any]:
    """The version-controlled defaults of ``recipe`` (training/configs/<recipe>.yaml)."""
    from eri.training.recipes import get_recipe

    get_recipe(recipe)  # unknown name: lists the valid ones
    text = resources.files("eri.training").joinpath("configs", f"{recipe}.yaml").read_text()
    data = _parse_yaml(text, f"configs/{recipe}.yaml")
    data["recipe"] = recipe
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A --config YAML file as a dict (one sentence naming the file when it cannot be used)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path} does not exist; pass a YAML file of training options.")
    return _parse_yaml(path.read_text(), str(path))


def _parse_yaml(text: str, where: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML ({exc}); fix the file.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of option: value, not {type(data).__name__}.")
    check_keys(data, where)
    return data


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``; nested dicts (model, window, crop) merge key-wise."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_config(
    *,
    recipe: str | None = None,
    arch: str | None = None,
    config_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Recipe defaults <- --config YAML <- flags (``overrides``: flags given, None = not given).

    The recipe is --recipe, else the YAML's ``recipe``, else the recipe of --arch, else
    :data:`DEFAULT_RECIPE`; each recipe trains the architecture of its name.
    """
    from eri.training.recipes import RECIPES

    user = read_yaml(config_path) if config_path else {}
    name = recipe or user.get("recipe")
    if name is None and arch is not None:
        matching = [r for r, cls in RECIPES.items() if cls.arch == arch]
        if not matching:
            raise ConfigError(
                f"No training recipe trains architecture {arch!r}; recipes exist for: "
                f"{', '.join(sorted({cls.arch for cls in RECIPES.values()}))}."
            )
        name = matching[0]
    name = name or DEFAULT_RECIPE
    data = merge(recipe_defaults(name), user)
    data["recipe"] = name
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    check_keys(flags, "the flags")
    data = merge(data, flags)
    config = TrainConfig.from_dict(data)
    if arch is not None and RECIPES[config.recipe].arch != arch:
        raise ConfigError(
            f"Recipe {config.recipe!r} trains architecture {RECIPES[config.recipe].arch!r}, "
            f"not --arch {arch!r}; drop --arch or choose the matching --recipe."
        )
    return config


def config_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys (dotted for nested ones) whose values differ, ignoring :data:`RESUMABLE_CHANGES`."""
    diff = []
    for key in sorted(set(saved) | set(current)):
        if key in RESUMABLE_CHANGES:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diff += [f"{key}.{k}" for k in config_diff(a, b)]
        elif a != b:
            diff.append(key)
    return diff


def write_yaml(config: TrainConfig, path: Path) -> Path:
    """Write the merged config (atomically: a temporary name, then os.replace)."""
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    os.replace(tmp, path)
    return path

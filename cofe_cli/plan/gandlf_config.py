"""Read a GaNDLF YAML config, tell what kind of GaNDLF file it is, and normalise a training config
so that GaNDLF 0.1.5's ConfigManager accepts it and OpenFL's GaNDLFTaskRunner can train with it.

Pure on purpose (stdlib + yaml only): `cofe init` runs this before anything imports torch, so a bad
config is refused in milliseconds. GaNDLF's own check lives in cofe_cli.engine.gandlf_validation.
"""

from __future__ import annotations

import ast
import copy
import difflib
import importlib.util
import math
import re
from pathlib import Path
from typing import Any

import yaml

from cofe_cli.errors import CofeError
from cofe_cli.plan.data import DataFacts, problem_type_of

# Keys of GANDLF/models/__init__.py's `global_models_dict` in gandlf==0.1.5, copied once so this
# module needs no torch. tests/integration/test_gandlf_samples_validate.py asserts equality with
# the installed GaNDLF, so an upgrade that changes the list fails a test instead of drifting.
SUPPORTED_ARCHITECTURES: frozenset[str] = frozenset({
    "brain_age", "deep_resunet", "deep_unet", "deepresunet", "deepunet",
    "densenet", "densenet121", "densenet169", "densenet201", "densenet264", "dynunet",
    "efficientnetb0", "efficientnetb1", "efficientnetb2", "efficientnetb3",
    "efficientnetb4", "efficientnetb5", "efficientnetb6", "efficientnetb7",
    "fcn", "imagenet_unet",
    "imagenet_vgg11", "imagenet_vgg11_bn", "imagenet_vgg13", "imagenet_vgg13_bn",
    "imagenet_vgg16", "imagenet_vgg16_bn", "imagenet_vgg19", "imagenet_vgg19_bn",
    "light_resunet", "light_resunet_multilayer", "light_unet", "light_unet_multilayer",
    "lightresunet", "lightresunet_multilayer", "lightunet", "lightunet_multilayer",
    "msdnet", "residualunet", "residualunet_multilayer",
    "resnet101", "resnet152", "resnet18", "resnet200", "resnet34", "resnet50",
    "resunet", "resunet_multilayer", "sdnet", "transunet", "uinc",
    "unet", "unet_multilayer", "unetr",
    "vgg", "vgg11", "vgg13", "vgg16", "vgg19",
})

# The `final_layer` Literal of GANDLF/configuration/model_config.py in gandlf==0.1.5 (same drift test).
SUPPORTED_FINAL_LAYERS: frozenset[str] = frozenset({
    "sigmoid", "softmax", "logsoftmax", "tanh", "identity", "logits", "regression", "None", "none",
})

SUPPORTED_MODALITIES = ("rad", "histo", "path")

# GaNDLF 0.1.5's ModelConfig reads the channel count from any of these names (pydantic AliasChoices).
CHANNEL_COUNT_ALIASES = ("num_channels", "n_channels", "channels", "model_channels")
CHANNEL_COUNT_KEY = "num_channels"
# ModelConfig's default. OpenFL's runner runs ConfigManager before it reads the CSV headers, so this
# default, not the data, decides the model's input channels when the config names none.
GANDLF_DEFAULT_CHANNEL_COUNT = 3

# DefaultParameters' queue defaults, needed to compare the two queue settings when one is unset.
GANDLF_DEFAULT_QUEUE_MAX_LENGTH = 100
GANDLF_DEFAULT_QUEUE_SAMPLES_PER_VOLUME = 10

GANDLF_DEFAULT_NESTED_TRAINING = {"testing": -5, "validation": -5}
# NestedTraining.testing carries `le=10` in GaNDLF 0.1.5.
NESTED_TRAINING_MAX_TESTING_FOLDS = 10

# Settings GaNDLF 0.1.5 gives a default (GANDLF/configuration/default_config.py, user_defined_config.py,
# model_config.py): name -> (the type older configs wrote as text, the default). A null or a "None"
# string there means "unset": GaNDLF before 0.1 read "none" strings as None (initialize_parameter) and
# then used its default, while 0.1.5 rejects both. `str` settings are only unset, never converted.
_UNSET = object()  # no default of its own: cofe fills it in from the rest of the config or the data
GANDLF_TOP_LEVEL_DEFAULTS: dict[str, tuple[type, Any]] = {
    "weighted_loss": (bool, False), "verbose": (bool, False), "q_verbose": (bool, False),
    "medcam_enabled": (bool, False), "save_training": (bool, False), "save_output": (bool, False),
    "in_memory": (bool, False), "pin_memory_dataloader": (bool, False), "scaling_factor": (int, 1),
    "q_max_length": (int, GANDLF_DEFAULT_QUEUE_MAX_LENGTH),
    "q_samples_per_volume": (int, GANDLF_DEFAULT_QUEUE_SAMPLES_PER_VOLUME), "q_num_workers": (int, 0),
    "num_epochs": (int, 100), "patience": (int, 100), "batch_size": (int, 1), "learning_rate": (float, 0.001),
    "clip_grad": (float, None), "track_memory_usage": (bool, False), "memory_save_mode": (bool, False),
    "print_rgb_label_warning": (bool, True), "determinism": (bool, False), "previous_parameters": (dict, None),
    "grid_aggregator_overlap": (str, "crop"), "clip_mode": (str, "norm"), "scheduler": (str, "triangle_modified"),
    "optimizer": (str, "adam"), "patch_sampler": (str, "uniform"),
    "inference_mechanism": (dict, {"grid_aggregator_overlap": "crop", "patch_overlap": 0}),
}
GANDLF_MODEL_DEFAULTS: dict[str, tuple[type, Any]] = {
    "dimension": (int, _UNSET), "base_filters": (int, 32), "amp": (bool, False), "save_at_every_epoch": (bool, False),
    "print_summary": (bool, True), "ignore_label_validation": (int, None), "type": (str, "torch"),
    "data_type": (str, "FP32"), **{alias: (int, _UNSET) for alias in CHANNEL_COUNT_ALIASES},
}
GANDLF_PATCH_SAMPLER_DEFAULTS: dict[str, tuple[type, Any]] = {"enable_padding": (bool, False), "biased_sampling": (bool, False)}
_UNSET_TEXTS = frozenset({"none", "null", "~"})
_BOOL_TEXTS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}

# What a config without `metrics` is scored with: GaNDLF's usual metric for the problem.
DEFAULT_METRICS = {"segmentation": "dice", "classification": "classification_accuracy", "regression": "mse"}
# Loss functions of GANDLF/losses/__init__.py that only one problem type uses.
_LOSS_PROBLEM_TYPES = {
    **dict.fromkeys(("dc", "dice", "dc_log", "dclog", "dice_log", "dicelog", "mcc", "mcc_log", "mcclog", "mathews",
                     "mathews_log", "dcce", "dcce_logits", "tversky", "dc_focal"), "segmentation"),
    **dict.fromkeys(("ce", "cel"), "classification"),
    **dict.fromkeys(("mse", "l1"), "regression"),
}
PROBLEM_TYPES = ("segmentation", "classification", "regression")
# Architectures whose constructor reads params["problem_type"]. GaNDLF sets it from the CSV header, but
# OpenFL builds the aggregator's initial model without data, where it is only in the config if written.
_ARCHITECTURES_READING_PROBLEM_TYPE = frozenset({"imagenet_unet"})

_DIMENSION_HINT = "set `dimension: 2` or `dimension: 3` under `model:`"

TRAINING_HINT = (
    "cofe init needs a GaNDLF training config with a `model:` section (architecture, dimension, "
    "final_layer, class_list), e.g. GaNDLF's samples/config_getting_started_segmentation_rad3d.yaml"
)

# Keys that only GaNDLF's non-training tools read; each marks a file kind by itself.
_ANONYMIZER_KEYS = frozenset({"delete_private_tags", "convert_to_nifti"})
# GANDLF/data/patch_miner/opm/utils.py parse_config; `patch_size` is left out as training has it too.
_PATCH_EXTRACTION_KEYS = frozenset({"num_patches", "read_type", "overlap_factor", "value_map", "save_patches"})
# Settings a training config gives as one value; `gandlf config-generator` strategies list alternatives.
_STRATEGY_MODEL_KEYS = ("architecture", "base_filters", "dimension", "final_layer", "norm_type")
_STRATEGY_TOP_LEVEL_KEYS = ("learning_rate", "batch_size", "num_epochs", "patience")

_KIND_HINTS = {
    "metrics-only": (
        "this file configures `gandlf generate-metrics` (it has `panoptica_config` or "
        "`problem_type: segmentation_brats`); to train its model, remove those keys"
    ),
    "generator-sample-strategy": (
        "this is a `gandlf config-generator` strategy listing alternatives; generate the configs "
        "from it with a base config first, then pass one of them"
    ),
    "openfl-plan": "this is an OpenFL plan; pass the GaNDLF config under task_runner.settings.gandlf_config instead",
}

# Preprocessing, augmentation and top-level keys that only make sense for RGB whole-slide images.
_HISTOLOGY_PREPROCESSING_KEYS = frozenset({"rgba2rgb", "rgbatorgb", "rgba_to_rgb", "stain_normalization"})
_HISTOLOGY_AUGMENTATION_KEYS = frozenset({"hed_transform"})
_HISTOLOGY_TOP_LEVEL_KEYS = frozenset({"slide_level", "stride_size"})

# '[*range(0,100,1)]' is documented in GaNDLF's config_all_options.yaml, but 0.1.5 reads class_list
# strings with ast.literal_eval, which cannot evaluate it.
_CLASS_RANGE = re.compile(
    r"^\[\s*\*\s*range\(\s*(-?\d+)\s*(?:,\s*(-?\d+)\s*)?(?:,\s*(-?\d+)\s*)?\)\s*\]$"
)


class _TolerantLoader(yaml.SafeLoader):
    """SafeLoader that reads any unknown tag (e.g. `!Panoptica_Evaluator`) as the plain value it tags.

    GaNDLF's metrics configs carry panoptica's custom tags; a plain SafeLoader refuses the whole file.
    Nothing is ever instantiated, so `!!python/object` stays as harmless as any other mapping.
    """


def _construct_untagged(loader: _TolerantLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_TolerantLoader.add_constructor(None, _construct_untagged)


def load_gandlf_yaml(path: Path) -> dict:
    """Read a GaNDLF YAML file into plain Python values; every problem becomes a CofeError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CofeError(f"GaNDLF config not found: {path}", hint="check the path passed to --gandlf-config") from None
    except IsADirectoryError:
        raise CofeError(f"GaNDLF config is a folder, not a file: {path}", hint="pass the YAML file itself") from None
    except PermissionError:
        raise CofeError(f"GaNDLF config is not readable: {path}", hint="check the file's permissions") from None
    except UnicodeDecodeError:
        raise CofeError(f"GaNDLF config is not UTF-8 text: {path}", hint="pass a YAML text file") from None
    try:
        cfg = yaml.load(text, Loader=_TolerantLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = error.problem or error.context or "invalid YAML"
        raise CofeError(
            f"GaNDLF config {path} is not valid YAML{where}: {problem}",
            hint="fix the YAML syntax there (indentation, brackets, quotes)",
        ) from None
    except yaml.YAMLError as error:
        raise CofeError(f"GaNDLF config {path} is not valid YAML: {error}", hint="fix the YAML syntax") from None
    if not isinstance(cfg, dict):
        found = "empty" if cfg is None else f"a {type(cfg).__name__}"
        raise CofeError(
            f"GaNDLF config {path} must be a YAML mapping at the top level, but it is {found}",
            hint="a GaNDLF config maps keys such as `model:` and `patch_size:` to values",
        )
    return cfg


def config_kind(cfg: dict) -> str:
    """Which GaNDLF tool the file is for: "training", or "metrics-only", "generator-sample-strategy",
    "anonymizer", "patch-extraction", "openfl-plan", "unrecognised"."""
    if "task_runner" in cfg and "aggregator" in cfg:
        return "openfl-plan"
    # Checked before `model`: GaNDLF's BraTS metrics samples also carry a full model section.
    if "panoptica_config" in cfg or cfg.get("problem_type") == "segmentation_brats":
        return "metrics-only"
    if "model" in cfg:
        return "generator-sample-strategy" if _lists_alternatives(cfg) else "training"
    if _ANONYMIZER_KEYS & cfg.keys():
        return "anonymizer"
    if _PATCH_EXTRACTION_KEYS & cfg.keys():
        return "patch-extraction"
    return "unrecognised"


def _lists_alternatives(cfg: dict) -> bool:
    model = cfg.get("model")
    if isinstance(model, dict) and any(isinstance(model.get(key), list) for key in _STRATEGY_MODEL_KEYS):
        return True
    if any(isinstance(cfg.get(key), list) for key in _STRATEGY_TOP_LEVEL_KEYS):
        return True
    patch_size = cfg.get("patch_size")
    return isinstance(patch_size, list) and any(isinstance(entry, list) for entry in patch_size)


def normalise_gandlf_config(cfg: dict, *, gandlf_version: str = "0.1.5", data: DataFacts | None = None) -> dict:
    """A new, normalised copy of a GaNDLF training config; `cfg` itself is never changed. `data`, what a
    site's CSV header says, fills in what the config leaves to the data (channel count, problem type)."""
    normalised, _notes = normalise_gandlf_config_with_notes(cfg, gandlf_version=gandlf_version, data=data)
    return normalised


def normalise_gandlf_config_with_notes(cfg: dict, *, gandlf_version: str = "0.1.5",
                                       data: DataFacts | None = None) -> tuple[dict, list[str]]:
    """Like normalise_gandlf_config, plus one line per change made, for telling the user what changed."""
    kind = config_kind(cfg)
    if kind != "training":
        extra = _KIND_HINTS.get(kind)
        hint = f"{TRAINING_HINT}; {extra}" if extra else TRAINING_HINT
        raise CofeError(f"{kind} config, not a training config", hint=hint)
    result = copy.deepcopy(cfg)
    notes: list[str] = []
    _normalise_differential_privacy(result, notes)
    model = result["model"]
    if not isinstance(model, dict):
        raise CofeError(
            f"`model` must be a mapping, not {type(model).__name__}",
            hint="write `model:` with keys such as architecture, dimension, final_layer, class_list",
        )
    _read_text_values(result, GANDLF_TOP_LEVEL_DEFAULTS, "", notes)
    _read_text_values(model, GANDLF_MODEL_DEFAULTS, "model.", notes)
    _move_legacy_keys(result, notes)
    if isinstance(result.get("patch_sampler"), dict):
        _read_text_values(result["patch_sampler"], GANDLF_PATCH_SAMPLER_DEFAULTS, "patch_sampler.", notes)
    _lowercase_choices(result, notes)
    _require_top_level_keys(result)
    _normalise_architecture(model, notes)
    _normalise_dimension(model, result.get("patch_size"), notes)
    _normalise_final_layer(model, notes)
    problem_type = _default_metrics(result, data, notes)
    _metrics_as_list(result, notes)
    _normalise_norm_type(model, notes)
    _normalise_channel_count(model, data, notes)
    _normalise_class_list(model, notes)
    _settle_problem_type(result, problem_type, notes)
    _pin_version(result, gandlf_version, notes)
    _normalise_modality(result, notes)
    _normalise_patch_size(result, model["dimension"], notes)
    _set_output_dir(result, notes)
    _fix_queue_length(result, notes)
    _normalise_nested_training(result, notes)
    _clear_parallel_compute_command(result, notes)
    _replace_null_sections(result, notes)
    return result, notes


# GaNDLF 0.1.5's DifferentialPrivacyConfig (GANDLF/configuration/differential_privacy_config.py):
# its keys and defaults. physical_batch_size has no default there (GaNDLF's own validator sets it to
# batch_size, whatever was given); `epsilon`, when given, replaces noise_multiplier by the multiplier
# that spends it over the planned rounds x epochs.
DP_DEFAULTS = {"noise_multiplier": 10.0, "max_grad_norm": 1.0, "accountant": "rdp", "secure_mode": False,
               "allow_opacus_model_fix": True, "delta": 1e-5}
DP_ACCOUNTANTS = ("rdp", "gdp", "prv")
_DP_OPTIONAL_KEYS = ("epsilon", "physical_batch_size", "max_physical_batch_size")
_DP_HINT = "see README, Differential privacy; nothing was written"


def _normalise_differential_privacy(cfg: dict, notes: list[str]) -> None:
    """The `differential_privacy` section with GaNDLF's defaults filled in and every value checked:
    cofe applies it at every site (engine/privacy.py), so a bad value is refused here, not at round 1."""
    if "differential_privacy" not in cfg:
        return
    privacy = cfg["differential_privacy"]
    if privacy is None or privacy is False:
        # GaNDLF 0.1.5 would read `false` as DP with its defaults; a config that says false means off.
        del cfg["differential_privacy"]
        notes.append(f"differential_privacy {privacy} -> removed (no differential privacy)")
        return
    if privacy is True:
        privacy = {}
        notes.append("differential_privacy true -> GaNDLF's defaults " + ", ".join(f"{k}={v}" for k, v in DP_DEFAULTS.items()))
    if not isinstance(privacy, dict):
        raise CofeError(f"differential_privacy must be a mapping or true, not {privacy!r}", hint=_DP_HINT)
    unknown = sorted(set(privacy) - set(DP_DEFAULTS) - set(_DP_OPTIONAL_KEYS))
    if unknown:
        raise CofeError(f"differential_privacy has no key {unknown[0]!r} (GaNDLF's are: "
                        f"{', '.join([*DP_DEFAULTS, *_DP_OPTIONAL_KEYS])})", hint=_DP_HINT)
    section = {**DP_DEFAULTS, **privacy}
    for key in ("noise_multiplier", "max_grad_norm", "delta", "epsilon"):
        if key in section:
            section[key] = _dp_number(key, section[key])
    if "epsilon" not in section and not section["noise_multiplier"] > 0:
        raise CofeError(f"differential_privacy noise_multiplier must be more than 0, got {section['noise_multiplier']:g} "
                        "(without noise there is no privacy)", hint=_DP_HINT)
    if not section["max_grad_norm"] > 0:
        raise CofeError(f"differential_privacy max_grad_norm (the per-sample clipping norm) must be more than 0, "
                        f"got {section['max_grad_norm']:g}", hint=_DP_HINT)
    if not 0 < section["delta"] < 1:
        raise CofeError(f"differential_privacy delta must be between 0 and 1 (exclusive), got {section['delta']:g}",
                        hint=f"{_DP_HINT}; delta is usually below 1/(training samples at a site), e.g. 1e-5")
    if "epsilon" in section and not section["epsilon"] > 0:
        raise CofeError(f"differential_privacy epsilon must be more than 0, got {section['epsilon']:g}", hint=_DP_HINT)
    if section["accountant"] not in DP_ACCOUNTANTS:
        raise CofeError(f"differential_privacy accountant {section['accountant']!r} is not one GaNDLF knows",
                        hint=f"choose one of: {', '.join(DP_ACCOUNTANTS)}")
    for key in ("secure_mode", "allow_opacus_model_fix"):
        if not isinstance(section[key], bool):
            raise CofeError(f"differential_privacy {key} must be true or false, not {section[key]!r}", hint=_DP_HINT)
    if section["secure_mode"] and importlib.util.find_spec("torchcsprng") is None:
        raise CofeError("differential_privacy secure_mode needs Opacus's secure random generator (torchcsprng), "
                        "which is not installed", hint="install torchcsprng at every site, or set secure_mode: false")
    section["physical_batch_size"] = cfg.get("batch_size", 1)  # what GaNDLF 0.1.5 sets it to (its default batch: 1)
    if section != privacy:
        notes.append("differential_privacy: GaNDLF's defaults filled in")
    cfg["differential_privacy"] = section


def _dp_number(key: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise CofeError(f"differential_privacy {key} must be a number, not {value!r}", hint=_DP_HINT)
    return number


def _read_text_values(section: dict, defaults: dict[str, tuple[type, Any]], prefix: str, notes: list[str]) -> None:
    """Unset values (null, "None") are dropped so that GaNDLF's default applies; numbers and booleans
    written as text become numbers and booleans, which cofe's own checks compare."""
    for key, (kind, default) in defaults.items():
        if key not in section:
            continue
        value = section[key]
        text = value.strip().lower() if isinstance(value, str) else None
        if value is None or text in _UNSET_TEXTS or (text == "" and kind is not str):
            del section[key]
            then = "" if default is _UNSET else f"; GaNDLF 0.1.5 then uses its default {default!r}"
            notes.append(f"{prefix}{key}: {value!r} dropped (older GaNDLF read it as unset{then})")
            continue
        if text is None or kind in (str, dict):
            continue
        converted = _number_or_bool(text, kind)
        if converted is not None:
            section[key] = converted
            notes.append(f"{prefix}{key} {value!r} -> {converted!r} (written as text)")


def _number_or_bool(text: str, kind: type) -> Any:
    """`text` read as `kind` (int, float or bool); None when it is not one (GaNDLF then names the problem)."""
    if kind is bool:
        return _BOOL_TEXTS.get(text)
    try:
        number = float(text)
    except ValueError:
        return None
    if kind is float:
        return number
    return int(number) if number.is_integer() else None


def _move_legacy_keys(cfg: dict, notes: list[str]) -> None:
    # GaNDLF before 0.1 copied `opt` into `optimizer`; 0.1.5 keeps it as an unknown key and trains with adam.
    if "opt" in cfg:
        legacy = cfg.pop("opt")
        if cfg.get("optimizer") in (None, "", {}):
            cfg["optimizer"] = legacy
            notes.append(f"opt {legacy!r} -> optimizer (the name GaNDLF 0.1.5 reads; it ignores `opt`)")
        else:
            notes.append(f"opt {legacy!r} dropped (optimizer {cfg['optimizer']!r} is set, and GaNDLF 0.1.5 ignores `opt`)")
    # FeTS-era configs (GaNDLF 0.0.14) padded with a top-level `enable_padding`; 0.1.5 reads
    # patch_sampler.enable_padding only.
    if "enable_padding" in cfg:
        padding = cfg_padding = cfg.pop("enable_padding")
        padding = _BOOL_TEXTS.get(padding.strip().lower()) if isinstance(padding, str) else padding
        if not isinstance(padding, bool):
            raise CofeError(f"enable_padding must be true or false, not {cfg_padding!r}",
                            hint="write `patch_sampler: {type: uniform, enable_padding: true}` (GaNDLF 0.1.5's place for it)")
        if not padding:
            notes.append("enable_padding: false dropped (GaNDLF 0.1.5 reads patch_sampler.enable_padding; false is its default)")
            return
        sampler = cfg.get("patch_sampler")
        sampler = dict(sampler) if isinstance(sampler, dict) else {"type": sampler or "uniform"}
        sampler["enable_padding"] = True
        cfg["patch_sampler"] = sampler
        notes.append(f"enable_padding: true -> patch_sampler {sampler} (where GaNDLF 0.1.5 reads it)")


def _lowercase_choices(cfg: dict, notes: list[str]) -> None:
    # GaNDLF before 0.1 lowercased these names when it used them; 0.1.5's Literal checks do not.
    for where, section, key in (("optimizer", cfg, "optimizer"), ("scheduler", cfg, "scheduler"),
                                ("model.type", cfg["model"], "type")):
        holder, field = (section[key], "type") if isinstance(section.get(key), dict) else (section, key)
        value = holder.get(field)
        if isinstance(value, str) and value != value.strip().lower():
            holder[field] = value.strip().lower()
            label = f"{where}.type" if holder is not section else where
            notes.append(f"{label} {value!r} -> {holder[field]!r} (GaNDLF's config check is case-sensitive)")


def _infer_problem_type(cfg: dict, data: DataFacts | None) -> tuple[str | None, str]:
    """The problem type and what told it: GaNDLF's own rule (final layer, metrics), then the data's
    columns (as GaNDLF decides at training), then a loss function only one problem type uses."""
    from_config = problem_type_of(cfg)
    if from_config is not None:
        return from_config, "the final layer and metrics"
    if data is not None and data.problem_type is not None:
        return data.problem_type, f"the columns of {data.source}"
    loss = cfg.get("loss_function")
    loss_name = next(iter(loss), None) if isinstance(loss, dict) else loss
    by_loss = _LOSS_PROBLEM_TYPES.get(str(loss_name).strip().lower())
    if by_loss is not None:
        return by_loss, f"loss_function {loss_name}"
    return None, ""


def _default_metrics(cfg: dict, data: DataFacts | None, notes: list[str]) -> str | None:
    """Choose the usual metric when the config names none; returns the problem type when it is known."""
    problem_type, told_by = _infer_problem_type(cfg, data)
    if cfg.get("metrics") not in (None, "", [], {}):
        return problem_type
    if problem_type is None:
        raise CofeError(
            "the GaNDLF config has no `metrics`, and neither its loss function nor the data tell whether it "
            "is a segmentation, classification or regression model",
            hint="add metrics, e.g. `metrics: [dice]` (segmentation) or `metrics: [classification_accuracy]`",
        )
    cfg["metrics"] = [DEFAULT_METRICS[problem_type]]
    notes.append(f"metrics not set: using {cfg['metrics']} ({problem_type}, from {told_by}); set `metrics:` to choose")
    return problem_type


def _settle_problem_type(cfg: dict, problem_type: str | None, notes: list[str]) -> None:
    # GaNDLF overwrites `problem_type` from each site's CSV header before training, so a written one only
    # reaches a model built without data: the aggregator's initial model.
    written = cfg.get("problem_type")
    given = written.strip().lower() if isinstance(written, str) else written
    if given is not None and given not in PROBLEM_TYPES:
        raise CofeError(f"unknown problem_type {written!r}", hint=f"use one of: {', '.join(PROBLEM_TYPES)}, or remove it")
    if given != written:
        cfg["problem_type"] = given
        notes.append(f"problem_type {written!r} -> {given!r} (GaNDLF compares it case-sensitively)")
    if given is not None and problem_type is not None and given != problem_type:
        cfg["problem_type"] = problem_type
        notes.append(f"problem_type {given!r} -> {problem_type!r} (what GaNDLF decides from the final layer, "
                     "metrics and data; it ignores the written one when training)")
        return
    if given is not None or cfg["model"]["architecture"] not in _ARCHITECTURES_READING_PROBLEM_TYPE:
        return
    if problem_type is None:
        raise CofeError(
            f"model {cfg['model']['architecture']} needs to know whether it segments or classifies, and the config "
            "does not tell (no segmentation metric, no classification final layer)",
            hint="add `problem_type: segmentation` or `problem_type: classification` to the GaNDLF config",
        )
    cfg["problem_type"] = problem_type
    notes.append(f"problem_type set to {problem_type!r} ({cfg['model']['architecture']} reads it when "
                 "the aggregator builds the initial model, where GaNDLF has no data to tell)")


def _require_top_level_keys(cfg: dict) -> None:
    # These have no GaNDLF default and no safe guess: they are modelling decisions.
    examples = {
        "patch_size": "patch_size: [64, 64, 64]",
        "loss_function": "loss_function: dc",
    }
    for key, example in examples.items():
        if cfg.get(key) in (None, "", [], {}):
            raise CofeError(f"the GaNDLF config has no `{key}`", hint=f"add it, e.g. `{example}`")


def _metrics_as_list(cfg: dict, notes: list[str]) -> None:
    # A bare string would be iterated letter by letter into metric names further down.
    if isinstance(cfg["metrics"], str):
        cfg["metrics"] = [cfg["metrics"]]
        notes.append(f"metrics {cfg['metrics'][0]!r} -> {cfg['metrics']} (GaNDLF expects a list)")
    metrics = cfg["metrics"]
    entries = metrics if isinstance(metrics, list) else [] if isinstance(metrics, dict) else [metrics]
    for entry in entries:
        if not (isinstance(entry, str) and entry.strip() or isinstance(entry, dict) and entry):
            raise CofeError(
                f"metrics must name GaNDLF metrics, but {metrics!r} holds {entry!r}",
                hint="e.g. `metrics: [dice]`, or `metrics: [accuracy, {f1: {average: macro}}]`",
            )


def _normalise_architecture(model: dict, notes: list[str]) -> None:
    architecture = model.get("architecture")
    if not isinstance(architecture, str) or not architecture.strip():
        raise CofeError(
            "the GaNDLF config has no `model.architecture`",
            hint=f"set one, e.g. {_examples_of(SUPPORTED_ARCHITECTURES)}",
        )
    # GaNDLF's get_model lowercases the name, but ConfigManager's Literal check does not.
    lowered = architecture.strip().lower()
    if lowered not in SUPPORTED_ARCHITECTURES:
        close = difflib.get_close_matches(lowered, SUPPORTED_ARCHITECTURES, n=3)
        suggestions = ", ".join(close) if close else _examples_of(SUPPORTED_ARCHITECTURES)
        raise CofeError(
            f"unknown GaNDLF architecture {architecture!r}",
            hint=f"GaNDLF 0.1.5 knows {len(SUPPORTED_ARCHITECTURES)} architectures, e.g. {suggestions}",
        )
    if lowered != architecture:
        notes.append(f"model.architecture {architecture!r} -> {lowered!r} (GaNDLF's config check is case-sensitive)")
        model["architecture"] = lowered


def _examples_of(names: frozenset[str]) -> str:
    preferred = [name for name in ("unet", "resunet", "densenet121", "vgg16", "fcn") if name in names]
    return ", ".join(preferred or sorted(names)[:5])


def _normalise_dimension(model: dict, patch_size: Any, notes: list[str]) -> None:
    dimension = model.get("dimension")
    if dimension is None:
        dimension = _dimension_from_patch_size(patch_size)
        if dimension is None:
            raise CofeError("the GaNDLF config has no `model.dimension`", hint=_DIMENSION_HINT)
        notes.append(f"model.dimension set to {dimension} from patch_size {patch_size} (GaNDLF requires it)")
    if isinstance(dimension, bool) or dimension not in (2, 3):
        raise CofeError(f"model.dimension must be 2 or 3, not {dimension!r}", hint=_DIMENSION_HINT)
    model["dimension"] = int(dimension)


def _dimension_from_patch_size(patch_size: Any) -> int | None:
    if not isinstance(patch_size, list):
        return None
    if len(patch_size) == 2:
        return 2
    if len(patch_size) == 3:
        # GaNDLF writes 2D patches as [x, y, 1].
        return 2 if patch_size[2] == 1 else 3
    return None


def _normalise_final_layer(model: dict, notes: list[str]) -> None:
    if "final_layer" not in model:
        raise CofeError(
            "the GaNDLF config has no `model.final_layer`",
            hint="set it under `model:`: sigmoid or softmax (segmentation/classification), none (regression)",
        )
    final_layer = model["final_layer"]
    if final_layer is None:
        # YAML null means "no final layer"; GaNDLF spells that "none" and rejects null.
        model["final_layer"] = "none"
        notes.append("model.final_layer null -> 'none' (GaNDLF rejects null)")
        return
    supported = {name.lower() for name in SUPPORTED_FINAL_LAYERS}
    lowered = str(final_layer).strip().lower()
    if lowered not in supported:
        raise CofeError(
            f"unknown GaNDLF final_layer {final_layer!r}",
            hint=f"use one of: {', '.join(sorted(supported))}",
        )
    # "None" is a valid GaNDLF spelling; every other option is lowercase only.
    if final_layer not in SUPPORTED_FINAL_LAYERS:
        notes.append(f"model.final_layer {final_layer!r} -> {lowered!r} (GaNDLF's config check is case-sensitive)")
        model["final_layer"] = lowered


def _normalise_norm_type(model: dict, notes: list[str]) -> None:
    if "norm_type" not in model:
        return
    norm_type = model["norm_type"]
    if norm_type is None:
        # Unset, GaNDLF uses "batch"; set to null, it refuses every non-VGG architecture.
        del model["norm_type"]
        notes.append("model.norm_type null dropped (GaNDLF then uses its default, batch)")
        return
    lowered = str(norm_type).strip().lower()
    if lowered not in ("batch", "instance", "none"):
        raise CofeError(f"unknown GaNDLF norm_type {norm_type!r}", hint="use batch, instance, or none (VGG only)")
    if lowered == "none" and "vgg" not in model["architecture"]:
        raise CofeError(
            f"norm_type none is only allowed for VGG architectures, not {model['architecture']}",
            hint="set `norm_type: batch` or `norm_type: instance` under `model:`",
        )
    if lowered != norm_type:
        notes.append(f"model.norm_type {norm_type!r} -> {lowered!r} (GaNDLF's config check is case-sensitive)")
        model["norm_type"] = lowered


def _normalise_channel_count(model: dict, data: DataFacts | None, notes: list[str]) -> None:
    given = {alias: model.pop(alias) for alias in CHANNEL_COUNT_ALIASES if alias in model}
    counts = {alias: _channel_count(alias, value) for alias, value in given.items() if value is not None}
    distinct = set(counts.values())
    if len(distinct) > 1:
        listed = ", ".join(f"{alias}: {count}" for alias, count in counts.items())
        raise CofeError(
            f"the model's channel count is given twice with different values ({listed})",
            hint=f"keep only `{CHANNEL_COUNT_KEY}` under `model:`",
        )
    if distinct:
        model[CHANNEL_COUNT_KEY] = distinct.pop()
        renamed = [alias for alias in counts if alias != CHANNEL_COUNT_KEY]
        if renamed:
            notes.append(
                f"model.{renamed[0]} -> model.{CHANNEL_COUNT_KEY} (the name GaNDLF documents and cofe checks data against)"
            )
    elif data is not None:
        # GaNDLF itself would use its default 3, whatever the CSV holds (ConfigManager sets it first).
        model[CHANNEL_COUNT_KEY] = data.channels
        notes.append(f"model.{CHANNEL_COUNT_KEY} not set: using {data.channels}, the Channel columns of {data.source}")
    else:
        model[CHANNEL_COUNT_KEY] = GANDLF_DEFAULT_CHANNEL_COUNT
        notes.append(
            f"model.{CHANNEL_COUNT_KEY} not set and no data given here: assumed GaNDLF's default "
            f"{GANDLF_DEFAULT_CHANNEL_COUNT}; if each subject has another number of images, set "
            f"`{CHANNEL_COUNT_KEY}: N` under `model:`"
        )


def _channel_count(alias: str, value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CofeError(
            f"model.{alias} must be a positive whole number, not {value!r}",
            hint=f"e.g. `{CHANNEL_COUNT_KEY}: 1` for one MRI sequence",
        )
    return value


def _normalise_class_list(model: dict, notes: list[str]) -> None:
    class_list = model.get("class_list")
    if not isinstance(class_list, str):
        return
    text = class_list.strip()
    if "&&" in text:
        # ConfigManager accepts '&&', but GaNDLF 0.1.5's one_hot() only understands '||' and
        # crashes on the first training batch.
        raise CofeError(
            f"class_list {class_list!r} combines labels with '&&', which GaNDLF 0.1.5 cannot train with",
            hint="combine labels with '||' only, e.g. '[1||2||4,1||4,4]'",
        )
    if "||" in text:
        # Exactly GaNDLF's own reading (validate_class_list), written out as a list.
        parsed: list = [entry.strip() for entry in text.replace("[", "").replace("]", "").split(",")]
    elif match := _CLASS_RANGE.match(text):
        start, stop, step = match.groups()
        bounds = (int(start),) if stop is None else (int(start), int(stop))
        if step is not None and int(step) == 0:
            raise CofeError(f"class_list {class_list!r} has a range step of 0", hint="use a non-zero step")
        parsed = list(range(*bounds, *(() if step is None else (int(step),))))
    else:
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            parsed = None
        if not isinstance(parsed, (list, tuple)):
            raise CofeError(
                f"class_list {class_list!r} is not a list GaNDLF can read",
                hint="write it as a YAML list, e.g. `class_list: [0, 1]`, or as '[1||2||4,1||4,4]'",
            )
        parsed = list(parsed)
    model["class_list"] = parsed
    notes.append(f"model.class_list {class_list!r} -> {parsed!r} (the list GaNDLF reads from that string)")


def _pin_version(cfg: dict, gandlf_version: str, notes: list[str]) -> None:
    # GaNDLF refuses any config whose pin excludes the running version; samples pin 0.1.6-dev.
    pinned = {"minimum": gandlf_version, "maximum": gandlf_version}
    previous = cfg.get("version")
    if previous != pinned:
        cfg["version"] = pinned
        notes.append(f"version pin {previous!r} -> {pinned!r} (GaNDLF refuses configs pinned to other versions)")


def _normalise_modality(cfg: dict, notes: list[str]) -> None:
    modality = cfg.get("modality")
    if modality is None:
        cfg["modality"] = "histo" if _looks_like_histology(cfg) else "rad"
        notes.append(f"modality not set: using {cfg['modality']!r} (GaNDLF requires it)")
        return
    lowered = str(modality).strip().lower()
    if lowered not in SUPPORTED_MODALITIES:
        raise CofeError(f"unknown GaNDLF modality {modality!r}", hint="use rad (radiology), histo or path (histopathology)")
    if lowered != modality:
        notes.append(f"modality {modality!r} -> {lowered!r} (GaNDLF's config check is case-sensitive)")
        cfg["modality"] = lowered


def _looks_like_histology(cfg: dict) -> bool:
    """2D and at least one setting that only whole-slide RGB images use. Channel count alone is not
    enough: GaNDLF's 2D RGB photo sample (DFU 2021) is radiology-style ("rad")."""
    if cfg["model"].get("dimension") != 2:
        return False
    preprocessing = cfg.get("data_preprocessing")
    augmentation = cfg.get("data_augmentation")
    return bool(
        _HISTOLOGY_TOP_LEVEL_KEYS & cfg.keys()
        or isinstance(preprocessing, dict) and _HISTOLOGY_PREPROCESSING_KEYS & preprocessing.keys()
        or isinstance(augmentation, dict) and _HISTOLOGY_AUGMENTATION_KEYS & augmentation.keys()
    )


def _normalise_patch_size(cfg: dict, dimension: int, notes: list[str]) -> None:
    patch_size = cfg["patch_size"]
    entries = patch_size if isinstance(patch_size, list) else [patch_size]
    sizes = [_patch_edge(entry, patch_size) for entry in entries]
    if len(sizes) == 1:
        # GaNDLF repeats a single edge over the model's dimensions; written out, the plan shows it.
        sizes = sizes * dimension
    if len(sizes) not in (2, 3):
        raise CofeError(
            f"patch_size {patch_size!r} must have 2 or 3 entries",
            hint="e.g. `patch_size: [64, 64, 64]` or `[128, 128]`",
        )
    if sizes != patch_size:
        cfg["patch_size"] = sizes
        notes.append(f"patch_size {patch_size!r} -> {sizes!r}")


def _patch_edge(entry: Any, patch_size: Any) -> int:
    if isinstance(entry, bool) or not isinstance(entry, (int, float)) or entry < 1 or entry != int(entry):
        raise CofeError(
            f"patch_size {patch_size!r} must hold positive whole numbers of voxels",
            hint="e.g. `patch_size: [64, 64, 64]` (patch-extraction sizes such as 1000m are not training patch sizes)",
        )
    return int(entry)


def _set_output_dir(cfg: dict, notes: list[str]) -> None:
    # GaNDLF's validate_network reads params["output_dir"]; without it every collaborator dies with
    # KeyError at its first validation. "." is the collaborator's workspace, as in OpenFL's template.
    if not cfg.get("output_dir"):
        cfg["output_dir"] = "."
        notes.append("output_dir set to '.' (GaNDLF's validation needs it; OpenFL's template uses '.')")


def _fix_queue_length(cfg: dict, notes: list[str]) -> None:
    # torchio 0.19.6's Queue crashes ("Stop argument for islice() must be None or an integer")
    # when it holds fewer patches than one volume yields.
    max_length = cfg.get("q_max_length", GANDLF_DEFAULT_QUEUE_MAX_LENGTH)
    samples_per_volume = cfg.get("q_samples_per_volume", GANDLF_DEFAULT_QUEUE_SAMPLES_PER_VOLUME)
    if isinstance(max_length, int) and isinstance(samples_per_volume, int) and max_length < samples_per_volume:
        cfg["q_max_length"] = samples_per_volume
        notes.append(f"q_max_length {max_length} -> {samples_per_volume} (torchio crashes below q_samples_per_volume)")


def _normalise_nested_training(cfg: dict, notes: list[str]) -> None:
    # GaNDLF requires the section, but OpenFL trains on each site's train.csv/valid.csv and never
    # splits folds; only values ConfigManager would refuse are replaced, by GaNDLF's defaults.
    nested = cfg.get("nested_training")
    if not isinstance(nested, dict):
        cfg["nested_training"] = dict(GANDLF_DEFAULT_NESTED_TRAINING)
        notes.append(
            f"nested_training {nested!r} -> {cfg['nested_training']} (GaNDLF requires it; OpenFL does not split folds)"
        )
        return
    for key, default in GANDLF_DEFAULT_NESTED_TRAINING.items():
        value = nested.get(key)
        usable = isinstance(value, int) and not isinstance(value, bool)
        if key == "testing" and usable:
            usable = value <= NESTED_TRAINING_MAX_TESTING_FOLDS
        if not usable:
            nested[key] = default
            notes.append(
                f"nested_training.{key} {value!r} -> {default} (GaNDLF refuses it; OpenFL does not split folds)"
            )


def _clear_parallel_compute_command(cfg: dict, notes: list[str]) -> None:
    # An HPC submit command (qsub ...) for GaNDLF's own multi-fold runs, with the author's paths;
    # a federation never uses it, and a null value fails GaNDLF's str check.
    if cfg.get("parallel_compute_command", "") != "":
        cfg["parallel_compute_command"] = ""
        notes.append("parallel_compute_command emptied (an HPC command for GaNDLF's own multi-fold runs)")


def _replace_null_sections(cfg: dict, notes: list[str]) -> None:
    # `data_augmentation:` with nothing after it is null; GaNDLF wants a mapping (and its augmentation
    # validator indexes into it).
    for key in ("data_preprocessing", "data_augmentation", "data_postprocessing"):
        if key in cfg and cfg[key] is None:
            cfg[key] = {}
            notes.append(f"{key}: null -> {{}} (GaNDLF expects a mapping)")

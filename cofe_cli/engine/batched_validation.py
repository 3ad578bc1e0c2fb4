"""Validation with patches run through the model in batches, with GaNDLF's results.

GaNDLF 0.1.5's `validate_network` walks every validation volume patch by patch with batch 1
(torchio's GridSampler, a DataLoader of batch size 1, `step()` per patch, which also computes a loss
and metrics per patch that it throws away, then a GridAggregator). `validate_batched` keeps its
semantics and only changes how the patches reach the model:

- the same subjects from the same validation loader, the same `params["subject_spacing"]`;
- the same GridSampler locations (`patch_size`, `inference_mechanism.patch_overlap`, no padding, as
  GaNDLF builds it) and the same GridAggregator (`inference_mechanism.grid_aggregator_overlap`),
  fed in the same order, so crop/average/hann aggregation is GaNDLF's own code;
- the same forward as GaNDLF's `step()` (2D depth squeezed and restored, the first output of models
  that return several), without autograd (the outputs are detached either way);
- the same whole-volume loss and metrics (`get_loss_and_metrics`, `print_and_format_metrics`), the
  same averaging over the loader's length, the same scheduler step and output folder.

Configurations this path does not reproduce go to GaNDLF's `validate_network` unchanged, see
`fallback_reason`: classification and regression (label sampler, value keys), OpenVINO models, mixed
precision, medcam attention maps, `save_output` (writes masks) and inference mode.

Settings (read by the task runner, engine/openfl_task_runner.py):
- `validation_batch`: patches per forward pass. Plan: `task_runner.settings.validation_batch`
  (an integer >= 1, `auto`, the default, or `gandlf`: GaNDLF's own validate_network, patch by patch,
  to compare against; set by `cofe init --validation-batch`, parsed by
  plan/builder.parse_validation_batch); the environment variable `COFE_VALIDATION_BATCH` overrides
  the plan. `auto` sizes the batch from the patch size, the model's base filters and the memory
  available (see `automatic_batch_size`), at most 32 and never more than a volume's patches. A batch
  that runs out of memory is halved and retried.
- `validation_cache_mb`: memory bound of the validation cache, in MiB (default 1024; 0 turns it off).
  Plan: `task_runner.settings.validation_cache_mb`; environment: `COFE_VALIDATION_CACHE_MB`.
  GaNDLF's validation loader is a torchio SubjectsDataset: every round it deep-copies each subject,
  reads its files again (unless `in_memory`) and re-applies the preprocessing (e.g. z-score), though
  the validation volumes never change. `ValidationCache` keeps the loaded, preprocessed subjects of
  one participant's process, in loader order, until the bound is reached; subjects beyond it are
  loaded as before. It is used only when every validation transform is deterministic.
"""

from __future__ import annotations

import os
import pathlib
from typing import Iterator

import numpy as np
import torch
import torchio

BATCH_ENV = "COFE_VALIDATION_BATCH"
CACHE_ENV = "COFE_VALIDATION_CACHE_MB"
DEFAULT_CACHE_MB = 1024
MAX_AUTOMATIC_BATCH = 32
# Peak activation bytes of one patch, per voxel and base filter, in float32: a U-Net keeps about a
# dozen feature maps of the input's size alive at its first level (measured on resunet: ~40 B per
# voxel at 8 base filters), so 12 floats per filter leaves margin.
_ACTIVATION_FLOATS_PER_VOXEL_AND_FILTER = 12
_MEMORY_SHARE = 0.25  # of the memory available, for one validation batch's activations


def fallback_reason(params: dict, mode: str = "validation") -> str | None:
    """Why `validate_batched` would not reproduce GaNDLF's validation for this config, or None."""
    if mode != "validation":
        return f"mode {mode!r}"
    if params.get("problem_type") != "segmentation" or "value_keys" in params:
        return f"problem type {params.get('problem_type')!r}"
    if params["model"].get("type", "torch") != "torch":
        return f"model type {params['model'].get('type')!r}"
    if params["model"].get("amp"):
        return "mixed precision"
    if params.get("medcam_enabled"):
        return "medcam attention maps"
    if params.get("save_output"):
        return "save_output"
    if metrics_side_effect(params) == "other":
        return "a loss or metric that changes the prediction in place"
    return None


def metrics_side_effect(params: dict) -> str | None:
    """What GaNDLF's loss and metrics do to the prediction they are given, found by running them once
    on a random patch: None, `binarise` or `other`.

    GaNDLF 0.1.5's jaccard, sensitivity, specificity and surface-distance metrics (hd95, hd100, nsd)
    threshold the prediction at 0.5 in place when it lives on the CPU (`.cpu().numpy()` shares its
    memory). `step()` computes them on every patch's output before aggregating it, so on the CPU
    GaNDLF aggregates binarised patches; the batched path binarises its patches the same way."""
    from GANDLF.compute.loss_and_metric import get_loss_and_metrics

    generator = torch.Generator().manual_seed(0)
    shape = [size for size in params["patch_size"]]
    classes = params["model"]["class_list"]
    prediction = torch.rand([1, len(classes), *shape], generator=generator).to(params["device"])
    choice = torch.randint(len(classes), [1, 1, *shape], generator=generator)
    target = torch.as_tensor(classes)[choice].to(params["device"])
    image = torch.rand([1, len(params.get("channel_keys") or [1]), *shape], generator=generator)
    original = prediction.clone()
    spacing = params.get("subject_spacing")
    params["subject_spacing"] = torch.ones(1, 3)
    try:
        get_loss_and_metrics(image.to(params["device"]), target, prediction, params)
    finally:
        params["subject_spacing"] = spacing
    if torch.equal(prediction, original):
        return None
    if torch.equal(prediction, _binarised(original)):
        return "binarise"
    return "other"


def _binarised(prediction: torch.Tensor) -> torch.Tensor:
    """GaNDLF's `_convert_tensor_to_int_label_array` thresholding (NaN stays NaN), out of place."""
    return torch.where(prediction < 0.5, 0.0, torch.where(prediction >= 0.5, 1.0, prediction)).to(prediction.dtype)


def setting(plan_value, env_name: str):
    """The environment's value when set (it overrides the plan), else the plan's."""
    return os.environ.get(env_name) or plan_value


def automatic_batch_size(params: dict, patches_per_volume: int) -> int:
    voxels = int(np.prod([size for size in params["patch_size"] if size]))
    filters = int(params["model"].get("base_filters") or 32)
    bytes_per_patch = voxels * filters * _ACTIVATION_FLOATS_PER_VOXEL_AND_FILTER * 4
    device = str(params.get("device", "cpu"))
    if device.startswith("cuda") and torch.cuda.is_available():
        available, _ = torch.cuda.mem_get_info(torch.device(device))
    else:
        import psutil

        available = psutil.virtual_memory().available
    fitting = int(available * _MEMORY_SHARE) // max(bytes_per_patch, 1)
    return max(1, min(MAX_AUTOMATIC_BATCH, patches_per_volume, fitting))


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def _forward(model: torch.nn.Module, image: torch.Tensor, params: dict) -> torch.Tensor:
    """GaNDLF's `step()` forward for a batch of patches, without its per-patch loss and metrics."""
    two_d = params["model"]["dimension"] == 2
    if two_d:
        image = image.squeeze(-1)
    output = model(image)
    if not isinstance(output, torch.Tensor):
        output = output[0]  # deep-supervision models: GaNDLF keeps the full-resolution output
    if two_d:
        output = output.unsqueeze(-1)
    return output


def _predict_volume(model, sampler: torchio.GridSampler, aggregator: torchio.GridAggregator,
                    channels: torch.Tensor, params: dict, batch_size: int,
                    binarise: bool) -> tuple[torch.Tensor, int]:
    """Feeds the sampler's patches, in its order, to the aggregator; returns the last patch (GaNDLF
    hands it to the volume's loss, where only sdnet reads it) and the batch size that fitted."""
    device = params["device"]
    locations = torch.as_tensor(np.asarray(sampler.locations))
    start, last_patch = 0, None
    while start < len(locations):
        chunk = locations[start:start + batch_size]
        image = torch.stack([channels[:, i0:i1, j0:j1, k0:k1] for i0, j0, k0, i1, j1, k1 in chunk.tolist()])
        image = image.float().to(device)
        try:
            with torch.inference_mode():
                output = _forward(model, image, params)
        except Exception as error:
            if batch_size == 1 or not _is_out_of_memory(error):
                raise
            batch_size //= 2
            continue
        if binarise:
            output = _binarised(output)
        aggregator.add_batch(output.detach().cpu(), chunk)
        last_patch = image[-1:]
        start += len(chunk)
    return last_patch, batch_size


def validate_batched(model: torch.nn.Module, subjects, scheduler, params: dict, epoch: int = 0,
                     batch_size: int | None = None, mode: str = "validation") -> tuple[float, dict]:
    """GaNDLF's `validate_network(model, subjects, scheduler, params, epoch, mode)` for segmentation,
    with `batch_size` patches per forward pass (None: `automatic_batch_size`)."""
    from GANDLF.compute.loss_and_metric import get_loss_and_metrics
    from GANDLF.utils import print_and_format_metrics

    if fallback_reason(params, mode) is not None:
        raise ValueError(f"validate_batched does not reproduce GaNDLF for {fallback_reason(params, mode)}")
    total_loss = 0.0
    total_metric = {metric: np.zeros(1) if "per_label" in metric else 0 for metric in params["metrics"]}
    # GaNDLF creates this folder on every validation (it writes there only with save_output).
    output_dir = params["output_dir"] if scheduler is None else os.path.join(params["output_dir"], "output_" + mode)
    pathlib.Path(output_dir, str(epoch)).mkdir(parents=True, exist_ok=True)
    model.eval()
    overlap = params["inference_mechanism"]
    label_ground_truth = None
    binarise = metrics_side_effect(params) == "binarise"  # fallback_reason ruled out "other"
    fitting_batch = batch_size or MAX_AUTOMATIC_BATCH  # lowered for good when a batch runs out of memory
    for subject in subjects:
        params["subject_spacing"] = subject.get("spacing")
        label_ground_truth = None
        if "label" not in subject or subject["label"] == ["NA"]:
            continue  # GaNDLF predicts such a volume only to save it, which save_output sends there
        label = torchio.LabelMap(path=subject["label"]["path"], tensor=subject["label"]["data"].squeeze(0),
                                 affine=subject["label"]["affine"].squeeze(0))
        label_ground_truth = label.data
        images = {key: torchio.ScalarImage(path=subject[key]["path"], tensor=subject[key]["data"].squeeze(0),
                                           affine=subject[key]["affine"].squeeze(0)) for key in params["channel_keys"]}
        sampler = torchio.inference.GridSampler(torchio.Subject(label=label, **images), params["patch_size"],
                                                patch_overlap=overlap["patch_overlap"])
        aggregator = torchio.inference.GridAggregator(sampler, overlap_mode=overlap["grid_aggregator_overlap"])
        channels = torch.cat([sampler.subject[key].data for key in params["channel_keys"]], dim=0)
        volume_batch = min(batch_size or automatic_batch_size(params, len(sampler)), fitting_batch)
        last_patch, used_batch = _predict_volume(model, sampler, aggregator, channels, params, volume_batch,
                                                 binarise)
        if used_batch < volume_batch:
            fitting_batch = used_batch
        prediction = aggregator.get_output_tensor().unsqueeze(0)
        if label_ground_truth.shape[0] == 3:  # RGB label: GaNDLF keeps the first channel
            label_ground_truth = label_ground_truth[0, ...].unsqueeze(0)
        loss, metrics = get_loss_and_metrics(last_patch, label_ground_truth.unsqueeze(0),
                                             prediction.to(torch.float32), params)
        total_loss += loss.cpu().item()
        for metric, value in metrics.items():
            total_metric[metric] = total_metric[metric] + value

    length = len(subjects)
    if label_ground_truth is not None:  # as GaNDLF: the last subject decides whether there are metrics
        average_loss = total_loss / length
        average_metric = print_and_format_metrics({}, total_metric, params["metrics"], mode, length)
    else:
        average_loss, average_metric = 0, {}
    step_scheduler(scheduler, params, average_loss)
    return average_loss, average_metric


def step_scheduler(scheduler, params: dict, validation_loss: float) -> None:
    """What GaNDLF does with the scheduler after every validation."""
    if scheduler is None:
        return
    if params["scheduler"]["type"] in ["reduce_on_plateau", "reduce-on-plateau", "plateau", "reduceonplateau"]:
        scheduler.step(validation_loss)
    else:
        scheduler.step()


def _deterministic(transform) -> bool:
    from torchio.transforms.augmentation import RandomTransform

    if transform is None:
        return True
    if isinstance(transform, RandomTransform):
        return False
    return all(_deterministic(child) for child in getattr(transform, "transforms", []))


def _nbytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, dict):
        return sum(_nbytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(item) for item in value)
    return 0


class ValidationCache:
    """The validation loader's subjects (loaded, preprocessed, collated), kept in this process up to
    `limit_bytes`; iterating yields them in the loader's order, reading only those not kept."""

    def __init__(self, loader, limit_bytes: int):
        self.loader = loader
        self.limit_bytes = limit_bytes
        self.kept: list = []
        self.kept_bytes = 0
        self.complete = False  # every subject is kept
        dataset = getattr(loader, "dataset", None)
        self.enabled = limit_bytes > 0 and _deterministic(getattr(dataset, "_transform", None))

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        if not self.enabled:
            yield from self.loader
            return
        yield from self.kept
        if self.complete:
            return
        if not self.kept:
            remaining = iter(self.loader)
        else:
            # Subjects past the bound: read them alone, from the dataset, as the loader would.
            remaining = (self.loader.collate_fn([self.loader.dataset[index]])
                         for index in range(len(self.kept), len(self.loader.dataset)))
        full = False
        for subject in remaining:
            if not full:
                size = _nbytes(subject)
                full = self.kept_bytes + size > self.limit_bytes
                if not full:
                    self.kept.append(subject)
                    self.kept_bytes += size
            yield subject
        self.complete = not full

"""Figures for issue 12 (validation speed), measured in one run on demo-like volumes:

- per-volume validation time with GaNDLF's `validate_network` (patch by patch, batch 1), with cofe's
  batched validation (first call, which fills the validation cache, and a later round served from
  it), next to the model's own batched forward time over the same patches (the goal: batched
  validation within 1.5x of it);
- the same batched figures at 1 and 2 torch threads (part 3: which split validation prefers);
- the metrics of both paths, which must agree within 1e-4.

    python benchmarks/validation_speed.py [--shape 128 128 64] [--volumes 2] [--batch auto] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 128, 64])
    parser.add_argument("--volumes", type=int, default=2)
    parser.add_argument("--batch", default="auto", help="validation_batch: patches per forward pass, or auto")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="cofe-validation-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        run(work, tuple(args.shape), args.volumes, args.batch)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def run(work: Path, shape: tuple[int, int, int], volumes: int, batch: str) -> None:
    from cofe_cli.demo.synthetic import demo_gandlf_config, make_site_dataset

    site = make_site_dataset(work / "site", site_index=1, n_train=1, n_valid=volumes, shape=shape, seed=0)
    os.chdir(work)  # GaNDLF writes its output folders under output_dir "."

    import numpy as np
    import torch
    import torchio
    from GANDLF.compute.forward_pass import validate_network

    from cofe_cli.engine import batched_validation
    from cofe_cli.engine.openfl_dataloader import GaNDLFDataLoader
    from cofe_cli.engine.openfl_task_runner import GaNDLFTaskRunner

    config = demo_gandlf_config()
    patch = config["patch_size"]
    runner = GaNDLFTaskRunner(gandlf_config=config, device="cpu", instance_norm_statistics="input",
                              validation_batch=batch,
                              data_loader=GaNDLFDataLoader(data_path=str(site), feature_shape=patch))
    runner.set_optimizer_treatment("RESET")  # as OpenFL's collaborator does from the plan
    weights = runner.get_tensor_dict(with_opt_vars=False)
    model, params = runner.model, runner.params

    def timed(function):
        start = time.perf_counter()
        result = function()
        return (time.perf_counter() - start) / volumes, result

    def batched_round(round_num):
        output, _ = runner.validate("site", round_num, dict(weights), apply="global")  # it pops the tensors
        return {key.tensor_name: float(value) for key, value in output.items()}

    threads = torch.get_num_threads()
    print(f"volumes {volumes} x {shape}, patch {patch}, {config['model']['architecture']} "
          f"base_filters {config['model']['base_filters']}, torch threads {threads}, cores {os.cpu_count()}")
    print(f"load: {Path('/proc/loadavg').read_text().strip()}")

    filling, first = timed(lambda: batched_round(0))  # reads the volumes and fills the cache
    cached, second = timed(lambda: batched_round(1))
    gandlf_time, (loss, metrics) = timed(lambda: validate_network(model, runner.data_loader.val_dataloader, None, params))
    reference = {"valid_loss": float(loss), **{f"valid_{name}": float(value) for name, value in metrics.items()}}

    # The model alone over the same patches, in the same batches, from tensors already in memory.
    subject = next(iter(runner.validation_subjects))
    image = subject[params["channel_keys"][0]]["data"].squeeze(0)
    sampler = torchio.inference.GridSampler(torchio.Subject(image=torchio.ScalarImage(tensor=image)), patch,
                                            patch_overlap=params["inference_mechanism"]["patch_overlap"])
    size = runner.validation_batch or batched_validation.automatic_batch_size(params, len(sampler))
    patches = [image[:, i0:i1, j0:j1, k0:k1] for i0, j0, k0, i1, j1, k1 in np.asarray(sampler.locations).tolist()]
    batches = [torch.stack(patches[start:start + size]).float() for start in range(0, len(patches), size)]

    def forward_all():
        with torch.inference_mode():
            for chunk in batches:
                model(chunk)

    forward_all()  # warm-up
    start = time.perf_counter()
    forward_all()
    forward = time.perf_counter() - start

    print(f"patches per volume {len(patches)}, validation batch {size}")
    print(f"per volume: GaNDLF validate_network {gandlf_time:.2f} s | batched {cached:.2f} s "
          f"(first round, reading volumes into the cache: {filling:.2f} s) | model forward alone {forward:.2f} s")
    print(f"batched / forward {cached / forward:.2f}x (goal <= 1.5x); GaNDLF / batched {gandlf_time / cached:.1f}x")
    for name in sorted(reference):
        print(f"  {name}: GaNDLF {reference[name]:.6f}  batched {first[name]:.6f} / {second[name]:.6f}  "
              f"|diff| {abs(reference[name] - second[name]):.2e}")

    for count in sorted({1, 2} - {threads}) + [threads]:
        torch.set_num_threads(count)
        seconds, _ = timed(lambda: batched_round(2))
        start = time.perf_counter()
        forward_all()
        print(f"torch threads {count}: batched validation {seconds:.2f} s per volume, "
              f"forward alone {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()

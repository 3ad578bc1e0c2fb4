"""Part 3 of issue 12: do training and batched validation prefer different torch thread counts?

One participant's training step (GaNDLF's model, one batch of the config's patches, forward, loss,
backward, optimizer step) and its batched validation (engine/batched_validation.py, served from the
validation cache) are timed at 1 and at 2 torch threads while a second process keeps the CPU busy
with the same model at the same thread count, as the other site of a 2-site federation does on a
2-core machine (Participant.thread_budget gives each 1 thread there).

    python benchmarks/validation_threads.py [--shape 128 128 64] [--volumes 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def _runner(site: Path):
    from cofe_cli.demo.synthetic import demo_gandlf_config
    from cofe_cli.engine.openfl_dataloader import GaNDLFDataLoader
    from cofe_cli.engine.openfl_task_runner import GaNDLFTaskRunner

    config = demo_gandlf_config()
    runner = GaNDLFTaskRunner(gandlf_config=config, device="cpu", instance_norm_statistics="input",
                              data_loader=GaNDLFDataLoader(data_path=str(site), feature_shape=config["patch_size"]))
    runner.set_optimizer_treatment("RESET")  # as OpenFL's collaborator does from the plan
    return runner


def _patch(runner):
    import torch

    return torch.rand(runner.params["batch_size"], 1, *runner.params["patch_size"])


def _busy(site: Path, threads: int, stop) -> None:
    """The other site: the same model training at `threads` threads until told to stop."""
    import torch

    torch.set_num_threads(threads)
    os.chdir(site.parent)
    runner = _runner(site)
    patch = _patch(runner)
    while not stop.is_set():
        _train_step(runner.model, runner.optimizer, patch)


def _train_step(model, optimizer, patch) -> None:
    model.train()
    optimizer.zero_grad()
    output = model(patch)
    output = output if hasattr(output, "mean") else output[0]
    output.mean().backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 128, 64])
    parser.add_argument("--volumes", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cofe-validation-threads-"))
    try:
        run(work, tuple(args.shape), args.volumes, args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, shape: tuple[int, int, int], volumes: int, repeats: int) -> dict[int, tuple[float, float]]:
    from cofe_cli.demo.synthetic import make_site_dataset

    site = make_site_dataset(work / "site", site_index=1, n_train=1, n_valid=volumes, shape=shape, seed=0)
    os.chdir(work)  # GaNDLF writes its output folders under output_dir "."
    import torch

    runner = _runner(site)
    config = runner.params
    weights = runner.get_tensor_dict(with_opt_vars=False)
    model, optimizer, patch = runner.model, runner.optimizer, _patch(runner)
    runner.validate("site", 0, dict(weights), apply="global")  # fills the validation cache

    def median_seconds(function) -> float:
        function()  # warm-up at this thread count
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    print(f"cores {os.cpu_count()}, {volumes} validation volume(s) of {shape}, patch {config['patch_size']}, "
          f"batch_size {config['batch_size']}, another process training the same model at the same thread count")
    results = {}
    context = multiprocessing.get_context("spawn")
    for threads in (1, 2):
        stop = context.Event()
        other = context.Process(target=_busy, args=(site, threads, stop), daemon=True)
        other.start()
        time.sleep(15)  # the other process imports torch and GaNDLF before it is busy
        torch.set_num_threads(threads)
        train = median_seconds(lambda: _train_step(model, optimizer, patch))
        validation = median_seconds(lambda: runner.validate("site", 1, dict(weights), apply="global")) / volumes
        stop.set()
        other.join(timeout=30)
        results[threads] = (train, validation)
        print(f"torch threads {threads} (and the other process {threads}): training step {train:.3f} s, "
              f"batched validation {validation:.2f} s per volume")
    print(f"2 threads / 1 thread: training {results[2][0] / results[1][0]:.2f}x, "
          f"validation {results[2][1] / results[1][1]:.2f}x (below 1: 2 threads is faster)")
    return results


if __name__ == "__main__":
    main()

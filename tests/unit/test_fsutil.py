"""The one staging primitive (`staging_folder`, `swap_in`, and `staged_dir` built on them): what is built
beside its target replaces it by renames only, and a failure leaves the target as it was and nothing beside it.
A single file (`staged_file`) is likewise whole or the old one, never half of the new one."""

from __future__ import annotations

from pathlib import Path

import pytest

from cofe_cli.fsutil import staged_dir, staged_file, staging_folder, swap_in


def listing(root: Path) -> dict[str, str | None]:
    return {str(p.relative_to(root)): p.read_text() if p.is_file() else None for p in sorted(root.rglob("*"))}


def test_staged_dir_replaces_the_folder_whole(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with staged_dir(target) as stage:
        assert stage.parent != tmp_path and stage.is_dir() and not any(stage.iterdir())
        (stage / "new.txt").write_text("new")
    assert listing(tmp_path) == {"out": None, "out/new.txt": "new"}


def test_a_failing_staged_dir_keeps_the_folder_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(OSError), staged_dir(target) as stage:
        (stage / "half.txt").write_text("half")
        raise OSError(28, "No space left on device")
    assert listing(tmp_path) == {"out": None, "out/old.txt": "old"}


def test_a_failing_stage_removes_the_folders_made_for_it_and_only_those(tmp_path: Path) -> None:
    with pytest.raises(ValueError), staging_folder(tmp_path / "new" / "site", prefix=".stage-"):
        raise ValueError("refused")
    assert listing(tmp_path) == {}
    (tmp_path / "kept").mkdir()
    with pytest.raises(ValueError), staging_folder(tmp_path / "kept", prefix=".stage-"):
        raise ValueError("refused")
    assert listing(tmp_path) == {"kept": None}


def test_swap_in_puts_folders_and_files_in_place_and_the_old_ones_go_with_the_stage(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "plans").mkdir(parents=True)
    (site / "plans" / "plan.yaml").write_text("old plan")
    (site / "kit.json").write_text("old kit")
    (site / "ca").mkdir()
    with staging_folder(site, prefix=".stage-") as stage:
        (stage / "plans").mkdir()
        (stage / "plans" / "plan.yaml").write_text("new plan")
        (stage / "kit.json").write_text("new kit")
        (stage / "workspace").mkdir()
        swap_in(stage / "plans", site / "plans", stage)
        swap_in(stage / "kit.json", site / "kit.json", stage)
        swap_in(stage / "workspace", site / "workspaces" / "a", stage)  # its parent is made
    assert listing(site) == {"ca": None, "kit.json": "new kit", "plans": None, "plans/plan.yaml": "new plan",
                             "workspaces": None, "workspaces/a": None}


def test_staged_file_replaces_the_target_only_once_written_whole(tmp_path):
    target = tmp_path / "save" / "last.pbuf"
    target.parent.mkdir()
    target.write_bytes(b"round 1")
    with pytest.raises(KeyboardInterrupt):
        with staged_file(target) as partial:
            partial.write_bytes(b"round")  # the writer dies half-way
            raise KeyboardInterrupt
    assert target.read_bytes() == b"round 1"
    with staged_file(target) as partial:
        assert partial.parent == target.parent and not partial.exists()
        # a writer that wrote nothing (OpenFL skips a model it cannot assemble)
    assert target.read_bytes() == b"round 1"
    with staged_file(target) as partial:
        partial.write_bytes(b"round 2")
        assert target.read_bytes() == b"round 1"
    assert target.read_bytes() == b"round 2"
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.pbuf"]

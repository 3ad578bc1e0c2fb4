"""Writes that leave a whole file or the old one, never half of the new one."""

from __future__ import annotations

import pytest

from cofe_cli.fsutil import staged_file


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

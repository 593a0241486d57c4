"""python -m parcourse install-horovod: the two-line C++17 patch and the pinned release
(the full build runs in `make`, which calls the same function)."""

import hashlib

import pytest

from parcourse import horovod_install as hi


def test_the_patch_turns_both_cmakelists_to_cxx17(tmp_path):
    for relative in hi.PATCHED:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("project(x)\nset(CMAKE_CXX_STANDARD 14)\n")
    hi.patch(tmp_path)
    for relative in hi.PATCHED:
        assert (tmp_path / relative).read_text() == "project(x)\nset(CMAKE_CXX_STANDARD 17)\n"


def test_a_source_without_the_expected_line_is_refused(tmp_path):
    for relative in hi.PATCHED:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("set(CMAKE_CXX_STANDARD 17)\n")
    with pytest.raises(hi.InstallError) as refused:
        hi.patch(tmp_path)
    assert str(refused.value) == f"unexpected {tmp_path / 'CMakeLists.txt'}: no CMAKE_CXX_STANDARD 14"


def test_only_the_pinned_release_passes(tmp_path):
    release = tmp_path / "horovod-0.28.1.tar.gz"
    release.write_bytes(b"the release")
    assert hi.sha256_problem(release, hashlib.sha256(b"the release").hexdigest()) is None
    assert hi.sha256_problem(release, hi.SHA256) == (
        f"error: horovod-0.28.1.tar.gz has SHA-256 {hashlib.sha256(b'the release').hexdigest()}, "
        f"not the pinned {hi.SHA256}: the download is not the release this build pins; "
        f"nothing was installed")

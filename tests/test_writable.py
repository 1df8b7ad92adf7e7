"""Where a CLI will write is checked before any work: the messages for a file, a path under
a file and a folder without write permission. Permission is what os.access says, which
root always passes, so a read-only folder is simulated here by denying write access to it
(the CLI runs of tests/test_one_line_errors.py cover it for real when not run as root)."""

import os

import pytest

from errors import UserError
from training import writable


@pytest.fixture
def read_only(monkeypatch):
    """Folders the process may not write, as os.access reports them to a normal user."""
    denied: set[str] = set()
    real = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and os.path.abspath(path) in denied:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(writable.os, "access", access)
    return denied


def test_a_new_workdir_in_a_writable_folder_passes(tmp_path):
    assert writable.check_folder(tmp_path / "a" / "b", "--workdir") == str(tmp_path / "a" / "b")


def test_a_file_or_a_path_under_a_file_is_named(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match=r"--workdir .*/f is a file, not a folder"):
        writable.check_folder(tmp_path / "f", "--workdir")
    with pytest.raises(UserError, match=r"--workdir .*/f/run lies under .*/f, which is a file"):
        writable.check_folder(tmp_path / "f" / "run", "--workdir")
    with pytest.raises(UserError, match=r"--out .*/f/s.npz lies under .*/f, which is a file"):
        writable.check_file(tmp_path / "f" / "s.npz", "--out")


def test_no_write_permission_is_refused_for_new_and_existing_folders(tmp_path, read_only):
    read_only.add(str(tmp_path))
    with pytest.raises(UserError, match=rf"--workdir {tmp_path}/new cannot be created: no "
                       rf"write permission in {tmp_path}$"):
        writable.check_folder(tmp_path / "new", "--workdir")
    with pytest.raises(UserError, match=rf"--workdir {tmp_path} is not writable"):
        writable.check_folder(tmp_path, "--workdir")
    with pytest.raises(UserError, match=rf"the folder of --out {tmp_path} is not writable"):
        writable.check_file(tmp_path / "s.npz", "--out")

"""The notebook series as files: valid nbformat with cell ids, outputs stripped."""

from __future__ import annotations

import warnings

import nbformat
import pytest

from medharm_nb import config


@pytest.mark.parametrize("name", config.SERIES)
def test_each_notebook_is_valid_with_cell_ids_and_no_outputs(name):
    path = config.NOTEBOOK_DIR / f"{name}.ipynb"
    with warnings.catch_warnings():
        # nbformat's MissingIDFieldWarning (and any other) would print on every run.
        warnings.simplefilter("error")
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    ids = [cell.id for cell in nb.cells]
    assert len(set(ids)) == len(ids)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), name


def test_the_notebooks_command_copies_the_series_and_keeps_what_is_there(tmp_path):
    from typer.testing import CliRunner

    from medharm_nb.cli import app

    out = tmp_path / "mine"
    first = CliRunner().invoke(app, ["notebooks", str(out)])
    assert first.exit_code == 0, first.output
    assert sorted(p.stem for p in out.iterdir()) == sorted(config.SERIES)
    assert (out / "03_judge.ipynb").read_bytes() == (
        config.NOTEBOOK_DIR / "03_judge.ipynb").read_bytes()
    again = CliRunner().invoke(app, ["notebooks", str(out)])
    assert again.exit_code == 1 and "pass --overwrite" in again.output


REPO = config.PACKAGE_DIR.parent
BUILD_INPUTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "notebooks",
                "medharm_nb")


@pytest.mark.slow
def test_an_installed_wheel_ships_the_notebooks_and_runs_them(tmp_path):
    """Build a wheel as a user would get it (not editable), install it into a folder of
    its own, and use it from outside the repository."""
    import os
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"  # a clean copy: the build writes build/ and *.egg-info beside it
    src.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns(
                "__pycache__", ".ipynb_checkpoints"))
        else:
            shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, timeout=120)
    [wheel] = (tmp_path / "dist").glob("medharm_nb-*.whl")
    shipped = sorted(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".ipynb"))
    assert shipped == [f"medharm_nb/notebooks/{nb}.ipynb" for nb in sorted(config.SERIES)]
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, timeout=120)

    # Outside the repository, with only the installed package on the path.
    env = {**os.environ, "PYTHONPATH": str(site)}
    def run(*args):
        return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)

    where = run(sys.executable, "-c", "from medharm_nb import config, runner; "
                "print(config.__file__); print(config.NOTEBOOK_DIR); "
                "print(runner.notebook_parameters(config.NOTEBOOK_DIR / '02_generate.ipynb'))")
    assert where.returncode == 0, where.stderr
    module, folder, params = where.stdout.splitlines()
    assert module.startswith(str(site)) and folder == str(site / "medharm_nb" / "notebooks")
    assert "first_queries" in params
    cli = site / "bin" / "medharm-nb"
    helped = run(str(cli), "run", "--help")
    assert helped.returncode == 0 and "--only" in helped.stdout, helped.stderr
    copied = run(str(cli), "notebooks", str(tmp_path / "mine"))
    assert copied.returncode == 0, copied.stderr
    assert len(list((tmp_path / "mine").glob("*.ipynb"))) == len(config.SERIES)

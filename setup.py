"""Build hook: ship the notebook series inside the package.

The repository's ``notebooks/`` is the one copy people edit and ``make lab`` opens; a
wheel copies it into ``medharm_nb/notebooks/`` (package data), where an installed
``medharm-nb run`` finds it (``medharm_nb.config.NOTEBOOK_DIR``). Everything else about the
package is in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"


class BuildWithNotebooks(build_py):
    """build_py, plus notebooks/*.ipynb into the built package's notebooks/ folder."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install runs the repository's notebooks/ in place
        target = Path(self.build_lib) / "medharm_nb" / "notebooks"
        target.mkdir(parents=True, exist_ok=True)
        for notebook in sorted(NOTEBOOKS.glob("*.ipynb")):
            self.copy_file(str(notebook), str(target / notebook.name))


setup(cmdclass={"build_py": BuildWithNotebooks})

"""Build hook (everything else is in pyproject.toml): a wheel carries the stage notebooks.

The notebooks live in notebooks/ (where JupyterLab opens them, Colab links to them and git keeps
them clean); a wheel copies them into the package as platypus_utils/notebooks/, so that an installed,
non-editable package runs `platypus run` (layout.stage_notebook_dir looks there when the package is
not in a source tree). An editable install reads notebooks/ in place. MANIFEST.in puts them in the sdist.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCE = Path(__file__).resolve().parent / "notebooks"
PACKAGED = Path("platypus_utils") / "notebooks"  # where layout.stage_notebook_dir looks in an installed package


class BuildWithNotebooks(build_py):
    """build_py, then notebooks/NN_*.ipynb copied to <build>/platypus_utils/notebooks/."""

    def run(self):
        super().run()
        if self.editable_mode:  # pip install -e: the runner finds notebooks/ beside the package
            return
        notebooks = sorted(SOURCE.glob("[0-9][0-9]_*.ipynb"))
        if not notebooks:
            raise SystemExit(f"no stage notebooks in {SOURCE}: the wheel would not run `platypus run`")
        target = Path(self.build_lib) / PACKAGED
        self.mkpath(str(target))
        for notebook in notebooks:
            self.copy_file(str(notebook), str(target / notebook.name))


setup(cmdclass={"build_py": BuildWithNotebooks})

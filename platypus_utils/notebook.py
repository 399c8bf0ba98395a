"""What the stage notebooks share: one parameter channel, the kernel, prerequisites, recorded values.

Every notebook's `parameters` cell holds `profile_path`, `params` (dotted-key overrides) and `force`; the
runner injects `stage_parameters(...)`, and `start_stage` applies `params` as `platypus run --set` would.
`record(name, value)` stores a JSON value in the cell's output under RECORD_MIME; `read_records` reads them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import pandas as pd
from IPython.display import display
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

from .artifacts import portable_params, read_manifest
from .config import STAGE_SECTIONS, STAGES, Profile, ProfileError, load_profile, project_root_for
from .hub import apply_hub_mode

log = logging.getLogger("platypus")
KERNEL = "platypus"  # the kernel `make install` registers
FALLBACK_KERNEL = "python3"
# headless and inline: executed notebooks keep their figures (MPLBACKEND=Agg would drop them)
KERNEL_ENV = {"MPLBACKEND": "module://matplotlib_inline.backend_inline"}
RECORD_MIME = "application/vnd.platypus.record+json"
_STARTED: dict[str, float] = {}  # stage -> perf_counter() when start_stage ran in this kernel


class StageNotRun(RuntimeError):
    """An earlier stage's artifacts are missing; the message says which stage to run and how."""

    def _render_traceback_(self):  # IPython shows this instead of a traceback
        return [f"{type(self).__name__}: {self}"]


def stage_parameters(profile: Profile, stage: str, overrides: dict | None = None, force: bool = False) -> dict:
    """The parameters the runner injects into a stage notebook: profile_path, params, force."""
    section = STAGE_SECTIONS[stage]
    params = {f"{section}.{key}": value for key, value in profile.stage_params(stage).items()}
    for key, value in (overrides or {}).items():
        if key != section and not key.startswith(section + "."):
            params[key] = value
    return {"profile_path": profile.source_file, "params": params, "force": bool(force)}


def start_stage(profile_path: str, stage: str, params: dict | None = None, force: bool = False) -> Profile:
    """Set up logging and load the profile with the notebook's `params` (dotted keys) applied (ProfileError)."""
    if stage not in STAGE_SECTIONS:
        raise ProfileError(f"unknown stage '{stage}': choose from {', '.join(STAGES)}")
    if not isinstance(params, (dict, type(None))):
        raise ProfileError(
            f"{profile_path}: params must be a dict of dotted keys, e.g. "
            f"{{'{STAGE_SECTIONS[stage]}.<key>': value}}; got {type(params).__name__}"
        )
    if not isinstance(force, bool):
        raise ProfileError(f"{profile_path}: force must be True or False, got {force!r}")
    fmt = "%(asctime)s %(levelname)s %(message)s"
    logging.basicConfig(level=logging.WARNING, format=fmt, datefmt="%H:%M:%S", stream=sys.stdout, force=True)
    log.setLevel(logging.INFO)
    profile = load_profile(profile_path, params or {})
    _STARTED[stage] = time.perf_counter()
    apply_hub_mode(profile)
    forced = " (force)" if force else ""
    log.info("profile %s, stage %s, artifacts in %s%s", profile.name, stage, profile.run_dir(stage), forced)
    return profile


def stage_timings(stage: str) -> dict:
    """{"notebook_s": seconds since start_stage(stage)} for the manifest's timings ({} before it); under papermill
    the compute time up to the save step, in JupyterLab also the time spent reading between cells."""
    started = _STARTED.get(stage)
    return {} if started is None else {"notebook_s": round(time.perf_counter() - started, 3)}


def parameters_table(profile: Profile, stage: str) -> pd.DataFrame:
    return pd.DataFrame(sorted(profile.stage_params(stage).items()), columns=["parameter", "value"])


def profile_command(profile: Profile, stage: str) -> str:
    """The command that runs `stage` for this profile, e.g. `platypus run params/demo.yaml --only 01`."""
    path = Path(profile.source_file or f"params/{profile.name}.yaml")
    root = project_root_for(path)
    try:
        shown = path.resolve().relative_to(root)
    except ValueError:
        shown = path
    return f"platypus run {shown} --only {stage.split('_', 1)[0]}"


def require_stage(profile: Profile, stage: str) -> Path:
    """The run directory of an earlier `stage`; StageNotRun (saying what to run) when it has not run."""
    if stage not in STAGE_SECTIONS:
        raise ProfileError(f"unknown stage '{stage}': choose from {', '.join(STAGES)}")
    run_dir = profile.run_dir(stage)
    manifest = read_manifest(run_dir)
    if not manifest or manifest.get("status") != "ok":
        raise StageNotRun(
            f"stage {stage} has not run for profile '{profile.name}' (no finished run in "
            f"{run_dir}): run `{profile_command(profile, stage)}` first"
        )
    if manifest.get("params") != portable_params(profile.fingerprint_params(stage), run_dir):
        log.warning(
            "stage %s ran with other parameters than the profile's now; `%s` brings it up to date",
            stage,
            profile_command(profile, stage),
        )
    return run_dir


def kernel_name() -> str:
    """ "platypus" when that kernel is registered and runs this interpreter, else "python3"."""
    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        return FALLBACK_KERNEL
    exe = spec.argv[0] if spec.argv else ""
    # same bin folder, symlinks not followed (every venv's python resolves to the same system binary)
    same = bool(exe) and os.path.dirname(os.path.abspath(exe)) == os.path.dirname(os.path.abspath(sys.executable))
    if not same:
        log.warning("kernel %r runs %s, not %s: using %r", KERNEL, exe, sys.executable, FALLBACK_KERNEL)
    return KERNEL if same else FALLBACK_KERNEL


def _builtin(value):
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"record: {type(value).__name__} is not JSON serialisable")


def record(name: str, value) -> None:
    """Store `value` (JSON-serialisable) under `name` in this cell's output, for tests to read."""
    payload = {"name": name, "value": json.loads(json.dumps(value, default=_builtin))}
    display({RECORD_MIME: payload}, raw=True, metadata={RECORD_MIME: {"platypus_record": name}})


def read_records(notebook: str | Path) -> dict:
    """{name: value} of every record() in an executed notebook (the last one wins)."""
    nb = json.loads(Path(notebook).read_text(encoding="utf-8"))  # not nbformat: its import costs ~5 s
    out = {}
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []):
            payload = output.get("data", {}).get(RECORD_MIME)
            if payload is not None:
                out[payload["name"]] = payload["value"]
    return out

"""Running ``trainctl`` as a user does: the installed console script in a subprocess, with its own state folder."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRAINCTL = shutil.which("trainctl", path=str(Path(sys.executable).parent)) or "trainctl"
COMMAND_TIMEOUT_S = 240


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def trainctl_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of one test's trainctl calls: its own state folder, history and HOME."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("KUBE", "RAY_BACKEND"))}
    env.update(
        {
            "TRAINCTL_HOME": str(home / "state"),
            "TRAINING_HISTORY_URL": f"sqlite:///{home / 'history.db'}",
            "HOME": str(home / "home"),
            "RAY_AUTH_MODE": "disabled",
        }
    )
    (home / "home").mkdir(parents=True, exist_ok=True)
    env.update(extra)
    return env


def run_trainctl(env: dict[str, str], *args: str, timeout_s: float = COMMAND_TIMEOUT_S) -> Result:
    """Run ``trainctl ARGS`` to its end and capture its output."""
    completed = subprocess.run(
        [TRAINCTL, *args], env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    return Result(completed.returncode, completed.stdout, completed.stderr)

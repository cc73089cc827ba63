"""Search spaces as objects: a `Param` (a distribution, maybe conditional) and a
`SearchSpace` that samples them define-by-run for Optuna, and where the shipped space
files live (search_spaces/ at the top of the repository, installed next to pipelines/ by
the wheel). Reading and checking a file is space_file.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gan.config import RunConfig, make_config

if TYPE_CHECKING:
    import optuna

# The shipped spaces sit next to the `pipelines` package: search_spaces/ beside pipelines/
# in a checkout (and an editable install), and in site-packages where the wheel puts it
# (pyproject.toml). One rule for both, and it never picks up a user's own search_spaces/
# folder in the working directory, so `--space quick` means the same file everywhere.
SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"


@dataclass(frozen=True)
class Param:
    """One searched parameter: a distribution, optionally alive only under `when`."""

    name: str
    kind: str  # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: int | None = None
    choices: tuple[Any, ...] = ()
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def sample(self, trial: optuna.Trial) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.name, float(self._low), float(self._high), log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self._low), int(self._high), step=self.step or 1, log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))

    @property
    def _low(self) -> float | int:
        assert self.low is not None, f"{self.name}: a {self.kind} parameter has a range"
        return self.low

    @property
    def _high(self) -> float | int:
        assert self.high is not None, f"{self.name}: a {self.kind} parameter has a range"
        return self.high

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """The same distribution as an Optuna object (to rebuild a study from results)."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "float":
            return FloatDistribution(float(self._low), float(self._high), log=self.log)
        if self.kind == "int":
            return IntDistribution(int(self._low), int(self._high), step=self.step or 1, log=self.log)
        return CategoricalDistribution(list(self.choices))

    def active(self, values: dict[str, Any]) -> bool:
        return all(values.get(parent) in allowed for parent, allowed in self.when.items())


@dataclass(frozen=True)
class SearchSpace:
    """A validated space: fixed values plus parameters in sampling order (parents first)."""

    path: str
    fixed: dict[str, Any]
    params: tuple[Param, ...]
    sweep: dict[str, int]
    description: str = ""

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Define-by-run: sample the parameters whose condition holds, parents first.
        Returns the trial's values (fixed ones included); OptunaSearch merges them into
        the Tune config next to the suggestions it captured."""
        values: dict[str, Any] = {}
        for p in self.params:
            if p.active(values):
                values[p.name] = p.sample(trial)
        return {**self.fixed, **values}

    def config(self, sampled: dict[str, Any]) -> RunConfig:
        """The RunConfig of one trial: defaults, fixed values, then the sampled values."""
        return make_config({**self.fixed, **sampled})

    def distributions(self) -> dict[str, Any]:
        return {p.name: p.distribution() for p in self.params}

    def max_value(self, name: str) -> Any:
        """The largest value `name` can take in this space (its default if not searched)."""
        for p in self.params:
            if p.name == name:
                return max(p.choices) if p.kind == "categorical" else p.high
        return self.fixed.get(name, getattr(RunConfig, name))


def resolve_path(name: str | Path) -> Path:
    """A path as given (a user's own file), else a bare name of a shipped space ('quick',
    'default', ...). `search_spaces/NAME.yaml`, the path the README and MLproject write,
    is the shipped file when no such file is here: it works from an installed wheel too."""
    p = Path(name)
    if p.exists():
        return p
    if len(p.parts) == 2 and p.parts[0] == SPACES_DIR.name and (SPACES_DIR / p.name).is_file():
        return SPACES_DIR / p.name
    if p.suffix or len(p.parts) > 1:
        return p
    return SPACES_DIR / f"{name}.yaml"

"""Policy files: the defaults of engine.policy overridden by TOML, validated with errors that say what to fix.

A policy file has two kinds of table, both optional:

    [thresholds]                  # the guide's named thresholds (SafetyMonitor.set_threshold)
    max_weight_value = 200

    [rules.baseline_departure]    # one rule: its parameters, whether it is on, its actions
    high = 20
    enabled = true
    actions = { HIGH = "alert", CRITICAL = "rollback" }

The engine applies `policy.toml` in the run directory, then the file given with
`--policy`, each over the result of the one before. Imports no torch.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Mapping

from engine.policy import RULES, THRESHOLDS, Action, Policy, Severity, validate_threshold

RUN_DIR_POLICY = "policy.toml"
_RULE_KEYS = ("enabled", "actions")


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file, the key and the accepted ones."""


def _known(names) -> str:
    return ", ".join(sorted(names))


def _rule(policy_params: dict, actions: dict, enabled: dict, origins: dict, name: str, table: Any,
          where: str) -> None:
    if not isinstance(table, dict):
        raise PolicyError(f"{where}: [rules.{name}] must be a table, got {table!r}")
    spec = RULES[name]
    for key, value in table.items():
        if key == "enabled":
            if not isinstance(value, bool):
                raise PolicyError(f"{where}: rules.{name}.enabled must be true or false, got {value!r}")
            enabled[name] = value
            origins[f"rules.{name}.enabled"] = where
        elif key == "actions":
            actions[name] = dict(actions[name])
            changed = _actions(name, value, where)
            actions[name].update(changed)
            origins.update({f"rules.{name}.actions.{level}": where for level in changed})
        elif key in spec.params:
            try:
                policy_params[name][key] = _param(spec.params[key], value)
            except ValueError as exc:
                raise PolicyError(f"{where}: rules.{name}.{key}: {exc}") from None
            origins[f"rules.{name}.{key}"] = where
        else:
            raise PolicyError(f"{where}: unknown key rules.{name}.{key}; rule {name!r} accepts: "
                              f"{_known([*spec.params, *_RULE_KEYS])}")


def _param(spec, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number ({spec.meaning}), got {value!r}")
    number = float(value)
    if not number >= spec.low or (spec.high is not None and number > spec.high):
        bounds = f">= {spec.low}" if spec.high is None else f"between {spec.low} and {spec.high}"
        raise ValueError(f"must be {bounds} ({spec.meaning}), got {value!r}")
    if spec.integer:
        if not number.is_integer():
            raise ValueError(f"must be a whole number ({spec.meaning}), got {value!r}")
        return int(number)
    return number


def _actions(rule: str, table: Any, where: str) -> dict[str, Action]:
    if not isinstance(table, dict):
        raise PolicyError(f"{where}: rules.{rule}.actions must be a table like "
                          f'{{ HIGH = "alert", CRITICAL = "rollback" }}, got {table!r}')
    out = {}
    for severity, action in table.items():
        try:
            level = Severity.parse(severity).name
        except ValueError:
            raise PolicyError(f"{where}: rules.{rule}.actions: unknown severity {severity!r}; "
                              f"use one of {_known(s.name for s in Severity)}") from None
        try:
            out[level] = Action(str(action).strip().lower())
        except ValueError:
            raise PolicyError(f"{where}: rules.{rule}.actions.{severity}: unknown action {action!r}; "
                              f"use one of {_known(a.value for a in Action)}") from None
    return out


def apply_policy(base: Policy, data: Mapping[str, Any], where: str = "policy") -> Policy:
    """`base` with the overrides in `data` (a parsed policy file) applied; PolicyError on any bad key or value."""
    thresholds = dict(base.thresholds)
    params = {name: dict(values) for name, values in base.params.items()}
    actions = {name: dict(values) for name, values in base.actions.items()}
    enabled = dict(base.enabled)
    origins = dict(base.origins)
    for section, body in data.items():
        if section == "thresholds":
            if not isinstance(body, dict):
                raise PolicyError(f"{where}: [thresholds] must be a table, got {body!r}")
            for name, value in body.items():
                if name not in THRESHOLDS:
                    raise PolicyError(f"{where}: unknown key thresholds.{name}; known thresholds: {_known(THRESHOLDS)}")
                try:
                    thresholds[name] = validate_threshold(name, value)
                except ValueError as exc:
                    raise PolicyError(f"{where}: thresholds.{name}: {exc}") from None
                origins[f"thresholds.{name}"] = where
        elif section == "rules":
            if not isinstance(body, dict):
                raise PolicyError(f"{where}: [rules] must hold one table per rule, got {body!r}")
            for name, table in body.items():
                if name not in RULES:
                    raise PolicyError(f"{where}: unknown rule rules.{name}; known rules: {_known(RULES)}")
                _rule(params, actions, enabled, origins, name, table, where)
        else:
            raise PolicyError(f"{where}: unknown section [{section}]; a policy file has [thresholds] and [rules.NAME]")
    return Policy(thresholds=thresholds, params=params, actions=actions, enabled=enabled,
                  sources=(*base.sources, where), origins=origins)


def load_policy_file(path: str | Path, base: Policy | None = None) -> Policy:
    """The policy in the TOML file at `path`, over `base` (the defaults when None)."""
    file = Path(path).expanduser()
    try:
        with open(file, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise PolicyError(f"policy file not found: {file}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{file}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise PolicyError(f"{file}: cannot be read: {exc}") from None
    return apply_policy(base or Policy.default(), data, str(file))


def load_run_policy(run_dir: str | Path | None, policy_file: str | Path | None = None) -> Policy:
    """The defaults, then `policy.toml` in the run directory if present, then `policy_file` if given."""
    policy = Policy.default()
    if run_dir is not None and (Path(run_dir) / RUN_DIR_POLICY).is_file():
        policy = load_policy_file(Path(run_dir) / RUN_DIR_POLICY, policy)
    if policy_file:
        policy = load_policy_file(policy_file, policy)
    return policy

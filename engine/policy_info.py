"""The active policy as a PolicyInfo event: every rule and value, and where each value came from.

The console's policy screen shows it; the console never loads a policy itself,
since the active one is the engine's (possibly in another process). Imports no torch.
"""

from __future__ import annotations

from pathlib import Path

from engine.events import PolicyInfo, PolicyRule, PolicySetting
from engine.policy import RULES, THRESHOLDS, Policy, Severity
from engine.policy_file import RUN_DIR_POLICY

DEFAULT = "default"


def source_label(source: str, run_dir: Path | None) -> str:
    """'run dir' for the run directory's policy.toml, '--policy' for a file given on the command line."""
    path = Path(source)
    if run_dir is not None and path.name == RUN_DIR_POLICY and path.parent.resolve() == Path(run_dir).resolve():
        return "run dir"
    return "--policy"


def policy_info(policy: Policy, run_dir: Path | None = None) -> PolicyInfo:
    def origin(key: str) -> str:
        where = policy.origins.get(key)
        return DEFAULT if where is None else source_label(where, run_dir)

    settings = [PolicySetting(name, f"{policy.thresholds[name]:g}", origin(f"thresholds.{name}"), spec.meaning)
                for name, spec in THRESHOLDS.items()]
    rules = []
    for name, enabled, params, actions, meaning in policy.describe():
        rule = RULES[name]
        keys = [f"rules.{name}.enabled"]
        on = "on" if enabled else "off"
        settings.append(PolicySetting(f"{name}.enabled", on, origin(keys[0]), f"whether {name} is judged"))
        for param, spec in rule.params.items():
            keys.append(f"rules.{name}.{param}")
            settings.append(PolicySetting(f"{name}.{param}", f"{policy.params[name][param]:g}",
                                          origin(keys[-1]), spec.meaning))
        for severity in sorted(Severity, reverse=True):
            key = f"rules.{name}.actions.{severity.name}"
            if severity.name in policy.actions.get(name, {}) or key in policy.origins:
                keys.append(key)
                settings.append(PolicySetting(f"{name}.actions.{severity.name}",
                                              policy.action_for(name, severity).value,
                                              origin(key), f"what a {severity.name} of {name} does"))
        changed = sorted({origin(k) for k in keys} - {DEFAULT})
        rules.append(PolicyRule(name, enabled, params, actions, meaning, ", ".join(changed) or DEFAULT))
    sources = tuple(f"{source_label(s, run_dir)}: {s}" for s in policy.sources)
    return PolicyInfo(rules=tuple(rules), settings=tuple(settings), sources=sources)

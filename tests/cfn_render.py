"""A CloudFormation template's resource, rendered as CloudFormation renders it: for what the
local endpoint's CloudFormation does not create (AWS::SQS::QueuePolicy), so that its policy
is still judged on the template as deployed, not on a copy written in a test.

The intrinsic functions the template uses: Ref, Fn::Sub (a string or [string, names]),
Fn::GetAtt, Fn::If, Fn::Equals, Fn::Not. The template is read by cfn-lint's decoder (the
short forms ``!Sub`` and so on become the long ones)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

NO_VALUE = object()


def load(path: Path) -> dict[str, Any]:
    from cfnlint.decode import cfn_yaml

    return dict(cfn_yaml.loads(path.read_text()))


def render(template: dict[str, Any], logical_id: str, names: dict[str, str], attributes: dict[str, str]) -> dict[str, Any]:
    """The resource's Properties with every function resolved. ``names``: parameter values and
    pseudo parameters (``AWS::AccountId`` ...) and what Ref of a resource gives; ``attributes``:
    ``"<logical id>.<attribute>"`` as Fn::GetAtt gives them."""
    parameters = {name: spec.get("Default") for name, spec in template.get("Parameters", {}).items()}
    values = {**{k: v for k, v in parameters.items() if v is not None}, **names}
    conditions: dict[str, bool] = {}

    def condition(name: str) -> bool:
        if name not in conditions:
            conditions[name] = bool(resolve(template["Conditions"][name]))
        return conditions[name]

    def resolve(node: Any) -> Any:
        if isinstance(node, list):
            return [r for r in (resolve(item) for item in node) if r is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                return NO_VALUE if arg == "AWS::NoValue" else values[arg]
            if key == "Fn::GetAtt":
                return attributes[".".join(arg) if isinstance(arg, list) else arg]
            if key == "Fn::Sub":
                text, local = (arg, {}) if isinstance(arg, str) else (arg[0], {k: resolve(v) for k, v in arg[1].items()})
                known = {**attributes, **values, **local}
                return re.sub(r"\$\{([^}!]+)\}", lambda m: str(known[m.group(1)]), text)  # an unknown name: KeyError
            if key == "Fn::If":
                return resolve(arg[1] if condition(arg[0]) else arg[2])
            if key == "Fn::Equals":
                return str(resolve(arg[0])) == str(resolve(arg[1]))
            if key == "Fn::Not":
                return not resolve(arg[0])
            if key == "Condition":
                return condition(arg)
        return {k: r for k, r in ((k, resolve(v)) for k, v in node.items()) if r is not NO_VALUE}

    resource = template["Resources"][logical_id]
    if "Condition" in resource and not condition(resource["Condition"]):
        raise LookupError(f"{logical_id} is not created with these parameters (condition {resource['Condition']})")
    return resolve(dict(resource["Properties"]))

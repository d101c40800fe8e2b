"""Reading the CloudFormation templates of infra/aws/ in tests (issue 15).

YAML's short forms (``!Ref``, ``!Sub``, ``!GetAtt`` ...) become their long JSON forms, so a
test sees the template as CloudFormation does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

INFRA = Path(__file__).resolve().parents[1] / "infra" / "aws"
STACK = INFRA / "livemigrate.yaml"


class _Loader(yaml.SafeLoader):
    pass


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_Loader.add_multi_constructor("!", _intrinsic)


def load(path: Path = STACK) -> dict[str, Any]:
    """The template as a dict (long forms of the intrinsic functions)."""
    data: dict[str, Any] = yaml.load(path.read_text(), Loader=_Loader)
    return data


def statements(template: dict[str, Any], role: str) -> list[dict[str, Any]]:
    """Every statement of the inline policies of ``role``."""
    props = template["Resources"][role]["Properties"]
    return [s for p in props.get("Policies", []) for s in p["PolicyDocument"]["Statement"]]

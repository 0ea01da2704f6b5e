"""The KEDA ``ScaledObject`` examples in deploy/keda/ hold to KEDA's CRD, and scale on metrics the
API really serves.

The schema below is a subset of KEDA's ``ScaledObject`` CRD written here by hand, from
kedacore/keda ``config/crd/bases/keda.sh_scaledobjects.yaml`` (its ``openAPIV3Schema``: the
types, ``required: [scaleTargetRef, triggers]``, ``scaleTargetRef.required: [name]``,
``triggers[].required: [type, metadata]``, ``metadata`` a map of strings) and from KEDA's
"ScaledObject specification" page (keda.sh/docs/latest/reference/scaledobject-spec: the later
fields ``initialCooldownPeriod``, ``idleReplicaCount``, ``fallback``, ``envSourceContainerName``,
``metricType``, ``useCachedMetrics``) and its Prometheus scaler page (``serverAddress``, ``query``
and ``threshold`` required, ``activationThreshold`` optional). Unlike the CRD it refuses unknown
fields, so that a misspelt one fails here rather than being ignored by a cluster.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import ROOT
from worker.observability.scaling import EndpointSignals, scaling_families

EXAMPLES = sorted((ROOT / "deploy" / "keda").glob("*.yaml"))

INT32: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
STRING_MAP: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}
SCALED_OBJECT: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "annotations": STRING_MAP,
                "labels": STRING_MAP,
            },
            "additionalProperties": False,
        },
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": INT32,
                "cooldownPeriod": INT32,
                "initialCooldownPeriod": INT32,
                "idleReplicaCount": INT32,
                "minReplicaCount": INT32,
                "maxReplicaCount": INT32,
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "properties": {"failureThreshold": INT32, "replicas": INT32},
                },
                "advanced": {"type": "object"},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": STRING_MAP,
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}},
                            },
                        },
                    },
                },
            },
        },
    },
}
PROMETHEUS_METADATA: dict[str, Any] = {
    "type": "object",
    "required": ["serverAddress", "query", "threshold"],
    "additionalProperties": False,
    "properties": {
        "serverAddress": {"type": "string", "pattern": "^https?://"},
        "query": {"type": "string"},
        "threshold": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
        "activationThreshold": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
    },
}


def _served_metric_names() -> set[str]:
    signal = EndpointSignals("vllm", 1, 1.0, 0, 1, 1.0, pod_state="ready")
    return {family.name for family in scaling_families([signal])}


def test_there_are_the_two_examples() -> None:
    assert [path.name for path in EXAMPLES] == ["genqueue-workers.yaml", "vllm.yaml"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_an_example_holds_to_kedas_scaledobject_schema(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    jsonschema.validate(document, SCALED_OBJECT)
    spec = document["spec"]
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
    for trigger in spec["triggers"]:
        assert trigger["type"] == "prometheus"
        jsonschema.validate(trigger["metadata"], PROMETHEUS_METADATA)
        named = set(re.findall(r"\bgenqueue_[a-z_]+", trigger["metadata"]["query"]))
        assert named, trigger
        assert named <= _served_metric_names()  # the API's /metrics serves each of them


def test_the_schema_refuses_what_a_cluster_would() -> None:
    document = yaml.safe_load(EXAMPLES[0].read_text())
    del document["spec"]["scaleTargetRef"]
    with pytest.raises(jsonschema.ValidationError, match="'scaleTargetRef' is a required"):
        jsonschema.validate(document, SCALED_OBJECT)
    document = yaml.safe_load(EXAMPLES[0].read_text())
    document["spec"]["triggers"][0]["metadata"]["threshold"] = 500  # not a string
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'string'"):
        jsonschema.validate(document, SCALED_OBJECT)


def test_the_vllm_example_scales_on_the_endpoints_oldest_queued_age() -> None:
    document = yaml.safe_load((ROOT / "deploy" / "keda" / "vllm.yaml").read_text())
    (trigger,) = document["spec"]["triggers"]
    query = trigger["metadata"]["query"]
    assert query == 'max(genqueue_endpoint_oldest_queued_age_seconds{endpoint="vllm"})'

"""schemathesis against the app in-process (ASGI): every check, positive and negative data, on
the open and the token configuration, seeded and bounded. Any 5xx, undocumented status or
content type, response not matching its schema, accepted invalid input or refused valid input
fails the test.

(schemathesis' own pytest plugin does not run under pytest 9, so each operation's strategy is
driven with hypothesis directly; the checks are schemathesis' own.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.modes import GenerationMode

import leader
from leader.serve import ServeSettings, create_app

TOKEN = "schemathesis-token-0123456789"
# schemathesis' ASGI client names itself "testserver"; the Host check is tested elsewhere
ALLOWED = ("testserver",)
OPERATIONS = [
    ("POST", "/v1/recommend"),
    ("POST", "/v1/recommend/batch"),
    ("GET", "/v1/health"),
    ("GET", "/v1/model"),
    ("GET", "/v1/vocab"),
    ("GET", "/cds-services"),
    ("POST", "/cds-services/{service_id}"),
    ("POST", "/cds-services/{service_id}/feedback"),
]
EXAMPLES = 40


@pytest.fixture(scope="module")
def apis(bundles):
    rec = leader.load(bundles["ddi"])
    auth = SchemathesisConfig.from_dict({"auth": {"openapi": {"bearer": {"bearer": TOKEN}}}})
    return {
        "open": schemathesis.openapi.from_asgi(
            "/openapi.json", create_app(rec, ServeSettings(allowed_hosts=ALLOWED))
        ),
        "token": schemathesis.openapi.from_asgi(
            "/openapi.json",
            create_app(rec, ServeSettings(token=TOKEN, allowed_hosts=ALLOWED)),
            config=auth,
        ),
    }


def test_every_operation_is_covered(apis):
    for schema in apis.values():
        found = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
        assert found == set(OPERATIONS)


def runs() -> list[tuple[str, str, str, GenerationMode]]:
    """Every operation in both modes, but negative data only where there is an input to break
    (health takes none; the model card takes only the token)."""
    out = []
    for config in ("open", "token"):
        for method, path in OPERATIONS:
            out.append((config, method, path, GenerationMode.POSITIVE))
            no_input = path == "/v1/health" or path.startswith("/cds-services")  # no body schema
            if not no_input and (path != "/v1/model" or config == "token"):
                out.append((config, method, path, GenerationMode.NEGATIVE))
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("config", "method", "path", "mode"), runs())
def test_schemathesis(apis, config, method, path, mode):
    operation = apis[config][path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case):
        case.call_and_validate()

    check()

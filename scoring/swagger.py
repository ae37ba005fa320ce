"""`GET /swagger.json`: the API document of a script whose run() has `inference_schema` decorators.

The documents are shaped as azmlinfsrv (azureml-inference-server-http 1.x) generated them, so that what consumed
a v1 service's `swagger_uri` (client generators, Power BI, API gateways) reads ours the same way: `/`, `/score` and
`/swagger.json` under `paths`, `POST /score`'s body as `ServiceInput` and its answer as `ServiceOutput`, which are
the schemas `inference_schema` derives from the decorators' samples. Swagger 2.0 is the default; `?version=3`
gives OpenAPI 3.0 and `?version=3.1` OpenAPI 3.1, when the script's parameter types support them.

Two differences, each for a reason: the Bearer key is declared only when the service requires one (azmlinfsrv
declared it always, so generated clients asked for a key the service did not check), and Swagger 2.0's `schemes`
is left out (azmlinfsrv said `https` always; without it, clients use the scheme the document was fetched with).

Only a script that imported `inference_schema` can have decorated run(): the module is looked up, never imported.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

# What `?version=` may say, and the document version each means (azmlinfsrv's aliases).
VERSIONS = {"2": "2.0", "2.0": "2.0", "3": "3.0", "3.0": "3.0", "3.1": "3.1"}
DEFAULT_VERSION = "2"

NOT_DECORATED = (
    "Swagger not found: run() has no inference_schema decorators (@input_schema, @output_schema), which the "
    "swagger document is generated from"
)

_ERROR = {"type": "object", "properties": {"message": {"type": "string"}}}
_BEARER = {"type": "apiKey", "name": "Authorization", "in": "header", "description": "For example: Bearer abc123"}
_SCORE = "Run web service's model and get the prediction output"
_SCORE_INPUT = "The input payload for executing the real-time machine learning service."
_SCORE_OK = "The service processed the input correctly and provided a result prediction, if applicable."
_FAILED = "The service failed to execute due to an error."
_HEALTH = "Simple health check endpoint to ensure the service is up at any given point."
_HEALTHY = "If service is up and running, this response will be returned with the content 'Healthy'"


def generate(run: Callable[..., Any], *, title: str, key_required: bool) -> dict[str, dict[str, Any]]:
    """The documents of a decorated run(), by version ("2.0", "3.0", "3.1"): those its parameter types support.

    Call it only for a decorated run() (`EntryScript.schema_decorated`): the script has then imported
    inference_schema. Raises what inference_schema raises."""
    schema_util = sys.modules["inference_schema.schema_util"]
    input_schema = schema_util.get_input_schema(run)
    output_schema = schema_util.get_output_schema(run)
    supported = set(schema_util.get_supported_versions(run))
    documents = {}
    if "2.0" in supported:
        documents["2.0"] = _swagger2(title, key_required, input_schema, output_schema)
    for version, openapi in (("3.0", "3.0.3"), ("3.1", "3.1.0")):
        if version in supported:
            documents[version] = _openapi3(openapi, title, key_required, input_schema, output_schema)
    return documents


def unavailable_version(asked: str, documents: dict[str, Any]) -> str | None:
    """Why `?version=asked` has no document (azmlinfsrv's messages), or None when it has one."""
    offered = ", ".join(sorted(documents))
    if asked not in VERSIONS:
        return f"Swagger version [{asked}] is not valid. Supported versions: [{offered}]."
    if VERSIONS[asked] not in documents:
        return (
            f"Swagger version [{asked}] is not supported for the scoring script. "
            f"Supported swagger versions: [{offered}]."
        )
    return None


def _info(title: str) -> dict[str, str]:
    return {
        "title": title,
        "description": f"API specification for the Azure Machine Learning service {title}",
        "version": "1.0",
    }


def _swagger2(title: str, key_required: bool, input_schema: Any, output_schema: Any) -> dict[str, Any]:
    failed = {"description": _FAILED, "schema": {"$ref": "#/definitions/ErrorResponse"}}
    score: dict[str, Any] = {
        "operationId": "RunMLService",
        "description": _SCORE,
        "parameters": [
            {
                "name": "serviceInputPayload",
                "in": "body",
                "description": _SCORE_INPUT,
                "schema": {"$ref": "#/definitions/ServiceInput"},
            }
        ],
        "responses": {
            "200": {"description": _SCORE_OK, "schema": {"$ref": "#/definitions/ServiceOutput"}},
            "default": failed,
        },
    }
    document: dict[str, Any] = {
        "swagger": "2.0",
        "info": _info(title),
        "consumes": ["application/json"],
        "produces": ["application/json"],
    }
    if key_required:
        document["securityDefinitions"] = {"Bearer": _BEARER}
        score["security"] = [{"Bearer": []}]
    document["paths"] = {
        "/": {
            "get": {
                "operationId": "ServiceHealthCheck",
                "description": _HEALTH,
                "responses": {
                    "200": {
                        "description": _HEALTHY,
                        "schema": {"type": "string"},
                        "examples": {"application/json": "Healthy"},
                    },
                    "default": failed,
                },
            }
        },
        "/score": {"post": score},
        "/swagger.json": {
            "get": {
                "operationId": "GetSwaggerSpec",
                "description": "Get the Swagger specification.",
                "parameters": [
                    {"name": "version", "in": "query", "required": False, "type": "integer", "enum": [2, 3]}
                ],
                "responses": {
                    "200": {"description": "The Swagger specification.", "schema": {"type": "string"}},
                    "default": failed,
                },
            }
        },
    }
    document["definitions"] = {"ServiceInput": input_schema, "ServiceOutput": output_schema, "ErrorResponse": _ERROR}
    return document


def _openapi3(openapi: str, title: str, key_required: bool, input_schema: Any, output_schema: Any) -> dict[str, Any]:
    def content(media_type: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {media_type: {"schema": schema}}

    failed = {
        "description": _FAILED,
        "content": content("application/json", {"$ref": "#/components/schemas/ErrorResponse"}),
    }
    score: dict[str, Any] = {
        "operationId": "RunMLService",
        "description": _SCORE,
        "requestBody": {
            "description": _SCORE_INPUT,
            "content": content("application/json", {"$ref": "#/components/schemas/ServiceInput"}),
        },
        "responses": {
            "200": {
                "description": _SCORE_OK,
                "content": content("application/json", {"$ref": "#/components/schemas/ServiceOutput"}),
            },
            "default": failed,
        },
    }
    components: dict[str, Any] = {
        "schemas": {"ServiceInput": input_schema, "ServiceOutput": output_schema, "ErrorResponse": _ERROR}
    }
    if key_required:
        components["securitySchemes"] = {"Bearer": _BEARER}
        score["security"] = [{"Bearer": []}]
    return {
        "openapi": openapi,
        "info": _info(title),
        "paths": {
            "/": {
                "get": {
                    "operationId": "ServiceHealthCheck",
                    "description": _HEALTH,
                    "responses": {
                        "200": {
                            "description": _HEALTHY,
                            "content": content("text/plain", {"type": "string", "example": "Healthy"}),
                        },
                        "default": failed,
                    },
                }
            },
            "/score": {"post": score},
            "/swagger.json": {
                "get": {
                    "operationId": "GetSwaggerSpec",
                    "description": "Get the Swagger specification.",
                    "parameters": [
                        {
                            "name": "version",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "enum": [2, 3]},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The Swagger specification.",
                            "content": content("application/json", {"type": "object"}),
                        },
                        "default": failed,
                    },
                }
            },
        },
        "components": components,
    }

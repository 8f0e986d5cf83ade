"""template.yaml as `sam deploy` sees it: expanded by the SAM translator, so a
property SAM rejects fails here rather than at deploy time."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:azure-openai-key-AbCdEf"


class NoManagedPolicies:
    def load(self):
        return {}


@pytest.fixture(scope="module")
def resources():
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    from cfnlint.decode import decode
    from samtranslator.translator.transform import transform

    template, problems = decode(str(ROOT / "template.yaml"))
    assert not problems, problems
    template = json.loads(json.dumps(template, default=str))
    # `sam build` replaces CodeUri with the built artifact in S3.
    template["Resources"]["ConnectorFunction"]["Properties"]["CodeUri"] = "s3://bucket/connector.zip"
    parameters = {"ImageModels": "[]", "AzureApiKeySecretArn": SECRET_ARN}
    return transform(template, parameters, NoManagedPolicies())["Resources"]


def of_type(resources, kind):
    return {k: v for k, v in resources.items() if v["Type"] == kind}


def test_the_function_is_an_arm64_al2023_custom_runtime(resources):
    (function,) = of_type(resources, "AWS::Lambda::Function").values()
    props = function["Properties"]
    assert props["Runtime"] == "provided.al2023"
    assert props["Architectures"] == ["arm64"]
    assert props["Handler"] == "bootstrap"
    assert props["Timeout"] >= 120


def test_the_template_sets_every_variable_the_config_reads(resources):
    (function,) = of_type(resources, "AWS::Lambda::Function").values()
    variables = set(function["Properties"]["Environment"]["Variables"])
    read = set(re.findall(r'pub const \w+: &str = "([A-Z_]+)";', (ROOT / "src" / "config.rs").read_text()))
    assert read, "config.rs names its variables as constants"
    assert read <= variables, f"template.yaml does not set {read - variables}"


def test_the_role_may_read_the_key_secret_and_nothing_else(resources):
    (role,) = of_type(resources, "AWS::IAM::Role").values()
    statements = [s for p in role["Properties"].get("Policies", []) for s in p["PolicyDocument"]["Statement"]]
    secret_statements = [s for s in statements if "secretsmanager" in json.dumps(s["Action"])]
    assert secret_statements, "no Secrets Manager permission"
    for statement in secret_statements:
        assert statement["Action"] == "secretsmanager:GetSecretValue"
        assert "*" not in json.dumps(statement["Resource"]), statement["Resource"]


def test_all_three_front_doors_reach_the_function(resources):
    assert of_type(resources, "AWS::Lambda::Url"), "no Function URL"
    rest = of_type(resources, "AWS::ApiGateway::RestApi")
    http = of_type(resources, "AWS::ApiGatewayV2::Api")
    assert rest and http
    (rest_api,) = rest.values()
    assert "/{proxy+}" in rest_api["Properties"]["Body"]["paths"]
    (http_api,) = http.values()
    assert "/{proxy+}" in http_api["Properties"]["Body"]["paths"]


def test_every_front_door_requires_signed_requests(resources):
    (url,) = of_type(resources, "AWS::Lambda::Url").values()
    assert url["Properties"]["AuthType"] == "AWS_IAM"
    (rest_api,) = of_type(resources, "AWS::ApiGateway::RestApi").values()
    for method in rest_api["Properties"]["Body"]["paths"]["/{proxy+}"].values():
        assert method.get("security") == [{"AWS_IAM": []}], method
    (http_api,) = of_type(resources, "AWS::ApiGatewayV2::Api").values()
    for method in http_api["Properties"]["Body"]["paths"]["/{proxy+}"].values():
        assert method.get("security") == [{"AWS_IAM": []}], method


def test_logs_are_json_with_a_retention(resources):
    (function,) = of_type(resources, "AWS::Lambda::Function").values()
    assert function["Properties"]["LoggingConfig"]["LogFormat"] == "JSON"
    (group,) = of_type(resources, "AWS::Logs::LogGroup").values()
    assert group["Properties"]["RetentionInDays"]

"""template.yaml as `sam deploy` sees it: expanded by the SAM translator (so a
property SAM rejects fails here, not at deploy time), then resolved as
CloudFormation would for given parameters (the defaults for the rest), with the
template's own Conditions."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:azure-openai-key-AbCdEf"
CLIENT_KEYS_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:client-keys-XyZ123"
EXTRA_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:team-b/azure-key-Q1w2E3"
OTHER_EXTRA_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:team-c-key-R4t5Y6"
KMS_KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


class NoManagedPolicies:
    def load(self):
        return {}


@pytest.fixture(scope="module")
def expanded():
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    from cfnlint.decode import decode
    from samtranslator.translator.transform import transform

    template, problems = decode(str(ROOT / "template.yaml"))
    assert not problems, problems
    template = json.loads(json.dumps(template, default=str))
    # `sam build` replaces CodeUri with the built artifact in S3.
    template["Resources"]["ConnectorFunction"]["Properties"]["CodeUri"] = "s3://bucket/connector.zip"
    parameters = {"ImageModels": "[]", "AzureApiKeySecretArn": SECRET_ARN}
    return transform(template, parameters, NoManagedPolicies())


def resolve(node, conditions: dict[str, bool], parameters: dict[str, str]):
    """Evaluates Fn::If, Ref to parameters, Fn::Join and Fn::Split as CloudFormation would."""
    if isinstance(node, list):
        items = [resolve(n, conditions, parameters) for n in node]
        return [i for i in items if i != "AWS::NoValue"]
    if not isinstance(node, dict):
        return node
    if "Fn::If" in node:
        name, yes, no = node["Fn::If"]
        return resolve(yes if conditions[name] else no, conditions, parameters)
    if node.get("Ref") == "AWS::NoValue":
        return "AWS::NoValue"
    if "Ref" in node and node["Ref"] in parameters:
        return parameters[node["Ref"]]
    if "Fn::Join" in node:
        sep, parts = node["Fn::Join"]
        return sep.join(resolve(parts, conditions, parameters))
    if "Fn::Split" in node:
        sep, text = node["Fn::Split"]
        return resolve(text, conditions, parameters).split(sep)
    resolved = {k: resolve(v, conditions, parameters) for k, v in node.items()}
    return {k: v for k, v in resolved.items() if v != "AWS::NoValue"}


def condition_values(template, parameters: dict[str, str]) -> dict[str, bool]:
    """The template's own Conditions, evaluated for these parameters."""

    def truth(node) -> bool:
        if "Condition" in node:
            return truth(template["Conditions"][node["Condition"]])
        if "Fn::Not" in node:
            return not truth(node["Fn::Not"][0])
        if "Fn::Equals" in node:
            left, right = (resolve(side, {}, parameters) for side in node["Fn::Equals"])
            return left == right
        raise AssertionError(f"the test cannot evaluate {node}")

    return {name: truth(node) for name, node in template["Conditions"].items()}


def deploy(expanded, **given: str) -> dict:
    """The resources CloudFormation would create for these parameters (defaults for the rest)."""
    parameters = {name: str(p.get("Default", "")) for name, p in expanded["Parameters"].items()}
    parameters |= {"ImageModels": "[]", "AzureApiKeySecretArn": SECRET_ARN, **given}
    conditions = condition_values(expanded, parameters)
    return {
        name: resolve(resource, conditions, parameters)
        for name, resource in expanded["Resources"].items()
        if conditions.get(resource.get("Condition", ""), True)
    }


MODES = {
    "client-keys": {"CallerAuth": "client-keys", "ClientApiKeysSecretArn": CLIENT_KEYS_ARN},
    "aws-iam": {"CallerAuth": "aws-iam"},
}


@pytest.fixture(params=list(MODES))
def deployed(request, expanded):
    """The resources CloudFormation would create for one CallerAuth choice."""
    return request.param, deploy(expanded, **MODES[request.param])


def of_type(resources, kind):
    return [v for v in resources.values() if v["Type"] == kind]


def test_the_function_is_an_arm64_al2023_custom_runtime(deployed):
    _, resources = deployed
    (function,) = of_type(resources, "AWS::Lambda::Function")
    props = function["Properties"]
    assert props["Runtime"] == "provided.al2023"
    assert props["Architectures"] == ["arm64"]
    assert props["Handler"] == "bootstrap"
    assert props["Timeout"] >= 120
    # BENCHMARKS.md: under 30 MiB serving the largest answer, so Lambda's smallest size holds it.
    assert props["MemorySize"] == 128


def test_the_template_sets_every_variable_the_config_reads(deployed):
    _, resources = deployed
    (function,) = of_type(resources, "AWS::Lambda::Function")
    variables = set(function["Properties"]["Environment"]["Variables"])
    read = set(re.findall(r'pub const \w+: &str = "([A-Z_]+)";', (ROOT / "src" / "config.rs").read_text()))
    assert read, "config.rs names its variables as constants"
    assert read <= variables, f"template.yaml does not set {read - variables}"


def test_each_mode_has_exactly_one_checker(deployed):
    mode, resources = deployed
    (function,) = of_type(resources, "AWS::Lambda::Function")
    env = function["Properties"]["Environment"]["Variables"]
    (url,) = of_type(resources, "AWS::Lambda::Url")
    (route,) = of_type(resources, "AWS::ApiGatewayV2::Route")
    (method,) = of_type(resources, "AWS::ApiGateway::Method")
    doors = {url["Properties"]["AuthType"], route["Properties"]["AuthorizationType"], method["Properties"]["AuthorizationType"]}
    if mode == "client-keys":
        assert env["AUTH_MODE"] == "client-keys" and env["CLIENT_API_KEYS_SECRET_ID"] == CLIENT_KEYS_ARN
        assert doors == {"NONE"}
        public = [p["Properties"] for p in of_type(resources, "AWS::Lambda::Permission") if p["Properties"]["Principal"] == "*"]
        assert {p["Action"] for p in public} == {"lambda:InvokeFunctionUrl", "lambda:InvokeFunction"}
    else:
        assert env["AUTH_MODE"] == "none" and env["CLIENT_API_KEYS_SECRET_ID"] == ""
        assert doors == {"AWS_IAM"}
        assert not [p for p in of_type(resources, "AWS::Lambda::Permission") if p["Properties"]["Principal"] == "*"]


def read_secrets(*arns: str) -> dict:
    return {"Sid": "ReadTheConnectorSecretsOnly", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": list(arns)}


DECRYPT_WITH_THE_KEY = {
    "Sid": "DecryptTheConnectorSecretsOnly",
    "Effect": "Allow",
    "Action": "kms:Decrypt",
    "Resource": KMS_KEY_ARN,
    "Condition": {"StringEquals": {"kms:ViaService": {"Fn::Sub": "secretsmanager.${AWS::Region}.amazonaws.com"}}},
}

FEDERATE_INTO_ENTRA = {
    "Sid": "FederateIntoEntraIdOnly",
    "Effect": "Allow",
    "Action": "sts:GetWebIdentityToken",
    "Resource": "*",
    "Condition": {
        "ForAllValues:StringEquals": {"sts:IdentityTokenAudience": "api://AzureADTokenExchange"},
        "NumericLessThanEquals": {"sts:DurationSeconds": 300},
    },
}

STORE_AND_LINK_IMAGES = {
    "Sid": "StoreAndLinkImagesOnly",
    "Effect": "Allow",
    "Action": ["s3:PutObject", "s3:GetObject"],
    "Resource": {"Fn::Sub": "${ImageStoreBucket.Arn}/images/*"},
}

# Every permission the function's role holds, per deployment: the README's role
# description says the same. A new permission fails here until it is listed.
LAMBDA_BASIC_EXECUTION = "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
ROLE_CASES = {
    "client-keys": (MODES["client-keys"], [read_secrets(SECRET_ARN, CLIENT_KEYS_ARN)]),
    "aws-iam": (MODES["aws-iam"], [read_secrets(SECRET_ARN)]),
    "extra secrets": (
        {**MODES["client-keys"], "ExtraSecretArns": f"{EXTRA_ARN},{OTHER_EXTRA_ARN}"},
        [read_secrets(SECRET_ARN, EXTRA_ARN, OTHER_EXTRA_ARN, CLIENT_KEYS_ARN)],
    ),
    "aws-iam, extra secrets, kms key": (
        {**MODES["aws-iam"], "ExtraSecretArns": EXTRA_ARN, "KmsKeyArn": KMS_KEY_ARN},
        [read_secrets(SECRET_ARN, EXTRA_ARN), DECRYPT_WITH_THE_KEY],
    ),
    "entra federation": (
        {**MODES["client-keys"], "EntraFederationAudience": "api://AzureADTokenExchange"},
        [read_secrets(SECRET_ARN, CLIENT_KEYS_ARN), FEDERATE_INTO_ENTRA],
    ),
    "image urls": (
        {**MODES["client-keys"], "ImageUrls": "enabled"},
        [read_secrets(SECRET_ARN, CLIENT_KEYS_ARN), STORE_AND_LINK_IMAGES],
    ),
}

# Spend control (issue 17): every deployment counts limited keys in its own table.
USE_THE_USAGE_TABLE = {
    "Sid": "CountSpendInTheUsageTableOnly",
    "Effect": "Allow",
    "Action": ["dynamodb:UpdateItem", "dynamodb:GetItem"],
    "Resource": {"Fn::GetAtt": ["UsageTable", "Arn"]},
}
ROLE_CASES = {case: (given, statements + [USE_THE_USAGE_TABLE]) for case, (given, statements) in ROLE_CASES.items()}


@pytest.mark.parametrize("case", list(ROLE_CASES))
def test_the_role_holds_exactly_the_listed_permissions(expanded, case):
    given, statements = ROLE_CASES[case]
    resources = deploy(expanded, **given)
    (role,) = of_type(resources, "AWS::IAM::Role")
    (function,) = of_type(resources, "AWS::Lambda::Function")
    assert function["Properties"]["Role"] == {"Fn::GetAtt": [next(n for n, r in resources.items() if r is role), "Arn"]}
    props = role["Properties"]
    assert set(props) == {"AssumeRolePolicyDocument", "ManagedPolicyArns", "Policies", "Tags"}, "no boundary, path or extra policy kinds"
    assert props["AssumeRolePolicyDocument"]["Statement"] == [
        {"Action": ["sts:AssumeRole"], "Effect": "Allow", "Principal": {"Service": ["lambda.amazonaws.com"]}}
    ]
    # logs:CreateLogGroup, logs:CreateLogStream and logs:PutLogEvents on every log group (README, Deploy).
    assert props["ManagedPolicyArns"] == [LAMBDA_BASIC_EXECUTION]
    assert [s for p in props["Policies"] for s in p["PolicyDocument"]["Statement"]] == statements
    assert not of_type(resources, "AWS::IAM::Policy") and not of_type(resources, "AWS::IAM::ManagedPolicy")


def test_the_readme_names_every_permission_of_the_role():
    deploy_section = (ROOT / "README.md").read_text().split("\n## Deploy\n", 1)[1].split("\n## ", 1)[0]
    for name in ["AWSLambdaBasicExecutionRole", "logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents",
                 "secretsmanager:GetSecretValue", "kms:Decrypt", "kms:ViaService",
                 "sts:GetWebIdentityToken", "sts:IdentityTokenAudience", "s3:PutObject", "s3:GetObject"]:
        assert name in deploy_section, name


def test_every_front_door_reaches_the_function(deployed):
    _, resources = deployed
    assert of_type(resources, "AWS::Lambda::Url")
    (integration,) = of_type(resources, "AWS::ApiGatewayV2::Integration")
    assert integration["Properties"]["IntegrationType"] == "AWS_PROXY"
    assert integration["Properties"]["PayloadFormatVersion"] == "2.0"
    (route,) = of_type(resources, "AWS::ApiGatewayV2::Route")
    assert route["Properties"]["RouteKey"] == "$default"
    (proxy,) = of_type(resources, "AWS::ApiGateway::Resource")
    assert proxy["Properties"]["PathPart"] == "{proxy+}"
    (method,) = of_type(resources, "AWS::ApiGateway::Method")
    assert method["Properties"]["HttpMethod"] == "ANY"
    assert method["Properties"]["Integration"]["Type"] == "AWS_PROXY"
    invokers = {p["Properties"]["Principal"] for p in of_type(resources, "AWS::Lambda::Permission")}
    assert "apigateway.amazonaws.com" in invokers


def test_client_keys_mode_cannot_deploy_without_its_secret(expanded):
    (rule,) = expanded["Rules"].values()
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "CallerAuth"}, "client-keys"]}
    assert "ClientApiKeysSecretArn" in json.dumps(rule["Assertions"])


def test_logs_are_json_with_a_retention(deployed):
    _, resources = deployed
    (function,) = of_type(resources, "AWS::Lambda::Function")
    assert function["Properties"]["LoggingConfig"]["LogFormat"] == "JSON"
    (group,) = of_type(resources, "AWS::Logs::LogGroup")
    assert group["Properties"]["RetentionInDays"]


def test_the_streaming_front_doors_stream_and_the_function_waits_long_enough(deployed):
    _, resources = deployed
    (function,) = of_type(resources, "AWS::Lambda::Function")
    assert function["Properties"]["Timeout"] >= 300, "image generation can take minutes"
    assert function["Properties"]["Environment"]["Variables"]["RESPONSE_MODE"] == "auto"
    (url,) = of_type(resources, "AWS::Lambda::Url")
    assert url["Properties"]["InvokeMode"] == "RESPONSE_STREAM"
    (method,) = of_type(resources, "AWS::ApiGateway::Method")
    integration = method["Properties"]["Integration"]
    assert integration["ResponseTransferMode"] == "STREAM"
    assert "/2021-11-15/functions/" in json.dumps(integration["Uri"]) and "response-streaming-invocations" in json.dumps(integration["Uri"])
    assert integration["TimeoutInMillis"] > 29000
    (http_integration,) = of_type(resources, "AWS::ApiGatewayV2::Integration")
    assert int(http_integration["Properties"]["TimeoutInMillis"]) <= 30000, "an HTTP API cannot wait longer"


def test_both_api_stages_throttle_every_route_by_default(expanded):
    for given, (burst, rate) in [({}, ("20", "10")), ({"ThrottlingBurstLimit": "7", "ThrottlingRateLimit": "3"}, ("7", "3"))]:
        resources = deploy(expanded, **given)
        (http_stage,) = of_type(resources, "AWS::ApiGatewayV2::Stage")
        assert http_stage["Properties"]["DefaultRouteSettings"] == {"ThrottlingBurstLimit": burst, "ThrottlingRateLimit": rate}
        (rest_stage,) = of_type(resources, "AWS::ApiGateway::Stage")
        assert rest_stage["Properties"]["MethodSettings"] == [
            {"HttpMethod": "*", "ResourcePath": "/*", "ThrottlingBurstLimit": burst, "ThrottlingRateLimit": rate}
        ]


def test_reserved_concurrency_is_set_only_when_given(expanded):
    (function,) = of_type(deploy(expanded), "AWS::Lambda::Function")
    assert "ReservedConcurrentExecutions" not in function["Properties"]
    (function,) = of_type(deploy(expanded, ReservedConcurrency="25"), "AWS::Lambda::Function")
    assert function["Properties"]["ReservedConcurrentExecutions"] == "25"
    pattern = expanded["Parameters"]["ReservedConcurrency"]["AllowedPattern"]
    assert [v for v in ["", "1", "25", "99999"] if not re.fullmatch(pattern, v)] == []
    assert [v for v in ["0", "-1", "1.5", " 5", "100000", "unlimited"] if re.fullmatch(pattern, v)] == []


def accepts(expanded, parameter: str, value: str) -> bool:
    return re.fullmatch(expanded["Parameters"][parameter]["AllowedPattern"], value) is not None


@pytest.mark.parametrize("parameter", ["AzureApiKeySecretArn", "ClientApiKeysSecretArn", "ExtraSecretArns"])
def test_secret_parameters_take_only_whole_secret_arns(expanded, parameter):
    for value in [SECRET_ARN, EXTRA_ARN, "arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:k-AbCdEf"]:
        assert accepts(expanded, parameter, value), value
    for value in [
        "*",
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:*",
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:azure-openai-key-*",
        "arn:aws:secretsmanager:*:*:secret:azure-openai-key-AbCdEf",
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:azure-key",  # no suffix: matches no secret
        "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "azure-openai-image/azure-key",
        f"{SECRET_ARN},*",
        f"{SECRET_ARN}, {EXTRA_ARN}",
        f"{SECRET_ARN},",
    ]:
        assert not accepts(expanded, parameter, value), value
    assert accepts(expanded, parameter, "") == (parameter != "AzureApiKeySecretArn")
    assert accepts(expanded, parameter, f"{SECRET_ARN},{EXTRA_ARN}") == (parameter == "ExtraSecretArns")


def test_kms_key_parameter_takes_only_a_key_arn(expanded):
    for value in ["", KMS_KEY_ARN, "arn:aws:kms:us-east-1:123456789012:key/mrk-1234abcd12ab34cd56ef1234567890ab"]:
        assert accepts(expanded, "KmsKeyArn", value), value
    for value in ["*", "arn:aws:kms:us-east-1:123456789012:key/*", "arn:aws:kms:us-east-1:123456789012:alias/secrets", SECRET_ARN]:
        assert not accepts(expanded, "KmsKeyArn", value), value


def role_statements(resources) -> list[dict]:
    (role,) = of_type(resources, "AWS::IAM::Role")
    return [s for p in role["Properties"].get("Policies", []) for s in p["PolicyDocument"]["Statement"]]


def test_the_role_may_decrypt_only_with_the_given_key_and_only_through_secrets_manager(expanded):
    assert not [s for s in role_statements(deploy(expanded)) if "kms" in json.dumps(s)]
    decrypt = [s for s in role_statements(deploy(expanded, KmsKeyArn=KMS_KEY_ARN)) if "kms" in json.dumps(s)]
    assert decrypt == [DECRYPT_WITH_THE_KEY]


# Every numeric setting, with the bounds the template enforces (README, Configuration).
NUMBER_BOUNDS = {
    "SecretCacheTtlSeconds": (0, 86400),
    "MaxRetries": (0, 10),
    "MaxRetryWaitSeconds": (1, 900),
    "PoolMaxWaitSeconds": (0, 900),
    "HttpApiTimeoutMs": (50, 30000),
    "ThrottlingBurstLimit": (1, 5000),
    "ThrottlingRateLimit": (1, 10000),
    "ImageRetentionDays": (1, 365),
    "ImageUrlTtlSeconds": (60, 43200),
}


def test_every_number_parameter_has_bounds_around_its_default(expanded):
    numbers = {n: p for n, p in expanded["Parameters"].items() if p["Type"] == "Number" and "AllowedValues" not in p}
    assert {n: (p.get("MinValue"), p.get("MaxValue")) for n, p in numbers.items()} == NUMBER_BOUNDS
    assert [n for n, p in numbers.items() if not p["MinValue"] <= p["Default"] <= p["MaxValue"]] == []


def test_the_upstream_timeout_is_empty_or_1_to_900_seconds(expanded):
    tried = ["", *map(str, range(0, 1001)), "01", "1.5", " 5", "-1", "9000"]
    assert {v for v in tried if accepts(expanded, "UpstreamTimeoutSeconds", v)} == {"", *map(str, range(1, 901))}


def test_the_http_api_and_the_connector_share_one_timeout(expanded):
    for given, timeout in [({}, "30000"), ({"HttpApiTimeoutMs": "12000"}, "12000")]:
        resources = deploy(expanded, **given)
        (integration,) = of_type(resources, "AWS::ApiGatewayV2::Integration")
        (function,) = of_type(resources, "AWS::Lambda::Function")
        assert integration["Properties"]["TimeoutInMillis"] == timeout
        assert function["Properties"]["Environment"]["Variables"]["HTTP_API_TIMEOUT_MS"] == timeout


def test_the_longest_retry_wait_reaches_the_connector(expanded):
    for given, wait in [({}, "60"), ({"MaxRetryWaitSeconds": "120"}, "120")]:
        (function,) = of_type(deploy(expanded, **given), "AWS::Lambda::Function")
        assert function["Properties"]["Environment"]["Variables"]["MAX_RETRY_WAIT_SECONDS"] == wait


def test_the_longest_pool_wait_reaches_the_connector(expanded):
    for given, wait in [({}, "5"), ({"PoolMaxWaitSeconds": "0"}, "0")]:
        (function,) = of_type(deploy(expanded, **given), "AWS::Lambda::Function")
        assert function["Properties"]["Environment"]["Variables"]["POOL_MAX_WAIT_SECONDS"] == wait


def test_the_rest_api_passes_uploads_as_binary(deployed):
    # Without it the REST API hands a multipart edit to the function as text, mangling the image bytes.
    _, resources = deployed
    (rest,) = of_type(resources, "AWS::ApiGateway::RestApi")
    assert "multipart/form-data" in rest["Properties"].get("BinaryMediaTypes", [])


def test_there_is_no_image_bucket_unless_image_urls_are_enabled(expanded):
    resources = deploy(expanded)
    assert not of_type(resources, "AWS::S3::Bucket") and not of_type(resources, "AWS::S3::BucketPolicy")
    (function,) = of_type(resources, "AWS::Lambda::Function")
    assert function["Properties"]["Environment"]["Variables"]["IMAGE_BUCKET"] == ""
    assert not [s for s in role_statements(resources) if "s3:" in json.dumps(s)]


def test_the_image_bucket_is_private_encrypted_tls_only_and_forgets_images(expanded):
    for given, days, ttl in [({}, "1", "3600"), ({"ImageRetentionDays": "7", "ImageUrlTtlSeconds": "600"}, "7", "600")]:
        resources = deploy(expanded, ImageUrls="enabled", **given)
        (bucket,) = of_type(resources, "AWS::S3::Bucket")
        props = bucket["Properties"]
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True,
        }
        assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
        (encryption,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert encryption["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms"}
        (rule,) = props["LifecycleConfiguration"]["Rules"]
        assert rule["Status"] == "Enabled" and rule["ExpirationInDays"] == days
        # The rule covers what the connector writes: its key prefix (src/image_store.rs).
        prefix = re.search(r'pub const KEY_PREFIX: &str = "([^"]+)";', (ROOT / "src" / "image_store.rs").read_text())
        assert prefix and rule["Prefix"] == prefix.group(1)
        assert f'}}/{prefix.group(1)}*' in STORE_AND_LINK_IMAGES["Resource"]["Fn::Sub"]
        (policy,) = of_type(resources, "AWS::S3::BucketPolicy")
        bucket_name = next(n for n, r in resources.items() if r is bucket)
        assert policy["Properties"]["Bucket"] == {"Ref": bucket_name}
        (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
        assert statement["Effect"] == "Deny" and statement["Principal"] == "*" and statement["Action"] == "s3:*"
        assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        assert statement["Resource"] == [{"Fn::GetAtt": [bucket_name, "Arn"]}, {"Fn::Sub": f"${{{bucket_name}.Arn}}/*"}]
        (function,) = of_type(resources, "AWS::Lambda::Function")
        env = function["Properties"]["Environment"]["Variables"]
        assert env["IMAGE_BUCKET"] == {"Ref": bucket_name}
        assert env["IMAGE_URL_TTL_SECONDS"] == ttl
        assert STORE_AND_LINK_IMAGES in role_statements(resources)
def test_the_usage_table_is_keyed_on_demand_with_a_ttl_and_reaches_the_function(deployed):
    _, resources = deployed
    (table,) = of_type(resources, "AWS::DynamoDB::Table")
    props = table["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}]
    assert sorted(props["AttributeDefinitions"], key=lambda a: a["AttributeName"]) == [
        {"AttributeName": "pk", "AttributeType": "S"},
        {"AttributeName": "sk", "AttributeType": "S"},
    ]
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    (function,) = of_type(resources, "AWS::Lambda::Function")
    env = function["Properties"]["Environment"]["Variables"]
    assert env["USAGE_TABLE"] == {"Ref": "UsageTable"}
    assert env["SPEND_LIMITS_ON_ERROR"] == "deny"


def test_the_role_may_only_update_and_get_items_of_the_usage_table(expanded):
    for given, _ in ROLE_CASES.values():
        statements = role_statements(deploy(expanded, **given))
        actions = lambda s: s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        dynamodb = [s for s in statements if any(a.startswith("dynamodb:") for a in actions(s))]
        assert dynamodb == [USE_THE_USAGE_TABLE]


def test_the_readme_names_the_usage_table_permissions():
    deploy_section = (ROOT / "README.md").read_text().split("\n## Deploy\n", 1)[1].split("\n## ", 1)[0]
    for name in ["dynamodb:UpdateItem", "dynamodb:GetItem", "UsageTable"]:
        assert name in deploy_section, name

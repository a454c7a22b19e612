"""Deploy rehearsal: builds, translates and creates infra/template.yaml as far as a machine without
AWS allows (README, "Deploy rehearsal"). Run it through scripts/deploy-rehearsal, which picks the
interpreters and sets the loopback-only AWS environment.

1. Packages every AWS::Serverless::Function the way `sam build` lays it out
   (target/deploy-rehearsal/.aws-sam/build/<LogicalId>/bootstrap, then one zip each) from the
   binaries cargo built in target/debug: cargo-lambda would compile the workspace again.
2. Translates the SAM template with AWS's own translator (aws-sam-translator), offline: AWS managed
   policy names come from the map the translator bundles, never from IAM.
3. Starts moto server on a free loopback port, uploads the zips to its S3, creates the secrets and
   the alarm topic the parameters name, and creates the stack on its CloudFormation with boto3,
   once per scenario (the conditions both ways). What moto's CloudFormation cannot create is
   taken out of the stack, named, and every reference to it replaced by a marker.
4. Checks every resource reached CREATE_COMPLETE, every function's environment resolves to what
   the stack created (and that exists), and every role holds exactly the actions the translated
   template and the function's Policies give it, on resources the stack created.
5. Creates what was taken out through the services' own APIs where moto has them, and checks
   their references and the HTTP API's routes against the stack.

Exits 0 when every check passes, 1 otherwise. `--self-test` also rehearses three copies of the
template, each broken in memory, and exits 1 unless each of them fails.
"""

import argparse
import ast
import concurrent.futures
import copy
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import logging

import boto3
import botocore.config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError
from samcli.yamlhelper import yaml_parse
from samtranslator.internal.managed_policies import get_bundled_managed_policy_map
from samtranslator.model.exceptions import InvalidDocumentException
from samtranslator.translator.transform import transform

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "target" / "deploy-rehearsal"
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
BUCKET = "connect-flow-rehearsal-artifacts"
# CloudFormation's limit on a template passed by TemplateURL (51,200 bytes inline).
TEMPLATE_URL_LIMIT = 1_000_000
# Lambda's limit on a function's unzipped code.
UNZIPPED_CODE_LIMIT = 250 * 1024 * 1024
MISSING = "rehearsal-not-created"
# What boto3 raises when moto refuses or fails a call.
AWS_ERRORS = (ClientError, BotoCoreError, ResponseParserError)

# Parameter values per scenario, over the template's defaults: together they take each condition
# both ways. Parameters without a default that are not named here get a value by their pattern
# (secret ARNs, the SNS topic) or their first allowed value; anything else stops the rehearsal.
SCENARIOS = {
    "eventbridge": {
        "ExpectedLivemode": "false",
        "PayoutMode": "manual-only",
        "StripeEventBridgeSource": "aws.partner/stripe.com/ed_test_rehearsal",
    },
    "defaults": {
        "ExpectedLivemode": "any",
        "PayoutMode": "paused",
    },
}


class RehearsalFailed(Exception):
    """A check failed; the message says which and why."""


class Unresolvable(Exception):
    """An intrinsic the rehearsal's resolver does not evaluate."""


STARTED = time.monotonic()


def log(message):
    """Prints one progress line at once, with the seconds since the start, so CI logs keep order."""
    print(f"[{time.monotonic() - STARTED:5.1f}s] {message}", flush=True)


# ------------------------------------------------------------------------------------------------
# 1. Packaging
# ------------------------------------------------------------------------------------------------


def workspace_binaries():
    """Names of the workspace's bin targets, from cargo metadata (reads manifests, builds nothing)."""
    out = subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {
        target["name"]
        for package in json.loads(out)["packages"]
        for target in package["targets"]
        if "bin" in target["kind"]
    }


def elf_machine(path):
    """The ELF e_machine of a file (62 is x86_64, 183 aarch64), or None if it is not ELF."""
    with open(path, "rb") as f:
        header = f.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    return int.from_bytes(header[18:20], "little")


def functions_to_package(sam, template_dir, bin_dir):
    """Each function's logical id, binary name and built binary, as sam build would find them."""
    bins = workspace_binaries()
    found = []
    problems = []
    for logical_id, resource in sam["Resources"].items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        metadata = resource.get("Metadata", {})
        props = resource.get("Properties", {})
        binary = metadata.get("BuildProperties", {}).get("Binary")
        code_uri = props.get("CodeUri")
        built = bin_dir / str(binary)
        if metadata.get("BuildMethod") != "rust-cargolambda":
            problems.append(f"{logical_id}: BuildMethod is not rust-cargolambda")
        elif not binary:
            problems.append(f"{logical_id}: no Metadata.BuildProperties.Binary to build")
        elif not isinstance(code_uri, str) or not (template_dir / code_uri / "Cargo.toml").is_file():
            problems.append(f"{logical_id}: CodeUri {code_uri!r} is not a Cargo project")
        elif binary not in bins:
            problems.append(f"{logical_id}: Binary {binary!r} is no bin target of the workspace")
        elif not built.is_file():
            problems.append(f"{logical_id}: {built} is missing; run `cargo build --workspace --bins`")
        elif elf_machine(built) != 62:
            problems.append(f"{logical_id}: {built} is not an x86_64 ELF binary")
        else:
            found.append((logical_id, binary, built))
    if problems:
        raise RehearsalFailed("packaging failed:\n  " + "\n  ".join(problems))
    if not found:
        raise RehearsalFailed("the template has no AWS::Serverless::Function to package")
    return found


def package_one(logical_id, built, strip):
    """Writes .aws-sam/build/<LogicalId>/bootstrap and its zip; returns (bootstrap, zip)."""
    target = OUT / ".aws-sam" / "build" / logical_id / "bootstrap"
    target.parent.mkdir(parents=True)
    if strip:
        # [profile.release] strips symbols, so sam build's bootstrap has none either; the zip is
        # then a third of the size, and packaging several times quicker.
        subprocess.run([strip, "--strip-all", "-o", str(target), str(built)], check=True)
    else:
        shutil.copyfile(built, target)
    target.chmod(0o755)
    archive = OUT / "artifacts" / f"{logical_id}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        info = zipfile.ZipInfo("bootstrap", date_time=(2020, 1, 1, 0, 0, 0))
        info.external_attr = (stat.S_IFREG | 0o755) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        with open(target, "rb") as src, z.open(info, "w") as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
    return target, archive


def package_functions(sam, template_dir, bin_dir):
    """Lays out .aws-sam/build/<LogicalId>/bootstrap and a zip per function; returns id -> zip."""
    found = functions_to_package(sam, template_dir, bin_dir)
    shutil.rmtree(OUT / ".aws-sam", ignore_errors=True)
    shutil.rmtree(OUT / "artifacts", ignore_errors=True)
    (OUT / "artifacts").mkdir(parents=True)
    global_arch = sam.get("Globals", {}).get("Function", {}).get("Architectures", ["x86_64"])
    strip = shutil.which("strip")
    # strip and zlib both run outside the GIL: one function per core.
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        jobs = {lid: pool.submit(package_one, lid, built, strip) for lid, _, built in found}
    zips = {}
    problems = []
    for logical_id, binary, built in found:
        target, archive = jobs[logical_id].result()
        arch = sam["Resources"][logical_id].get("Properties", {}).get("Architectures", global_arch)
        if target.stat().st_size > UNZIPPED_CODE_LIMIT:
            problems.append(f"{logical_id}: its bootstrap is over Lambda's 250 MB unzipped limit")
        zips[logical_id] = archive
        log(
            f"  packaged {logical_id:28} {binary:19} {built.stat().st_size / 2**20:5.1f} MB, "
            f"{'stripped ' if strip else ''}{target.stat().st_size / 2**20:5.1f} MB, zip "
            f"{archive.stat().st_size / 2**20:4.1f} MB (x86_64 debug; template: {','.join(arch)})"
        )
    if problems:
        raise RehearsalFailed("packaging failed:\n  " + "\n  ".join(problems))
    # sam build also writes the template with each CodeUri at its build directory (JSON is YAML).
    built = copy.deepcopy(sam)
    for logical_id in zips:
        built["Resources"][logical_id]["Properties"]["CodeUri"] = logical_id
        built["Resources"][logical_id]["Metadata"]["SamResourceId"] = logical_id
    (OUT / ".aws-sam" / "build" / "template.yaml").write_text(json.dumps(built, indent=1))
    return zips


# ------------------------------------------------------------------------------------------------
# 2. Translation
# ------------------------------------------------------------------------------------------------


class OfflineManagedPolicies:
    """The translator's managed-policy loader without IAM: the map aws-sam-translator bundles."""

    def load(self):
        """AWS managed policy names to ARNs, for the aws partition."""
        return get_bundled_managed_policy_map("aws") or {}


def translate(sam, parameters, zips):
    """The SAM template as plain CloudFormation, each function's code at its zip in S3."""
    sam = copy.deepcopy(sam)
    for logical_id in zips:
        sam["Resources"][logical_id]["Properties"]["CodeUri"] = f"s3://{BUCKET}/{logical_id}.zip"
    try:
        cfn = transform(sam, dict(parameters), OfflineManagedPolicies())
    except InvalidDocumentException as e:
        causes = "\n  ".join(str(c) for c in e.causes)
        raise RehearsalFailed(f"aws-sam-translator refused the template:\n  {causes}") from e
    for logical_id, resource in cfn["Resources"].items():
        for arn in resource.get("Properties", {}).get("ManagedPolicyArns", []):
            if isinstance(arn, str) and not arn.startswith("arn:"):
                raise RehearsalFailed(
                    f"{logical_id}: managed policy {arn!r} is not in the translator's bundled map"
                )
    return cfn


def choose_parameters(declared, overrides, created):
    """Values for the template's parameters: the scenario's, the created ARNs', defaults' or first."""
    values = {}
    for name, spec in declared.items():
        pattern = spec.get("AllowedPattern", "")
        if name in overrides:
            value = overrides[name]
        elif ":secretsmanager:" in pattern:
            value = created["secrets"][name]
        elif ":sns:" in pattern:
            value = created["topic"]
        elif "Default" in spec:
            value = str(spec["Default"])
        elif spec.get("AllowedValues"):
            value = str(spec["AllowedValues"][0])
        else:
            raise RehearsalFailed(
                f"parameter {name} has no default and no rehearsal value: add one to SCENARIOS"
            )
        check_parameter(name, spec, value)
        values[name] = value
    unknown = set(overrides) - set(declared)
    if unknown:
        raise RehearsalFailed(f"scenario names parameters the template lacks: {sorted(unknown)}")
    return values


def check_parameter(name, spec, value):
    """Applies CloudFormation's own parameter constraints, which moto does not."""
    if "AllowedValues" in spec and value not in [str(v) for v in spec["AllowedValues"]]:
        raise RehearsalFailed(f"parameter {name}={value!r} is not among its AllowedValues")
    if "AllowedPattern" in spec and not re.fullmatch(spec["AllowedPattern"], value):
        raise RehearsalFailed(f"parameter {name}={value!r} does not match its AllowedPattern")
    if spec.get("Type") == "Number":
        number = float(value)
        if "MinValue" in spec and number < float(spec["MinValue"]):
            raise RehearsalFailed(f"parameter {name}={value} is under its MinValue")
        if "MaxValue" in spec and number > float(spec["MaxValue"]):
            raise RehearsalFailed(f"parameter {name}={value} is over its MaxValue")


# ------------------------------------------------------------------------------------------------
# Conditions and resources left out
# ------------------------------------------------------------------------------------------------


PSEUDO = {
    "AWS::AccountId", "AWS::NotificationARNs", "AWS::NoValue", "AWS::Partition", "AWS::Region",
    "AWS::StackId", "AWS::StackName", "AWS::URLSuffix",
}


def check_references(cfn):
    """CloudFormation's own validation: every Ref, GetAtt, Sub and Condition names something."""
    names = set(cfn.get("Parameters", {})) | set(cfn["Resources"]) | PSEUDO
    conditions = set(cfn.get("Conditions", {}))
    problems = set()

    def walk(node, where):
        if isinstance(node, list):
            for n in node:
                walk(n, where)
            return
        if not isinstance(node, dict):
            return
        for fn, arg in node.items():
            if fn == "Ref" and isinstance(arg, str) and arg not in names:
                problems.add(f"{where}: Ref to {arg}, which is no resource or parameter")
            elif fn == "Fn::GetAtt":
                target = (arg.split(".", 1) if isinstance(arg, str) else arg)[0]
                if target not in cfn["Resources"]:
                    problems.add(f"{where}: Fn::GetAtt of {target}, which is no resource")
            elif fn == "Fn::Sub":
                text, extra = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
                for m in re.finditer(r"\$\{([^!}][^}]*)\}", text):
                    target = m.group(1).split(".")[0]
                    if target not in names and target not in extra:
                        problems.add(f"{where}: Fn::Sub names {target}, which is no resource or parameter")
                walk(extra, where)
            elif fn == "Fn::If" and isinstance(arg, list) and arg and arg[0] not in conditions:
                problems.add(f"{where}: Fn::If on {arg[0]}, which is no condition")
            elif fn == "Condition" and isinstance(arg, str) and arg not in conditions:
                problems.add(f"{where}: condition {arg} is not defined")
            if fn != "Fn::Sub":
                walk(arg, where)

    for lid, resource in cfn["Resources"].items():
        walk(resource, lid)
        depends = resource.get("DependsOn", [])
        for dep in [depends] if isinstance(depends, str) else depends:
            if dep not in cfn["Resources"]:
                problems.add(f"{lid}: DependsOn {dep}, which is no resource")
    walk(cfn.get("Outputs", {}), "Outputs")
    walk(cfn.get("Conditions", {}), "Conditions")
    if problems:
        raise RehearsalFailed("the template does not validate:\n  " + "\n  ".join(sorted(problems)))


def condition_values(cfn, parameters):
    """Every condition of the template, evaluated with the parameter values."""
    conditions = cfn.get("Conditions", {})
    done = {}

    def value(expr):
        if isinstance(expr, dict) and len(expr) == 1:
            (fn, arg), = expr.items()
            if fn == "Ref":
                return parameters.get(arg, cfn["Parameters"].get(arg, {}).get("Default"))
            if fn == "Condition":
                return evaluate(arg)
            if fn == "Fn::Equals":
                return str(value(arg[0])) == str(value(arg[1]))
            if fn == "Fn::Not":
                return not value(arg[0])
            if fn == "Fn::And":
                return all(value(a) for a in arg)
            if fn == "Fn::Or":
                return any(value(a) for a in arg)
            raise Unresolvable(f"condition function {fn}")
        return expr

    def evaluate(name):
        if name not in done:
            done[name] = bool(value(conditions[name]))
        return done[name]

    for name in conditions:
        evaluate(name)
    return done


def moto_models(moto_python):
    """Starts listing the types moto's CloudFormation creates, and those Ref cannot name; the
    returned function waits for the answer. moto takes seconds to import, so this runs alongside."""
    code = (
        "import json, warnings; warnings.simplefilter('ignore');"
        "from moto.cloudformation.parsing import get_model_map;"
        "m = get_model_map();"
        "print(json.dumps([sorted(m), sorted(t for t, c in m.items()"
        " if not hasattr(c, 'physical_resource_id'))]))"
    )
    proc = subprocess.Popen([moto_python, "-c", code], stdout=subprocess.PIPE, text=True)

    def answer():
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RehearsalFailed("could not list moto's CloudFormation resource types")
        supported, no_ref = json.loads(out)
        return set(supported), set(no_ref)

    return answer


# Types whose Ref CloudFormation documents as one of their properties, for the types moto's Ref
# gives its internal object instead (no physical_resource_id): Ref of an event bus is its name.
REF_IS_PROPERTY = {"AWS::Events::EventBus": "Name"}


def moto_cannot_create(cfn, supported):
    """Resources moto cannot create, each with why: their type, or a form moto gets wrong."""
    reasons = {}
    resources = cfn["Resources"]
    for lid, r in resources.items():
        if r["Type"] not in supported:
            reasons[lid] = f"moto's CloudFormation has no {r['Type']}"
        elif r["Type"] == "AWS::Events::Rule":
            bus = r.get("Properties", {}).get("EventBusName", "default")
            bus_id = referenced(bus)
            partner = (
                isinstance(bus, str) and "/" in bus
            ) or (
                bus_id in resources and "EventSourceName" in resources[bus_id].get("Properties", {})
            )
            if partner:
                # moto's put_rule keeps only what follows the last "/" of the bus name, and a
                # partner bus is named aws.partner/<partner>/<source>.
                reasons[lid] = "moto cannot put a rule on a partner event bus (a name with '/')"
    return reasons


def prepare_for_moto(cfn, supported, no_ref):
    """The template moto can create: what it cannot is removed, and references to it marked."""
    cfn = copy.deepcopy(cfn)
    reasons = moto_cannot_create(cfn, supported)
    removed = {lid: cfn["Resources"][lid]["Type"] for lid in reasons}
    for lid in removed:
        del cfn["Resources"][lid]
    resources = cfn["Resources"]
    problems = []

    def sub_text(text):
        def repl(m):
            name = m.group(1).split(".")[0]
            return f"{MISSING}:{m.group(1)}" if name in removed else m.group(0)

        return re.sub(r"\$\{([A-Za-z0-9_.:]+)\}", repl, text)

    def walk(node):
        if isinstance(node, list):
            return [walk(n) for n in node]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (fn, arg), = node.items()
            if fn == "Ref" and arg in removed:
                return f"{MISSING}:{arg}"
            if fn == "Ref" and arg in resources and resources[arg]["Type"] in no_ref:
                prop = REF_IS_PROPERTY.get(resources[arg]["Type"])
                value = resources[arg].get("Properties", {}).get(prop) if prop else None
                if value is None:
                    problems.append(f"moto cannot resolve Ref {arg} ({resources[arg]['Type']})")
                    return node
                return walk(value)
            if fn == "Fn::GetAtt":
                parts = arg.split(".", 1) if isinstance(arg, str) else arg
                if parts[0] in removed:
                    return f"{MISSING}:{'.'.join(parts)}"
            if fn == "Fn::Sub":
                if isinstance(arg, str):
                    return {"Fn::Sub": sub_text(arg)}
                return {"Fn::Sub": [sub_text(arg[0]), walk(arg[1])]}
        return {k: walk(v) for k, v in node.items()}

    for lid, resource in list(resources.items()):
        depends = resource.get("DependsOn")
        if depends is not None:
            kept = [d for d in ([depends] if isinstance(depends, str) else depends) if d not in removed]
            if kept:
                resource["DependsOn"] = kept
            else:
                del resource["DependsOn"]
        resources[lid] = walk(resource)
    if "Outputs" in cfn:
        cfn["Outputs"] = walk(cfn["Outputs"])
    if problems:
        raise RehearsalFailed("; ".join(sorted(set(problems))))
    return cfn, removed, reasons


# ------------------------------------------------------------------------------------------------
# Resolving the translated template against the created stack
# ------------------------------------------------------------------------------------------------


class Resolver:
    """Evaluates the template's intrinsics against the live stack, as CloudFormation would."""

    def __init__(self, aws, cfn, parameters, conditions, physical, stack_name, left_out=()):
        self.aws = aws
        self.left_out = set(left_out)
        self.cfn = cfn
        self.parameters = parameters
        self.conditions = conditions
        self.physical = physical
        self.pseudo = {
            "AWS::AccountId": ACCOUNT,
            "AWS::Region": REGION,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": stack_name,
        }
        # moto gives no physical id for some types; CloudFormation's is the property Ref returns.
        for lid, pid in list(physical.items()):
            kind = cfn["Resources"][lid]["Type"]
            if pid is None and kind in REF_IS_PROPERTY:
                physical[lid] = self.resolve(cfn["Resources"][lid]["Properties"][REF_IS_PROPERTY[kind]])

    def ref(self, name):
        """What Ref of a parameter, pseudo parameter or resource gives."""
        if name in self.parameters:
            return self.parameters[name]
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.physical:
            return self.physical[name]
        if name in self.left_out:
            return f"{MISSING}:{name}"
        raise RehearsalFailed(f"Ref to {name}, which is no parameter or created resource")

    def get_att(self, name, attr):
        """What Fn::GetAtt gives, read back from the service that holds the resource."""
        if name in self.left_out:
            return f"{MISSING}:{name}.{attr}"
        if name not in self.physical:
            raise RehearsalFailed(f"Fn::GetAtt of {name}, which the stack did not create")
        kind = self.cfn["Resources"][name]["Type"]
        pid = self.physical[name]
        aws = self.aws
        attrs = {}
        if kind == "AWS::DynamoDB::Table":
            table = aws.client("dynamodb").describe_table(TableName=pid)["Table"]
            attrs = {"Arn": table["TableArn"], "StreamArn": table.get("LatestStreamArn")}
        elif kind == "AWS::SQS::Queue":
            got = aws.client("sqs").get_queue_attributes(QueueUrl=pid, AttributeNames=["QueueArn"])
            attrs = {"Arn": got["Attributes"]["QueueArn"], "QueueName": pid.rsplit("/", 1)[1]}
        elif kind == "AWS::Lambda::Function":
            config = aws.client("lambda").get_function_configuration(FunctionName=pid)
            attrs = {"Arn": config["FunctionArn"]}
        elif kind == "AWS::IAM::Role":
            role = aws.client("iam").get_role(RoleName=pid)["Role"]
            attrs = {"Arn": role["Arn"], "RoleId": role["RoleId"]}
        elif kind == "AWS::Events::EventBus":
            bus = aws.client("events").describe_event_bus(Name=pid)
            attrs = {"Arn": bus["Arn"], "Name": bus["Name"]}
        elif kind == "AWS::Logs::LogGroup":
            groups = aws.client("logs").describe_log_groups(logGroupNamePrefix=pid)["logGroups"]
            attrs = {"Arn": g["arn"] for g in groups if g["logGroupName"] == pid}
        elif kind == "AWS::SNS::Topic":
            attrs = {"TopicArn": pid}
        elif kind == "AWS::Scheduler::ScheduleGroup":
            attrs = {"Arn": aws.client("scheduler").get_schedule_group(Name=pid)["Arn"]}
        elif kind == "AWS::ApiGatewayV2::Api":
            api = aws.client("apigatewayv2").get_api(ApiId=pid)
            attrs = {"ApiId": api["ApiId"], "ApiEndpoint": api.get("ApiEndpoint")}
        elif kind == "AWS::CloudWatch::Alarm":
            alarms = aws.client("cloudwatch").describe_alarms(AlarmNames=[pid])["MetricAlarms"]
            attrs = {"Arn": alarms[0]["AlarmArn"]} if alarms else {}
        if attrs.get(attr) is None:
            raise Unresolvable(f"Fn::GetAtt {name}.{attr} ({kind})")
        return attrs[attr]

    def resolve(self, node):
        """The value a template expression takes on the created stack."""
        if isinstance(node, list):
            return [v for v in (self.resolve(n) for n in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (fn, arg), = node.items()
            if fn == "Ref":
                return NO_VALUE if arg == "AWS::NoValue" else self.ref(arg)
            if fn == "Fn::GetAtt":
                name, attr = arg.split(".", 1) if isinstance(arg, str) else arg
                return self.get_att(name, attr)
            if fn == "Fn::If":
                cond, yes, no = arg
                return self.resolve(yes if self.conditions[cond] else no)
            if fn == "Fn::Join":
                return arg[0].join(str(v) for v in self.resolve(arg[1]))
            if fn == "Fn::Sub":
                text, extra = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))
                return self.sub(text, extra)
            if fn.startswith("Fn::"):
                raise Unresolvable(fn)
        return {k: v for k, v in ((k, self.resolve(v)) for k, v in node.items()) if v is not NO_VALUE}

    def sub(self, text, extra):
        """Fn::Sub: ${Name}, ${Name.Attr} and ${!Literal}."""

        def repl(m):
            inner = m.group(1)
            if inner.startswith("!"):
                return "${" + inner[1:] + "}"
            if inner in extra:
                return str(extra[inner])
            if inner.startswith(f"{MISSING}:"):
                return inner
            if "." in inner:
                name, attr = inner.split(".", 1)
                return str(self.get_att(name, attr))
            return str(self.ref(inner))

        return re.sub(r"\$\{([^}]+)\}", repl, text)


NO_VALUE = object()


# ------------------------------------------------------------------------------------------------
# moto
# ------------------------------------------------------------------------------------------------


class Moto:
    """moto server on a free loopback port, and boto3 clients bound to it."""

    def __init__(self, moto_python):
        env = dict(os.environ, MOTO_IAM_LOAD_MANAGED_POLICIES="true")
        self.log_path = OUT / "moto.log"
        self.log_file = open(self.log_path, "w")
        # serial_moto.py binds 127.0.0.1 port 0 and prints the port it got: no race for a port.
        self.proc = subprocess.Popen(
            [moto_python, str(ROOT / "scripts" / "serial_moto.py"), "0"],
            stdout=subprocess.PIPE,
            stderr=self.log_file,
            env=env,
            text=True,
        )
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.stop()
            raise RehearsalFailed(f"moto server did not start; see {self.log_path}")
        self.endpoint = f"http://127.0.0.1:{line}"
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", int(line)), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RehearsalFailed(f"moto server did not listen; see {self.log_path}")
                time.sleep(0.1)
        self.session = boto3.session.Session(
            aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION
        )
        # No retries: a failure should show at once, not after botocore's back-off.
        self.config = botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"})
        self.clients = {}

    def client(self, service):
        """A boto3 client for service, bound to the moto server only."""
        if service not in self.clients:
            self.clients[service] = self.session.client(
                service, endpoint_url=self.endpoint, config=self.config
            )
        return self.clients[service]

    def stop(self):
        """Stops the moto server this process started."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log_file.close()


def create_prerequisites(aws, declared):
    """The bucket and zips, a secret per secret-ARN parameter, and the alarm topic."""
    s3 = aws.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    created = {"secrets": {}, "topic": None}
    for name, spec in declared.items():
        pattern = spec.get("AllowedPattern", "")
        if ":secretsmanager:" in pattern:
            got = aws.client("secretsmanager").create_secret(
                Name=f"connect-flow-rehearsal/{name}", SecretString="rehearsal-placeholder"
            )
            created["secrets"][name] = got["ARN"]
        elif ":sns:" in pattern and created["topic"] is None:
            created["topic"] = aws.client("sns").create_topic(Name="connect-flow-rehearsal-alarms")[
                "TopicArn"
            ]
    return created


def create_partner_sources(aws, declared, parameters):
    """The partner event source a partner-bus parameter names, as Stripe would create it."""
    events = aws.client("events")
    for name, spec in declared.items():
        value = parameters.get(name, "")
        if "aws\\.partner/" not in spec.get("AllowedPattern", "") or not value:
            continue
        try:
            events.describe_event_source(Name=value)
        except ClientError:
            events.create_partner_event_source(Name=value, Account=ACCOUNT)


def upload_zips(aws, zips):
    """Puts each function's zip where its translated CodeUri points."""
    s3 = aws.client("s3")
    for logical_id, archive in zips.items():
        s3.upload_file(str(archive), BUCKET, f"{logical_id}.zip")


def create_stack(aws, stack_name, cfn, parameters):
    """Creates the stack from S3, as `sam deploy` does for a template this size; waits for it."""
    body = json.dumps(cfn, indent=1, sort_keys=True)
    if len(body.encode()) > TEMPLATE_URL_LIMIT:
        raise RehearsalFailed(f"translated template is {len(body)} bytes, over CloudFormation's 1 MB")
    key = f"{stack_name}.template.json"
    aws.client("s3").put_object(Bucket=BUCKET, Key=key, Body=body.encode())
    cf = aws.client("cloudformation")
    declared = cfn.get("Parameters", {})
    cf.create_stack(
        StackName=stack_name,
        # moto reads the object from its own S3; nothing is fetched from this address.
        TemplateURL=f"https://{BUCKET}.s3.amazonaws.com/{key}",
        Parameters=[
            {"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items() if k in declared
        ],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    deadline = time.monotonic() + 300
    while True:
        status = cf.describe_stacks(StackName=stack_name)["Stacks"][0]["StackStatus"]
        if not status.endswith("_IN_PROGRESS"):
            break
        if time.monotonic() > deadline:
            raise RehearsalFailed(f"{stack_name}: still {status} after 300 s")
        time.sleep(0.5)
    resources = cf.describe_stack_resources(StackName=stack_name)["StackResources"]
    if status != "CREATE_COMPLETE":
        for r in resources:
            if "LogicalResourceId" in r:
                log(f"    {r['LogicalResourceId']:40} {r['ResourceType']:36} {r['ResourceStatus']}")
        for e in cf.describe_stack_events(StackName=stack_name)["StackEvents"]:
            if e.get("ResourceStatusReason"):
                log(f"    {e['LogicalResourceId']}: {e['ResourceStatusReason']}")
        raise RehearsalFailed(f"{stack_name}: stack ended {status}")
    return resources


# ------------------------------------------------------------------------------------------------
# 4. Checks
# ------------------------------------------------------------------------------------------------


def check_resources(cfn, conditions, resources):
    """Every resource the template creates under these conditions is there and CREATE_COMPLETE."""
    expected = {
        lid: r["Type"]
        for lid, r in cfn["Resources"].items()
        if "Condition" not in r or conditions[r["Condition"]]
    }
    # moto lists a resource its conditions leave out as a row with no logical id, type or
    # physical id; there must be exactly as many of those as resources left out.
    blanks = [r for r in resources if "LogicalResourceId" not in r]
    got = {r["LogicalResourceId"]: r for r in resources if "LogicalResourceId" in r}
    failures = []
    for lid, kind in sorted(expected.items()):
        r = got.get(lid)
        if r is None:
            failures.append(f"{lid} ({kind}) was not created")
        elif r["ResourceStatus"] != "CREATE_COMPLETE":
            failures.append(f"{lid} ({kind}) is {r['ResourceStatus']}")
    for lid in sorted(set(got) - set(expected)):
        failures.append(f"{lid} was created but the conditions leave it out")
    skipped = len(cfn["Resources"]) - len(expected)
    if len(blanks) != skipped:
        failures.append(f"moto lists {len(blanks)} blank resources; the conditions leave out {skipped}")
    counts = {}
    for kind in expected.values():
        counts[kind] = counts.get(kind, 0) + 1
    for kind, n in sorted(counts.items()):
        log(f"    {n:3} x {kind}: CREATE_COMPLETE" if not failures else f"    {n:3} x {kind}")
    return failures, {lid: got[lid].get("PhysicalResourceId") for lid in expected if lid in got}


def referenced(node):
    """The one resource or parameter a plain Ref/GetAtt expression names, else None."""
    if isinstance(node, dict) and len(node) == 1:
        (fn, arg), = node.items()
        if fn == "Ref":
            return arg
        if fn == "Fn::GetAtt":
            return (arg.split(".", 1) if isinstance(arg, str) else arg)[0]
    return None


def exists(aws, cfn, declared, name, value):
    """None if value names a live resource of the kind name is, else why not."""
    if name in declared:
        spec = declared[name]
        if ":secretsmanager:" in spec.get("AllowedPattern", ""):
            arn = aws.client("secretsmanager").describe_secret(SecretId=value)["ARN"]
            return None if arn == value else f"secret {value} is {arn}"
        return None
    kind = cfn["Resources"].get(name, {}).get("Type")
    try:
        if kind == "AWS::DynamoDB::Table":
            status = aws.client("dynamodb").describe_table(TableName=value)["Table"]["TableStatus"]
            return None if status == "ACTIVE" else f"table {value} is {status}"
        if kind == "AWS::SQS::Queue":
            if not value.startswith("https://"):
                return f"{value} is not a queue URL (Ref of a queue is its URL)"
            queue_name = value.rsplit("/", 1)[1]
            url = aws.client("sqs").get_queue_url(QueueName=queue_name)["QueueUrl"]
            if url.rsplit("/", 2)[1:] != value.rsplit("/", 2)[1:]:
                return f"queue URL {value} is not {url}"
            return None
        if kind == "AWS::Events::EventBus":
            aws.client("events").describe_event_bus(Name=value)
            return None
        if kind == "AWS::Lambda::Function":
            aws.client("lambda").get_function_configuration(FunctionName=value)
            return None
    except ClientError as e:
        return f"{value}: {e}"
    return None


def check_environments(aws, cfn, resolver, declared):
    """Each function's environment is what the template says, resolved, naming live resources."""
    failures = []
    lam = aws.client("lambda")
    for lid, resource in sorted(cfn["Resources"].items()):
        if resource["Type"] != "AWS::Lambda::Function" or lid not in resolver.physical:
            continue
        config = lam.get_function_configuration(FunctionName=resolver.physical[lid])
        actual = config.get("Environment", {}).get("Variables", {})
        template = resource["Properties"].get("Environment", {}).get("Variables", {})
        for var in sorted(set(template) | set(actual)):
            if var not in actual:
                failures.append(f"{lid}: {var} is missing from the function's environment")
                continue
            if var not in template:
                failures.append(f"{lid}: {var} is set but the template does not set it")
                continue
            value = actual[var]
            if re.search(r"Fn::|'Ref'|\"Ref\"|\$\{|" + MISSING, str(value)):
                failures.append(f"{lid}: {var} is unresolved: {value!r}")
                continue
            try:
                want = resolver.resolve(template[var])
            except Unresolvable as e:
                failures.append(f"{lid}: {var}: the rehearsal cannot evaluate {e}")
                continue
            except RehearsalFailed as e:
                failures.append(f"{lid}: {var}: {e}")
                continue
            if str(want) != str(value):
                failures.append(f"{lid}: {var} is {value!r}, the stack gives {want!r}")
                continue
            name = referenced(template[var])
            if name:
                why = exists(aws, cfn, declared, name, value)
                if why:
                    failures.append(f"{lid}: {var} dangles: {why}")
        role = resource["Properties"].get("Role")
        try:
            want_role = resolver.resolve(role)
        except (Unresolvable, RehearsalFailed) as e:
            failures.append(f"{lid}: its Role cannot be resolved: {e}")
        else:
            if config["Role"] != want_role:
                failures.append(f"{lid}: runs as {config['Role']}, the template says {want_role}")
        log(f"    {lid}: {len(actual)} environment variables resolved")
    return failures


def statements(document):
    """A policy document as a set of (effect, action, resource, condition) rows, one per pair."""
    if isinstance(document, str):
        try:
            document = json.loads(document)
        except json.JSONDecodeError:
            # moto's CloudFormation stores an inline policy given as an object as its Python repr.
            document = ast.literal_eval(document)
    rows = set()
    stmts = document.get("Statement", [])
    for s in [stmts] if isinstance(stmts, dict) else stmts:
        actions = s.get("Action", [])
        resources = s.get("Resource", ["*"] if "NotResource" not in s else [])
        condition = json.dumps(s.get("Condition", {}), sort_keys=True)
        for a in [actions] if isinstance(actions, str) else actions:
            for r in [resources] if isinstance(resources, str) else resources:
                rows.add((s.get("Effect"), a.lower(), str(r), condition))
    return rows


def known_arns(aws, cfn, resolver, declared):
    """The ARNs of what the stack created (a table's indexes and stream too) and of the secrets."""
    arns = set()
    for lid in resolver.physical:
        kind = cfn["Resources"][lid]["Type"]
        try:
            arns.add(resolver.get_att(lid, "Arn"))
        except (Unresolvable, KeyError):
            continue
        if kind == "AWS::DynamoDB::Table":
            table = aws.client("dynamodb").describe_table(TableName=resolver.physical[lid])["Table"]
            arns.add(table.get("LatestStreamArn"))
            for index in table.get("GlobalSecondaryIndexes", []) + table.get("LocalSecondaryIndexes", []):
                arns.add(f"{table['TableArn']}/index/{index['IndexName']}")
    for name, spec in declared.items():
        if ":secretsmanager:" in spec.get("AllowedPattern", ""):
            arns.add(resolver.parameters[name])
    arns.discard(None)
    return arns


def sam_policy_expectations(sam_function, sam_globals):
    """The inline actions and managed policy names SAM should give a function's role."""
    props = sam_function.get("Properties", {})
    policies = props.get("Policies", [])
    actions = set()
    managed = {"AWSLambdaBasicExecutionRole"}
    tracing = props.get("Tracing", sam_globals.get("Tracing"))
    if tracing == "Active":
        managed.add("AWSXrayWriteOnlyAccess")
    templates = []
    for policy in [policies] if isinstance(policies, (str, dict)) else policies:
        if isinstance(policy, str):
            managed.add(policy.rsplit("/", 1)[-1])
        elif isinstance(policy, dict) and "Statement" in policy:
            actions |= {(row[0], row[1]) for row in statements(policy)}
        else:
            templates.append(policy)
    return actions, managed, templates



def check_roles(aws, cfn, resolver, sam, declared):
    """Each role holds exactly the inline statements and managed policies the template gives it."""
    failures = []
    notes = []
    iam = aws.client("iam")
    arns = known_arns(aws, cfn, resolver, declared)
    users = {}
    for lid, r in cfn["Resources"].items():
        name = referenced(r.get("Properties", {}).get("Role"))
        if r["Type"] == "AWS::Lambda::Function" and name:
            users.setdefault(name, []).append(lid)
    for lid, resource in sorted(cfn["Resources"].items()):
        if resource["Type"] != "AWS::IAM::Role" or lid not in resolver.physical:
            continue
        role_name = resolver.physical[lid]
        props = resource["Properties"]
        want = {}
        for policy in props.get("Policies", []):
            want[policy["PolicyName"]] = statements(resolver.resolve(policy["PolicyDocument"]))
        got = {}
        for policy_name in iam.list_role_policies(RoleName=role_name)["PolicyNames"]:
            doc = iam.get_role_policy(RoleName=role_name, PolicyName=policy_name)["PolicyDocument"]
            got[policy_name] = statements(doc)
        for policy_name in sorted(set(want) | set(got)):
            if policy_name not in got:
                failures.append(f"{lid}: inline policy {policy_name} is missing")
                continue
            if policy_name not in want:
                failures.append(f"{lid}: inline policy {policy_name} is not in the template")
                continue
            for row in sorted(got[policy_name] - want[policy_name]):
                failures.append(f"{lid}/{policy_name}: extra {row[0]} {row[1]} on {row[2]}")
            for row in sorted(want[policy_name] - got[policy_name]):
                failures.append(f"{lid}/{policy_name}: missing {row[0]} {row[1]} on {row[2]}")
        actions = sorted({row[1] for rows in got.values() for row in rows})
        for policy_name, rows in sorted(got.items()):
            for row in sorted(rows):
                if row[2] == "*" or row[2] in arns:
                    continue
                if row[2].startswith(MISSING):
                    notes.append(f"{lid}: {row[1]} on {row[2]} (a resource left out) not checked")
                else:
                    failures.append(
                        f"{lid}/{policy_name}: {row[1]} on {row[2]}, which the stack did not create"
                    )
        # Against the SAM template itself: the translator adds no action and no managed policy
        # beyond the logging and tracing ones every function gets.
        for function in users.get(lid, []):
            source = sam["Resources"].get(function, {})
            if source.get("Type") != "AWS::Serverless::Function":
                continue
            want_actions, want_managed, templates = sam_policy_expectations(
                source, sam.get("Globals", {}).get("Function", {})
            )
            if templates:
                notes.append(f"{lid}: policy templates {templates} compared through the translation only")
                continue
            have = {(row[0], row[1]) for rows in got.values() for row in rows}
            for effect, action in sorted(have - want_actions):
                failures.append(f"{lid}: {effect} {action} is not in {function}'s Policies")
            for effect, action in sorted(want_actions - have):
                failures.append(f"{lid}: {effect} {action} of {function}'s Policies is missing")
            have_managed = {
                arn.rsplit("/", 1)[-1] for arn in resolver.resolve(props.get("ManagedPolicyArns", []))
            }
            for name in sorted(have_managed - want_managed):
                failures.append(f"{lid}: managed policy {name} is more than {function}'s Policies ask")
            for name in sorted(want_managed - have_managed):
                failures.append(f"{lid}: managed policy {name} is missing")
        want_trust = statements(resolver.resolve(props["AssumeRolePolicyDocument"]))
        got_trust = statements(iam.get_role(RoleName=role_name)["Role"]["AssumeRolePolicyDocument"])
        if want_trust != got_trust:
            failures.append(f"{lid}: trust policy differs from the template's")
        # moto's CloudFormation ignores ManagedPolicyArns, so nothing is attached there; what can
        # be checked is that each ARN the translator wrote is a real AWS managed policy.
        managed = resolver.resolve(props.get("ManagedPolicyArns", []))
        attached = {
            p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=role_name)["AttachedPolicies"]
        }
        for arn in sorted(attached - set(managed)):
            failures.append(f"{lid}: managed policy {arn} is attached but not in the template")
        for arn in managed:
            try:
                policy = iam.get_policy(PolicyArn=arn)["Policy"]
                version = iam.get_policy_version(PolicyArn=arn, VersionId=policy["DefaultVersionId"])
                managed_actions = sorted({row[1] for row in statements(version["PolicyVersion"]["Document"])})
                notes.append(f"{lid}: managed {arn.rsplit('/', 1)[1]}: {', '.join(managed_actions)}")
            except iam.exceptions.NoSuchEntityException:
                failures.append(f"{lid}: managed policy {arn} does not exist")
        used_by = ", ".join(users.get(lid, [])) or "no function"
        log(f"    {lid} ({used_by}): {len(actions)} inline actions as in the template: {', '.join(actions)}")
    return failures, notes


def names_in(node):
    """The resource and parameter names a template expression refers to."""
    found = set()
    if isinstance(node, list):
        for n in node:
            found |= names_in(n)
    elif isinstance(node, dict):
        for fn, arg in node.items():
            if fn == "Ref" and isinstance(arg, str):
                found.add(arg)
            elif fn == "Fn::GetAtt":
                found.add((arg.split(".", 1) if isinstance(arg, str) else arg)[0])
            elif fn == "Fn::Sub":
                text = arg if isinstance(arg, str) else arg[0]
                found |= {m.split(".")[0] for m in re.findall(r"\$\{([^!}][^}]*)\}", text)}
                if not isinstance(arg, str):
                    found |= names_in(arg[1])
            found |= names_in(arg)
    return found


def create_alarm(aws, name, props):
    """AWS::CloudWatch::Alarm through PutMetricAlarm; returns its physical id (the alarm name)."""
    keys = [
        "ActionsEnabled", "AlarmActions", "AlarmDescription", "ComparisonOperator",
        "DatapointsToAlarm", "Dimensions", "EvaluateLowSampleCountPercentile", "EvaluationPeriods",
        "ExtendedStatistic", "InsufficientDataActions", "MetricName", "Metrics", "Namespace",
        "OKActions", "Period", "Statistic", "Threshold", "ThresholdMetricId", "TreatMissingData",
        "Unit",
    ]
    args = {k: props[k] for k in keys if k in props}
    # CloudFormation takes numbers as strings too (a Ref to a Number parameter is one).
    for k in ("Period", "EvaluationPeriods", "DatapointsToAlarm"):
        if k in args:
            args[k] = int(args[k])
    if "Threshold" in args:
        args["Threshold"] = float(args["Threshold"])
    for query in args.get("Metrics", []):
        if "Period" in query.get("MetricStat", {}):
            query["MetricStat"]["Period"] = int(query["MetricStat"]["Period"])
    name = props.get("AlarmName", name)
    aws.client("cloudwatch").put_metric_alarm(AlarmName=name, **args)
    if not aws.client("cloudwatch").describe_alarms(AlarmNames=[name])["MetricAlarms"]:
        raise RehearsalFailed(f"alarm {name} was not stored")
    return name


def create_schedule_group(aws, name, props):
    """AWS::Scheduler::ScheduleGroup through CreateScheduleGroup; returns its name."""
    name = props.get("Name", name)
    aws.client("scheduler").create_schedule_group(Name=name, Tags=props.get("Tags", []))
    return name


def create_schedule(aws, name, props):
    """AWS::Scheduler::Schedule through CreateSchedule; returns its name."""
    keys = [
        "Description", "EndDate", "FlexibleTimeWindow", "GroupName", "KmsKeyArn",
        "ScheduleExpression", "ScheduleExpressionTimezone", "StartDate", "State", "Target",
    ]
    name = props.get("Name", name)
    args = {k: props[k] for k in keys if k in props}
    aws.client("scheduler").create_schedule(Name=name, **args)
    got = aws.client("scheduler").get_schedule(Name=name, GroupName=args.get("GroupName", "default"))
    if got["Target"]["Arn"] != args["Target"]["Arn"]:
        raise RehearsalFailed(f"schedule {name} targets {got['Target']['Arn']}")
    return name


def create_event_invoke_config(aws, name, props):
    """AWS::Lambda::EventInvokeConfig through PutFunctionEventInvokeConfig."""
    keys = ["FunctionName", "Qualifier", "MaximumRetryAttempts", "MaximumEventAgeInSeconds"]
    args = {k: props[k] for k in keys if k in props}
    # moto's PutFunctionEventInvokeConfig fails without a DestinationConfig, even an empty one.
    args["DestinationConfig"] = props.get("DestinationConfig", {})
    aws.client("lambda").put_function_event_invoke_config(**args)
    return f"{args['FunctionName']}|{args.get('Qualifier', '$LATEST')}"


def create_queue_policy(aws, name, props):
    """AWS::SQS::QueuePolicy through SetQueueAttributes on each of its queues."""
    for url in props["Queues"]:
        aws.client("sqs").set_queue_attributes(
            QueueUrl=url, Attributes={"Policy": json.dumps(props["PolicyDocument"])}
        )
    return name


def create_http_api(aws, name, props):
    """AWS::ApiGatewayV2::Api from its OpenAPI Body: moto has CreateApi and ReimportApi only."""
    client = aws.client("apigatewayv2")
    api = client.create_api(Name=name, ProtocolType="HTTP")
    client.reimport_api(
        ApiId=api["ApiId"], Body=json.dumps(props["Body"]), FailOnWarnings=bool(props.get("FailOnWarnings"))
    )
    return api["ApiId"]


def create_stage(aws, name, props):
    """AWS::ApiGatewayV2::Stage through CreateStage."""
    keys = [
        "AccessLogSettings", "ApiId", "AutoDeploy", "DefaultRouteSettings", "Description",
        "StageName", "StageVariables", "Tags",
    ]
    aws.client("apigatewayv2").create_stage(**{k: props[k] for k in keys if k in props})
    return props["StageName"]


# What moto's CloudFormation lacks but its service APIs have: each type's creator.
CREATORS = {
    "AWS::CloudWatch::Alarm": create_alarm,
    "AWS::Scheduler::ScheduleGroup": create_schedule_group,
    "AWS::Scheduler::Schedule": create_schedule,
    "AWS::Lambda::EventInvokeConfig": create_event_invoke_config,
    "AWS::SQS::QueuePolicy": create_queue_policy,
    "AWS::ApiGatewayV2::Api": create_http_api,
    "AWS::ApiGatewayV2::Stage": create_stage,
}


def create_left_out(aws, cfn, left_out, resolver, stack_name):
    """Creates through moto's service APIs what its CloudFormation cannot, in dependency order,
    and records each one's physical id in the resolver; returns {id: why it stays left out}."""
    pending = set(left_out)
    why = {}
    progress = True
    while pending and progress:
        progress = False
        for lid in sorted(pending):
            if names_in(cfn["Resources"][lid].get("Properties", {})) & pending:
                continue
            pending.discard(lid)
            progress = True
            kind = cfn["Resources"][lid]["Type"]
            creator = CREATORS.get(kind)
            if creator is None:
                why[lid] = ""
                continue
            props = resolver.resolve(cfn["Resources"][lid].get("Properties", {}))
            missing = sorted(set(re.findall(MISSING + r":([A-Za-z0-9]+)", json.dumps(props))))
            if missing:
                why[lid] = f"it names {', '.join(missing)}, which could not be created"
                continue
            try:
                physical = creator(aws, f"{stack_name}-{lid}", props)
            except ValueError as e:
                raise RehearsalFailed(f"{lid}: {e}") from e
            resolver.physical[lid] = physical
            resolver.left_out.discard(lid)
            log(f"    created {lid} ({kind}) through its service's API: {physical}")
    for lid in pending:
        why[lid] = "it depends on itself"
    return why


# An API Gateway integration URI, which wraps the ARN of the function it invokes.
INTEGRATION_URI = r"arn:aws:apigateway:[^:]+:lambda:path/[^/]+/functions/(.+)/invocations"


def check_left_out(cfn, left_out, resolver, arns, topic):
    """What moto's CloudFormation cannot create names only what was created: each reference
    resolves, each ARN in it is a created resource's (or the alarm topic's), each function name a
    function's."""
    failures = []
    functions = {
        pid
        for lid, pid in resolver.physical.items()
        if cfn["Resources"][lid]["Type"] == "AWS::Lambda::Function"
    }
    known = arns | {topic}
    for lid in sorted(left_out):
        try:
            props = resolver.resolve(cfn["Resources"][lid].get("Properties", {}))
        except (Unresolvable, RehearsalFailed) as e:
            failures.append(f"{lid}: {e}")
            continue
        checked = 0
        before = len(failures)

        def walk(node, key=None):
            nonlocal checked
            if isinstance(node, dict):
                if node.get("Name") == "FunctionName" and "Value" in node:
                    checked += 1
                    if node["Value"] not in functions:
                        failures.append(f"{lid}: names function {node['Value']}, which is not one")
                for k, v in node.items():
                    walk(v, k)
            elif isinstance(node, list):
                for v in node:
                    walk(v, key)
            elif isinstance(node, str) and node.startswith("arn:"):
                checked += 1
                inner = re.fullmatch(INTEGRATION_URI, node)
                node = inner.group(1) if inner else node
                if node not in known and not any(node.startswith(a + "/") for a in known):
                    failures.append(f"{lid}: {key} {node} is no created resource")

        walk(props)
        if len(failures) == before:
            log(f"    {lid}: resolves; its {checked} ARNs and function names are the stack's")
    return failures


def check_routes(aws, cfn, sam, resolver):
    """Each HttpApi event of each function is a route of the created API, integrated with it."""
    failures = []
    client = aws.client("apigatewayv2")
    for lid, resource in sorted(cfn["Resources"].items()):
        if resource["Type"] != "AWS::ApiGatewayV2::Api" or lid not in resolver.physical:
            continue
        api_id = resolver.physical[lid]
        integrations = {i["IntegrationId"]: i for i in client.get_integrations(ApiId=api_id)["Items"]}
        routes = {}
        for route in client.get_routes(ApiId=api_id)["Items"]:
            target = route.get("Target", "").removeprefix("integrations/")
            routes[route["RouteKey"]] = integrations.get(target, {}).get("IntegrationUri", "")
        want = {}
        for fid, fn in sam["Resources"].items():
            if fn.get("Type") != "AWS::Serverless::Function" or fid not in resolver.physical:
                continue
            for event in fn.get("Properties", {}).get("Events", {}).values():
                props = event.get("Properties", {})
                if event.get("Type") == "HttpApi" and referenced(props.get("ApiId")) == lid:
                    want[f"{props['Method'].upper()} {props['Path']}"] = resolver.get_att(fid, "Arn")
        for key, function_arn in sorted(want.items()):
            if key not in routes:
                failures.append(f"{lid}: no route {key}")
            elif f"/functions/{function_arn}/invocations" not in routes[key]:
                failures.append(f"{lid}: {key} invokes {routes[key]}, not {function_arn}")
        for key in sorted(set(routes) - set(want)):
            failures.append(f"{lid}: route {key} is no function's HttpApi event")
        log(f"    {lid}: {len(routes)} routes, each to the function whose event names it")
    return failures


def check_event_source_mappings(aws, cfn, resolver):
    """Each mapping reads the queue or stream and invokes the function the template names."""
    failures = []
    lam = aws.client("lambda")
    for lid, resource in sorted(cfn["Resources"].items()):
        if resource["Type"] != "AWS::Lambda::EventSourceMapping" or lid not in resolver.physical:
            continue
        got = lam.get_event_source_mapping(UUID=resolver.physical[lid])
        props = resource["Properties"]
        source = resolver.resolve(props["EventSourceArn"])
        function = resolver.resolve(props["FunctionName"])
        if got["EventSourceArn"] != source:
            failures.append(f"{lid}: reads {got['EventSourceArn']}, the template says {source}")
        if not got["FunctionArn"].endswith(f":function:{function}"):
            failures.append(f"{lid}: invokes {got['FunctionArn']}, the template says {function}")
    return failures


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------


def rehearse_scenario(aws, sam, name, overrides, zips, created, moto, stack_name):
    """Translates, creates and checks one scenario's stack; returns failures, what was left out."""
    supported, no_ref = moto
    declared = sam.get("Parameters", {})
    parameters = choose_parameters(declared, overrides, created)
    create_partner_sources(aws, declared, parameters)
    cfn = translate(sam, parameters, zips)
    (OUT / f"{name}.cfn.json").write_text(json.dumps(cfn, indent=1, sort_keys=True))
    check_references(cfn)
    conditions = condition_values(cfn, parameters)
    on = ", ".join(f"{c}={'true' if v else 'false'}" for c, v in sorted(conditions.items()))
    log(f"  [{name}] translated: {len(cfn['Resources'])} resources; conditions {on}")
    filtered, removed, reasons = prepare_for_moto(cfn, supported, no_ref)
    active_removed = {
        lid: kind
        for lid, kind in removed.items()
        if "Condition" not in cfn["Resources"][lid] or conditions[cfn["Resources"][lid]["Condition"]]
    }
    for lid, kind in sorted(active_removed.items(), key=lambda x: (x[1], x[0])):
        log(f"    not in the stack: {lid}: {reasons[lid]}")
    active_reasons = {lid: (kind, reasons[lid], False) for lid, kind in active_removed.items()}
    resources = create_stack(aws, stack_name, filtered, parameters)
    failures, physical = check_resources(filtered, conditions, resources)
    if failures:
        return failures, active_reasons, []
    resolver = Resolver(aws, filtered, parameters, conditions, physical, stack_name, removed)
    failures += check_environments(aws, filtered, resolver, declared)
    role_failures, notes = check_roles(aws, filtered, resolver, sam, declared)
    failures += role_failures
    failures += check_event_source_mappings(aws, filtered, resolver)
    # Then what moto's CloudFormation cannot create, through the services' own APIs where moto
    # has them, and each checked against what the stack created.
    full = Resolver(aws, cfn, parameters, conditions, dict(physical), stack_name, removed)
    still_out = create_left_out(aws, cfn, active_removed, full, stack_name)
    for lid, kind in active_removed.items():
        if lid in still_out:
            reason = f"{reasons[lid]}, and {still_out[lid]}" if still_out[lid] else reasons[lid]
            active_reasons[lid] = (kind, reason, False)
        else:
            active_reasons[lid] = (kind, reasons[lid], True)
    failures += check_left_out(
        cfn, active_removed, full, known_arns(aws, cfn, full, declared), created["topic"]
    )
    failures += check_routes(aws, cfn, sam, full)
    return failures, active_reasons, notes


def broken_copies(sam):
    """Copies of the template, each with one mistake the rehearsal must catch, and what it is."""
    functions = [
        (lid, r) for lid, r in sam["Resources"].items() if r.get("Type") == "AWS::Serverless::Function"
    ]
    copies = []
    # A Ref to nothing: CloudFormation refuses the template.
    ref = copy.deepcopy(sam)
    for lid, resource in functions:
        variables = ref["Resources"][lid].get("Properties", {}).get("Environment", {}).get("Variables", {})
        var = next((v for v, value in variables.items() if isinstance(value, dict) and "Ref" in value), None)
        if var:
            variables[var] = {"Ref": "NoSuchResourceInTheTemplate"}
            copies.append((ref, f"{lid}'s {var} is a Ref to nothing"))
            break
    # A policy on an index the table does not have: deploys, and grants nothing usable.
    index = copy.deepcopy(sam)
    for lid, resource in functions:
        text = json.dumps(index["Resources"][lid].get("Properties", {}).get("Policies", []))
        if "/index/" in text:
            policies = json.loads(re.sub(r"/index/([A-Za-z0-9_]+)", r"/index/\1_misspelt", text, count=1))
            index["Resources"][lid]["Properties"]["Policies"] = policies
            copies.append((index, f"{lid}'s policy names an index the table lacks"))
            break
    # An alarm on a function that does not exist (a log group's name): deploys, and never fires.
    alarm = copy.deepcopy(sam)
    group = next((lid for lid, r in sam["Resources"].items() if r.get("Type") == "AWS::Logs::LogGroup"), None)
    for lid, resource in alarm["Resources"].items():
        dims = resource.get("Properties", {}).get("Dimensions", [])
        dim = next((d for d in dims if d.get("Name") == "FunctionName"), None)
        if resource.get("Type") == "AWS::CloudWatch::Alarm" and dim and group:
            dim["Value"] = {"Ref": group}
            copies.append((alarm, f"{lid} watches {group}, which is no function"))
            break
    if len(copies) != 3:
        raise RehearsalFailed("self-test: the template has no env Ref, index policy or alarm to break")
    return copies


def main():
    """Runs the rehearsal; returns the exit code."""
    # The translator warns about its own unpublished metrics on every call.
    logging.getLogger("samtranslator").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--template", default=str(ROOT / "infra" / "template.yaml"))
    parser.add_argument("--moto-python", default=str(ROOT / ".venv" / "bin" / "python"))
    parser.add_argument(
        "--bin-dir",
        default=str(ROOT / "target" / "debug"),
        help="where cargo put the binaries (default target/debug)",
    )
    parser.add_argument(
        "--no-build",
        action="store_true",
        help="package target/debug as it is, without `cargo build --workspace --bins` first",
    )
    parser.add_argument(
        "--self-test",
        action="store_true",
        help="also rehearse three broken copies of the template, and fail unless each fails",
    )
    args = parser.parse_args()
    started = time.monotonic()
    template_path = Path(args.template).resolve()
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.cfn.json"):
        old.unlink()
    sam = yaml_parse(template_path.read_text())

    moto_answer = moto_models(args.moto_python)
    if not args.no_build and Path(args.bin_dir).resolve() == (ROOT / "target" / "debug"):
        # The binaries must be this code's. After `cargo test --workspace` this compiles only each
        # function's thin main.rs and links it: --workspace unifies the dependencies' features as
        # the tests' build did, so every library is reused (tests/tests/integration/lambda_runtime.rs too).
        log("== cargo build --workspace --bins (reuses what cargo test built)")
        subprocess.run(
            ["cargo", "build", "--quiet", "--locked", "--workspace", "--bins"], cwd=ROOT, check=True
        )
    log("== package the functions as sam build lays them out (target/debug, x86_64)")
    zips = package_functions(sam, template_path.parent, Path(args.bin_dir))
    moto = moto_answer()

    log("== moto server on loopback")
    aws = Moto(args.moto_python)
    failures = []
    left_out = {}
    notes = []
    try:
        log(f"  at {aws.endpoint}; log in {aws.log_path.relative_to(ROOT)}")
        created = create_prerequisites(aws, sam.get("Parameters", {}))
        upload_zips(aws, zips)
        for name, overrides in SCENARIOS.items():
            log(f"== scenario {name}: translate, create stack, check")
            try:
                got, removed, more_notes = rehearse_scenario(
                    aws, sam, name, overrides, zips, created, moto, f"connect-flow-{name}"
                )
            except RehearsalFailed as e:
                got, removed, more_notes = [str(e)], {}, []
            except AWS_ERRORS as e:
                where = aws.log_path.relative_to(ROOT)
                got, removed, more_notes = [f"{e} (moto's side: {where})"], {}, []
            failures += [f"[{name}] {f}" for f in got]
            notes += more_notes
            for lid, (kind, reason, made) in removed.items():
                left_out.setdefault((made, kind, reason), set()).add(lid)
            log(f"  [{name}] {'FAILED' if got else 'ok'}")
        if args.self_test:
            log("== self-test: the rehearsal must fail on each of these broken copies")
            for n, (broken, what) in enumerate(broken_copies(sam)):
                try:
                    got, _, _ = rehearse_scenario(
                        aws, broken, f"broken{n}", SCENARIOS["defaults"], zips, created, moto,
                        f"connect-flow-broken{n}",
                    )
                except (RehearsalFailed, *AWS_ERRORS) as e:
                    got = [str(e)]
                if got:
                    log(f"  ok, caught: {what}: {got[0][:300]}")
                else:
                    failures.append(f"self-test: the rehearsal passed a broken copy: {what}")
    finally:
        aws.stop()

    log("== notes: the managed policies SAM attached, which moto's CloudFormation does not attach")
    by_policy = {}
    for note in notes:
        role, text = note.split(": ", 1)
        by_policy.setdefault(text, set()).add(role)
    for text, roles in sorted(by_policy.items()):
        log(f"  {text}\n    on {', '.join(sorted(roles))}")
    log("== what moto's CloudFormation cannot create, created through the service's own API")
    for (made, kind, reason), lids in sorted(left_out.items()):
        if made:
            log(f"  {kind} ({reason}): {', '.join(sorted(lids))}")
    log("== left out: what the rehearsal cannot create at all (its references are still checked)")
    for (made, kind, reason), lids in sorted(left_out.items()):
        if not made:
            log(f"  {kind} ({reason}): {', '.join(sorted(lids))}")
    elapsed = time.monotonic() - started
    if failures:
        log(f"== deploy rehearsal FAILED ({len(failures)} problems, {elapsed:.0f} s)")
        for f in failures:
            log(f"  {f}")
        return 1
    log(f"== deploy rehearsal passed in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RehearsalFailed as e:
        print(f"deploy rehearsal FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except subprocess.CalledProcessError as e:
        command = " ".join(e.cmd)
        print(f"deploy rehearsal FAILED: {command} exited {e.returncode}", file=sys.stderr, flush=True)
        sys.exit(1)

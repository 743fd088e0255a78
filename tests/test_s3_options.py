"""storage.s3 ``encrypt``/``keyid``/``objectacl`` and the AWS credential sources (issue 15,
item 1): tables for the pure parts, then moto (signature checking on) for what S3 records:
the encryption HeadObject reports, the ACL GetObjectAcl reports, a session token checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import s3_support  # tests/ is on sys.path under pytest (rootdir conftest)
import trio

from registry.config import ConfigError, load_config
from registry.config.aws import fill_s3_credentials
from registry.drivers import base
from registry.drivers.s3.driver import S3Driver
from registry.drivers.s3.params import S3ConfigError, S3Params

BASE = {"accesskey": "AK", "secretkey": "SK", "bucket": "b", "region": "us-east-1"}
TEST_TIMEOUT_S = 120  # every moto test; a hang fails instead of blocking the suite


# --- write headers (pure) --------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra,expected",
    [
        ({}, {"x-amz-storage-class": "STANDARD"}),  # private is S3's default: no header
        ({"objectacl": "private"}, {"x-amz-storage-class": "STANDARD"}),
        ({"storageclass": "NONE", "objectacl": "public-read"}, {"x-amz-acl": "public-read"}),
        ({"encrypt": True, "storageclass": "NONE"},
         {"x-amz-server-side-encryption": "AES256"}),
        ({"encrypt": "true", "keyid": "arn:k", "storageclass": "NONE"},
         {"x-amz-server-side-encryption": "aws:kms",
          "x-amz-server-side-encryption-aws-kms-key-id": "arn:k"}),
        # keyid without encrypt: nothing (S3 refuses a key id alone; we warn)
        ({"keyid": "arn:k", "storageclass": "NONE"}, {}),
    ],
)
def test_write_headers_follow_encrypt_keyid_objectacl(extra: dict, expected: dict) -> None:
    assert S3Params.parse({**BASE, **extra}).write_headers() == expected


@pytest.mark.parametrize(
    "extra,message",
    [
        ({"objectacl": "everyone"}, r"^storage\.s3\.objectacl: 'everyone' is not one of"),
        ({"encrypt": "maybe"}, r"^storage\.s3\.encrypt: expected true or false"),
        ({"encrypt": True, "regionendpoint": "https://acc.r2.cloudflarestorage.com"},
         r"R2 rejects server-side encryption"),
        ({"objectacl": "public-read", "regionendpoint": "https://acc.r2.cloudflarestorage.com"},
         r"R2 rejects"),
    ],
)
def test_bad_or_r2_incompatible_options_are_refused(extra: dict, message: str) -> None:
    with pytest.raises(S3ConfigError, match=message):
        S3Params.parse({**BASE, **extra})


# --- credential sources (pure: env + files in, credentials out) ----------------------------------

CREDS_FILE = """\
[default]
aws_access_key_id = FILEDEFAULT
aws_secret_access_key = filesecret

[other]
aws_access_key_id = FILEOTHER
aws_secret_access_key = othersecret
aws_session_token = othertoken
"""
ENV_KEYS = {"AWS_ACCESS_KEY_ID": "ENVKEY", "AWS_SECRET_ACCESS_KEY": "envsecret"}


@pytest.mark.parametrize(
    "configured,environ,home_file,expected",
    [
        # configured keys win over everything
        ({"accesskey": "CFG", "secretkey": "cfgsecret"}, ENV_KEYS, True,
         {"accesskey": "CFG", "secretkey": "cfgsecret"}),
        # the environment comes before the file, with its session token
        ({}, {**ENV_KEYS, "AWS_SESSION_TOKEN": "tok"}, True,
         {"accesskey": "ENVKEY", "secretkey": "envsecret", "sessiontoken": "tok"}),
        # the SDK's older names
        ({}, {"AWS_ACCESS_KEY": "OLD", "AWS_SECRET_KEY": "oldsecret"}, False,
         {"accesskey": "OLD", "secretkey": "oldsecret"}),
        # half an environment pair is no pair: the file's default profile
        ({}, {"AWS_ACCESS_KEY_ID": "ENVKEY"}, True,
         {"accesskey": "FILEDEFAULT", "secretkey": "filesecret"}),
        ({}, {"AWS_PROFILE": "other"}, True,
         {"accesskey": "FILEOTHER", "secretkey": "othersecret", "sessiontoken": "othertoken"}),
        ({}, {"AWS_DEFAULT_PROFILE": "other"}, True,
         {"accesskey": "FILEOTHER", "secretkey": "othersecret", "sessiontoken": "othertoken"}),
        # half the configured pair: the chain decides, and a config token is not mixed in
        ({"accesskey": "CFG", "sessiontoken": "cfgtoken"}, ENV_KEYS, False,
         {"accesskey": "ENVKEY", "secretkey": "envsecret"}),
        # a profile that does not exist, or no file: nothing found, the section is untouched
        ({}, {"AWS_PROFILE": "missing"}, True, {}),
        ({}, {}, False, {}),
    ],
)
def test_credential_chain(
    tmp_path: Path, configured: dict, environ: dict, home_file: bool, expected: dict
) -> None:
    if home_file:
        (tmp_path / ".aws").mkdir()
        (tmp_path / ".aws" / "credentials").write_text(CREDS_FILE)
    tree: dict[str, Any] = {"storage": {"s3": {"bucket": "b", **configured}}}
    fill_s3_credentials(tree, {"HOME": str(tmp_path), **environ})
    got = {k: v for k, v in tree["storage"]["s3"].items() if k != "bucket"}
    assert got == expected


def test_shared_credentials_file_variable_and_bad_profile(tmp_path: Path) -> None:
    path = tmp_path / "creds.ini"
    path.write_text("[default]\naws_access_key_id = ONLYKEY\n")
    tree: dict[str, Any] = {"storage": {"s3": {"bucket": "b"}}}
    with pytest.raises(ConfigError, match="needs both aws_access_key_id and"):
        fill_s3_credentials(tree, {"AWS_SHARED_CREDENTIALS_FILE": str(path)})
    path.write_text("not an ini file\n")
    with pytest.raises(ConfigError, match=r"^AWS shared credentials file .*creds\.ini"):
        fill_s3_credentials(tree, {"AWS_SHARED_CREDENTIALS_FILE": str(path)})


def test_load_config_takes_keys_from_the_environment_only_for_s3() -> None:
    env = {"REGISTRY_STORAGE": "s3", "REGISTRY_STORAGE_S3_BUCKET": "b",
           "REGISTRY_STORAGE_S3_REGION": "eu-west-1", **ENV_KEYS, "AWS_SESSION_TOKEN": "t"}
    config, _ = load_config(None, env)
    params = S3Params.parse(config.storage.params)
    assert (params.accesskey, params.secretkey, params.sessiontoken) == (
        "ENVKEY", "envsecret", "t")
    fs, _ = load_config(None, ENV_KEYS)  # the filesystem default gets no AWS keys
    assert "accesskey" not in fs.storage.params.get("filesystem", fs.storage.params)


def test_no_credentials_anywhere_names_every_source() -> None:
    config, _ = load_config(None, {"REGISTRY_STORAGE": "s3", "REGISTRY_STORAGE_S3_BUCKET": "b",
                                   "REGISTRY_STORAGE_S3_REGION": "eu-west-1", "HOME": "/nonexistent"})
    with pytest.raises(S3ConfigError, match="AWS_ACCESS_KEY_ID.*shared credentials file"):
        S3Params.parse(config.storage.params)


# --- against moto (signature checking on) ----------------------------------------------------------


@pytest.mark.s3
@pytest.mark.parametrize(
    "options,expected",
    [
        ({"encrypt": True}, {"ServerSideEncryption": "AES256"}),
        ({"encrypt": True, "keyid": "registry-test-key"},
         {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "registry-test-key"}),
    ],
)
async def test_objects_are_written_encrypted(options: dict, expected: dict) -> None:
    """PutObject, a multipart upload and CopyObject (move) all carry the SSE headers, signed:
    moto checks the signature, then records the encryption HeadObject reports."""
    with trio.fail_after(TEST_TIMEOUT_S):
        async with s3_support.open_s3_driver(**options) as driver:
            await driver.put_content("/small", b"x" * 10)
            await driver.put_content("/kept", b"k")
            async with driver.writer("/big") as w:  # one full part + the rest: multipart
                await w.write(b"y" * (5 * 1024 * 1024 + 10))
                await w.commit()
            await driver.move("/small", "/moved")
            s3 = s3_support.moto_server().boto3()
            bucket, root = driver.params.bucket, driver.params.root
            for name in ("kept", "big", "moved"):  # PutObject, multipart, CopyObject
                head = await trio.to_thread.run_sync(
                    lambda n=name: s3.head_object(Bucket=bucket, Key=f"{root}/{n}"))
                assert {k: head.get(k) for k in expected} == expected, name


@pytest.mark.s3
async def test_objectacl_is_applied_and_private_sends_no_header() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        s3 = s3_support.moto_server().boto3()
        for acl, public in (("public-read", True), ("private", False)):
            async with s3_support.open_s3_driver(objectacl=acl) as driver:
                await driver.put_content("/obj", b"z")
                grants = (await trio.to_thread.run_sync(lambda d=driver: s3.get_object_acl(
                    Bucket=d.params.bucket, Key=f"{d.params.root}/obj")))["Grants"]
                readers = {g["Grantee"].get("URI", "") for g in grants
                           if g["Permission"] == "READ"}
                assert ("http://acs.amazonaws.com/groups/global/AllUsers" in readers) == public


def _moto_with_assumed_role() -> tuple[Any, dict[str, str], str]:
    """A moto server of its own (IAM auth on) and temporary credentials from STS AssumeRole,
    which moto checks: a request signed with the key but the wrong (or no) session token is
    refused (InvalidToken / InvalidId)."""
    import boto3

    server = s3_support.s3kit.start_moto(s3_support.free_port())
    # Unauthenticated setup actions: create_user, put_user_policy, create_access_key,
    # create_role, put_role_policy.
    httpx.post(f"{server.endpoint}/moto-api/reset-auth", content="5").raise_for_status()
    boto = {"endpoint_url": server.endpoint, "region_name": s3_support.MOTO_REGION}
    iam = boto3.client("iam", aws_access_key_id="AKIDSETUP", aws_secret_access_key="x", **boto)
    allow_all = ('{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*",'
                 '"Resource":"*"}]}')
    iam.create_user(UserName="admin")
    iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=allow_all)
    key = iam.create_access_key(UserName="admin")["AccessKey"]
    trust = ('{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":'
             '{"AWS":"*"},"Action":"sts:AssumeRole"}]}')
    role = iam.create_role(RoleName="registry", AssumeRolePolicyDocument=trust)["Role"]
    iam.put_role_policy(RoleName="registry", PolicyName="s3", PolicyDocument=allow_all)
    server.access_key, server.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
    bucket = server.new_bucket()
    sts = boto3.client("sts", aws_access_key_id=server.access_key,
                       aws_secret_access_key=server.secret_key, **boto)
    creds = sts.assume_role(RoleArn=role["Arn"], RoleSessionName="registry-test")["Credentials"]
    env = {"AWS_ACCESS_KEY_ID": creds["AccessKeyId"],
           "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
           "AWS_SESSION_TOKEN": creds["SessionToken"]}
    return server, env, bucket


@pytest.mark.s3
async def test_session_token_from_the_environment_is_sent_and_checked() -> None:
    s3_support.require("moto")
    s3_support.require("boto3")
    server, aws_env, bucket = await trio.to_thread.run_sync(_moto_with_assumed_role)
    try:
        with trio.fail_after(TEST_TIMEOUT_S):
            registry_env = {"REGISTRY_STORAGE": "s3", **{
                f"REGISTRY_STORAGE_S3_{k.upper()}": str(v)
                for k, v in server.params(bucket, accesskey="", secretkey="").items()}}
            for token, works in ((aws_env["AWS_SESSION_TOKEN"], True), ("forged", False)):
                config, _ = load_config(None, {**registry_env, **aws_env,
                                               "AWS_SESSION_TOKEN": token})
                driver = S3Driver.from_params(config.storage.params)
                try:
                    if works:
                        await driver.put_content("/t", b"ok")
                        assert await driver.get_content("/t") == b"ok"
                    else:
                        with pytest.raises(base.DriverError):
                            await driver.put_content("/t", b"no")
                finally:
                    await driver.aclose()
    finally:
        await trio.to_thread.run_sync(server.stop)

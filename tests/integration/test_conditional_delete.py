# ruff: noqa: F811 - the fixtures imported from s3_fixtures are arguments here
"""The S3 set-aside on a botocore that has no IfMatch on DeleteObject (the core
package allows botocore>=1.34; 1.34.162 has none): the client refuses the parameter before any
request, which is no ClientError."""

from __future__ import annotations

import hashlib

import obstore
import pytest
from s3_fixtures import own_store, s3_env, seaweed  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


def test_a_client_without_if_match_gets_the_last_look_and_a_plain_delete(s3_env, tmp_path, monkeypatch):
    from botocore.exceptions import ParamValidationError

    from pruning_core import objectstore

    store = own_store(s3_env, tmp_path, "old-boto")
    good = b"the bytes as uploaded" * 100
    artifact_id = hashlib.sha256(good).hexdigest()
    obstore.put(store.objects, artifact_id, good[:-1] + b"?")  # changed behind the service's back
    changed = objectstore._object_version(obstore.head(store.objects, artifact_id))
    client = store._multipart()

    def old_botocore(**kwargs):  # what botocore 1.34 answers (it validates before sending)
        if "IfMatch" in kwargs:
            raise ParamValidationError(report='Unknown parameter in input: "IfMatch"')
        raise AssertionError("unexpected call")

    monkeypatch.setattr(client, "delete_object", old_botocore)
    where = store.quarantine(artifact_id, changed)
    assert where is not None
    assert not store.exists(artifact_id)  # the changed bytes are out of the way
    assert store.set_aside() == 1

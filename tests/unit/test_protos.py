import subprocess
import sys

from conftest import ROOT


def test_generated_code_is_up_to_date():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_service_has_every_method():
    from pruning.v1 import pruning_pb2 as pb

    methods = {
        m.name: (m.client_streaming, m.server_streaming)
        for m in pb.DESCRIPTOR.services_by_name["PruningService"].methods
    }
    assert methods == {
        "UploadModel": (True, False),
        "UploadDataset": (True, False),
        "CreateJob": (False, False),
        "GetJob": (False, False),
        "ListJobs": (False, False),
        "WatchJob": (False, True),
        "CancelJob": (False, False),
        "DownloadArtifact": (False, True),
        "DeleteArtifact": (False, False),
        "GetArtifact": (False, False),
        "ListArtifacts": (False, False),
    }

"""The committed stubs in proto/ are exactly what grpcio-tools (the pinned version) generates from
flexavatar.proto, with the one documented post-processing step (package-relative import in the _grpc module)."""
from __future__ import annotations

import pytest

from flexrt.proto import generate


def test_regenerated_stubs_match_committed_files(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) is not installed")
    version = generate.grpcio_tools_version()
    assert version == generate.PINNED_GRPCIO_TOOLS, (
        f"stubs are generated with grpcio-tools=={generate.PINNED_GRPCIO_TOOLS} (see proto/README.md), "
        f"found {version}: pip install grpcio-tools=={generate.PINNED_GRPCIO_TOOLS}"
    )
    fresh = generate.generate(tmp_path)
    for name, data in fresh.items():
        committed = (generate.PROTO_DIR / name).read_bytes()
        assert committed == data, f"proto/{name} is stale: run `python -m flexrt.proto.generate`"


def test_stubs_import_and_declare_the_service():
    from flexrt.proto import flexavatar_pb2 as pb
    from flexrt.proto import flexavatar_pb2_grpc as pb_grpc

    service = pb.DESCRIPTOR.services_by_name["FlexAvatar"]
    assert service.full_name == "flexavatar.v1.FlexAvatar"
    assert {m.name for m in service.methods} == {
        "CreateAvatar", "GetAvatar", "ListAvatars", "DeleteAvatar", "GetServerInfo", "Animate", "FitAvatar"}
    animate = service.methods_by_name["Animate"]
    assert animate.client_streaming and animate.server_streaming
    fit = service.methods_by_name["FitAvatar"]
    assert fit.server_streaming and not fit.client_streaming
    assert hasattr(pb_grpc, "FlexAvatarStub") and hasattr(pb_grpc, "add_FlexAvatarServicer_to_server")
    assert (pb.RAW_RGB8, pb.JPEG, pb.PNG) == (1, 2, 3)

"""Provider discovery (DESIGN.md section 2), the ABI check and hops.info()."""

import json

import pytest

import hops
from hops import _library


@pytest.fixture
def provider_path():
    return hops.info().path


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No explicit library, no manifests but the ones a test writes, no system dirs."""
    monkeypatch.delenv("HOPS_LIBRARY", raising=False)
    monkeypatch.setenv("HOPS_PROVIDER_PATH", str(tmp_path))
    monkeypatch.setattr(_library, "_SYSTEM_MANIFEST_DIRS", ())
    return tmp_path


def write_manifest(folder, name, **entry):
    (folder / f"{name}.json").write_text(json.dumps(entry))


def test_info_names_the_provider(provider_path):
    info = hops.info()
    assert info.abi.startswith("1.") and info.version
    assert {"gdn_chunk_fwd", "gdn_recurrent", "conv1d_fwd", "conv1d_update", "gdn_gating",
            "gated_rmsnorm"} <= set(info.ops)
    assert any(backend.name == "cpu" and backend.available for backend in info.backends)
    assert provider_path in str(info) and info.source in str(info)


def test_explicit_library_wins(clean_env, monkeypatch, provider_path):
    write_manifest(clean_env, "other", library="/nonexistent/libother.so", abi=1, priority=99)
    monkeypatch.setenv("HOPS_LIBRARY", provider_path)
    assert _library.discover().source == "HOPS_LIBRARY"


def test_explicit_library_that_fails_is_an_error(clean_env, monkeypatch, provider_path):
    write_manifest(clean_env, "good", library=provider_path, abi=1)
    monkeypatch.setenv("HOPS_LIBRARY", "/nonexistent/libhops.so")
    with pytest.raises(hops.HopsError, match="HOPS_LIBRARY=/nonexistent/libhops.so"):
        _library.discover()


def test_manifests_by_priority_skipping_broken_and_foreign_abi(clean_env, provider_path, tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libhops.so").symlink_to(provider_path)
    write_manifest(clean_env, "a_broken", library="/nonexistent/libbroken.so", abi=1, priority=10)
    write_manifest(clean_env, "b_future", library=provider_path, abi="2.0", priority=20)
    write_manifest(clean_env, "c_relative", library="lib/libhops.so", abi="1.0", priority=5)
    write_manifest(clean_env, "d_low", library=provider_path, abi=1, priority=1)
    provider = _library.discover()
    assert provider.source == f"manifest {clean_env / 'c_relative.json'}"


def test_a_library_without_the_entry_point_is_not_a_provider(clean_env):
    write_manifest(clean_env, "libc", library="libc.so.6", abi=1)
    with pytest.raises(hops.HopsError) as error:
        _library.open_provider(_library.Candidate(_library.Path("libc.so.6"), "test"))
    assert "cannot load as a hops provider" in error.value.message


def test_falls_back_to_the_bundled_or_built_library(clean_env):
    built = [path for path in (_library._BUNDLED, _library._IN_TREE) if path.is_file()]
    if not built:
        pytest.skip("no bundled or in-tree libhops.so (./run.sh build makes one)")
    assert _library.discover().path == built[0].resolve()


def test_nothing_found_lists_what_was_tried(clean_env, monkeypatch):
    monkeypatch.setattr(_library, "_BUNDLED", clean_env / "none" / "libhops.so")
    monkeypatch.setattr(_library, "_IN_TREE", clean_env / "none2" / "libhops.so")
    write_manifest(clean_env, "broken", library="/nonexistent/libbroken.so", abi=1)
    with pytest.raises(hops.HopsError) as error:
        _library.discover()
    assert "no hops provider found" in error.value.message and "libbroken.so" in error.value.message

"""The conformance-lite smoke test of an installed hops wheel (./run.sh wheel runs it
in a fresh venv holding only the wheel and numpy): the package found the library
it bundles, the backend modules beside it load, and each op family's numpy path
matches the float64 reference of tests/python/reference.py.

    python wheel_smoke.py        (not from the source tree: `hops` must be the installed one)
"""

import re
import sys
from pathlib import Path

import numpy as np

import hops

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
import reference  # noqa: E402  (numpy only)

F32, GDN, F16 = 1e-5, 1e-4, 1e-2  # as tests/python/test_ops.py
results = {"passed": 0, "failed": 0}


def check(name, error, tolerance):
    ok = error <= tolerance
    results["passed" if ok else "failed"] += 1
    print(f"{'ok  ' if ok else 'FAIL'} {name}: relative error {error:.2e} (tolerance {tolerance:.0e})")


def relative_error(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30))


def check_provider():
    info = hops.info()
    print(info)
    package = Path(hops.__file__).resolve().parent
    bundled = package / "lib"
    assert Path(sys.prefix).resolve() in package.parents, f"hops imported from {package}, not this venv"
    assert info.source == "bundled with the package", info.source
    assert Path(info.path).parent == bundled, info.path
    backends = {backend.name: backend for backend in info.backends}
    assert backends["cpu"].available
    # Each bundled module is listed, loaded from the package's lib/ (a detail names its path).
    loaded_from = {re.search(r"/\S*/libhops_\w+\.so", backend.detail)[0] for backend in info.backends
                   if "libhops_" in backend.detail}
    assert loaded_from == {str(module) for module in bundled.glob("libhops_*.so")}, loaded_from
    results["passed"] += 1
    return backends


def check_ops(rng, device=None):
    where = {} if device is None else {"device": device}
    suffix = "" if device is None else f" on {device}"
    q, k = rng.standard_normal((2, 2, 37, 2, 16)).astype(np.float32)
    v = rng.standard_normal((2, 37, 4, 8)).astype(np.float32)
    g = -rng.uniform(0.01, 0.5, (2, 37, 4)).astype(np.float32)
    beta = rng.uniform(0.1, 0.9, (2, 37, 4)).astype(np.float32)
    h0 = rng.standard_normal((2, 4, 16, 8)).astype(np.float32)
    o, final = hops.ops.gdn_chunk_fwd(q, k, v, g, beta, initial_state=h0, use_qk_l2norm=True,
                                      output_final_state=True, **where)
    o_ref, final_ref = reference.gdn(q, k, v, g, beta, h0, use_qk_l2norm=True)
    check("gdn_chunk_fwd" + suffix, max(relative_error(o, o_ref), relative_error(final, final_ref)), GDN)

    pool = rng.standard_normal((3, 4, 16, 8)).astype(np.float32)
    slots = np.array([2, 0], dtype=np.int64)
    o_ref, pool_ref = reference.gdn(q[:, :1], k[:, :1], v[:, :1], g[:, :1], beta[:, :1], pool, slots=slots)
    o = hops.ops.gdn_recurrent(q[:, :1].copy(), k[:, :1].copy(), v[:, :1].copy(), g[:, :1].copy(),
                               beta[:, :1].copy(), pool, state_indices=slots, **where)
    check("gdn_recurrent" + suffix, max(relative_error(o, o_ref), relative_error(pool, pool_ref)), F32)

    x, z = rng.standard_normal((2, 3, 5, 64)).astype(np.float16)
    weight = rng.standard_normal(64).astype(np.float32)
    y = hops.ops.gated_rmsnorm(x, z, weight, eps=1e-5, **where)
    check("gated_rmsnorm f16" + suffix, relative_error(y, reference.gated_rmsnorm(x, z, weight, eps=1e-5)), F16)

    x = rng.standard_normal((2, 9, 12)).astype(np.float32)
    weight = rng.standard_normal((12, 4)).astype(np.float32)
    bias = rng.standard_normal(12).astype(np.float32)
    y, final = hops.ops.conv1d_fwd(x, weight, bias, output_final_state=True, **where)
    y_ref, final_ref = reference.conv1d(x, weight, bias, state_len=3)
    check("conv1d_fwd" + suffix, max(relative_error(y, y_ref), relative_error(final, final_ref)), F32)

    if device is None:  # the rest on the CPU only: the point is the package, not the backends
        A_log = np.log(rng.uniform(1, 16, 6)).astype(np.float32)
        a, b = rng.standard_normal((2, 3, 5, 6)).astype(np.float32) * 10
        dt_bias = rng.standard_normal(6).astype(np.float32)
        g, beta = hops.ops.gdn_gating(A_log, a, b, dt_bias)
        g_ref, beta_ref = reference.gdn_gating(A_log, a, b, dt_bias)
        check("gdn_gating", max(relative_error(g, g_ref), relative_error(beta, beta_ref)), F32)

        x = rng.standard_normal((3, 12)).astype(np.float32)
        pool = rng.standard_normal((4, 12, 5)).astype(np.float32)
        y_ref, pool_ref = reference.conv1d_update(x[:, None], pool, weight, slots=[2, -1, 0])
        y = hops.ops.conv1d_update(x, pool, weight, state_indices=[2, -1, 0])
        check("conv1d_update", max(relative_error(y[[0, 2]], y_ref[[0, 2], 0]), relative_error(pool, pool_ref)), F32)


def main():
    backends = check_provider()
    rng = np.random.default_rng(1234)
    check_ops(rng)
    if "opencl" in backends and backends["opencl"].available:
        check_ops(rng, device="opencl")
    else:
        print("opencl: not available here, its module was checked to load only")
    print(f"wheel smoke: {results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Two JAX processes on one machine read disjoint shares of the data whose union is the data, and turn
their host batches into one global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import packed_data_util as u  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORKER = textwrap.dedent(
    """
    import json, sys
    import jax
    port, pid, data_dir, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    import numpy as np
    import packed_data_util as u
    from octomed_jax.data import Example, host_examples, make_iterator, to_global_batch
    from octomed_jax.sharding import make_mesh

    cfg = u.data_config(data_dir, epochs=1, batch_size=2)
    stream = host_examples(cfg, u.MODEL_CFG, jax.process_index(), jax.process_count())
    read = [[e.source, e.index] for e in stream if isinstance(e, Example)]

    it = make_iterator(cfg, u.MODEL_CFG)  # process index and count from jax
    host = next(it)
    mesh = make_mesh({"data": -1})  # 4 devices over 2 processes
    batch = to_global_batch(host, mesh)
    ids = batch.inputs.input_ids
    local = sorted((s.index[0].start, np.asarray(s.data).tolist()) for s in ids.addressable_shards)
    own = np.concatenate([np.asarray(rows) for _, rows in local])
    json.dump({
        "read": read,
        "global_shape": list(ids.shape),
        "positions_shape": list(batch.inputs.positions.shape),
        "own_rows_match": bool((own == host["input_ids"]).all()),
        "first_row": local[0][0],
    }, open(out, "w"))
    jax.distributed.shutdown()
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_read_disjoint_shares_whose_union_is_the_data(tmp_path):
    data_dir = str(tmp_path / "data")
    counts = u.mixed_dataset(data_dir, n_text=12, n_image=8)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ)
    env.update(
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([ROOT, os.path.dirname(__file__)]),
    )
    port = free_port()
    outs = [tmp_path / f"out{i}.json" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(port), str(i), data_dir, str(outs[i])],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    for p in procs:
        try:
            log, _ = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, log[-3000:]
    results = [json.loads(o.read_text()) for o in outs]
    shares = [{tuple(x) for x in r["read"]} for r in results]
    assert all(len(s) == len(r["read"]) for s, r in zip(shares, results, strict=True))  # no repeats within a host
    assert not shares[0] & shares[1]
    everything = {(src, i) for src, n in counts.items() for i in range(n)}
    assert shares[0] | shares[1] == everything
    assert abs(len(shares[0]) - len(shares[1])) <= 1 * len(counts)
    for r in results:
        assert r["global_shape"] == [4, 256] and r["positions_shape"] == [3, 4, 256]
        assert r["own_rows_match"]  # each process's shards of the global batch hold its own host rows
    assert sorted(r["first_row"] for r in results) == [0, 2]

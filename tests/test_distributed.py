"""Two processes (gloo, CPU) through DistributedDataParallel train like one process."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from minbert.config import load_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_config(checkpoint, data_dir):
    # No dropout anywhere: one process and two draw different dropout masks otherwise.
    return load_config(None, [
        f"model.checkpoint={checkpoint}", f"data.dir={data_dir}", "model.head_dropout=0.0",
        "train.batch_size=8", "train.eval_batch_size=16", "train.threads=1", "train.predict_test=false",
        "train.phases=[{tasks: [sst, para, sts], epochs: 2, lr: 1e-3}]",
    ])  # fmt: skip


def _worker(rank: int, world: int, port: int, cfg, out) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    from minbert.train import train

    try:
        train(cfg, out, progress=False, device="cpu")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, small_data_dir, embedded_dir):
    from conftest import make_hf_checkpoint
    from minbert.train import train

    ckpt = make_hf_checkpoint(tmp_path / "bert", embedded_dir / "vocab.txt",
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    cfg = ddp_config(ckpt, small_data_dir)
    single = train(cfg, tmp_path / "one", progress=False, device="cpu")
    mp.spawn(_worker, args=(2, free_port(), cfg, tmp_path / "two"), nprocs=2, join=True)
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=False)
    for name, t in a["model"].items():
        torch.testing.assert_close(b["model"][name], t, atol=2e-4, rtol=1e-3, msg=name)
    two = (tmp_path / "two" / "metrics.json").read_text()
    import json

    scores = json.loads(two)
    for k in ("sst", "para", "sts"):
        assert scores[k] == pytest.approx(single[k], abs=0.03)
    assert [p.name for p in (tmp_path / "two").glob("*.csv")]  # rank 0 wrote the prediction files

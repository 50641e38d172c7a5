"""Fine-tuning UltraFastBERT under torch's DistributedDataParallel: two CPU processes over gloo on
127.0.0.1, each with half of a batch, end with the same parameters as one process on the whole batch.

Tolerance: DDP averages the two halves' gradients where one process sums all 64 tokens at once, so
each gradient entry is the same sum in another order: within gamma(64, 2**-24) = 3.8e-6 of the sum of
its terms' magnitudes. After one SGD step of rate ``LEARNING_RATE`` a parameter may differ by that
times the rate, plus a rounding of the parameter itself; 1e-5 of the largest gradient entry leaves room
for the softmax and normalisations around those sums, while a rank that trained on its half alone
(no averaging) moves parameters by a large share of that entry.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers", reason="the UltraFastBERT models need transformers: pip install 'fffcore[model]'")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("this torch build has no gloo backend for torch.distributed", allow_module_level=True)

FOLDER = Path(__file__).resolve().parents[1] / "data" / "ultrafastbert" / "classifier-1tree"
LEARNING_RATE = 0.1
GRADIENT_RELATIVE = 1e-5
WORKER = """
import sys, torch, torch.distributed as dist
import fffcore.ultrafastbert as ultrafastbert

rank, out = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", rank=rank, world_size=2)
model = ultrafastbert.UltraFastBERTForSequenceClassification.from_pretrained(sys.argv[3]).train()
ddp = torch.nn.parallel.DistributedDataParallel(model)
generator = torch.Generator().manual_seed(0)
ids = torch.randint(1, 300, (4, 16), generator=generator)
labels = torch.tensor([0, 2, 1, 2])
half = slice(2 * rank, 2 * rank + 2)
optimizer = torch.optim.SGD(ddp.parameters(), lr=float(sys.argv[4]))
ddp(input_ids=ids[half], labels=labels[half]).loss.backward()
optimizer.step()
torch.save({name: p.detach() for name, p in model.named_parameters()}, out)
del ddp  # before the process group: freed last by DDP, the group can deadlock on gloo's thread (docs/ultrafastbert.md)
dist.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_over_gloo_end_with_the_parameters_of_one_on_the_whole_batch(tmp_path):
    import fffcore.ultrafastbert as ultrafastbert

    environment = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    outputs = [tmp_path / f"rank{rank}.pt" for rank in range(2)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(rank), str(outputs[rank]), str(FOLDER), str(LEARNING_RATE)],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    for worker in workers:
        _, errors = worker.communicate(timeout=300)
        assert worker.returncode == 0, errors[-3000:]
    ranks = [torch.load(path, weights_only=True) for path in outputs]

    model = ultrafastbert.UltraFastBERTForSequenceClassification.from_pretrained(FOLDER).train()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 300, (4, 16), generator=generator)
    labels = torch.tensor([0, 2, 1, 2])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    model(input_ids=ids, labels=labels).loss.backward()
    largest = max(float(p.grad.abs().max()) for p in model.parameters())
    optimizer.step()
    u = 2.0**-24
    moved = 0.0
    for name, parameter in model.named_parameters():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{name}: the two ranks differ"
        tolerance = 2 * u * parameter.detach().abs() + LEARNING_RATE * GRADIENT_RELATIVE * largest
        assert torch.all((ranks[0][name] - parameter.detach()).abs() <= tolerance), name
        moved = max(moved, float((parameter.detach() - before[name]).abs().max()))
    assert moved > 100 * LEARNING_RATE * GRADIENT_RELATIVE * largest  # the step itself is far above the tolerance

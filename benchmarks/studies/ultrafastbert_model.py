"""Time fffcore's UltraFastBERT against the paper's own model code, on the same weights, in one process.

    python -m benchmarks.studies.ultrafastbert_model PATH/TO/UltraFastBERT [--layers 16] [--rounds 5] [--json FILE]

Needs the paper's repository (github.com/pbelcak/UltraFastBERT; only ``training/cramming/architectures``
is imported, as a package of its own) and what its model code imports: omegaconf and einops besides
torch and transformers. Builds the published configuration at full size (16 layers of width 768 with
12 heads, one tree of depth 11 per layer, a vocabulary of 32768) with the paper's random
initialisation, saves it in the published layout, loads it into fffcore's classes, checks that both
give the same logits, and times, alternating the two in rounds:

* masked-LM inference at batch 1, sequence 128 (``eval()``, ``torch.inference_mode``);
* a fine-tuning step of the sequence classifier at batch 8, sequence 128: forward, cross-entropy,
  backward, SGD update (``train()``, dropout as configured).

It also reports the FFF layers' share of fffcore's inference time (timed by hooks around each FFF
module) and the same calls alone, on fresh inputs of the same shape; and, in the same rounds, fffcore's
model with torch's default dense kernels (rather than oneDNN's, in inference) and with torch's own
dropout (in training), so that what the FFF layers give and what the rest gives can be told apart.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fffcore.benchmarks.timing import round_robin

#: What each contestant is (the keys of the timing dictionaries).
CONTESTANTS = {
    "paper": "the paper's model",
    "fffcore": "fffcore",
    "fffcore_torch_dense": "fffcore, dense layers by torch's default kernels",
    "fffcore_torch_dropout": "fffcore, torch's own dropout",
}

SEQUENCE = 128


def paper_models(repository: Path) -> types.ModuleType:
    """The paper's ``crammed_bert`` module, imported without cramming's package initialisation."""
    package = types.ModuleType("paper_architectures")
    package.__path__ = [str(repository / "training" / "cramming" / "architectures")]
    sys.modules["paper_architectures"] = package
    return importlib.import_module("paper_architectures.crammed_bert")


def saved(model: Any, folder: Path, arch: dict[str, Any], architecture: str, **extra: Any) -> Path:
    import torch

    folder.mkdir(parents=True)
    config = {"arch": arch, "architectures": [architecture], "model_type": "crammedBERT", **extra}
    (folder / "config.json").write_text(json.dumps(config))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def speedup(times: dict[str, list[float]], name: str) -> float:
    """The median over rounds of the paper's time over ``name``'s."""
    return statistics.median(p / f for p, f in zip(times["paper"], times[name], strict=True))


def patched(module: Any, attribute: str, value: Any, call: Any) -> Any:
    """``call`` run with ``module.attribute`` set to ``value`` for the call."""

    def run() -> Any:
        kept = getattr(module, attribute)
        setattr(module, attribute, value)
        try:
            return call()
        finally:
            setattr(module, attribute, kept)

    return run


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    import fffcore.ultrafastbert_model as model_code
    from fffcore.ultrafastbert import UltraFastBERTForMaskedLM, UltraFastBERTForSequenceClassification
    from fffcore.ultrafastbert_model import published_arch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository", type=Path, help="a checkout of github.com/pbelcak/UltraFastBERT")
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the results here (a new file)")
    arguments = parser.parse_args(argv)
    if arguments.json is not None and arguments.json.exists():
        parser.error(f"--json: {arguments.json} exists; give a new file")

    paper = paper_models(arguments.repository)
    arch = published_arch(arguments.layers)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 32768, (1, SEQUENCE), generator=generator)
    batch_ids = torch.randint(1, 32768, (8, SEQUENCE), generator=generator)
    labels = torch.randint(0, 2, (8,), generator=generator)
    print(
        f"UltraFastBERT, {arguments.layers} layers of width 768, one tree of depth 11 each; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )

    with tempfile.TemporaryDirectory() as scratch:
        torch.manual_seed(0)
        theirs = paper.ScriptableLMForPreTraining(paper.crammedBertConfig(arch)).eval()
        ours = UltraFastBERTForMaskedLM.from_pretrained(
            saved(theirs, Path(scratch) / "mlm", arch, "ScriptableLMForPreTraining")
        )
        with torch.inference_mode():
            expected = theirs(input_ids=ids)["outputs"]
            got = ours(input_ids=ids).logits.reshape(expected.shape)
        difference = float((got - expected).abs().max() / expected.abs().max())
        print(f"masked-LM logits: largest difference {difference:.1e} of the largest logit")

        inside: list[float] = []
        hooks = []
        for layer in ours.encoder.layers:
            hooks.append(layer.ffn.register_forward_pre_hook(lambda *_: inside.append(-time.perf_counter())))
            hooks.append(layer.ffn.register_forward_hook(lambda *_: inside.append(time.perf_counter())))
        with torch.inference_mode():
            inference = round_robin(
                {
                    "paper": lambda: theirs(input_ids=ids),
                    "fffcore": lambda: ours(input_ids=ids),
                    "fffcore_torch_dense": patched(model_code, "_ONEDNN_LINEAR", False, lambda: ours(input_ids=ids)),
                },
                arguments.rounds,
                warm_up_rounds=1,
            )
        fff_inside = sum(inside) / (len(inside) // (2 * arguments.layers))  # both fffcore contestants'

        for hook in hooks:
            hook.remove()
        fresh = [torch.randn(1, SEQUENCE, 768) for _ in ours.encoder.layers]
        with torch.inference_mode():
            alone = round_robin(
                {"alone": lambda: [layer.ffn(x) for layer, x in zip(ours.encoder.layers, fresh, strict=True)]},
                arguments.rounds,
                warm_up_rounds=1,
            )["alone"]
        del theirs, ours

        classifier_arch = dict(arch, num_labels=2)
        torch.manual_seed(1)
        theirs = paper.ScriptableLMForSequenceClassification(paper.crammedBertConfig(classifier_arch, num_labels=2))
        ours = UltraFastBERTForSequenceClassification.from_pretrained(
            saved(
                theirs,
                Path(scratch) / "classifier",
                classifier_arch,
                "ScriptableLMForSequenceClassification",
                num_labels=2,
            )
        )
        theirs.train()
        ours.train()
        optimizers = {
            "paper": torch.optim.SGD(theirs.parameters(), lr=1e-4),
            "fffcore": torch.optim.SGD(ours.parameters(), lr=1e-4),
        }
        torch_dropout = torch.nn.functional.dropout

        def step(model: Any, optimizer: Any, loss_of: Any) -> None:
            optimizer.zero_grad()
            loss_of(model).backward()
            optimizer.step()

        training = round_robin(
            {
                "paper": lambda: step(
                    theirs, optimizers["paper"], lambda m: m(input_ids=batch_ids, labels=labels)["loss"]
                ),
                "fffcore": lambda: step(
                    ours, optimizers["fffcore"], lambda m: m(input_ids=batch_ids, labels=labels).loss
                ),
                "fffcore_torch_dropout": patched(
                    model_code,
                    "dropout",
                    torch_dropout,
                    lambda: step(ours, optimizers["fffcore"], lambda m: m(input_ids=batch_ids, labels=labels).loss),
                ),
            },
            arguments.rounds,
            warm_up_rounds=1,
        )

    results = {
        "layers": arguments.layers,
        "torch_threads": torch.get_num_threads(),
        "logit_difference_relative": difference,
        "inference_batch1_seq128_ms": {name: median_ms(s) for name, s in inference.items()},
        "inference_speedup": speedup(inference, "fffcore"),
        "inference_speedup_torch_dense": speedup(inference, "fffcore_torch_dense"),
        "fff_inside_model_ms": fff_inside * 1e3,
        "fff_share_of_model": fff_inside / statistics.median(inference["fffcore"]),
        "fff_alone_ms": median_ms(alone),
        "finetune_step_batch8_seq128_ms": {name: median_ms(s) for name, s in training.items()},
        "finetune_speedup": speedup(training, "fffcore"),
        "finetune_speedup_torch_dropout": speedup(training, "fffcore_torch_dropout"),
        "rounds": arguments.rounds,
    }
    print(f"masked-LM inference, batch 1, sequence {SEQUENCE}:")
    for name, value in results["inference_batch1_seq128_ms"].items():
        print(f"  {CONTESTANTS[name]:<52} {value:9.1f} ms")
    print(
        f"  speed-up {results['inference_speedup']:.2f}x (median of the per-round ratios); "
        f"{results['inference_speedup_torch_dense']:.2f}x with torch's default dense kernels"
    )
    print(
        f"  the {arguments.layers} FFF layers inside fffcore's model: {results['fff_inside_model_ms']:.1f} ms "
        f"({results['fff_share_of_model']:.0%} of its time); alone on fresh inputs: {results['fff_alone_ms']:.1f} ms"
    )
    print(f"fine-tuning step, batch 8, sequence {SEQUENCE} (forward, loss, backward, SGD):")
    for name, value in results["finetune_step_batch8_seq128_ms"].items():
        print(f"  {CONTESTANTS[name]:<52} {value:9.1f} ms")
    print(
        f"  speed-up {results['finetune_speedup']:.2f}x; "
        f"{results['finetune_speedup_torch_dropout']:.2f}x with torch's own dropout"
    )
    if arguments.json is not None:
        with open(arguments.json, "x", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

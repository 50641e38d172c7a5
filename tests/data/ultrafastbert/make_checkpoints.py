"""Make the small UltraFastBERT checkpoints of this folder with the paper's own model code.

Run in an environment holding fffcore (for the published configuration), torch, transformers 4.x (the
paper's code needs a 4.x release), omegaconf and einops, with a checkout of the paper's repository
(github.com/pbelcak/UltraFastBERT)::

    python tests/data/ultrafastbert/make_checkpoints.py PATH/TO/UltraFastBERT tests/data/ultrafastbert

Only ``training/cramming/architectures`` of that checkout is imported (as a package of its own, so
that cramming's training code and hydra are not needed). For each of four models (masked language
modelling and sequence classification, one tree and two trees; 2 layers of width 64 with 4 heads, a
vocabulary of 300, trees of depth 3, a classifier head of width 32) it writes a folder in the
published layout: ``config.json``, ``pytorch_model.bin`` (the state dict under the paper's module
names, the decoder tied to the word embedding) and ``model.safetensors`` (the tied decoder key left
out), with ``reference.npz``: the inputs and what the paper's model computes from them. The weights
are the paper's initialisation plus noise, so that no norm, bias or scale sits at its initial value.
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

VOCABULARY = 300
SEQUENCE = 16
BATCH = 2


def arch(trees: int, *, dropout: float) -> dict:
    """The published FFF configuration (model_config.json of UltraFastBERT-1x11-long), made small."""
    from fffcore.ultrafastbert_model import published_arch

    settings = published_arch(2)
    settings.update(hidden_size=64, intermed_size=trees, intermed_depth=3, hidden_dropout_prob=dropout)
    settings["embedding"].update(vocab_size=VOCABULARY, dropout_prob=dropout, embedding_dim=64)
    settings["attention"].update(num_attention_heads=4, dropout_prob=dropout)
    settings["classification_head"].update(head_dim=32, classifier_dropout=dropout)  # 1024 in the published model
    return settings


def paper_models(repository: Path) -> types.ModuleType:
    """The paper's ``crammed_bert`` module, imported without cramming's package initialisation."""
    package = types.ModuleType("paper_architectures")
    package.__path__ = [str(repository / "training" / "cramming" / "architectures")]
    sys.modules["paper_architectures"] = package
    return importlib.import_module("paper_architectures.crammed_bert")


def perturbed(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not name.endswith("scale_factor"):
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


def inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCABULARY, (BATCH, SEQUENCE), generator=generator)
    mask = torch.ones(BATCH, SEQUENCE, dtype=torch.long)
    ids[1, SEQUENCE - 5 :] = 0  # the second sequence ends in padding
    mask[1, SEQUENCE - 5 :] = 0
    return ids, mask


def save(model: torch.nn.Module, folder: Path, config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = model.state_dict()
    torch.save(state, folder / "pytorch_model.bin")
    from safetensors.torch import save_file

    untied = {key: value.contiguous() for key, value in state.items() if key != "decoder.weight"}
    save_file(untied, str(folder / "model.safetensors"), metadata={"format": "pt"})


def main(repository: Path, out: Path) -> None:
    paper = paper_models(repository)
    for trees in (1, 2):
        torch.manual_seed(trees)
        settings = arch(trees, dropout=0.1)
        mlm = paper.ScriptableLMForPreTraining(paper.crammedBertConfig(settings))
        perturbed(mlm, 10 + trees)
        mlm.eval()
        ids, mask = inputs(20 + trees)
        with torch.no_grad():
            outputs = mlm(input_ids=ids, attention_mask=mask)["outputs"]
        config = {"arch": settings, "architectures": ["ScriptableLMForPreTraining"], "model_type": "crammedBERT"}
        folder = out / f"mlm-{trees}tree{'s' if trees > 1 else ''}"
        save(mlm, folder, config)
        np.savez_compressed(
            folder / "reference.npz", input_ids=ids.numpy(), attention_mask=mask.numpy(), logits=outputs.numpy()
        )

        torch.manual_seed(30 + trees)
        settings = arch(trees, dropout=0.0)  # no dropout: the gradients of a training step are reproducible
        settings["num_labels"] = 3
        classifier = paper.ScriptableLMForSequenceClassification(paper.crammedBertConfig(settings, num_labels=3))
        perturbed(classifier, 40 + trees)
        classifier = classifier.double().train()
        ids, mask = inputs(50 + trees)
        labels = torch.tensor([2, 0])
        result = classifier(input_ids=ids, attention_mask=mask, labels=labels)
        result["loss"].backward()
        gradients = {f"grad/{name}": p.grad.numpy() for name, p in classifier.named_parameters()}
        config = {
            "arch": settings,
            "architectures": ["ScriptableLMForSequenceClassification"],
            "model_type": "crammedBERT",
            "num_labels": 3,
        }
        folder = out / f"classifier-{trees}tree{'s' if trees > 1 else ''}"
        save(classifier.float(), folder, config)
        np.savez_compressed(
            folder / "reference.npz",
            input_ids=ids.numpy(),
            attention_mask=mask.numpy(),
            labels=labels.numpy(),
            logits=result["logits"].detach().numpy(),
            loss=result["loss"].detach().numpy(),
            **gradients,
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

"""fffcore's UltraFastBERT models against the paper's own model code, on the small checkpoints of
``tests/data/ultrafastbert`` (made by ``make_checkpoints.py`` there with the paper's code).

Tolerances: the masked-LM logits are compared in float32, where both models compute the same
operations in possibly different orders (fused QKV products, softmax, LayerNorm, the FFF's path sums),
each of 64 terms at most: a relative error of a few float32 roundings per layer, about 1e-6 of the
largest logit; 2e-6 of it leaves room for the two layers without hiding a wrong operation (a missing
scale, bias or mask changes logits by 1e-2 or more). The classifier's loss and gradients are computed
in float64 from the same float32 weights, so both sides differ only by float64 roundings of sums of at
most a few thousand terms: 1e-12 relative to each gradient's largest entry.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers", reason="the UltraFastBERT models need transformers: pip install 'fffcore[model]'")

from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification  # noqa: E402

import fffcore.ultrafastbert as ultrafastbert  # noqa: E402
import fffcore.ultrafastbert_model as model_code  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "ultrafastbert"
MLM = ["mlm-1tree", "mlm-2trees"]
CLASSIFIERS = ["classifier-1tree", "classifier-2trees"]
#: See the module docstring.
LOGIT_RELATIVE = 2e-6
GRADIENT_RELATIVE = 1e-12


def only_one_weight_format(folder: Path, keep: str, tmp_path: Path) -> Path:
    copy = tmp_path / f"{folder.name}-{keep}"
    copy.mkdir()
    for name in ("config.json", keep):
        (copy / name).write_bytes((folder / name).read_bytes())
    return copy


def mlm_logits(model, reference) -> np.ndarray:
    ids, mask = torch.from_numpy(reference["input_ids"]), torch.from_numpy(reference["attention_mask"])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    assert tuple(logits.shape) == (*ids.shape, reference["logits"].shape[-1])
    return logits.reshape(reference["logits"].shape).numpy()


@pytest.mark.parametrize("name", MLM)
@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
@pytest.mark.parametrize("loader", ["class", "auto"])
def test_masked_lm_logits_equal_the_papers(name, weights, loader, tmp_path):
    folder = only_one_weight_format(DATA / name, weights, tmp_path)
    reference = np.load(DATA / name / "reference.npz")
    load = ultrafastbert.UltraFastBERTForMaskedLM if loader == "class" else AutoModelForMaskedLM
    model = load.from_pretrained(folder)
    assert isinstance(model, ultrafastbert.UltraFastBERTForMaskedLM) and not model.training
    logits = mlm_logits(model, reference)
    expected = reference["logits"]
    assert np.max(np.abs(logits - expected)) <= LOGIT_RELATIVE * np.max(np.abs(expected))


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_loss_and_every_gradient_equal_the_papers_in_float64(name):
    reference = np.load(DATA / name / "reference.npz")
    model = AutoModelForSequenceClassification.from_pretrained(DATA / name)
    assert isinstance(model, ultrafastbert.UltraFastBERTForSequenceClassification)
    model = model.double().train()
    out = model(
        input_ids=torch.from_numpy(reference["input_ids"]),
        attention_mask=torch.from_numpy(reference["attention_mask"]),
        labels=torch.from_numpy(reference["labels"]),
    )
    out.loss.backward()
    assert abs(out.loss.item() - float(reference["loss"])) <= GRADIENT_RELATIVE * abs(float(reference["loss"]))
    gradients = paper_named_gradients(model)
    names = [key.removeprefix("grad/") for key in reference.files if key.startswith("grad/")]
    assert sorted(names) == sorted(gradients)
    for name, gradient in gradients.items():
        expected = reference[f"grad/{name}"]
        scale = max(np.max(np.abs(expected)), np.finfo(np.float64).tiny)
        assert np.max(np.abs(gradient - expected)) <= GRADIENT_RELATIVE * scale, name


def paper_named_gradients(model) -> dict[str, np.ndarray]:
    """Every parameter's gradient under the paper's name and in its layout (the FFF layers as two linears)."""
    found = {}
    for name, parameter in model.named_parameters():
        grad = parameter.grad.numpy()
        module, _, own = name.rpartition(".")
        if own == "w_in":
            found[f"{module}.linear_in.weight"] = grad.reshape(-1, grad.shape[-1])
        elif own == "b_in":
            found[f"{module}.linear_in.bias"] = grad.reshape(-1)
        elif own == "w_out":
            found[f"{module}.linear_out.weight"] = grad.reshape(-1, grad.shape[-1]).T
        else:
            found[name] = grad
    return found


def test_the_encoder_loads_alone_and_the_config_through_auto_config():
    config = AutoConfig.from_pretrained(DATA / "mlm-1tree")
    assert isinstance(config, ultrafastbert.UltraFastBERTConfig) and config.arch["intermed_depth"] == 3
    encoder = AutoModel.from_pretrained(DATA / "mlm-1tree")
    assert type(encoder) is ultrafastbert.UltraFastBERTModel
    reference = np.load(DATA / "mlm-1tree" / "reference.npz")
    with torch.no_grad():
        states = encoder(input_ids=torch.from_numpy(reference["input_ids"])).last_hidden_state
    assert tuple(states.shape) == (*reference["input_ids"].shape, 64)


def test_save_pretrained_round_trips(tmp_path):
    model = ultrafastbert.UltraFastBERTForMaskedLM.from_pretrained(DATA / "mlm-2trees")
    model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["config.json", "model.safetensors"]
    again = AutoModelForMaskedLM.from_pretrained(tmp_path / "saved")
    reference = np.load(DATA / "mlm-2trees" / "reference.npz")
    assert np.array_equal(mlm_logits(model, reference), mlm_logits(again, reference))
    assert again.decoder.weight is again.encoder.embedding.word_embedding.weight


def test_a_classifier_starts_from_the_pretrained_model_with_a_new_head():
    model = ultrafastbert.UltraFastBERTForSequenceClassification.from_pretrained(DATA / "mlm-1tree", num_labels=5)
    pretrained = ultrafastbert.UltraFastBERTForMaskedLM.from_pretrained(DATA / "mlm-1tree")
    assert model.head.out_features == 5
    assert torch.equal(model.encoder.layers[1].ffn.w_in, pretrained.encoder.layers[1].ffn.w_in)


def test_the_auto_classes_load_without_omegaconf_or_the_papers_code():
    script = (
        "import sys; sys.modules['omegaconf'] = None; sys.modules['hydra'] = None\n"
        "import fffcore.ultrafastbert\n"
        "from transformers import AutoModelForMaskedLM\n"
        f"model = AutoModelForMaskedLM.from_pretrained({str(DATA / 'mlm-1tree')!r})\n"
        "assert 'omegaconf' not in sys.modules or sys.modules['omegaconf'] is None\n"
        "print(type(model).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "UltraFastBERTForMaskedLM"


def test_eval_runs_fffinference_and_training_the_fffcore_operator(monkeypatch):
    from fffcore.torch import FFFInference

    model = ultrafastbert.UltraFastBERTForMaskedLM.from_pretrained(DATA / "mlm-1tree")
    calls = {"inference": 0, "operator": 0}
    inference_forward, operator = FFFInference.forward, torch.ops.fffcore.fff

    def counted_inference(self, x):
        calls["inference"] += 1
        return inference_forward(self, x)

    def counted_operator(*args):
        calls["operator"] += 1
        return operator(*args)

    monkeypatch.setattr(FFFInference, "forward", counted_inference)
    monkeypatch.setattr(torch.ops.fffcore, "fff", counted_operator)
    reference = np.load(DATA / "mlm-1tree" / "reference.npz")
    logits = mlm_logits(model, reference)
    with torch.inference_mode():
        again = model(input_ids=torch.from_numpy(reference["input_ids"]))
    assert np.array_equal(again.logits[0].numpy(), logits.reshape(again.logits.shape)[0])
    assert calls == {"inference": 4, "operator": 0}  # two layers, two calls: paths only, no masking
    model.train()
    ids = torch.from_numpy(reference["input_ids"])
    labels = torch.where(ids % 3 == 0, ids, torch.full_like(ids, -100))
    model(input_ids=ids, labels=labels).loss.backward()
    assert calls == {"inference": 4, "operator": 2}
    assert model.encoder.layers[0].ffn.w_in.grad is not None


def test_the_state_dict_keeps_the_papers_names_and_layout():
    import torch as torch_module

    model = ultrafastbert.UltraFastBERTForMaskedLM.from_pretrained(DATA / "mlm-2trees")
    saved = torch_module.load(DATA / "mlm-2trees" / "pytorch_model.bin", weights_only=True)
    state = model.state_dict()
    assert {k for k in saved if not k.endswith("norm_factor")} == set(state)
    for key, value in saved.items():
        if not key.endswith("norm_factor"):
            assert torch_module.equal(state[key], value), key
    ffn = model.encoder.layers[0].ffn
    assert tuple(ffn.w_in.shape) == (2, 15, 64) and tuple(ffn.w_out.shape) == (2, 15, 64)
    assert torch_module.equal(ffn.w_out[1, 3], saved["encoder.layers.0.ffn.linear_out.weight"][:, 15 + 3])


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("norm_scheme",), "post", "arch.norm_scheme: 'post' is not supported"),
        (("attention", "rotary_embedding"), True, "arch.attention.rotary_embedding"),
        (("classification_head", "pooler"), "cls", "arch.classification_head.pooler: 'cls'"),
        (("intermed_type",), "ff", "arch.intermed_type"),
        (("embedding", "vocab_size"), None, "arch.embedding.vocab_size: expected int, got None"),
    ],
)
def test_options_the_published_model_does_not_use_are_refused_by_name(path, value, message):
    arch = json.loads((DATA / "mlm-1tree" / "config.json").read_text())["arch"]
    target = arch
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        ultrafastbert.UltraFastBERTForMaskedLM(ultrafastbert.UltraFastBERTConfig(arch=arch))


def test_pytorch_model_bin_is_read_with_weights_only(tmp_path, monkeypatch):
    folder = only_one_weight_format(DATA / "mlm-1tree", "pytorch_model.bin", tmp_path)
    seen = {}
    original = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    ultrafastbert.UltraFastBERTForMaskedLM.from_pretrained(folder)
    assert seen.get("weights_only") is True


def test_a_folder_without_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_bytes((DATA / "mlm-1tree" / "config.json").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"neither model\.safetensors nor pytorch_model\.bin"):
        ultrafastbert.UltraFastBERTForMaskedLM.from_pretrained(tmp_path)


def test_dropout_keeps_each_entry_with_probability_one_minus_p_scaled():
    p = 0.25
    x = (torch.rand(1000, 1000, dtype=torch.float64) + 1.0).requires_grad_()  # no entry is 0
    torch.manual_seed(0)
    y = model_code.Dropout(p).train()(x)
    kept = y != 0
    # kept entries: Binomial(10**6, 0.75), standard deviation 433; six of them bound a fair draw
    assert abs(int(kept.sum()) - 750_000) <= 6 * 433
    assert torch.equal(y[kept], (x * (1 / (1 - p)))[kept])
    (y * 3.0).sum().backward()
    assert torch.equal(x.grad, kept.to(x.dtype) * 3.0 / (1 - p))
    assert model_code.Dropout(p).eval()(x) is x and model_code.Dropout(0.0).train()(x) is x
    assert not model_code.Dropout(1.0).train()(x).any()


def test_attention_in_training_computes_what_the_fused_kernel_does(monkeypatch):
    # With dropout in training, attention runs its own steps (so that its dropout is the faster one);
    # without the dropout itself they are the fused kernel's, within float64 rounding.
    torch.manual_seed(3)
    attention = model_code.SelfAttention(32, 4, 0.1).double()
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    mask = (1.0 - torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1] * 7])[:, None, None, :].double()) * -10000.0
    expected = attention.eval()(x, mask)
    monkeypatch.setattr(model_code, "dropout", lambda values, p, training: values)
    got = attention.train()(x, mask)
    assert torch.allclose(got, expected, rtol=0, atol=1e-14 * float(expected.abs().max()))


def test_linear_runs_onednn_without_autograd_and_torch_with_it():
    torch.manual_seed(4)
    layer = model_code.Linear(96, 200)
    x = torch.randn(3, 50, 96)
    expected = torch.nn.functional.linear(x.double(), layer.weight.double(), layer.bias.double())
    with torch.inference_mode():
        fast = layer(x)
    # float32 sums of 96 products and a bias: each within 97 roundings (2**-24) of the sum of magnitudes
    magnitudes = torch.nn.functional.linear(x.double().abs(), layer.weight.double().abs(), layer.bias.double().abs())
    assert bool(((fast.double() - expected).abs() <= 97 * 2.0**-24 * magnitudes).all())
    tracked = layer(x)
    assert tracked.grad_fn is not None
    assert torch.equal(tracked, torch.nn.functional.linear(x, layer.weight, layer.bias))

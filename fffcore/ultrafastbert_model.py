"""UltraFastBERT (crammedBERT with FFF layers) as transformers models, computed with fffcore.

Written from the architecture the paper describes and its code implements, for the configuration the
published model uses (``config.json`` with ``model_type`` "crammedBERT" and an ``arch`` container):

* embeddings: word embedding (padding row ``pad_token_id``) plus scaled sinusoidal positions
  (``scale_factor * pe``, positions from 0, ``scale_factor`` learned, first 1/sqrt(H)), then LayerNorm,
  then dropout;
* ``num_transformer_layers`` pre-norm layers: ``x + drop(attn(norm1(x)))``, then
  ``x + drop(fff(norm2(x)))``. Attention: one fused QKV projection without bias whose rows hold, per
  head, its query, key and value rows in turn; scores scaled by ``1/sqrt(head_dim)``, the padding mask
  added as ``(1 - mask) * -10000``, softmax, dropout, output projection without bias. The FFF layer:
  ``linear_in`` (K N, H) with bias and ``linear_out`` (H, K N) without, one tree of depth D per block
  of N = 2**(D+1) - 1 rows, exact GELU, ``logit > 0`` goes right;
* a final LayerNorm; the masked-LM decoder is the word embedding (tied, no bias); the classifier
  averages every position's final state (padding included, as the paper's pooler does), then a dense
  layer to ``head_dim`` with tanh, dropout, and a linear head to ``num_labels``.

The FFF layers run on fffcore: in ``eval()`` through :class:`fffcore.torch.FFFInference` (the
automatic backend, or ``config.fff_backend``), which visits D + 1 nodes per tree and row and never
masks the others; in training as :class:`fffcore.torch.FFFLayer` (``torch.ops.fffcore.fff``), whose
backward costs the path too. The state dict keeps the paper's names and layout.

Options the published configuration does not use are refused by name (:func:`check_arch`).
Weights load from ``model.safetensors`` or ``pytorch_model.bin`` (``torch.load`` with
``weights_only=True``) under the paper's module names; ``save_pretrained`` writes ``config.json`` and
``model.safetensors``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput, SequenceClassifierOutput

from fffcore.params import FFFParams
from fffcore.spec import node_count
from fffcore.torch import FFFInference, FFFLayer

#: State dict keys of the heads: the masked-LM decoder and the classifier's pooler and head.
HEAD_PREFIXES = ("decoder.", "pooler.", "head.")
logger = logging.getLogger(__name__)
#: Arguments of transformers' from_pretrained that the Auto classes pass and a local folder does not need.
LOCAL_NO_OPS = frozenset(
    {
        "adapter_kwargs",
        "cache_dir",
        "code_revision",
        "force_download",
        "local_files_only",
        "proxies",
        "revision",
        "subfolder",
        "token",
        "trust_remote_code",
        "_commit_hash",
        "_from_auto",
        "_from_pipeline",
    }
)

#: The arch options the published model sets and the one value each may take here.
FIXED_OPTIONS: dict[tuple[str, ...], Any] = {
    ("intermed_type",): "fff",
    ("norm",): "LayerNorm",
    ("norm_scheme",): "pre",
    ("nonlin",): "GELU",
    ("tie_weights",): True,
    ("decoder_bias",): False,
    ("objective_layout",): "MLM",
    ("skip_head_transform",): True,
    ("use_bias",): False,
    ("final_norm",): True,
    ("embedding", "pos_embedding"): "scaled-sinusoidal",
    ("embedding", "normalization"): True,
    ("embedding", "stable_low_precision"): False,
    ("attention", "type"): "self-attention",
    ("attention", "causal_attention"): False,
    ("attention", "skip_output_projection"): False,
    ("attention", "qkv_bias"): False,
    ("attention", "rotary_embedding"): False,
    ("attention", "seq_op_in_fp32"): False,
    ("attention", "sequence_op"): "torch-softmax",
    ("classification_head", "pooler"): "avg",
    ("classification_head", "include_ff_layer"): True,
    ("classification_head", "nonlin"): "Tanh",
}
#: Options that must be present, with the types they may take (their values are free).
FREE_OPTIONS: dict[tuple[str, ...], tuple[type, ...]] = {
    ("num_transformer_layers",): (int,),
    ("hidden_size",): (int,),
    ("intermed_size",): (int,),
    ("intermed_depth",): (int,),
    ("hidden_dropout_prob",): (int, float),
    ("norm_eps",): (int, float),
    ("embedding", "vocab_size"): (int,),
    ("embedding", "dropout_prob"): (int, float),
    ("embedding", "pad_token_id"): (int,),
    ("embedding", "max_seq_length"): (int,),
    ("embedding", "embedding_dim"): (int,),
    ("attention", "num_attention_heads"): (int,),
    ("attention", "dropout_prob"): (int, float),
    ("classification_head", "head_dim"): (int,),
    ("classification_head", "classifier_dropout"): (int, float),
}


def published_arch(layers: int = 16) -> dict[str, Any]:
    """The ``arch`` container of UltraFastBERT-1x11-long (its model_config.json; ``layers`` layers), for a new
    model of the published shape: ``UltraFastBERTForMaskedLM(UltraFastBERTConfig(arch=published_arch()))``."""
    return {
        "architectures": ["ScriptableCrammedBERT"],
        "num_transformer_layers": layers,
        "hidden_size": 768,
        "intermed_type": "fff",
        "intermed_size": 1,
        "intermed_depth": 11,
        "hidden_dropout_prob": 0.1,
        "norm": "LayerNorm",
        "norm_eps": 1e-12,
        "norm_scheme": "pre",
        "nonlin": "GELU",
        "tie_weights": True,
        "decoder_bias": False,
        "sparse_prediction": 0.25,
        "loss": "cross-entropy",
        "objective_layout": "MLM",
        "embedding": {
            "vocab_size": 32768,
            "pos_embedding": "scaled-sinusoidal",
            "dropout_prob": 0.1,
            "pad_token_id": 0,
            "max_seq_length": 128,
            "embedding_dim": 768,
            "normalization": True,
            "stable_low_precision": False,
        },
        "attention": {
            "type": "self-attention",
            "causal_attention": False,
            "num_attention_heads": 12,
            "dropout_prob": 0.1,
            "skip_output_projection": False,
            "qkv_bias": False,
            "rotary_embedding": False,
            "seq_op_in_fp32": False,
            "sequence_op": "torch-softmax",
        },
        "init": {"type": "normal", "std": 0.02},
        "ffn_layer_frequency": 1,
        "skip_head_transform": True,
        "use_bias": False,
        "final_norm": True,
        "num_labels": None,
        "classification_head": {
            "pooler": "avg",
            "include_ff_layer": True,
            "head_dim": 1024,
            "nonlin": "Tanh",
            "classifier_dropout": 0.1,
        },
    }


def check_arch(arch: Any) -> dict[str, Any]:
    """The ``arch`` container, checked: every option the model reads present, each fixed option at the
    published value. Raises ``ValueError`` naming the option otherwise."""
    if not isinstance(arch, dict):
        raise TypeError(f"arch: expected the dict of a crammedBERT config.json, got {type(arch).__name__}")
    for path, expected in FIXED_OPTIONS.items():
        found = _option(arch, path)
        if found != expected:
            raise ValueError(
                f"arch.{'.'.join(path)}: {found!r} is not supported; fffcore's UltraFastBERT implements the "
                f"published configuration, {expected!r}"
            )
    for path, kinds in FREE_OPTIONS.items():
        found = _option(arch, path)
        if isinstance(found, bool) or not isinstance(found, kinds):
            raise ValueError(f"arch.{'.'.join(path)}: expected {' or '.join(k.__name__ for k in kinds)}, got {found!r}")
    if arch["embedding"]["embedding_dim"] != arch["hidden_size"]:
        raise ValueError(
            f"arch.embedding.embedding_dim: {arch['embedding']['embedding_dim']} must equal arch.hidden_size "
            f"{arch['hidden_size']} (no embedding projection is implemented)"
        )
    if arch["hidden_size"] % arch["attention"]["num_attention_heads"]:
        raise ValueError(
            f"arch.attention.num_attention_heads: {arch['attention']['num_attention_heads']} does not divide "
            f"arch.hidden_size {arch['hidden_size']}"
        )
    return arch


def _option(arch: dict[str, Any], path: tuple[str, ...]) -> Any:
    found: Any = arch
    for key in path:
        if not isinstance(found, dict) or key not in found:
            raise ValueError(f"arch.{'.'.join(path)}: missing from the configuration")
        found = found[key]
    return found


class UltraFastBERTConfig(PretrainedConfig):
    """A crammedBERT configuration: the paper's ``arch`` container, plus ``fff_backend`` (None: automatic)."""

    model_type = "crammedBERT"

    def __init__(self, arch: dict[str, Any] | None = None, fff_backend: str | None = None, **kwargs: Any) -> None:
        self.arch = copy.deepcopy(arch) if arch is not None else {}
        self.fff_backend = fff_backend
        super().__init__(**kwargs)


#: oneDNN's linear kernel, when this torch has it (``torch.compile`` with freezing calls it on CPUs).
_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class Linear(torch.nn.Linear):
    """``torch.nn.Linear`` that, on float32 CPU tensors without autograd (``eval()`` under
    ``torch.no_grad`` or ``torch.inference_mode``), computes through oneDNN's linear kernel rather than
    torch's default matrix product: the same result within float32 rounding, and a quarter off the
    masked-LM model's inference time where it was measured (``benchmarks/NOTES.md``, section 15)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            _ONEDNN_LINEAR
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and x.device.type == "cpu"
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
        ):
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return super().forward(x)


class Dropout(torch.nn.Dropout):
    """``torch.nn.Dropout`` (each entry kept with probability 1 - p and scaled by 1 / (1 - p)) drawn
    from ``torch.rand_like`` rather than a Bernoulli draw: the same distribution, with forward and
    backward together about twice as fast on CPUs (``benchmarks/NOTES.md``, section 15)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``x`` times a mask of 0 (probability ``p``) and 1 / (1 - p); ``x`` itself when not training or p is 0."""
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    # One multiplication forward and one backward (autograd keeps the scaled mask).
    keep = (torch.rand_like(x) >= p).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * keep


class ScaledSinusoidal(torch.nn.Module):
    """``scale_factor * pe[:S]``: sine at even, cosine at odd features, frequencies 10000**(-2i/H)."""

    def __init__(self, width: int, max_length: int) -> None:
        super().__init__()
        position = torch.arange(0, max_length, dtype=torch.float32).unsqueeze(1)
        frequency = torch.exp(torch.arange(0, width, 2).float() * (-math.log(10000.0) / width))
        table = torch.zeros(max_length, width)
        table[:, 0::2] = torch.sin(position * frequency)
        table[:, 1::2] = torch.cos(position * frequency)
        self.register_buffer("pe", table.unsqueeze(0), persistent=False)
        self.scale_factor = torch.nn.Parameter(torch.tensor([width**-0.5]))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        if length > self.pe.shape[1]:
            raise ValueError(f"input_ids: sequences of at most {self.pe.shape[1]} tokens, got {length}")
        return self.scale_factor * self.pe[:, :length, :]


class Embedding(torch.nn.Module):
    def __init__(self, arch: dict[str, Any]) -> None:
        super().__init__()
        settings = arch["embedding"]
        width = arch["hidden_size"]
        self.word_embedding = torch.nn.Embedding(settings["vocab_size"], width, padding_idx=settings["pad_token_id"])
        self.pos_embedding = ScaledSinusoidal(width, settings["max_seq_length"])
        self.dropout = Dropout(settings["dropout_prob"])
        self.norm = torch.nn.LayerNorm(width, eps=arch["norm_eps"])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embedded = self.word_embedding(input_ids) + self.pos_embedding(input_ids)
        return self.dropout(self.norm(embedded))


class SelfAttention(torch.nn.Module):
    """Fused QKV without bias; per head, its query, key and value rows follow each other."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.head_width, self.dropout = heads, width // heads, dropout
        # a constant the paper's state dicts carry; read back from head_width, so not saved here
        self.register_buffer("norm_factor", torch.tensor(self.head_width).rsqrt(), persistent=False)
        self.scale = float(self.norm_factor)  # the paper's factor, as a number: no device read per call
        self.query_key_value = Linear(width, 3 * width, bias=False)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, width = x.shape
        mixed = self.query_key_value(x).view(batch, length, self.heads, 3 * self.head_width)
        query, key, value = (part.transpose(1, 2) for part in mixed.split(self.head_width, dim=3))  # (B, nh, S, hd)
        mask = None if additive_mask is None else additive_mask.to(query.dtype)
        if self.training and self.dropout > 0.0:
            # softmax(q k^T / sqrt(hd) + mask), dropout, times v: torch's fused kernel would run these
            # same steps with its slower Bernoulli dropout
            scores = torch.matmul(query, key.transpose(2, 3)).mul_(self.scale)
            if mask is not None:
                scores = scores + mask
            context = torch.matmul(dropout(scores.softmax(dim=-1), self.dropout, True), value)
        else:  # one fused kernel
            context = torch.nn.functional.scaled_dot_product_attention(
                query, key, value, attn_mask=mask, scale=self.scale
            )
        return context.transpose(1, 2).reshape(batch, length, width)


class Attention(torch.nn.Module):
    def __init__(self, arch: dict[str, Any]) -> None:
        super().__init__()
        settings = arch["attention"]
        width = arch["hidden_size"]
        self.self_attention = SelfAttention(width, settings["num_attention_heads"], settings["dropout_prob"])
        self.dense = Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor | None) -> torch.Tensor:
        return self.dense(self.self_attention(x, additive_mask))


class FFF(FFFLayer):
    """The paper's FFF layer (K trees of depth D, exact GELU, ``logit > 0`` right) as an
    :class:`~fffcore.torch.FFFLayer`, whose state dict is the paper's: ``linear_in.weight`` (K N, H) and
    ``linear_in.bias`` (K N), tree k in rows k N .. k N + N - 1, and ``linear_out.weight`` (H, K N).

    Training (``self.training`` with gradients on): the FFFLayer's ``torch.ops.fffcore.fff``,
    differentiable through ``fffcore.fff_backward`` at the cost of the paths. Otherwise an
    :class:`FFFInference` of the current weights, rebuilt when a weight is replaced or written.
    """

    def __init__(self, width: int, depth: int, trees: int, backend: str | None = None) -> None:
        super().__init__(width, width, depth, trees, activation="gelu", bias=True, backend=backend)
        self.n_nodes = node_count(depth)
        self._inference: FFFInference | None = None
        self._stamp: tuple[Any, ...] = ()
        self.register_state_dict_post_hook(_to_paper_names)
        self.register_load_state_dict_pre_hook(_from_paper_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            return super().forward(x)
        return self.inference()(x)

    def inference(self) -> FFFInference:
        """The FFFInference of the current weights (built once per change of weights)."""
        tensors = (self.w_in, self.b_in, self.w_out)
        stamp = tuple((id(t), t._version, t.device, t.dtype) for t in tensors)
        if self._inference is None or stamp != self._stamp:
            # Ordinary tensors even under torch.inference_mode: fffcore tracks their version counters.
            with torch.inference_mode(False):
                params = FFFParams(*(t.detach() for t in tensors), "gelu")
                self._inference = FFFInference(params, backend=self.backend)
            self._stamp = stamp
        return self._inference


def _to_paper_names(module: FFF, state: dict[str, Any], prefix: str, metadata: Any) -> None:
    """``w_in``, ``b_in``, ``w_out`` of a state dict as the paper's ``linear_in`` and ``linear_out``."""
    w_in, b_in, w_out = (state.pop(prefix + name) for name in ("w_in", "b_in", "w_out"))
    state[prefix + "linear_in.weight"] = w_in.reshape(-1, w_in.shape[-1])
    state[prefix + "linear_in.bias"] = b_in.reshape(-1)
    state[prefix + "linear_out.weight"] = w_out.reshape(-1, w_out.shape[-1]).t()


def _from_paper_names(module: FFF, state: dict[str, Any], prefix: str, *unused: Any) -> None:
    """The paper's ``linear_in`` and ``linear_out`` entries of a state dict as ``w_in``, ``b_in``, ``w_out``."""
    shape = (module.trees, module.n_nodes)
    names = {"linear_in.weight": "w_in", "linear_in.bias": "b_in", "linear_out.weight": "w_out"}
    for paper, own in names.items():
        if prefix + paper not in state:
            continue  # reported missing by load_state_dict
        value = state.pop(prefix + paper)
        if paper == "linear_out.weight":
            value = value.t()
        state[prefix + own] = value.reshape(*shape, *value.shape[1:])


class TransformerLayer(torch.nn.Module):
    def __init__(self, arch: dict[str, Any], backend: str | None) -> None:
        super().__init__()
        width, eps = arch["hidden_size"], arch["norm_eps"]
        self.dropout = Dropout(arch["hidden_dropout_prob"])
        self.norm1 = torch.nn.LayerNorm(width, eps=eps)
        self.norm2 = torch.nn.LayerNorm(width, eps=eps)
        self.attn = Attention(arch)
        self.ffn = FFF(width, arch["intermed_depth"], arch["intermed_size"], backend)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), additive_mask))
        return x + self.dropout(self.ffn(self.norm2(x)))


class Encoder(torch.nn.Module):
    def __init__(self, arch: dict[str, Any], backend: str | None) -> None:
        super().__init__()
        self.embedding = Embedding(arch)
        self.layers = torch.nn.ModuleList(
            TransformerLayer(arch, backend) for _ in range(arch["num_transformer_layers"])
        )
        self.final_norm = torch.nn.LayerNorm(arch["hidden_size"], eps=arch["norm_eps"])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected (batch, sequence), got shape {tuple(input_ids.shape)}")
        additive = None
        if attention_mask is not None:
            if tuple(attention_mask.shape) != tuple(input_ids.shape):
                raise ValueError(
                    f"attention_mask: expected the shape of input_ids {tuple(input_ids.shape)}, "
                    f"got {tuple(attention_mask.shape)}"
                )
            # 1 keeps a token, 0 masks it out: added to the scores as (1 - mask) * -10000, as the paper does
            additive = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        x = self.embedding(input_ids)
        for layer in self.layers:
            x = layer(x, additive)
        return self.final_norm(x)


class UltraFastBERTPreTrainedModel(PreTrainedModel):
    """Loading and saving in the published layout; the paper's initialisation."""

    config_class = UltraFastBERTConfig
    base_model_prefix = "encoder"
    #: The state dict key that holds the word embedding again, in the models that have it.
    tied_key: str | None = None

    def __init__(self, config: UltraFastBERTConfig) -> None:
        check_arch(config.arch)
        super().__init__(config)

    def _init_weights(self, module: torch.nn.Module) -> None:
        std = self.config.arch.get("init", {}).get("std", 0.02)
        if isinstance(module, FFF):  # the paper initialises its FFF's two linear layers as every other
            module.w_in.data.normal_(0.0, std)
            module.w_out.data.normal_(0.0, std)
            module.b_in.data.zero_()
        elif isinstance(module, torch.nn.Linear):
            module.weight.data.normal_(0.0, std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, torch.nn.Embedding):
            module.weight.data.normal_(0.0, std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, torch.nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    def initialise(self) -> None:
        for module in self.modules():
            self._init_weights(module)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """The model saved in ``directory``: ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``.

        Keyword arguments ``config`` (an :class:`UltraFastBERTConfig`), ``fff_backend`` and
        ``num_labels`` override the saved configuration; nothing is downloaded.
        """
        folder = Path(directory)
        if not folder.is_dir():
            raise ValueError(
                f"directory: expected a folder holding config.json and the weights, got {str(directory)!r}"
            )
        config = kwargs.pop("config", None)
        if config is None:
            settings = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            overrides = {key: kwargs.pop(key) for key in ("fff_backend", "num_labels") if key in kwargs}
            settings.update(overrides)
            config = UltraFastBERTConfig(**{k: v for k, v in settings.items() if k != "model_type"})
        if kwargs.get("subfolder"):
            folder = folder / kwargs["subfolder"]
        unused = sorted(key for key in kwargs if key not in LOCAL_NO_OPS)
        if args or unused:
            raise TypeError(f"from_pretrained: unsupported arguments {', '.join(map(repr, [*args, *unused]))}")
        model = cls(config)
        state = read_weights(folder, cls.tied_key)
        own = set(model.state_dict())
        other_heads = [k for k in state if k not in own and k.startswith(HEAD_PREFIXES)]
        for key in other_heads:  # another head's weights (the decoder when loading the encoder alone)
            del state[key]
        unexpected = sorted(set(state) - own)
        missing = sorted(own - set(state))
        if unexpected:
            raise ValueError(f"{folder}: weights {', '.join(unexpected[:5])} are not part of {cls.__name__}")
        new_head = [k for k in missing if k.startswith(HEAD_PREFIXES)]
        if sorted(set(missing) - set(new_head)):
            raise ValueError(f"{folder}: weights {', '.join(sorted(set(missing) - set(new_head))[:5])} are missing")
        if new_head:  # a classifier made from the pre-trained model: its head starts from the initialisation
            logger.warning("%s: %s initialised anew (not in %s)", cls.__name__, ", ".join(new_head), folder)
        model.load_state_dict(state, strict=False)
        model.eval()
        return model

    def save_pretrained(self, directory: str | os.PathLike[str], **kwargs: Any) -> None:  # type: ignore[override]
        """Write ``config.json`` and ``model.safetensors`` (the tied decoder key left out) into ``directory``."""
        from safetensors.torch import save_file

        if kwargs:
            raise TypeError(f"save_pretrained: unsupported arguments {', '.join(map(repr, kwargs))}")
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(folder)
        state = {key: value.detach().contiguous() for key, value in self.state_dict().items() if key != self.tied_key}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def read_weights(folder: Path, tied_key: str | None) -> dict[str, torch.Tensor]:
    """The state dict in ``folder`` under the paper's names, with the tied key and buffers the files may omit."""
    safetensors_file, torch_file = folder / "model.safetensors", folder / "pytorch_model.bin"
    if safetensors_file.is_file():
        from safetensors.torch import load_file

        state = load_file(str(safetensors_file))
    elif torch_file.is_file():
        state = torch.load(torch_file, map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{folder}: neither model.safetensors nor pytorch_model.bin is there")
    state = {key: value for key, value in state.items() if not key.endswith(".norm_factor")}
    word = "encoder.embedding.word_embedding.weight"
    if tied_key is not None:
        if tied_key not in state and word in state:
            state[tied_key] = state[word]
        elif word not in state and tied_key in state:
            state[word] = state[tied_key]
    return state


class UltraFastBERTModel(UltraFastBERTPreTrainedModel):
    """The encoder: (B, S) token ids to (B, S, H) final states."""

    def __init__(self, config: UltraFastBERTConfig) -> None:
        super().__init__(config)
        self.encoder = Encoder(config.arch, config.fff_backend)
        self.initialise()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **unused: Any
    ) -> BaseModelOutput:
        return BaseModelOutput(last_hidden_state=self.encoder(input_ids, attention_mask))


class UltraFastBERTForMaskedLM(UltraFastBERTPreTrainedModel):
    """The encoder and the tied decoder: logits (B, S, vocabulary); with ``labels`` (-100: not
    predicted) the mean cross-entropy over the predicted positions, computed on those alone."""

    tied_key = "decoder.weight"

    def __init__(self, config: UltraFastBERTConfig) -> None:
        super().__init__(config)
        arch = config.arch
        self.encoder = Encoder(arch, config.fff_backend)
        self.decoder = Linear(arch["hidden_size"], arch["embedding"]["vocab_size"], bias=False)
        self.initialise()
        self.decoder.weight = self.encoder.embedding.word_embedding.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **unused: Any,
    ) -> MaskedLMOutput:
        states = self.encoder(input_ids, attention_mask)
        if labels is None:
            return MaskedLMOutput(logits=self.decoder(states))
        predicted = labels != -100
        loss = torch.nn.functional.cross_entropy(self.decoder(states[predicted]), labels[predicted])
        return MaskedLMOutput(loss=loss, logits=self.decoder(states))


class UltraFastBERTForSequenceClassification(UltraFastBERTPreTrainedModel):
    """The encoder, the paper's averaging pooler (dense to ``head_dim``, tanh, dropout) and a linear head.

    The loss with ``labels``: mean squared error for one label, cross-entropy for integer labels,
    binary cross-entropy with logits otherwise.
    """

    def __init__(self, config: UltraFastBERTConfig) -> None:
        super().__init__(config)
        arch = config.arch
        head = arch["classification_head"]
        self.num_labels = config.num_labels
        self.encoder = Encoder(arch, config.fff_backend)
        self.pooler = Pooler(arch["hidden_size"], head["head_dim"], head["classifier_dropout"])
        self.head = Linear(head["head_dim"], self.num_labels)
        self.initialise()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **unused: Any,
    ) -> SequenceClassifierOutput:
        logits = self.head(self.pooler(self.encoder(input_ids, attention_mask)))
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = torch.nn.functional.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
            elif labels.dtype in (torch.long, torch.int):
                loss = torch.nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
            else:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return SequenceClassifierOutput(loss=loss, logits=logits)


class Pooler(torch.nn.Module):
    """The mean of every position's final state (padding included), dense, tanh, dropout."""

    def __init__(self, width: int, head_width: int, dropout: float) -> None:
        super().__init__()
        self.dense = Linear(width, head_width)
        self.activation = torch.nn.Tanh()
        self.dropout = Dropout(dropout)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.activation(self.dense(states.mean(dim=1))))


def register() -> None:
    """Make transformers' Auto classes load crammedBERT folders into these classes (once per process)."""
    try:
        AutoConfig.register("crammedBERT", UltraFastBERTConfig)
    except ValueError:  # already registered: by this module before, or by the paper's own package
        return
    AutoModel.register(UltraFastBERTConfig, UltraFastBERTModel)
    AutoModelForMaskedLM.register(UltraFastBERTConfig, UltraFastBERTForMaskedLM)
    AutoModelForSequenceClassification.register(UltraFastBERTConfig, UltraFastBERTForSequenceClassification)

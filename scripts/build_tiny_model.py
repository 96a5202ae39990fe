"""Build a tiny random-weight Llama model folder that real vLLM (CPU build) can serve.

Why a random model: no model hub is reachable here, and for checking the engine twin only the
engine matters (scheduler, paged KV cache, prefix caching, preemption, OpenAI server,
Prometheus metrics), not what the model says. A 2-layer, 128-wide model keeps vLLM's start
and its CPU forward passes cheap on a shared 2-core machine.

Why a trained tokenizer anyway: vLLM loads the tokenizer at start-up and uses it for text
prompts, detokenization and chat templates, so it must be a real Hugging Face tokenizer. A
byte-level BPE trained on the standard library's sources gives a ~4k vocabulary without any
download, and a ChatML template makes /v1/chat/completions work too.

Runs under the vLLM venv (it needs torch, transformers, tokenizers):

    .vllm-venv/bin/python scripts/build_tiny_model.py --out .vllm-model

Idempotent: an existing complete folder is left alone unless ``--force``. The folder is
written to a temporary sibling and renamed, so an interrupted build never leaves a
half-written model that looks complete.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def training_files(max_bytes: int) -> Iterator[str]:
    """Standard-library sources, up to ``max_bytes`` in total, in a stable order so that the
    same Python gives the same vocabulary."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for path in sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py")):
        try:
            size = path.stat().st_size
        except OSError:
            continue
        if total + size > max_bytes:
            continue
        total += size
        yield str(path)


def build_tokenizer(vocab_size: int, max_bytes: int):  # type: ignore[no-untyped-def]
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    raw = ByteLevelBPETokenizer()
    raw.train(
        files=list(training_files(max_bytes)),
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw._tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 8192
    return tokenizer


def build_model(out: Path, args: argparse.Namespace) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(args.vocab_size, args.train_bytes)
    torch.manual_seed(args.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        intermediate_size=args.hidden_size * 2,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden_size // args.head_dim,
        num_key_value_heads=args.hidden_size // args.head_dim,
        head_dim=args.head_dim,
        max_position_embeddings=args.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    # Keep EOS from ending generations on its own: tests pass ignore_eos anyway.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def is_complete(folder: Path) -> bool:
    return all((folder / name).exists() for name in REQUIRED_FILES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".vllm-model"))
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--train-bytes", type=int, default=8_000_000,
                        help="how much standard-library source to train the BPE on")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--max-positions", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if complete")
    args = parser.parse_args(argv)

    out: Path = args.out.resolve()
    if is_complete(out) and not args.force:
        print(f"[build_tiny_model] {out} already complete; nothing to do (--force rebuilds)")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        build_model(staging, args)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    print(f"[build_tiny_model] wrote {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Files the peer servers need beside a gpt-oss checkpoint: an HF `tokenizer.json` and a GGUF.

Owns building `tokenizer.json` for o200k_harmony (with transformers' TikTokenConverter, from the
same verified vocabulary file that our tokenizer uses, special tokens at their real ids) and
running llama.cpp's own `convert_hf_to_gguf.py` (taken from the llama-cpp-python source
distribution). Knows nothing of benchmarks or servers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": "<|startoftext|>",
    "eos_token": "<|return|>",
    "pad_token": "<|endoftext|>",
    "model_max_length": 131072,
    "clean_up_tokenization_spaces": False,
}


def write_hf_tokenizer(ckpt: Path) -> Path:
    """Write tokenizer.json (+ tokenizer_config.json) for o200k_harmony into `ckpt`."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from gptoss_serve.harmony.tokenizer import PAT_STR, get_tokenizer, special_tokens
    from gptoss_serve.harmony.vocab import ensure_vocab_file

    specials = sorted(special_tokens().items(), key=lambda kv: kv[1])
    converter = TikTokenConverter(vocab_file=str(ensure_vocab_file()), pattern=PAT_STR,
                                  extra_special_tokens=[name for name, _ in specials])
    fast = converter.converted()
    for name, token_id in specials:  # the converter appends specials in order: check the ids
        if fast.token_to_id(name) != token_id:
            raise RuntimeError(f"{name} got id {fast.token_to_id(name)}, expected {token_id}")
    sample = "Hello world! 12345 ünïcode — tabs\tand\nnewlines  it's 3.14159"
    if fast.encode(sample, add_special_tokens=False).ids != get_tokenizer().encode(sample):
        raise RuntimeError("tokenizer.json disagrees with the o200k_harmony tokenizer")
    fast.save(str(ckpt / "tokenizer.json"))
    (ckpt / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2))
    return ckpt / "tokenizer.json"


def llama_cpp_source(cache: Path, pip: Path) -> Path:
    """The llama.cpp tree vendored in llama-cpp-python's sdist (downloaded once into `cache`)."""
    target = cache / "llama-cpp-python-src"
    found = sorted(target.glob("llama_cpp_python-*/vendor/llama.cpp"))
    if found:
        return found[-1]
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(pip), "download", "--no-deps", "--no-binary", ":all:",
                    "-d", str(target), "llama-cpp-python"], check=True)
    sdist = sorted(target.glob("llama_cpp_python-*.tar.gz"))[-1]
    with tarfile.open(sdist) as tar:
        tar.extractall(target, filter="data")
    return sorted(target.glob("llama_cpp_python-*/vendor/llama.cpp"))[-1]


def convert_to_gguf(ckpt: Path, out: Path, llama_src: Path, log: Path) -> list[str]:
    """Run llama.cpp's converter (bf16 for dense tensors; it keeps experts in MXFP4)."""
    cmd = [sys.executable, str(llama_src / "convert_hf_to_gguf.py"), str(ckpt),
           "--outfile", str(out), "--outtype", "bf16"]
    env = {"PYTHONPATH": str(llama_src / "gguf-py"), "PATH": "/usr/bin:/bin"}
    with log.open("w") as fh:
        subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT, env=env)
    return cmd

"""Caption tokenizer throughput (captions/s) of ``data.tokenizer=clip_bpe`` vs open_clip's ``tokenize``.

    .venv/bin/python benchmarks/clip_tokenizer.py                      # 20k captions per set, single thread
    .venv/bin/python benchmarks/clip_tokenizer.py --num-captions 2000  # quick look

Captions: CC3M-like sentences from a few templates whose words are drawn Zipf-like (s = 1.1) from the whole-word
entries of CLIP's vocabulary (so the word caches see a realistic long tail), plus an image number. Two sets:
``ascii`` (as such) and ``non_ascii`` (every caption gets a curly apostrophe, an accented word and an entity, so
each takes ftfy's full path). Each tokenizer packs all captions of a set to [N, 77] in batches of 256, best of
``--repeats`` runs (other load only slows a run down). The Hugging Face tokenizer runs on one thread
(``RAYON_NUM_THREADS=1``), as in a data-loader worker. Prints one line per (tokenizer, set) and writes
benchmarks/results/clip_tokenizer.json (captions/s per tokenizer and set, and ours / open_clip's in the same run).
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # read when the tokenizers thread pool starts
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from framework.data.clip.tokenizer import build_tokenizer  # noqa: E402
from framework.trainers.common import (  # noqa: E402
    DirtyTreeError,
    check_results_path,
    environment_info,
    git_commit,
    write_result,
)

TEMPLATES = [
    "a {} {} on the {}",
    "{} {} sitting next to a {} in the {}",
    "portrait of a {} with {} and {}",
    "the {} is {} and the {} is {}",
    "{} , {} and {} at sunset in {}",
    "actor attends the {} {} of {} {}",
]


def make_captions(n: int, vocab_path: str, *, non_ascii: bool, seed: int = 0) -> list[str]:
    """``n`` captions from :data:`TEMPLATES` with Zipf-drawn words (see the module docstring)."""
    merges = gzip.open(vocab_path).read().decode("utf-8").split("\n")[1:48895]
    words = [w[: -len("</w>")] for w in ("".join(m.split()) for m in merges) if w.endswith("</w>")]
    words = [w for w in words if w.isascii() and w.isalpha() and len(w) > 2]
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) ** 1.1 for rank in range(len(words))]
    out = []
    for i in range(n):
        template = TEMPLATES[i % len(TEMPLATES)]
        slots = rng.choices(words, weights, k=template.count("{}"))
        caption = template.format(*slots) + f" #{rng.randrange(100_000)}"
        if non_ascii:
            caption = f"it’s {caption} at the café &amp; bar"
        out.append(caption)
    return out


def captions_per_second(fn: Callable[[Sequence[str]], object], captions: list[str], repeats: int) -> float:
    fn(captions[:256])  # warm-up: vocabulary load, caches of the first batch
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(captions), 256):
            fn(captions[i : i + 256])
        best = max(best, len(captions) / (time.perf_counter() - start))
    return best


def _open_clip_tokenize() -> Callable[[Sequence[str]], object] | None:
    """open_clip's ``tokenize`` without running ``open_clip/__init__.py`` (which imports torchvision)."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "tokenizer.py"
    mod_spec = importlib.util.spec_from_file_location("_open_clip_tokenizer", path)
    assert mod_spec is not None and mod_spec.loader is not None
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return lambda texts: module.tokenize(list(texts), 77)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-captions", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--vocab-path", default=None, help="default: the file shipped with open_clip")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "clip_tokenizer.json"))
    args = ap.parse_args(argv)
    try:
        check_results_path(args.out)
    except DirtyTreeError as e:
        ap.error(str(e))

    ours = build_tokenizer("clip_bpe", 77, args.vocab_path)
    vocab_path = args.vocab_path or getattr(ours, "vocab_path", None)
    if vocab_path is None:
        raise SystemExit("--vocab-path is needed (bpe_simple_vocab_16e6.txt.gz)")
    tokenizers: dict[str, Callable[[Sequence[str]], object]] = {"scalefirst clip_bpe": ours}
    reference = _open_clip_tokenize()
    if reference is not None:
        tokenizers["open_clip tokenize"] = reference
    rates: dict[str, dict[str, float]] = {}
    for non_ascii in (False, True):
        captions = make_captions(args.num_captions, str(vocab_path), non_ascii=non_ascii)
        kind = "non_ascii" if non_ascii else "ascii"
        for name, fn in tokenizers.items():
            rate = captions_per_second(fn, captions, args.repeats)
            rates.setdefault(name, {})[kind] = rate
            print(f"{name:22s} {kind:9s} {rate:10,.0f} captions/s")
    ratio = {
        kind: rates["scalefirst clip_bpe"][kind] / rates["open_clip tokenize"][kind]
        for kind in ("ascii", "non_ascii")
        if "open_clip tokenize" in rates
    }
    write_result(args.out, {
        "benchmark": "clip_tokenizer", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "num_captions": args.num_captions,
        "repeats": args.repeats, "captions_per_s": rates, "ratio_vs_open_clip": ratio, "git_commit": git_commit(REPO),
        "env": environment_info(),
    })  # fmt: skip


if __name__ == "__main__":
    main()

"""The contextual-embedding claim, measured: does a model give a word a different vector per sense?

"눈" is snow in "눈이 와서 너무 좋다" and eye in "너의 눈이 너무 예쁘다". A static embedding gives
the word one vector whatever the sentence; a contextual one should put the snow uses near each
other and away from the eye uses. The probe reads ``sense<TAB>sentence`` rows, takes the word's
vector in each sentence at every layer (its first occurrence's sub-tokens, averaged:
:func:`pretune.embed.word_vector`; layer 0 is the embedding layer's output) and reports per layer:

* ``nn_accuracy``: leave-one-out nearest-neighbour sense accuracy (each sentence's nearest other
  sentence by cosine has the same sense); near 0.5 for two balanced senses means no separation;
* ``same_cosine`` / ``cross_cosine``: the mean cosine of same-sense and of cross-sense pairs.

Layer 0 of BERT is not quite static: it adds position and segment embeddings and a LayerNorm, so
the word's vector there varies with where it stands; a sentence set that places the word and its
particles alike in both senses keeps layer 0 near chance.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pretune.errors import PretuneError
from pretune.io import read_text_file

# Sentence sets that ship with pretune (`pretune senses --data NAME`): name -> (word, file)
SENSE_SETS = {
    "nun-ko": ("눈", Path(__file__).parent / "data" / "senses" / "nun_ko.tsv"),  # 24 snow, 24 eye
    "bank-en": ("bank", Path(__file__).parent / "data" / "senses" / "bank_en.tsv"),  # 24 river, 24 money
    # 48 star (the rating's), 48 particular (別): reviews from NSMC's unlabeled corpus, the demo's pretraining text
    "byeol-ko": ("별", Path(__file__).parent / "data" / "senses" / "byeol_ko.tsv"),
}


def sense_set(data: str | Path, word: str | None) -> tuple[Path, str | None]:
    """The file and word of ``--data``: a bundled set's name (:data:`SENSE_SETS`; its word unless
    ``word`` is given) or a path (``word`` as given)."""
    if str(data) in SENSE_SETS and not Path(data).exists():
        known_word, path = SENSE_SETS[str(data)]
        return path, word or known_word
    return Path(data), word


def read_senses(path: str | Path) -> list[tuple[str, str]]:
    """``(sense, sentence)`` rows of a UTF-8 file (blank lines and ``#`` comments skipped); at least
    two senses with two sentences each."""
    path = Path(path)
    rows = []
    for n, line in enumerate(read_text_file(path, flag="--data").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        sense, tab, sentence = line.partition("\t")
        if not tab or not sense.strip() or not sentence.strip():
            raise PretuneError(f"{path}:{n}: expected sense<TAB>sentence, got {line[:60]!r}")
        rows.append((sense.strip(), sentence.strip()))
    counts = {s: sum(r[0] == s for r in rows) for s in dict.fromkeys(r[0] for r in rows)}
    if len(counts) < 2 or min(counts.values()) < 2:
        shown = ", ".join(f"{sense!r}: {n}" for sense, n in list(counts.items())[:4]) + (", ..." if len(counts) > 4 else "")
        raise PretuneError(f"{path}: needs at least two senses with two sentences each; sentences per sense: {shown} "
                           f"({len(counts)} senses, {sum(n < 2 for n in counts.values())} with fewer than two)")
    return rows


@torch.no_grad()
def word_vectors(model: Any, tokenizer: Any, sentences: list[str], word: str) -> torch.Tensor:
    """The word's vector in each sentence at every layer: (layers + 1, sentences, hidden), fp32."""
    from pretune.embed import Embedded, encode_for_model, word_positions

    model.eval()
    device = next(model.parameters()).device
    out = []
    for text in sentences:
        ids, offsets = encode_for_model(model, tokenizer, text)
        positions = word_positions(Embedded(text, [], torch.empty(0), offsets), word)
        _, states = model.body(torch.tensor([ids], device=device), output_hidden_states=True)
        out.append(torch.stack([s[0, positions].float().mean(0) for s in states]).cpu())
    return torch.stack(out, dim=1)


def layer_scores(vectors: torch.Tensor, senses: list[str]) -> dict[str, float]:
    """Nearest-neighbour sense accuracy and mean same/cross-sense cosine of one layer's (n, h) vectors."""
    unit = F.normalize(vectors.double(), dim=-1)
    sim = unit @ unit.T
    nearest = sim.fill_diagonal_(float("-inf")).argmax(1).tolist()
    pairs = list(itertools.combinations(range(len(senses)), 2))
    same = [float(sim[i, j]) for i, j in pairs if senses[i] == senses[j]]
    cross = [float(sim[i, j]) for i, j in pairs if senses[i] != senses[j]]
    return {
        "nn_accuracy": sum(senses[i] == senses[j] for i, j in enumerate(nearest)) / len(senses),
        "same_cosine": sum(same) / len(same), "cross_cosine": sum(cross) / len(cross),
    }


def chance_accuracy(senses: dict[str, int]) -> float:
    """The nearest-neighbour accuracy of vectors that carry no sense: the chance that a random other
    sentence has the same sense."""
    n = sum(senses.values())
    return sum(c * (c - 1) for c in senses.values()) / (n * (n - 1))


def sense_probe(model: Any, tokenizer: Any, rows: list[tuple[str, str]], word: str) -> dict[str, Any]:
    """Per-layer scores (layer 0 = embeddings) of ``word`` over the ``(sense, sentence)`` rows."""
    senses = [s for s, _ in rows]
    vectors = word_vectors(model, tokenizer, [t for _, t in rows], word)
    layers = [{"layer": k, **layer_scores(v, senses)} for k, v in enumerate(vectors)]
    return {"word": word, "sentences": len(rows), "senses": {s: senses.count(s) for s in dict.fromkeys(senses)},
            "layers": layers}


def plot_probes(probes: dict[str, dict[str, Any]], out_dir: Path, stem: str = "senses") -> list[Path]:
    """``<stem>_accuracy.png`` (nearest-neighbour accuracy by layer) and ``<stem>_cosine.png``
    (same- and cross-sense cosine by layer), one line per named probe."""
    from pretune.report import plot_lines

    def line(probe: dict[str, Any], key: str) -> tuple[list[int], list[float]]:
        return [x["layer"] for x in probe["layers"]], [x[key] for x in probe["layers"]]

    first = next(iter(probes.values()))
    # matplotlib's bundled fonts have no Hangul: name a non-ASCII word by its senses only
    word = f'"{first["word"]}"' if first["word"].isascii() else "the word"
    word += f" ({' / '.join(first['senses'])})"
    cosines = {f"{name} {sense} sense": line(p, f"{sense}_cosine") for name, p in probes.items() for sense in ("same", "cross")}
    accuracy = {name: line(p, "nn_accuracy") for name, p in probes.items()}
    layers = accuracy[next(iter(accuracy))][0]
    accuracy["chance"] = (layers, [chance_accuracy(first["senses"])] * len(layers))
    return [
        plot_lines(accuracy, out_dir / f"{stem}_accuracy.png",
                   title=f"{word}: nearest-neighbour sense accuracy", xlabel="layer (0 = embeddings)", ylabel="accuracy"),
        plot_lines(cosines, out_dir / f"{stem}_cosine.png", title=f"{word}: mean cosine of sentence pairs",
                   xlabel="layer (0 = embeddings)", ylabel="cosine"),
    ]


def untrained_twin(model: Any, seed: int = 0) -> Any:
    """A freshly initialised model of the same config (the probe's baseline), on the same device."""
    from pretune.models import build_model

    torch.manual_seed(seed)
    return build_model(model.cfg).to(next(model.parameters()).device).eval()


def probe_table(probes: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: one row per layer, accuracy and same/cross cosine for each named probe."""
    names = list(probes)
    head = "| layer | " + " | ".join(f"{n}: NN acc | {n}: same | {n}: cross" for n in names) + " |"
    lines = [head, "|---:|" + "---:|" * (3 * len(names))]
    for k in range(len(probes[names[0]]["layers"])):
        cells = [f"{x['nn_accuracy']:.3f} | {x['same_cosine']:.3f} | {x['cross_cosine']:.3f}"
                 for x in (probes[n]["layers"][k] for n in names)]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = [
    "SENSE_SETS", "chance_accuracy", "layer_scores", "plot_probes", "probe_table", "read_senses", "sense_probe",
    "sense_set", "untrained_twin", "word_vectors",
]

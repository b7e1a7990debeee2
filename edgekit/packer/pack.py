"""`edgekit pack`: ingest → doctor → (convert) → search recipes → evidence → signed bundle."""

from __future__ import annotations

import io
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekit_agent.bundle.manifest import (
    MAX_SECURITY_VERSION,
    Manifest,
    ModelRef,
    RecipeStep,
    Variant,
    sha256_hex,
)

from .. import ui
from ..bundle_writer import MemberFile, write_bundle
from ..dataset import Dataset, Preprocess, load_dataset, load_labels, synthetic_dataset
from ..errors import BudgetError, CalibrationError, ConfigError, ModelError
from ..examples import get_example
from ..flash.bench_ssh import parse_profile_uri
from ..report import render_candidates
from ..targets import Profile, family_for, get_profile
from ..targets.mcu.csource import selftest_header
from . import doctor_onnx, doctor_tflite
from .evaluate import accuracy, is_classifier, make_runner, run_all
from .formats import choose_format
from .ingest import ModelInfo, describe, read_model
from .inputs import (
    InputValue,
    check_control_flow,
    check_generated_inputs,
    freeze_input_values,
    state_pairs,
    with_fed_back_state,
)
from .latency_model import target_timing
from .preact import PreActivation, saturated_outputs
from .recipes import LADDER, Recipe, recipe_by_name
from .refusal import refusal_message
from .search import (
    Candidate,
    Context,
    Criteria,
    choose,
    format_supports,
    run_search,
    why_chosen,
)
from .source import keep_source

EVAL_FRACTION = 0.5  # without --eval, the second half of --calib is held out for evaluation
SELFTEST_SAMPLES = 4
# the self-test's inputs travel in every bundle (and OTA update): beyond this, fewer samples
SELFTEST_INPUT_BYTES = 256 * 1024
FIRMWARE_HEADER, FIRMWARE_SELFTEST = "mcu/model_data.h", "mcu/selftest_data.h"
HOST_FORM_SUFFIX = "selftest.tflite"  # model.selftest.tflite: what a host runs for model.tflite
NO_CALIB_HINT = ("no calibration data was given; give --calib DIR (representative inputs), "
                 "or --synthetic-calib to accept generated data")


@dataclass(frozen=True)
class PackOptions:
    model: str | Path
    target: str
    out: str | Path
    calib: str | Path | None = None
    eval_data: str | Path | None = None
    labels: str | Path | None = None
    max_drop: float | None = None
    min_sqnr: float | None = None
    recipe: str | None = None
    # input name -> the static shape to freeze it to (a dynamic input needs one)
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    # input name -> a constant it is frozen to (e.g. a sample rate); the input disappears
    input_values: Mapping[str, InputValue] = field(default_factory=dict)
    # (input, output) recurrent-state pairs; empty: the obvious ones (state/stateN) by name
    states: tuple[tuple[str, str], ...] = ()
    # ssh://[user@]host[:port]: time candidates on that board with its edgekit-agent
    profile_on: str | None = None
    ssh_options: tuple[str, ...] = ()
    agent_cmd: str = "edgekit-agent"  # the agent command on that board
    synthetic_calib: bool = False
    variants: int = 1
    split: bool = False  # add head/tail variants per cut (split execution; ONNX models)
    sign_key: str | Path | None = None
    targets_dirs: tuple[str, ...] = ()
    preprocess: Preprocess | None = None  # how image folders become inputs (None: defaults)
    runtime: str = "auto"
    name: str | None = None
    version: str = "1"
    security_version: int | None = None  # None: the current Unix time (a newer pack is larger)
    show_progress: bool = False


@dataclass
class PackResult:
    bundle: Path
    manifest: Manifest
    candidates: list[Candidate]
    chosen: list[Candidate]
    source: ModelInfo
    notes: list[str] = field(default_factory=list)
    # the target takes (full) int8, but no calibration data was given: int8 was never built
    uncalibrated: bool = False
    why: str = ""  # why the first chosen candidate won (search.why_chosen)

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": str(self.bundle), "bundle_bytes": self.bundle.stat().st_size,
                "uncalibrated": self.uncalibrated,
                "chosen": [c.recipe.name for c in self.chosen], "why": self.why,
                "candidates": [c.to_dict() for c in self.candidates],
                "manifest": self.manifest.to_dict()}

    def render(self) -> str:
        # The bundle also carries variants, C sources and self-test data: the ratio a user asks
        # about is the model that will run against the float model, so say both apart.
        model = self.manifest.model.size_bytes
        extra = f", {len(self.chosen)} variants" if len(self.chosen) > 1 else ""
        head = (
            f"packed {self.bundle} for {self.manifest.target}: "
            f"{', '.join(c.recipe.name for c in self.chosen)} — model {ui.human_bytes(model)}, "
            f"{model / self.source.size_bytes:.2f}x the float model "
            f"(bundle {ui.human_bytes(self.bundle.stat().st_size)}{extra})"
        ) + (f"; no int8: {NO_CALIB_HINT}" if self.uncalibrated else "")
        return "\n".join([render_candidates(self.candidates, self.source.size_bytes), "", head,
                          f"chosen {self.chosen[0].recipe.name}: {self.why}",
                          *(f"note: {n}" for n in self.notes)])


def pack(opts: PackOptions) -> PackResult:
    profile = get_profile(opts.target, list(opts.targets_dirs))
    family = family_for(profile.family)
    _check_options(opts)
    model_path, defaults = _resolve_model(opts.model)
    original, fmt = read_model(model_path)
    recipes = _recipes(opts, family, profile)
    source = describe(original, fmt)
    model, steps = _doctor(original, fmt, opts, profile)
    info = describe(model, fmt)
    flow = check_control_flow(model, fmt, family, profile.name)
    steps += flow
    calib_path = opts.calib or defaults.get("calib")
    eval_path = opts.eval_data or (defaults.get("eval") if not opts.calib else None)
    labels_path = opts.labels or (defaults.get("labels") if not opts.calib else None)
    calib, evald, notes = _datasets(info, (model, fmt), calib_path, eval_path, opts, recipes)
    runtime = "onnxruntime" if flow else opts.runtime
    float_onnx = model if fmt == "onnx" else None  # what --split cuts (before any conversion)
    choice = choose_format(model, fmt, family, profile.family, runtime, calib or evald)
    steps += choice.steps
    notes += [choice.note] if choice.note else []
    if choice.format != fmt:
        model, fmt = choice.model, choice.format
        info = describe(model, fmt)
        calib = calib.with_inputs(info.inputs) if calib else None
        evald = evald.with_inputs(info.inputs)
    if opts.recipe and not format_supports(recipes[0], fmt):
        raise ConfigError(f"recipe {recipes[0].name} is not available for {fmt} models",
                          key="--recipe", value=opts.recipe)
    labels = load_labels(labels_path, len(evald)) if labels_path else None
    ctx = _context(model, fmt, family, profile, calib, evald, labels, opts, notes)
    # the float source is no alternative on a target that runs full integer only
    ctx.source_bytes = 0 if family.FULL_INT8 else len(original)
    with ui.progress(len(recipes), f"pack {profile.name}", opts.show_progress) as bar:
        tried = run_search(ctx, recipes, opts.variants, bar)
    chosen = choose(tried, opts.variants, ctx.criteria.check_speed) or _forced(opts, tried, notes)
    chosen = keep_source(ctx, original, source.format, chosen)
    if not chosen:
        raise BudgetError(refusal_message(ctx, tried, render_candidates(tried, source.size_bytes)))
    manifest, files = _bundle_contents(opts, model_path, original, source, profile, ctx, steps,
                                       chosen, notes)
    if opts.split:
        manifest, files = _with_split(manifest, files, float_onnx, ctx)
        notes.append(manifest.notes[-1])
    write_bundle(opts.out, manifest, files, opts.sign_key)
    uncalibrated = ctx.calib is None and any(r.needs_calibration for r in recipes)
    why = _why(opts, chosen[0], tried)
    return PackResult(Path(opts.out), manifest, tried, chosen, source, notes, uncalibrated, why)


def _why(opts: PackOptions, chosen: Candidate, tried: list[Candidate]) -> str:
    if opts.recipe:
        return "forced by --recipe"
    if chosen.stats.get("source_unchanged"):
        return "no compressing recipe fits; the source file is smaller than its float32 form"
    return why_chosen(chosen, tried)


def _forced(opts: PackOptions, tried: list[Candidate], notes: list[str]) -> list[Candidate]:
    """--recipe is the user's decision: keep it despite fidelity/speed misses, never budget
    misses."""
    cand = tried[0] if opts.recipe and tried else None
    if (cand is None or cand.fidelity is None or cand.compiled is None
            or cand.compiled.report.violations):
        return []
    notes.append(f"--recipe {cand.recipe.name} kept as forced, although: {cand.rejected}")
    return [cand]


def _check_options(opts: PackOptions) -> None:
    if opts.max_drop is not None and not 0 <= opts.max_drop < 1:
        raise ConfigError("--max-drop is a fraction (0.01 = 1 point)", key="--max-drop",
                          value=opts.max_drop, allowed="[0, 1)")
    if opts.variants < 1:
        raise ConfigError("need at least one variant", key="--variants", value=opts.variants)
    if opts.split and str(opts.model).lower().endswith(".tflite"):
        raise ConfigError("split variants are cut from an ONNX model", key="--split",
                          value=str(opts.model), allowed=".onnx models")
    if opts.security_version is not None and not 0 <= opts.security_version <= MAX_SECURITY_VERSION:
        raise ConfigError("the anti-rollback counter is an integer >= 0", key="--security-version",
                          value=opts.security_version, allowed=f"0..{MAX_SECURITY_VERSION}")
    if opts.profile_on:
        parse_profile_uri(opts.profile_on)  # a bad URI fails before any work
    out = Path(opts.out)
    if out.is_dir():
        raise ConfigError(f"{out} is a folder; give a bundle file name", key="-o", value=str(out))


def _resolve_model(model: str | Path) -> tuple[Path, dict[str, Path]]:
    """A path, or `example:NAME[.onnx|.tflite]` for a built-in example (with its data files)."""
    text = str(model)
    if not text.startswith("example:"):
        return Path(text), {}

    name, _, ext = text.removeprefix("example:").partition(".")
    ex = get_example(name)
    if ext not in ("", "onnx", "tflite"):
        raise ModelError(f"{text}: example format must be .onnx or .tflite")
    path = ex.tflite if ext == "tflite" else ex.onnx
    return path, {"calib": ex.calib, "eval": ex.eval, "labels": ex.labels}


def _recipes(opts: PackOptions, family: Any, profile: Profile) -> list[Recipe]:
    if opts.recipe:
        recipe = recipe_by_name(opts.recipe)
        reason = _inapplicable(recipe, family, profile)
        if reason:
            raise ConfigError(f"recipe {recipe.name} cannot run on {profile.name}: {reason}",
                              key="--recipe", value=opts.recipe)
        return [recipe]
    return [r for r in LADDER if not _inapplicable(r, family, profile)]


def _inapplicable(recipe: Recipe, family: Any, profile: Profile) -> str:
    if recipe.quantization not in family.QUANTIZATIONS:
        if family.FULL_INT8:
            return (f"{profile.family} needs a fully int8-quantized model "
                    f"(use static_int8; {recipe.name} leaves float or hybrid ops)")
        return f"the {profile.family} runtime cannot execute {recipe.quantization}"
    if recipe.mixed_precision and family.FULL_INT8:
        return f"{profile.family} needs every op in int8"
    dtype = {"none": "float32", "fp16": "float16", "weight_int4": "int4",
             "static_int16x8": "int16"}.get(recipe.quantization, "int8")
    if dtype not in profile.dtypes:
        return f"{profile.name} does not support {dtype} (supports {', '.join(profile.dtypes)})"
    return ""


def _doctor(model: bytes, fmt: str, opts: PackOptions, profile: Profile) -> tuple[bytes, list[str]]:
    shapes = dict(opts.input_shapes)
    steps: list[str] = []
    if opts.input_values and fmt != "onnx":
        raise ConfigError("freezes inputs of ONNX models only", key="--input-value",
                          value=",".join(opts.input_values))
    if fmt == "onnx":
        # Fold the branches a frozen value selects before shapes are frozen: ONNX Runtime
        # type-checks every If branch against static shapes, also the ones never taken.
        chain = [lambda m: freeze_input_values(m, opts.input_values),
                 lambda m: doctor_onnx.simplify(m) if opts.input_values else (m, []),
                 lambda m: doctor_onnx.freeze_input_shapes(m, shapes, profile.default_input_batch),
                 doctor_onnx.decompose_fp16_weights, doctor_onnx.simplify,
                 doctor_onnx.sanitize_names]
    else:
        chain = [doctor_tflite.normalise_opcodes, doctor_tflite.densify_sparse_weights,
                 doctor_tflite.rewrite_transpose_conv_bias,
                 lambda m: doctor_tflite.freeze_input_shapes(m, shapes,
                                                             profile.default_input_batch),
                 doctor_tflite.decompose_fp16_weights, doctor_tflite.ensure_signature]
    for step in chain:
        model, done = step(model)
        steps += done
    return model, steps


def _datasets(info: ModelInfo, model: tuple[bytes, str], calib_path: Any, eval_path: Any,
              opts: PackOptions, recipes: list[Recipe]
              ) -> tuple[Dataset | None, Dataset, list[str]]:
    notes: list[str] = []
    pairs = state_pairs(info.inputs, info.outputs, opts.states)
    states = [p[0] for p in pairs]
    data_inputs = tuple(s for s in info.inputs if s.name not in states)
    complete = _state_feeder(info, model, pairs, notes)
    pre = opts.preprocess
    calib = complete(load_dataset(calib_path, data_inputs, pre)) if calib_path else None
    if calib is None:
        if any(r.needs_calibration for r in recipes) and not opts.synthetic_calib:
            if opts.recipe or all(r.needs_calibration for r in recipes):
                raise CalibrationError("static int8 needs calibration data: give --calib PATH "
                                       "(or --synthetic-calib to accept generated data)")
        if opts.synthetic_calib:
            check_generated_inputs(data_inputs)
            calib = complete(synthetic_dataset(data_inputs, n=128))
            notes.append("calibration and fidelity were measured on SYNTHETIC data "
                         "(uniform [0,1)); real data may differ")
    if eval_path:
        evald = complete(load_dataset(eval_path, data_inputs, pre))
    elif calib is not None and len(calib) >= 4:
        n = int(len(calib) * (1 - EVAL_FRACTION))
        calib, evald = calib.split(n)
        notes.append(
            f"no --eval: held out the last {len(evald)} of {n + len(evald)} calibration samples"
        )
    elif calib is not None:
        evald = calib
    else:
        check_generated_inputs(data_inputs)
        evald = complete(synthetic_dataset(data_inputs, n=32, seed=1))
        notes.append("no data given: fidelity measured on synthetic inputs")
    return calib, evald, notes


def _state_feeder(info: ModelInfo, model: tuple[bytes, str], pairs: tuple[tuple[str, str], ...],
                  notes: list[str]) -> Any:
    """Dataset of the non-state inputs -> the full Dataset, state fed back by the float model."""
    if not pairs:
        return lambda data: data
    runner = make_runner(*model)
    notes.append("recurrent state fed back across calibration/evaluation steps (float model): "
                 + ", ".join(f"{o} -> {i}" for i, o in pairs))
    return lambda data: with_fed_back_state(data, info.inputs, info.outputs, pairs, runner)


def _context(model: bytes, fmt: str, family: Any, profile: Profile, calib: Dataset | None,
             evald: Dataset, labels: np.ndarray | None, opts: PackOptions,
             notes: list[str]) -> Context:
    reference = make_runner(model, fmt)
    ref_out = run_all(reference, evald)
    names = [s.name for s in reference.outputs]
    pre = PreActivation.of(model, fmt, names, evald)
    if pre is not None:
        shown = run_all(reference, calib) if calib is not None else ref_out
        notes += saturated_outputs(names, shown, pre.activations)
    ref_acc = (
        accuracy(ref_out[0], labels) if labels is not None and is_classifier(ref_out[0]) else None
    )
    max_drop = (
        opts.max_drop if opts.max_drop is not None else (0.01 if labels is not None else None)
    )
    criteria = Criteria(max_drop=max_drop, min_sqnr_db=opts.min_sqnr,
                        check_speed=profile.family == "cpu")
    return Context(model=model, format=fmt, family=family, profile=profile, calib=calib, eval=evald,
                   labels=labels, reference=reference, reference_outputs=ref_out,
                   reference_accuracy=ref_acc, criteria=criteria,
                   int8_io=family.FULL_INT8 or profile.family == "mcu",
                   timing=target_timing(profile, model, fmt, opts.profile_on,
                                        (opts.ssh_options, opts.agent_cmd)),
                   pre_activation=pre)


# --- bundle contents -------------------------------------------------------------------------

def _bundle_contents(opts: PackOptions, model_path: Path, original: bytes, source: ModelInfo,
                     profile: Profile, ctx: Context, steps: list[str], chosen: list[Candidate],
                     notes: list[str]) -> tuple[Manifest, list[MemberFile]]:
    files: list[MemberFile] = []
    variants = []
    for i, cand in enumerate(chosen):
        stem = "model" if i == 0 else f"variants/{cand.recipe.name}"
        path = f"{stem}.{cand.format}"
        files.append(MemberFile(path, cand.shipped, "model" if i == 0 else "variant"))
        for extra, blob in (cand.compiled.extra_files if cand.compiled else {}).items():
            files.append(MemberFile(f"{stem}_files/{extra}" if i else extra, blob, "target"))
        host_path = None
        if cand.compiled and cand.compiled.host_model is not None:
            host_path = f"{stem}.{HOST_FORM_SUFFIX}"
            files.append(MemberFile(host_path, cand.compiled.host_model, "selftest"))
        variants.append(_variant(cand, path, steps, host_path))
    selftest, arrays = _selftest(chosen[0], ctx.eval)
    files.append(MemberFile("selftest.npz", selftest, "selftest"))
    if any(f.path == FIRMWARE_HEADER for f in files):  # the firmware self-tests a slot too
        files.append(MemberFile(FIRMWARE_SELFTEST, _firmware_selftest(chosen[0], arrays),
                                "target"))
    source_dict = {"path": model_path.name, "format": source.format, "sha256": sha256_hex(original),
                   "size_bytes": len(original), "params": source.params, "macs": source.macs,
                   "op_count": len(source.ops), "latency_ms": chosen[0].latency.ref_p50_ms
                   if chosen[0].latency else None,
                   "latency_source": chosen[0].latency.source if chosen[0].latency else None,
                   "accuracy": ctx.reference_accuracy,
                   "eval_samples": len(ctx.eval),
                   "calib_samples": len(ctx.calib) if ctx.calib else 0,
                   "synthetic_data": bool(ctx.calib and ctx.calib.synthetic) or ctx.eval.synthetic}
    manifest = Manifest(name=opts.name or model_path.stem, version=opts.version,
                        target=profile.name,
                        family=profile.family, primary=variants[0], members=(),
                        source=source_dict, variants=tuple(variants[1:]),
                        target_profile=profile.to_dict() | {"source": Path(profile.source).name},
                        extras={"selftest": "selftest.npz"}, notes=tuple(notes),
                        security_version=(int(time.time()) if opts.security_version is None
                                          else opts.security_version))
    return manifest, files


def _with_split(manifest: Manifest, files: list[MemberFile], onnx_model: bytes | None,
                ctx: Context) -> tuple[Manifest, list[MemberFile]]:
    """Head and tail variants per candidate cut, each measured here (``--split``)."""
    if onnx_model is None:
        raise ConfigError("split variants are cut from an ONNX model", key="--split",
                          value=manifest.source.get("format"), allowed="onnx")
    import onnx

    from ..fleet.coordinator import split

    model = onnx.load_from_string(onnx_model)
    if len(model.graph.input) != 1 or len(model.graph.output) != 1:
        raise ConfigError("split execution needs a model with one input and one output",
                          key="--split", value=f"{len(model.graph.input)} inputs, "
                          f"{len(model.graph.output)} outputs")
    sample = np.asarray(next(iter(ctx.eval.samples(1)))[0], dtype=np.float32)
    profiled = split.profile(model, sample)
    shipped = split.frontier(profiled)
    parts = split.split_variants(model, shipped)
    if not parts:
        raise ConfigError("the model has no tensor that alone carries the head to the tail",
                          key="--split", value=manifest.name)
    note = (f"split: {len(shipped.cuts) - 2} of {len(profiled.cuts) - 2} candidate cuts kept "
            "(the others carry no fewer bytes than an earlier cut)")
    moved = [(replace(v, model=replace(v.model, path=f"variants/{v.model.path}")), d)
             for v, d in parts]
    files = files + [MemberFile(v.model.path, d, "variant") for v, d in moved]
    return replace(manifest, variants=manifest.variants + tuple(v for v, _ in moved),
                   notes=(*manifest.notes, note)), files


def _variant(cand: Candidate, path: str, doctor_steps: list[str],
             host_path: str | None = None) -> Variant:
    runner = cand.runner
    recipe = [RecipeStep("doctor", s) for s in doctor_steps]
    recipe.append(RecipeStep("recipe", params={**cand.recipe.to_dict(), **cand.stats}))
    if cand.compiled and cand.compiled.report.details.get("compile_steps"):
        recipe += [RecipeStep("target", s) for s in cand.compiled.report.details["compile_steps"]]
    shipped = cand.shipped
    return Variant(name=cand.recipe.name,
                   model=ModelRef(path=path, format=cand.format, sha256=sha256_hex(shipped),
                                  size_bytes=len(shipped), compressed_bytes=cand.compressed_bytes),
                   inputs=runner.inputs, outputs=runner.outputs, recipe=tuple(recipe),
                   fidelity=replace(cand.fidelity, latency_ratio=round(cand.latency.ratio, 3)),
                   latency_ms=round(cand.latency.p50_ms, 4),
                   target_report=replace(cand.compiled.report, selftest_model=host_path),
                   latency_source=cand.latency.source)


def _cases(arrays: list[np.ndarray]) -> np.ndarray:
    """K cases along the batch axis; scalars (rank 0) on a new leading axis."""
    return np.stack(arrays) if arrays and np.ndim(arrays[0]) == 0 else np.concatenate(arrays)


def _firmware_selftest(cand: Candidate, arrays: dict[str, np.ndarray]) -> bytes:
    ins, outs = cand.runner.inputs, cand.runner.outputs
    return selftest_header([arrays[f"input_{i}"][:1] for i in range(len(ins))],
                           [arrays[f"output_{j}"][:1] for j in range(len(outs))], ins, outs,
                           float(arrays["atol"]))


def _selftest(cand: Candidate, data: Dataset) -> tuple[bytes, dict[str, np.ndarray]]:
    """Inputs and the chosen model's own outputs: a device re-runs them before activation."""
    arrays: dict[str, np.ndarray] = {}
    per_sample = max(1, sum(a[0].nbytes for a in data.arrays if len(a)))
    samples = list(data.samples(max(1, min(SELFTEST_SAMPLES, SELFTEST_INPUT_BYTES // per_sample))))
    outputs = [cand.runner(s) for s in samples]
    for i in range(len(data.inputs)):
        arrays[f"input_{i}"] = _cases([s[i] for s in samples])
    for j in range(len(cand.runner.outputs)):
        arrays[f"output_{j}"] = _cases([o[j] for o in outputs])
    spread = max(float(np.ptp(arrays[f"output_{j}"])) for j in range(len(cand.runner.outputs)))
    # Another CPU's kernels may round differently: allow a few quantization steps.
    scales = [s.scale for s in cand.runner.outputs if s.scale]
    arrays["atol"] = np.float32(max([3 * max(scales, default=0.0), 1e-3 * spread, 1e-5]))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue(), arrays

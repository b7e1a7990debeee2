"""The `edgekit` command line: help, usage errors (exit 2), keygen, examples, error lines."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgekit_agent.bundle import signing

SUBCOMMANDS = {  # subcommand -> options its --help must mention
    "pack": ["--target", "--out", "--calib", "--labels", "--max-drop", "--sign", "--input-shape",
             "--synthetic-calib", "--json"],
    "inspect": ["--json"],
    "verify": ["--key"],
    "targets": ["--json", "--targets-dir"],
    "keygen": ["--out"],
    "examples": ["--json"],
}


def test_help_lists_every_command(edgekit_cli):
    proc = edgekit_cli("--help")
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("usage: edgekit")
    for name in SUBCOMMANDS:
        assert f"    {name}" in proc.stdout, name


def test_console_script_is_installed():
    exe = shutil.which("edgekit")
    assert exe, "the `edgekit` entry point is not on PATH (pip install -e .)"
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("edgekit ")


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_subcommand_help(name, edgekit_cli):
    proc = edgekit_cli(name, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: edgekit {name}")
    for option in SUBCOMMANDS[name]:
        assert option in proc.stdout, option


@pytest.mark.parametrize("argv", [
    [],                                   # no command
    ["frobnicate"],                       # unknown command
    ["verify"],                           # missing BUNDLE
    ["inspect", "a.ekb", "--colour"],     # unknown option
    ["pack", "model.onnx", "-o", "x.ekb"],  # missing --target
    ["pack", "m.onnx", "--target", "rpi4", "-o", "x.ekb", "--max-drop", "lots"],  # bad float
    ["keygen"],                           # missing --out
])
def test_usage_errors_exit_2_without_traceback(argv, edgekit_cli):
    proc = edgekit_cli(*argv)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert "usage: edgekit" in proc.stdout + proc.stderr


def test_keygen_writes_a_usable_pair_and_refuses_to_overwrite(tmp_path, edgekit_cli, cli_error):
    prefix = tmp_path / "fleet"
    proc = edgekit_cli("keygen", "--out", prefix)
    assert proc.returncode == 0, proc.stderr
    key, pub = tmp_path / "fleet.key", tmp_path / "fleet.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    message = b"canonical manifest bytes"
    sig = signing.sign(signing.load_private_key(key), message)
    signing.verify(signing.load_public_key(pub), message, sig)  # the two halves belong together

    before = key.read_bytes(), pub.read_bytes()
    cli_error(edgekit_cli("keygen", "--out", prefix), f"{key} already exists",
              "refusing to overwrite")
    assert (key.read_bytes(), pub.read_bytes()) == before


def test_keygen_refuses_when_only_the_public_half_exists(tmp_path, edgekit_cli, cli_error):
    (tmp_path / "k.pub").write_text("keep me")
    cli_error(edgekit_cli("keygen", "--out", tmp_path / "k"), "k.pub already exists")
    assert not (tmp_path / "k.key").exists() and (tmp_path / "k.pub").read_text() == "keep me"


def test_keygen_into_a_missing_folder_is_a_one_line_error(tmp_path, edgekit_cli, cli_error):
    cli_error(edgekit_cli("keygen", "--out", tmp_path / "no" / "k"), "cannot write key pair")


def test_examples_json_paths_exist_and_hold_the_digits_data(edgekit_cli):
    proc = edgekit_cli("examples", "--json")
    assert proc.returncode == 0, proc.stderr
    examples = {e["name"]: e for e in json.loads(proc.stdout)}
    digits = examples["digits"]
    for key in ("onnx", "tflite", "calib", "labels"):
        assert digits[key] and Path(digits[key]).is_file(), key
    calib = np.load(digits["calib"])["image"]
    labels = np.load(digits["labels"])
    assert calib.shape[1:] == (8, 8, 1) and calib.dtype == np.float32 and len(calib) >= 100
    assert 0.0 <= calib.min() and calib.max() <= 1.0
    assert labels.ndim == 1 and set(np.unique(labels)) <= set(range(10)) and len(labels) >= 100
    assert open(digits["tflite"], "rb").read(8)[4:8] == b"TFL3"


def test_examples_text_names_each_file(edgekit_cli):
    proc = edgekit_cli("examples")
    assert proc.returncode == 0 and proc.stdout.startswith("digits: ")
    assert "digits.onnx" in proc.stdout and "digits.tflite" in proc.stdout


@pytest.mark.parametrize("argv, fragment", [
    (["verify", "{tmp}/nope.ekb"], "no such bundle file"),
    (["inspect", "{tmp}/nope.ekb", "--json"], "no such bundle file"),
    (["verify", "{bundle}", "--key", "{tmp}/nope.pub"], "cannot read key"),
    (["verify", "{tmp}/notzip.ekb"], "not a bundle archive"),
    (["targets", "--targets-dir", "{tmp}/nowhere"], "does not exist"),
])
def test_bad_input_is_one_error_line_exit_1(argv, fragment, tmp_path, make_bundle, edgekit_cli,
                                            cli_error):
    (tmp_path / "notzip.ekb").write_text("hello")
    bundle = make_bundle()
    args = [a.replace("{tmp}", str(tmp_path)).replace("{bundle}", str(bundle)) for a in argv]
    cli_error(edgekit_cli(*args), fragment)


def test_inspect_without_json_shows_the_target_and_model(make_bundle, edgekit_cli):
    proc = edgekit_cli("inspect", make_bundle())
    assert proc.returncode == 0, proc.stderr
    assert "x86-64" in proc.stdout and "tflite" in proc.stdout


def test_preprocess_text_is_parsed_in_the_cli_into_the_typed_option():
    from edgekit.cli import parse_preprocess
    from edgekit.dataset import Preprocess
    from edgekit.errors import CalibrationError

    pre = parse_preprocess("size=224x160,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,layout=nchw,gray")
    assert pre == Preprocess(size=(224, 160), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                             layout="nchw", grayscale=True)
    assert parse_preprocess(None) is None and parse_preprocess("") == Preprocess()
    with pytest.raises(CalibrationError, match=r"bad --preprocess item 'layout=chw'"):
        parse_preprocess("size=8x8,layout=chw")


def test_bad_preprocess_is_one_line_error(edgekit_cli, cli_error, tmp_path):
    cli_error(edgekit_cli("pack", "example:digits", "--target", "rpi4", "-o", tmp_path / "o.ekb",
                          "--preprocess", "size=big"), "bad --preprocess item 'size=big'")
    assert not (tmp_path / "o.ekb").exists()

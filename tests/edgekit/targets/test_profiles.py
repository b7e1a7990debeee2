"""Target profiles as data: built-ins load, inherit merges, user folders add/override, bad files
fail with one line naming the file, the key, the bad value and the allowed values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomllib

from edgekit.cli import main
from edgekit.errors import ConfigError
from edgekit.targets import get_profile, load_profiles
from edgekit.targets.profiles import DTYPES, FAMILIES, RUNTIMES, builtin_dir

REQUIRED_PROFILES = {"rpi4", "rpi5", "coral-usb", "coral-devboard", "ethos-u55-128",
                     "ethos-u65-256", "esp32-s3", "stm32h7", "nrf52840", "x86-64"}

MCU = """\
family = "mcu"
description = "a test board"
runtime = "tflm"
arch = "armv7e-m"
cpu = "cortex-m4f"
flash_bytes = 1048576
ram_bytes = 262144
dtypes = ["int8"]

[options]
runtime_code_bytes = 81920

[power]
idle_w = 0.01
active_w = 0.05
"""


def raw(name: str) -> dict:
    with (builtin_dir() / f"{name}.toml").open("rb") as f:
        return tomllib.load(f)


def resolved_raw(name: str) -> dict:
    """What inherit should give, computed from the files themselves."""
    data = raw(name)
    parent = data.pop("inherit", None)
    if parent is None:
        return data
    base = resolved_raw(parent)
    for table in ("power", "options", "latency"):
        if table in data:
            data[table] = {**base.get(table, {}), **data[table]}
    return {**base, **data}


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


# --- built-ins --------------------------------------------------------------------------------

def test_every_required_profile_is_built_in():
    profiles = load_profiles()
    assert REQUIRED_PROFILES <= set(profiles)
    assert set(profiles) == {p.stem for p in builtin_dir().glob("*.toml")}


@pytest.mark.parametrize("name", sorted(p.stem for p in builtin_dir().glob("*.toml")))
def test_built_in_profile_matches_its_file(name):
    profile = get_profile(name)
    expected = resolved_raw(name)
    got = profile.to_dict()
    for key, value in expected.items():
        if key == "power":
            assert got["power"] == {"accelerator_w": 0.0, **{k: float(v) for k, v in value.items()}}
        else:
            assert got[key] == value, key
    assert profile.family in FAMILIES and profile.runtime in RUNTIMES
    assert set(profile.dtypes) <= set(DTYPES) and profile.dtypes
    assert profile.flash_bytes > 0 and profile.ram_bytes > 0
    assert 0 < profile.power.idle_w <= profile.power.active_w


def test_rpi5_inherits_rpi4_and_merges_power():
    rpi4, rpi5 = get_profile("rpi4"), get_profile("rpi5")
    own = raw("rpi5")
    assert own["inherit"] == "rpi4" and "family" not in own and "flash_bytes" not in own
    assert (rpi5.family, rpi5.runtime, rpi5.flash_bytes, rpi5.ram_bytes, rpi5.dtypes) == (
        rpi4.family, rpi4.runtime, rpi4.flash_bytes, rpi4.ram_bytes, rpi4.dtypes)
    assert rpi5.cpu == own["cpu"] != rpi4.cpu
    assert rpi5.power.active_w == own["power"]["active_w"] != rpi4.power.active_w


def test_ethos_u65_inherits_u55_and_merges_options_and_power():
    u55, u65 = get_profile("ethos-u55-128"), get_profile("ethos-u65-256")
    own = raw("ethos-u65-256")
    assert own["inherit"] == "ethos-u55-128"
    assert u65.family == "ethos-u" and u65.accelerator == "ethos-u65-256"
    # options: own keys replace, the rest come from the parent
    assert (
        u65.options["system_config"]
        == own["options"]["system_config"]
        != u55.options["system_config"]
    )
    assert u65.options["memory_mode"] == own["options"]["memory_mode"]
    assert "runtime_code_bytes" not in own["options"]
    assert u65.options["runtime_code_bytes"] == u55.options["runtime_code_bytes"]
    # power: active/accelerator overridden, idle inherited
    assert "idle_w" not in own["power"] and u65.power.idle_w == u55.power.idle_w
    assert u65.power.active_w == own["power"]["active_w"] != u55.power.active_w


def test_targets_json_lists_every_profile_with_budgets(capsys):
    code, out, err = run(["targets", "--json"], capsys)
    assert code == 0, err
    listed = {p["name"]: p for p in json.loads(out)}
    assert set(listed) == set(load_profiles())
    for name, p in listed.items():
        expected = resolved_raw(name)
        assert (p["flash_bytes"], p["ram_bytes"]) == (expected["flash_bytes"],
                                                      expected["ram_bytes"])
        assert p["family"] == expected["family"] and p["dtypes"] == expected["dtypes"]


def test_targets_table_shows_every_profile(capsys):
    code, out, _ = run(["targets"], capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["target", "family", "runtime"]
    assert {line.split()[0] for line in lines[2:]} == set(load_profiles())


# --- user folders -----------------------------------------------------------------------------

def test_targets_dir_adds_a_profile(tmp_path, capsys):
    write(tmp_path / "mine", "my-board", MCU)
    code, out, err = run(["targets", "--json", "--targets-dir", str(tmp_path / "mine")], capsys)
    assert code == 0, err
    board = {p["name"]: p for p in json.loads(out)}["my-board"]
    assert board["flash_bytes"] == 1048576 and board["options"] == {"runtime_code_bytes": 81920}
    assert board["source"] == str(tmp_path / "mine" / "my-board.toml")


def test_env_folder_then_flag_folder_override_built_ins_and_children_follow(tmp_path, monkeypatch):
    base = (builtin_dir() / "rpi4.toml").read_text()
    write(tmp_path / "env", "rpi4", base.replace("ram_bytes = 1073741824", "ram_bytes = 111111"))
    write(tmp_path / "flag", "rpi4", base.replace("ram_bytes = 1073741824", "ram_bytes = 222222"))
    assert "ram_bytes = 111111" in (tmp_path / "env" / "rpi4.toml").read_text()
    monkeypatch.setenv("EDGEKIT_TARGETS_DIR", str(tmp_path / "env"))
    assert get_profile("rpi4").ram_bytes == 111111
    assert get_profile("rpi5").ram_bytes == 111111           # inherits the overriding rpi4
    both = load_profiles([tmp_path / "flag"])
    assert both["rpi4"].ram_bytes == both["rpi5"].ram_bytes == 222222
    assert both["rpi4"].source == str(tmp_path / "flag" / "rpi4.toml")


def test_env_var_profile_is_listed_by_the_cli(tmp_path, edgekit_cli):
    import os

    write(tmp_path, "my-board", MCU)
    proc = edgekit_cli("targets", "--json",
                       env={**os.environ, "EDGEKIT_TARGETS_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "my-board" in {p["name"] for p in json.loads(proc.stdout)}


def test_user_profile_may_inherit_a_built_in(tmp_path):
    write(tmp_path, "rpi4-lowmem", 'inherit = "rpi4"\ndescription = "2 GB Pi"\nram_bytes = 65536\n'
          '[power]\nactive_w = 4.0\n')
    p = load_profiles([tmp_path])["rpi4-lowmem"]
    assert (p.family, p.ram_bytes, p.power.active_w) == ("cpu", 65536, 4.0)
    assert p.power.idle_w == raw("rpi4")["power"]["idle_w"]


def test_missing_targets_dir_is_an_error(tmp_path, capsys):
    code, _, err = run(["targets", "--targets-dir", str(tmp_path / "nope")], capsys)
    assert code == 1 and err.strip() == f"error: targets folder {tmp_path / 'nope'} does not exist"


def test_unknown_target_names_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"unknown target 'rpi9'.*allowed: .*rpi4, rpi5"):
        get_profile("rpi9")


# --- invalid profiles -------------------------------------------------------------------------

ETHOS = MCU.replace('family = "mcu"', 'family = "ethos-u"').replace(
    "runtime_code_bytes = 81920",
    'system_config = "Ethos_U55_High_End_Embedded"\nmemory_mode = "Shared_Sram"').replace(
    'cpu = "cortex-m4f"', 'cpu = "cortex-m55"\naccelerator = "ethos-u55-128"')

INVALID = {
    # name: (files {stem: text}, fragments the one error line must hold; "{bad}" is bad.toml's path)
    # The one message form of edgekit_agent.validate: "<file>: <key>: <value> is not <what> (allowed: ...)"
    "unknown key": ({"bad": MCU.replace("dtypes", 'colour = "red"\ndtypes')},
                    ["{bad}: colour: 'red' is not a known key (allowed: ", "flash_bytes"]),
    "bad family": ({"bad": MCU.replace('"mcu"', '"gpu"')},
                   ["{bad}: family: 'gpu' is not one of the allowed values",
                    "(allowed: cpu, edgetpu, ethos-u, mcu)"]),
    "bad runtime": ({"bad": MCU.replace('"tflm"', '"tensorrt"')},
                    ["{bad}: runtime: 'tensorrt' is not", "allowed: edgetpu, litert"]),
    "bad dtype": ({"bad": MCU.replace('["int8"]', '["int8", "bfloat16"]')},
                  ["{bad}: dtypes[1]: 'bfloat16' is not",
                   "allowed: float16, float32, int16, int4, int8, uint8"]),
    "wrong type": ({"bad": MCU.replace("1048576", '"1 MiB"')},
                   ["{bad}: flash_bytes: '1 MiB' is not an integer"]),
    "bool for int": ({"bad": MCU.replace("262144", "true")},
                     ["{bad}: ram_bytes: True is not an integer"]),
    "zero budget": ({"bad": MCU.replace("262144", "0")},
                    ["{bad}: ram_bytes: 0 is not an integer >= 1"]),
    "missing key": ({"bad": MCU.replace("ram_bytes = 262144\n", "")},
                    ["{bad}: ram_bytes: missing is not an integer"]),
    "inherit loop": ({"bad": 'inherit = "bad2"\n', "bad2": 'inherit = "bad"\n'},
                     ["inherit: 'bad' is not a profile outside an inheritance loop"]),
    "self inherit": ({"bad": 'inherit = "bad"\n'},
                     ["{bad}: inherit: 'bad' is not a profile outside an inheritance loop"]),
    "unknown parent": ({"bad": 'inherit = "rpi9"\ndescription = "x"\n'},
                       ["{bad}: inherit: 'rpi9' is not a known profile (allowed: ", "rpi4"]),
    "inherit not a string": ({"bad": 'inherit = ["rpi4"]\n'},
                             ["{bad}: inherit: ['rpi4'] is not a known profile"]),
    "bad TOML": ({"bad": MCU.replace('arch = "armv7e-m"', "arch = armv7e-m")},
                 ["{bad}", "not valid TOML", "line 4"]),
    "not UTF-8": ({"bad": MCU.replace("a test board", "caf\udce9")}, ["{bad}", "not valid TOML"]),
    "bad option value": ({"bad": ETHOS.replace("Shared_Sram", "Flash_Only")},
                         ["{bad}: options.memory_mode: 'Flash_Only' is not",
                          "allowed: Dedicated_Sram, Shared_Sram, Sram_Only"]),
    "unknown option": ({"bad": MCU.replace("[options]", "[options]\nturbo = true")},
                       ["{bad}: options.turbo: True is not a known key (allowed: ",
                        "runtime_code_bytes"]),
    "option of wrong type": ({"bad": MCU.replace("81920", '"80k"')},
                             ["{bad}: options.runtime_code_bytes: '80k' is not an integer"]),
    "missing required option": ({"bad": MCU.replace("runtime_code_bytes = 81920", "")},
                                ["{bad}: options.runtime_code_bytes: missing is not an integer"]),
    "bad accelerator": ({"bad": ETHOS.replace('"ethos-u55-128"', '"ethos-u99-1"')},
                        ["{bad}: accelerator: 'ethos-u99-1' is not",
                         "ethos-u55-128, ethos-u55-256"]),
    "unknown power key": ({"bad": MCU.replace("idle_w", "sleep_w = 0.001\nidle_w")},
                          ["{bad}: power.sleep_w: 0.001 is not a known key",
                           "allowed: accelerator_w, active_w, idle_w"]),
    "negative watts": ({"bad": MCU.replace("0.05", "-1.0")},
                       ["{bad}: power.active_w: -1.0 is not a number >= 0"]),
    "infinite watts": ({"bad": MCU.replace("0.05", "inf")},
                       ["{bad}: power.active_w: inf is not a number >= 0"]),
    "missing watts": ({"bad": MCU.replace("idle_w = 0.01\n", "")},
                      ["{bad}: power.idle_w: missing is not a number"]),
    "broken parent is reported in its own file": (
        {"bad": MCU.replace("dtypes", "speed = 3\ndtypes"), "a-child": 'inherit = "bad"\n'},
        ["{bad}: speed: 3 is not a known key"]),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_profile_gives_one_line_naming_file_key_value_allowed(case, tmp_path, capsys):
    files, fragments = INVALID[case]
    for stem, text in files.items():
        path = tmp_path / f"{stem}.toml"
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
    code, out, err = run(["targets", "--targets-dir", str(tmp_path)], capsys)
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment.replace("{bad}",
                                str(tmp_path / "bad.toml")) in lines[0], (fragment, lines[0])


def test_invalid_profile_through_the_real_cli_has_no_traceback(tmp_path, edgekit_cli, cli_error):
    write(tmp_path, "bad", MCU.replace('"mcu"', '"gpu"'))
    cli_error(edgekit_cli("targets", "--json", "--targets-dir", tmp_path),
              f"{tmp_path / 'bad.toml'}: family: 'gpu' is not one of the allowed values")

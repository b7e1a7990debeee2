"""The portable C side on its own: sanitizer-built unit/fuzz test and the Cortex-M4 footprint."""

from __future__ import annotations

import re
import subprocess


def _make(common_dir, *args: str) -> str:
    proc = subprocess.run(["make", "-s", "-C", str(common_dir), *args], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_framing_crc_cobs_and_receiver_survive_random_input(common_dir):
    """ASan + UBSan build (-fno-sanitize-recover): CRC-32/SHA-256 vectors, COBS round trips,
    random bytes, random well-framed messages, torn metadata records, and full transfers with
    shuffled, dropped and duplicated chunks before and after the noise."""
    for seed in ("1", "99"):
        out = _make(common_dir, "test", "FUZZ_ITERS=30000", f"FUZZ_SEED={seed}")
        line = out.strip().splitlines()[-1]
        fields = dict(kv.split("=") for kv in line.split()[2:])
        assert line.startswith("test_frame: ok"), out
        assert int(fields["frames"]) > 15000 and int(fields["reboots"]) == 3
        assert fields["nor_violations"] == "0" and fields["failures"] == "0"


# No recursion; the longest path: a frame completes END, the slot is hashed back from flash.
DEEPEST_CHAIN = ("ek_rx", "ek_verify_slot", "ek_sha256_final", "ek_sha256_update", "block")


def test_cortex_m4_footprint_within_goal(common_dir):
    out = _make(common_dir, "footprint")
    linked = re.search(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+\d+\s+\w+\s+build/arm/ek_update\.elf$", out,
                       re.MULTILINE)
    assert linked, out
    text, data, bss = map(int, linked.groups())
    frame_buffer = int(re.search(r"rx_buf\s+(\d+) B", out).group(1))
    frames = {m[0]: int(m[1]) for m in re.findall(r":(\w+)(?:\.isra)?\t(\d+)\tstatic", out)}
    stack = sum(frames[f] for f in DEEPEST_CHAIN)
    assert text + data <= 4096, out                         # flash, newlib-nano pieces included
    assert data + bss - frame_buffer + stack <= 1024, out   # RAM besides the frame buffer
    assert 1024 < frame_buffer < 1100

"""The Cortex-M4 cycle estimate (codegen/c/timing.py) on hand-assembled instruction sequences."""
import shutil
import subprocess

import pytest

from codegen.c import timing

pytestmark = pytest.mark.skipif(shutil.which("arm-none-eabi-as") is None, reason="needs arm-none-eabi-as")


def _assemble(tmp_path, body: str):
    """Thumb-2 machine code of ``body`` (Cortex-M4), disassembled by capstone like the counter does."""
    import capstone

    src, obj, raw = tmp_path / "a.s", tmp_path / "a.o", tmp_path / "a.bin"
    src.write_text(".syntax unified\n.thumb\n.text\nstart:\n" + body + "\n")
    subprocess.run(["arm-none-eabi-as", "-mcpu=cortex-m4", "-mthumb", "-o", str(obj), str(src)], check=True)
    subprocess.run(["arm-none-eabi-objcopy", "-O", "binary", str(obj), str(raw)], check=True)
    code = raw.read_bytes()
    md = capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_THUMB | capstone.CS_MODE_MCLASS)
    return md, code, list(md.disasm_lite(code, 0x1000))


def test_instruction_classes(tmp_path):
    _, _, insns = _assemble(tmp_path, """
        ldr r0, [r1]
        ldr r2, [r3]
        mla r0, r2, r0, r4
        str r0, [r1]
        adds r1, #4
        push {r4, r5, lr}
        sdiv r0, r1, r2
        ldrd r4, r5, [r1]
        smlabb r0, r1, r2, r0
        sxtab16 r0, r0, r1
        bne start""")
    n, cycles, branch = timing.block_cost(insns)
    # ldr 2, pipelined ldr 1, mla 1, str 1, adds 1, push 1+3, sdiv 7, ldrd 3, smlabb 1, sxtab16 1, bne 1
    assert (n, cycles, branch) == (11, 2 + 1 + 1 + 1 + 1 + 4 + 7 + 3 + 1 + 1 + 1, True)


def test_taken_branches_pay_the_refill(tmp_path):
    md, code, insns = _assemble(tmp_path, """
        adds r0, #1
        bne start
        adds r1, #1
        pop {r4, pc}""")
    c = timing.Counter(md)
    # block 1 (adds, bne) at 0x1000 (4 bytes); block 2 (adds, pop {pc}) at 0x1004
    c.block(0x1000, 4, code[:4])
    c.block(0x1004, 4, code[4:8])  # fall-through: the bne was not taken
    assert (c.instructions, c.cycles) == (4, 2 + 1 + (1 + 2 + timing.REFILL))
    c.reset()
    c.block(0x1000, 4, code[:4])
    c.block(0x1000, 4, code[:4])  # taken back to start: + refill
    assert (c.instructions, c.cycles) == (4, 2 + timing.REFILL + 2)

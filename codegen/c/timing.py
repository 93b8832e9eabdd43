"""A Cortex-M4 cycle ESTIMATE for an executed instruction stream (Unicorn + capstone).

Unicorn counts instructions, not cycles. This model turns the executed basic blocks into an estimate
with the per-instruction-class timings of the Cortex-M4 Technical Reference Manual (ARM DDI 0439,
"Instruction set summary": zero wait states; the same table is reproduced in vendors' M4F manuals):

=====================================================  =========================================
class                                                   cycles
=====================================================  =========================================
data processing (ALU, shifts, moves, compares, SXTB,   1
UXTB, bit-field, saturate, IT)
MUL, MLA, MLS, UMULL/SMULL, UMLAL/SMLAL, and the DSP    1
multiplies (SMLAxy, SMLAD, SMUAD, SMLAWx, ...), the
SIMD adds/extends (SADD16, SXTAB16, ...)
SDIV, UDIV                                              7 (the manual gives 2 to 12, data dependent:
                                                        the midpoint)
single load (LDR, LDRB, LDRH, LDRSB, LDRSH)             2; 1 when it directly follows another single
                                                        load or store (the manual's pipelining of
                                                        neighbouring loads; address dependences not
                                                        modelled)
LDRD                                                    3
single store (STR, STRB, STRH)                          1 (the data phase overlaps the next
                                                        instruction); STRD 2
LDM, STM, PUSH, POP                                     1 + N registers
branch (B, BL, BX, BLX, CBZ, CBNZ, TBB, TBH) not taken  1 (TBB/TBH 2 + P)
taken branch, or a write to the PC (POP {..pc},         + P = 2 pipeline-refill cycles (the manual:
LDR pc, MOV/ADD pc)                                     1 to 3)
=====================================================  =========================================

A branch counts as taken when the next executed block does not start right after it. Flash wait
states, bus contention and register-dependence stalls are not modelled: real hardware at 168 MHz
with flash wait states is slower. The result is labelled an estimate everywhere it is reported.
"""
from __future__ import annotations

REFILL = 2  # P: pipeline refill after a taken branch (TRM: 1 to 3)
DIVIDE = 7  # SDIV/UDIV: 2 to 12 in the TRM, data dependent

_BRANCHES = {"b", "bl", "bx", "blx", "cbz", "cbnz"}
_TABLE_BRANCHES = {"tbb", "tbh"}
_LOADS = {"ldr", "ldrb", "ldrh", "ldrsb", "ldrsh", "ldrt", "ldrbt", "ldrht", "ldrsbt", "ldrsht", "ldrex", "ldrexb",
          "ldrexh"}
_STORES = {"str", "strb", "strh", "strt", "strbt", "strht", "strex", "strexb", "strexh"}
_MULTI = {"ldm", "ldmia", "ldmfd", "ldmdb", "ldmea", "stm", "stmia", "stmea", "stmdb", "stmfd", "push", "pop"}
_DIVIDES = {"sdiv", "udiv"}
_CONDS = ("eq", "ne", "cs", "hs", "cc", "lo", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt", "gt", "le", "al")


def base_mnemonic(mnemonic: str) -> str:
    """``bne.w`` -> ``b``, ``ldrsb.w`` -> ``ldrsb``, ``addseq`` -> ``adds``: width and condition removed."""
    m = mnemonic.lower().split(".")[0]
    if m in _BRANCHES or m in _LOADS or m in _STORES or m in _MULTI or m in _TABLE_BRANCHES:
        return m
    for c in _CONDS:
        if m.endswith(c) and len(m) > len(c):
            stem = m[: -len(c)]
            if stem in _BRANCHES or stem in _LOADS or stem in _STORES or stem in _MULTI or stem in _DIVIDES:
                return stem
            if stem in ("b",):
                return stem
    return m


def _writes_pc(mnemonic: str, op_str: str) -> bool:
    ops = op_str.lower().replace(" ", "")
    return ops.startswith("pc,") or ("pc}" in ops or ",pc}" in ops or "{pc" in ops)


def block_cost(insns) -> tuple[int, int, bool]:
    """(instructions, cycles if the block's last branch is not taken, whether it ends in a branch) of a
    basic block given as capstone ``(address, size, mnemonic, op_str)`` tuples."""
    cycles = 0
    prev_single_ls = False
    n = 0
    last_branch = False
    for _, _, mnem, ops in insns:
        n += 1
        m = base_mnemonic(mnem)
        single_ls = False
        last_branch = False
        if m in _LOADS:
            cycles += 1 if prev_single_ls else 2
            single_ls = True
            if _writes_pc(m, ops):
                cycles += REFILL
                last_branch = True
        elif m == "ldrd":
            cycles += 3
        elif m in _STORES:
            cycles += 1
            single_ls = True
        elif m == "strd":
            cycles += 2
        elif m in _MULTI:
            regs = ops[ops.find("{") + 1: ops.find("}")] if "{" in ops else ""
            count = 0
            for part in regs.split(","):
                part = part.strip()
                if "-" in part:
                    a, b = part.split("-")
                    count += int(b.strip()[1:]) - int(a.strip()[1:]) + 1 if a.strip()[1:].isdigit() and b.strip()[1:].isdigit() else 2
                elif part:
                    count += 1
            cycles += 1 + max(1, count)
            if m.startswith(("pop", "ldm")) and "pc" in regs.lower():
                cycles += REFILL
                last_branch = True
        elif m in _TABLE_BRANCHES:
            cycles += 2 + REFILL
            last_branch = True
        elif m in _BRANCHES:
            cycles += 1
            last_branch = True
        elif m in _DIVIDES:
            cycles += DIVIDE
        else:
            cycles += 1
            if m in ("mov", "add") and _writes_pc(m, ops):
                cycles += REFILL
                last_branch = True
        prev_single_ls = single_ls
    return n, cycles, last_branch


class Counter:
    """Accumulates instructions and estimated cycles over executed blocks (call :meth:`block` per block)."""

    def __init__(self, md):
        self.md = md
        self.cache: dict[tuple[int, int], tuple[int, int, bool, bool]] = {}
        self.instructions = 0
        self.cycles = 0
        self._pending_branch_end = None  # fall-through address of the previous block if it ended in a branch

    def reset(self):
        self.instructions = 0
        self.cycles = 0
        self._pending_branch_end = None

    def block(self, addr: int, size: int, code: bytes) -> None:
        key = (addr, size)
        c = self.cache.get(key)
        if c is None:
            insns = list(self.md.disasm_lite(code, addr))
            n, cyc, branch = block_cost(insns)
            # a POP {pc} / LDR pc already paid its refill (always taken)
            always = bool(insns) and base_mnemonic(insns[-1][2]) not in _BRANCHES
            c = self.cache[key] = (n, cyc, branch, always)
        n, cyc, branch, always = c
        if self._pending_branch_end is not None and addr != self._pending_branch_end:
            self.cycles += REFILL  # the previous block's branch was taken
        self.instructions += n
        self.cycles += cyc
        self._pending_branch_end = addr + size if (branch and not always) else None

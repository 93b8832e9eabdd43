"""The text of the estimate (``estimate.txt``)."""
from __future__ import annotations

from .fit import WHAT_ORDER


def format_text(est: dict, name: str) -> str:
    c = est["cycles"]
    from .store import lanes_text

    lines = [f"FPGA estimate for {name}: lanes={lanes_text(est['lanes'])}, event FIFO depth {est['fifo_depth']} (ESTIMATE, before synthesis)"]
    bits = est["memory_bits"]
    lines.append("  memory bits (as laid out, zero-padded to whole lane groups): "
                 + ", ".join(f"{w} {bits[w]:,}" for w in WHAT_ORDER if bits[w]) + f"; total {bits['total']:,}")
    mu = est["multipliers"]
    lines.append(f"  multipliers: {mu['lane_multipliers']} lane multipliers ({', '.join(mu['operands'])}) "
                 f"+ {mu['constant_multipliers']} constant multiplier(s) (index split, addresses)")
    if any(st == "ram" for st in est["store"]):
        lines.append(f"  weight store per layer: {', '.join(est['store'])}; load image weights.bin "
                     f"{est['load_image_bytes']:,} bytes, sent once after configuration "
                     f"({c['load_cycles']:,} cycles at one byte per cycle)")
    for bn, m in est["boards"].items():
        line = (f"  {bn} ({m['part']}): {m['block_rams']}/{m['block_rams_available']} {m['block_ram_cell']}, "
                f"{m['dsp']}/{m['dsp_available']} {m['dsp_cell']} ({m['dsp_lane']} lane + {m['dsp_constant']} constant)")
        if m.get("lutram_cell"):
            line += f", {m['lutram_cells']} {m['lutram_cell']}"
        if "spram" in m:
            line += f", {m['spram']}/{m['spram_available']} SPRAM"
        line += f", {m['memory_bits_in_logic']:,} memory bits in soft logic: {'fits' if m['fits'] else 'DOES NOT FIT'}"
        lines.append(line)
        if "spram_note" in m:
            lines.append(f"      SPRAM {m['spram']}/{m['spram_available']}: {m['spram_note']}")
    lines.append(f"  cycles per inference: {c['cycles_per_inference']:,.0f} latency, layers working on the frame row by row "
                 f"({c['latency_vs_limit']:.2f}x the slowest-layer limit {c['slowest_layer_limit']:,.0f}: the largest "
                 f"of the pixel stream {c['pixel_input_cycles']:,} and every layer's synaptic ops / lanes); back to back "
                 f"a frame every {c['frame_period']:,.0f}; {c['cycles_sequential']:,.0f} one layer after the other; "
                 f"spikes: {c['spikes_source']}")
    for x in c["layers"]:
        ratio = f"{x['limit_ratio']:.2f}x the limit" if x["limit_ratio"] else "no input spikes"
        cpe = x["cycles_per_event"]
        lines.append(f"      layer {x['layer']} {x['kind']}: {x['n_in']} -> {x['n_out']}, up to {cpe} cycle{'s' if cpe != 1 else ''} "
                     f"per event, {x['input_spikes']:g} input spikes, {x['synaptic_ops']:,.0f} synaptic ops, "
                     f"accumulate {x['accumulate_cycles']:,.0f} ({ratio} {x['event_driven_limit']:,.0f}), "
                     f"drain {x['drain_cycles']:,.0f}, {x['ring_rows']} row{'s' if x['ring_rows'] != 1 else ''} buffered")
    lines.append(f"  {est['logic_note']}")
    return "\n".join(lines)

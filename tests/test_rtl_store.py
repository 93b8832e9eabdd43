"""RAM weight stores (store="ram", iCE40 SPRAM): the StoreLoader, engines and networks that load
their weights and thresholds at run time, compared exactly with the golden model."""
import numpy as np
import pytest

from enginebench import WithReset, frames_for, mismatches
from randmodels import valid_model
from rtl.dense import DenseEngine
from rtl.loader import StoreLoader
from rtl.network import Network
from rtl.sim import make_simulator, pixel_order, run_bounded, simulate_network, stream_get, stream_put
from runtime import golden, spec

PLANS = [(0, ["dense", "dense"]), (1, ["conv2d", "maxpool", "dense"]),
         (2, ["conv2d", "avgpool", "conv2d", "dense"]), (3, ["dense", "dense", "dense"])]


def ram_config(model, extra=0):
    """Lanes that hold a threshold per store word, and a RAM store for every layer with weights."""
    spec.validate(model)
    lanes = [1 if l.kind == "maxpool" else -(-l.acc_bits // 8) + extra for l in model.layers]
    store = ["rom" if l.kind == "maxpool" else "ram" for l in model.layers]
    return lanes, store


def test_loader_splits_the_image_into_words():
    segs = [(16, 3), (8, 2), (32, 1)]
    dut = StoreLoader(segs)
    rng = np.random.default_rng(0)
    words = [[int(v) for v in rng.integers(0, 1 << w, size=d)] for w, d in segs]
    image = StoreLoader.image(words, [w for w, _ in segs])
    assert len(image) == dut.total_bytes == 2 * 3 + 2 + 4
    got = [[] for _ in segs]
    tail = {}

    async def send(ctx):
        for b in image:
            await stream_put(ctx, dut.i, b, rng, 0.3)
        for _ in range(5):
            await ctx.tick()
        tail["done"], tail["ready"] = ctx.get(dut.done), ctx.get(dut.i.ready)

    def receiver(j):
        async def recv(ctx):
            for _ in range(segs[j][1]):
                got[j].append(int(await stream_get(ctx, getattr(dut, f"o{j}"), rng, 0.5)))
        return recv

    sim = make_simulator(dut)
    sim.add_testbench(send)
    for j in range(len(segs)):
        sim.add_testbench(receiver(j))
    run_bounded(sim, 2000)
    assert got == words
    assert tail == {"done": 1, "ready": 0}


def test_loader_reset_during_load_restarts_and_after_load_keeps():
    segs = [(16, 4)]
    dut = StoreLoader(segs)
    top = WithReset(dut)
    words = [0x1234, 0xBEEF, 0x0001, 0x8000]
    image = StoreLoader.image([words], [16])
    got, state = [], {}

    async def send(ctx):
        for b in image[:5]:                         # two words and a half, then reset
            await stream_put(ctx, dut.i, b)
        ctx.set(top.cd.rst, 1)
        await ctx.tick()
        ctx.set(top.cd.rst, 0)
        got.clear()
        for b in image:
            await stream_put(ctx, dut.i, b)
        await ctx.tick()
        ctx.set(top.cd.rst, 1)
        await ctx.tick()
        ctx.set(top.cd.rst, 0)
        await ctx.tick()
        state["done"], state["ready"] = ctx.get(dut.done), ctx.get(dut.i.ready)

    async def recv(ctx):
        ctx.set(dut.o0.ready, 1)
        async for _, _, valid, payload in ctx.tick().sample(dut.o0.valid, dut.o0.payload):
            if valid:
                got.append(int(payload))

    sim = make_simulator(top)
    sim.add_testbench(send)
    sim.add_process(recv)
    run_bounded(sim, 500, lambda: "done" in state)
    assert got == words
    assert state == {"done": 1, "ready": 0}


@pytest.mark.parametrize("seed,plan", PLANS)
def test_ram_store_network_equals_golden(seed, plan):
    """Weights and thresholds loaded into RAM stores; logits, class and every layer's phases exact."""
    model, rng = valid_model(seed, plan, 5, None)
    lanes, store = ram_config(model, extra=seed % 2)
    images = frames_for(rng, model, 3)
    res = simulate_network(model, images, lanes, fifo_depth=4, gap=0.2, stall=0.3, seed=seed, store=store)
    assert mismatches(model, res, golden.run(model, images)) == []


def test_ram_store_mixed_with_rom_layers():
    model, rng = valid_model(3, ["dense", "dense", "dense"], 5, None)
    lanes, _ = ram_config(model)
    images = frames_for(rng, model, 2)
    res = simulate_network(model, images, lanes, store=["ram", "rom", "ram"])
    assert mismatches(model, res, golden.run(model, images)) == []


def test_corrupted_load_image_is_caught():
    """A wrong byte in the weight image shows up (the RAM really serves the weights and thresholds)."""
    model, rng = valid_model(0, ["dense", "dense"], 5, None)
    lanes, store = ram_config(model)
    images = frames_for(rng, model, 3)
    gold = golden.run(model, images)
    net = Network(model, lanes, 4, store)
    image = bytearray(net.load_image())
    e0 = net.engines[0]
    w_bytes = e0.weight_depth * e0.lanes
    for lo, hi in ((0, w_bytes), (w_bytes, e0.store_depth * e0.lanes)):   # a weight, then a threshold
        found = False
        for pos in rng.permutation(np.arange(lo, hi))[:20]:
            bad = bytearray(image)
            bad[pos] ^= 0x80
            dut = Network(model, lanes, 4, store)
            dut.load_image = lambda bad=bad: bytes(bad)
            if mismatches(model, simulate_network(model, images, dut=dut), gold):
                found = True
                break
        assert found, f"no corrupted byte in [{lo}, {hi}) changed the result"


def test_network_reset_keeps_loaded_weights():
    """Reset in the middle of the load (load again from byte 0), then frames, a reset in the middle
    of a frame, and frames without a reload: all exact."""
    model, rng = valid_model(1, ["conv2d", "maxpool", "dense"], 5, None)
    lanes, store = ram_config(model)
    images = frames_for(rng, model, 2)
    gold = golden.run(model, images)
    net = Network(model, lanes, 4, store)
    top = WithReset(net)
    image = net.load_image()
    got = []

    async def pulse(ctx):
        ctx.set(top.cd.rst, 1)
        await ctx.tick()
        ctx.set(top.cd.rst, 0)

    async def drive(ctx):
        for b in image[:len(image) // 2]:
            await stream_put(ctx, net.load, b)
        await pulse(ctx)
        for b in image:
            await stream_put(ctx, net.load, b)
        for img in images:
            for p in pixel_order(img[None])[0]:
                await stream_put(ctx, net.i, int(p))
        while len(got) < len(images):
            await ctx.tick()
        for p in pixel_order(images[:1])[0][: images[0].size // 2]:   # half a frame, then reset
            await stream_put(ctx, net.i, int(p))
        for _ in range(20):
            await ctx.tick()
        await pulse(ctx)
        assert ctx.get(net.loaded) == 1
        for img in images:
            for p in pixel_order(img[None])[0]:
                await stream_put(ctx, net.i, int(p))

    async def sink(ctx):
        while len(got) < 2 * len(images):
            p = await stream_get(ctx, net.o)
            got.append([int(p.logits[c]) for c in range(model.num_classes)])

    sim = make_simulator(top)
    sim.add_testbench(drive)
    sim.add_testbench(sink)
    run_bounded(sim, 200_000, lambda: len(got) == 2 * len(images))
    want = gold.logits.tolist()
    assert got == want + want


def test_ram_store_errors():
    model, _ = valid_model(0, ["dense", "dense"], 5, None)
    spec.validate(model)
    l0 = model.layers[0]
    w = l0.weight.reshape(l0.weight.shape[0], -1)
    decode, _ = model.code_of_layer_input(0)
    assert l0.acc_bits > 16                         # so that 2 lanes (16 bits) cannot hold a threshold
    with pytest.raises(ValueError, match="needs lanes >= 3"):
        DenseEngine(w.shape[1], w.shape[0], 2, w, l0.bias, l0.theta, decode, l0.acc_bits, store="ram")
    big_bias = np.full_like(l0.bias, -(1 << (l0.acc_bits - 1)))
    with pytest.raises(ValueError, match="Thresholds minus biases must fit"):
        DenseEngine(w.shape[1], w.shape[0], 8, w, big_bias, l0.theta, decode, l0.acc_bits, store="ram")
    with pytest.raises(ValueError, match="Store must be"):
        DenseEngine(w.shape[1], w.shape[0], 8, w, l0.bias, l0.theta, decode, l0.acc_bits, store="flash")
    pooled, _ = valid_model(1, ["conv2d", "maxpool", "dense"], 5, None)
    with pytest.raises(ValueError, match="is a max-pool"):
        Network(pooled, 4, store="ram")

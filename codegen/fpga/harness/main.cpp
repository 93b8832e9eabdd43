// Bulk parity harness: the generated onespike_top under Verilator, driven by compiled C++ instead
// of cocotb (codegen/fpga/bulk.py builds and runs it; docs/fpga-verify.md "Bulk parity").
//
//   harness PIXELS N_FRAMES N_PIXELS OUT LOAD|- SLOTS INDEX_BITS SLOT_SIZES RESULT_BITS GAP STALL SEED
//           MAX_CYCLES MAP_LEN RESET_AT
//
// PIXELS: N_FRAMES x N_PIXELS bytes (camera order). LOAD: the store image sent on load_* first
// ("-": none). SLOT_SIZES: comma-separated output neurons of each debug slot. GAP / STALL:
// probability (in 1/65536) of an idle input cycle before a pixel / of result_ready low in a cycle.
// MAP_LEN: 0 for a classifier (one result per frame: class and packed logits); a detector's map
// length otherwise (one logit per result transfer: result_cls is its index, result_logits its
// value, result_last ends the map). RESET_AT: -1, or the frame cut by a reset 4 pixels in (with
// a store image, the load is also cut by a reset a third of the way in and sent again): every
// frame without a result then is sent again, as the cocotb bench does.
// OUT gets, per frame in order: a word (the class; a detector: logits received), a word (a
// detector: transfers with an index out of range or sent twice, or a map without its last), the
// result (a classifier: result_logits, RESULT_BITS wide, in 32-bit words, little-endian; a
// detector: MAP_LEN words, each logit's raw bits), then for every slot its phases (one byte per
// neuron, raster index order, 0xFF where nothing came: phases are at most 254), then per slot the
// events out of raster order or out of range (uint32), then the cycle the frame's first pixel was
// taken and the cycle its result (a detector: its map's last logit) was taken (two uint64). It
// prints one line of counts (resets, frames sent again, load resets, cycles). The process exits 0 when every frame's result and every slot's end-of-frame marker arrived, 3 on a
// timeout.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "Vonespike_top.h"
#include "verilated.h"

namespace {

template <typename T>
void words_of(const T& v, std::vector<uint32_t>& out) {
    out.clear();
    if constexpr (std::is_integral<T>::value) {
        uint64_t x = static_cast<uint64_t>(v);
        out.push_back(static_cast<uint32_t>(x));
        out.push_back(static_cast<uint32_t>(x >> 32));
    } else {
        for (size_t i = 0; i < sizeof(T) / sizeof(uint32_t); ++i) out.push_back(v[i]);
    }
}

uint64_t bits(const std::vector<uint32_t>& w, unsigned lo, unsigned width) {
    uint64_t r = 0;
    for (unsigned b = 0; b < width; ++b) {
        unsigned k = lo + b;
        if (k / 32 < w.size() && ((w[k / 32] >> (k % 32)) & 1u)) r |= uint64_t(1) << b;
    }
    return r;
}

struct Rng {  // xorshift64*: the same stream for the same seed on every machine
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 2654435761u + 1) {}
    uint32_t next16() {
        s ^= s >> 12; s ^= s << 25; s ^= s >> 27;
        return static_cast<uint32_t>((s * 2685821657736338717ull) >> 48);
    }
};

}  // namespace

int main(int argc, char** argv) {
    if (argc != 16) {
        std::fprintf(stderr, "usage: %s PIXELS N_FRAMES N_PIXELS OUT LOAD SLOTS INDEX_BITS SLOT_SIZES RESULT_BITS GAP STALL "
                             "SEED MAX_CYCLES MAP_LEN RESET_AT\n", argv[0]);
        return 2;
    }
    const long n_frames = std::atol(argv[2]), n_pixels = std::atol(argv[3]);
    const int slots = std::atoi(argv[6]), index_bits = std::atoi(argv[7]);
    const unsigned result_bits = static_cast<unsigned>(std::atoi(argv[9]));
    const uint32_t gap = static_cast<uint32_t>(std::atol(argv[10])), stall = static_cast<uint32_t>(std::atol(argv[11]));
    Rng rng(static_cast<uint64_t>(std::atoll(argv[12])));
    const uint64_t max_cycles = static_cast<uint64_t>(std::atoll(argv[13]));
    const long map_len = std::atol(argv[14]);
    long reset_at = std::atol(argv[15]);
    std::vector<long> sizes;
    for (const char* p = argv[8]; *p;) {
        sizes.push_back(std::strtol(p, const_cast<char**>(&p), 10));
        if (*p == ',') ++p;
    }
    if (static_cast<int>(sizes.size()) != slots || reset_at >= n_frames) return 2;

    std::vector<uint8_t> pixels(static_cast<size_t>(n_frames * n_pixels));
    FILE* f = std::fopen(argv[1], "rb");
    if (!f || std::fread(pixels.data(), 1, pixels.size(), f) != pixels.size()) return 2;
    std::fclose(f);
    std::vector<uint8_t> load;
    if (std::strcmp(argv[5], "-") != 0) {
        f = std::fopen(argv[5], "rb");
        if (!f) return 2;
        int c;
        while ((c = std::fgetc(f)) != EOF) load.push_back(static_cast<uint8_t>(c));
        std::fclose(f);
    }
    FILE* out = std::fopen(argv[4], "wb");
    if (!out) return 2;

    Verilated::commandArgs(argc, argv);
    auto* top = new Vonespike_top;
    const unsigned result_words = map_len ? static_cast<unsigned>(map_len) : (result_bits + 31) / 32;
    // Per slot: the frame it is in, the last raster index of that frame, and every frame's phases
    // and events out of order.
    std::vector<long> slot_frame(slots, 0), slot_prev(slots, -1);
    std::vector<std::vector<std::vector<uint8_t>>> phases(slots);
    std::vector<std::vector<uint32_t>> disorder(slots, std::vector<uint32_t>(n_frames, 0));
    // Per frame: {class or logits received, map errors, result words...}.
    std::vector<std::vector<uint32_t>> results(n_frames, std::vector<uint32_t>(2 + result_words, 0));
    std::vector<std::vector<uint8_t>> map_seen(n_frames);
    std::vector<uint64_t> start_cycle(n_frames, 0), result_cycle(n_frames, 0);
    std::vector<uint32_t> w_idx, w_ph, w_res, w_val, w_eof, w_cls;

    uint64_t cycle = 0;
    uint32_t last_seq = 0;
    auto tick = [&]() {
        top->clk = 0; top->eval();
        top->clk = 1; top->eval();
        ++cycle;
    };
    auto reset = [&](int n) {
        top->pixel_valid = 0; top->load_valid = 0; top->result_ready = 0;
        top->rst = 1;
        for (int i = 0; i < n; ++i) tick();
        top->rst = 0;
        last_seq = static_cast<uint32_t>(top->dbg_seq);
    };
    reset(3);

    size_t load_pos = 0;
    long resets = 0, resent = 0, load_resets = 0;
    long frame_in = 0, pixel_in = 0, results_in = 0;
    bool idle = false, pending = false, load_cut = reset_at < 0 || load.empty();
    while (results_in < n_frames && cycle < max_cycles) {
        if (!load_cut && load_pos >= load.size() / 3) {
            load_cut = true;            // a reset a third of the way into the store image: sent again
            reset(4);
            ++load_resets;
            load_pos = 0;
            continue;
        }
        if (reset_at >= 0 && frame_in == reset_at && pixel_in == std::min(4L, n_pixels / 2)) {
            // A reset a few pixels into frame RESET_AT, the frame before it (at least) usually still
            // in the layers: every frame without a result is sent again and checked from scratch.
            reset_at = -1;
            reset(4);
            const long first = results_in;
            ++resets;
            resent += frame_in + 1 - first;
            for (int s = 0; s < slots; ++s) {
                slot_frame[s] = first;
                slot_prev[s] = -1;
                if (static_cast<long>(phases[s].size()) > first) phases[s].resize(first);
                for (long fr = first; fr < n_frames; ++fr) disorder[s][fr] = 0;
            }
            for (long fr = first; fr < n_frames; ++fr) {
                std::fill(results[fr].begin(), results[fr].end(), 0);
                map_seen[fr].clear();
            }
            frame_in = first; pixel_in = 0; idle = pending = false;
            continue;
        }
        // Inputs for this cycle (set before the rising edge, sampled at it).
        top->load_valid = load_pos < load.size();
        if (load_pos < load.size()) top->load_data = load[load_pos];
        bool offer = frame_in < n_frames && (load_pos >= load.size()) && top->loaded;
        // An offered pixel stays offered until it is taken; gaps come only between pixels.
        if (offer && !pending && !idle && gap && rng.next16() < gap) idle = true;
        else if (idle) idle = false;
        top->pixel_valid = offer && !idle;
        if (top->pixel_valid) top->pixel_data = pixels[static_cast<size_t>(frame_in * n_pixels + pixel_in)];
        top->result_ready = !(stall && rng.next16() < stall);
        top->clk = 0; top->eval();
        const bool take_pixel = top->pixel_valid && top->pixel_ready;
        const bool take_load = top->load_valid && top->load_ready;
        const bool take_result = top->result_valid && top->result_ready;
        bool frame_done = false;
        if (take_result) {
            words_of(top->result_cls, w_cls);
            words_of(top->result_logits, w_res);
            std::vector<uint32_t>& r = results[results_in];
            if (map_len) {
                std::vector<uint8_t>& seen = map_seen[results_in];
                if (seen.empty()) seen.assign(static_cast<size_t>(map_len), 0);
                const uint64_t index = w_cls[0];
                if (index < static_cast<uint64_t>(map_len) && !seen[index]) {
                    seen[index] = 1;
                    ++r[0];
                    r[2 + index] = static_cast<uint32_t>(bits(w_res, 0, result_bits));
                } else {
                    ++r[1];
                }
                frame_done = top->result_last;
                if (frame_done && r[0] != static_cast<uint32_t>(map_len)) ++r[1];
            } else {
                r[0] = w_cls[0];
                for (unsigned i = 0; i < result_words && i < w_res.size(); ++i) r[2 + i] = w_res[i];
                frame_done = true;
            }
            if (frame_done) result_cycle[results_in] = cycle;
        }
        top->clk = 1; top->eval();
        ++cycle;
        if (take_load) ++load_pos;
        pending = top->pixel_valid && !take_pixel;
        if (take_pixel) {
            if (pixel_in == 0) start_cycle[frame_in] = cycle;
            if (++pixel_in == n_pixels) { pixel_in = 0; ++frame_in; }
        }
        if (frame_done) ++results_in;
        // The debug taps are registered: they show the previous cycle's transfers now; dbg_seq
        // counts the cycles with any of them, so nothing is decoded in the other cycles.
        const uint32_t seq = static_cast<uint32_t>(top->dbg_seq);
        if (slots && seq != last_seq) {
            last_seq = seq;
            words_of(top->dbg_valid, w_val);
            words_of(top->dbg_eof, w_eof);
            words_of(top->dbg_index, w_idx);
            words_of(top->dbg_phase, w_ph);
            for (int s = 0; s < slots; ++s) {
                if (!bits(w_val, s, 1)) continue;
                long fr = slot_frame[s];
                if (fr >= n_frames) continue;
                if (static_cast<long>(phases[s].size()) <= fr)
                    phases[s].resize(fr + 1, std::vector<uint8_t>(static_cast<size_t>(sizes[s]), 0xFF));
                if (bits(w_eof, s, 1)) { ++slot_frame[s]; slot_prev[s] = -1; continue; }
                const long idx = static_cast<long>(bits(w_idx, static_cast<unsigned>(s * index_bits),
                                                        static_cast<unsigned>(index_bits)));
                const uint8_t ph = static_cast<uint8_t>(bits(w_ph, static_cast<unsigned>(s * 8), 8));
                // Events leave a layer in raster order, each neuron at most once (rtl.layouts).
                if (idx <= slot_prev[s] || idx >= sizes[s]) { ++disorder[s][fr]; continue; }
                slot_prev[s] = idx;
                phases[s][fr][idx] = ph;
            }
        }
    }
    // Every slot's end-of-frame markers, a few cycles after the last result at most.
    for (int i = 0; i < 16; ++i) tick();
    for (long fr = 0; fr < n_frames; ++fr) {
        std::fwrite(results[fr].data(), sizeof(uint32_t), results[fr].size(), out);
        for (int s = 0; s < slots; ++s) {
            std::vector<uint8_t> p = fr < static_cast<long>(phases[s].size()) ? phases[s][fr]
                                                                               : std::vector<uint8_t>(sizes[s], 0xFF);
            std::fwrite(p.data(), 1, p.size(), out);
        }
        for (int s = 0; s < slots; ++s) std::fwrite(&disorder[s][fr], sizeof(uint32_t), 1, out);
        uint64_t t[2] = {start_cycle[fr], result_cycle[fr]};
        std::fwrite(t, sizeof(uint64_t), 2, out);
    }
    std::fclose(out);
    std::printf("resets %ld frames_sent_again %ld load_resets %ld cycles %llu\n", resets, resent, load_resets,
                static_cast<unsigned long long>(cycle));
    bool complete = results_in == n_frames;
    for (int s = 0; s < slots; ++s) complete = complete && slot_frame[s] >= n_frames;
    top->final();
    delete top;
    return complete ? 0 : 3;
}

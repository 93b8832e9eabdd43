/* protocol.c - the device side of the onespike device protocol, version 1 (see protocol.h and
 * docs/protocol.md). The state machine is the one of boards/protocol.py (Parser), step for step. */
#include "protocol.h"

enum { PS_HUNT = 0, PS_MAGIC1 = 1, PS_HEADER = 2, PS_PAYLOAD = 3, PS_CHECK = 4 };

/* CRC-32 of the nibble i: 16 entries, 64 bytes of flash */
static const uint32_t os_crc_nibble[16] = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u, 0x4DB26158u, 0x5005713Cu,
    0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu, 0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu,
};

uint32_t os_crc32_update(uint32_t reg, uint8_t byte)
{
    reg ^= byte;
    reg = (reg >> 4) ^ os_crc_nibble[reg & 15u];
    reg = (reg >> 4) ^ os_crc_nibble[reg & 15u];
    return reg;
}

uint32_t os_crc32(const uint8_t *data, size_t n)
{
    uint32_t reg = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++)
        reg = os_crc32_update(reg, data[i]);
    return ~reg;
}

static uint32_t rd32(const uint8_t *b)
{
    return (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24);
}

uint32_t os_proto_model_id(const uint8_t sha256[32])
{
    return rd32(sha256);
}

/* ---- receiving ---- */

static void reset(os_proto_t *p)
{
    p->state = PS_HUNT;
    p->pend = 0;
    p->pend_detail = 0;
    p->hdr_n = 0;
    p->crc_n = 0;
    p->len = 0;
    p->got = 0;
    p->crc_in = 0;
}

int os_proto_init(os_proto_t *p, uint32_t model_id, uint32_t input_size, uint8_t *buf, uint32_t cap,
                  uint32_t timeout_ms)
{
    if (input_size > cap || (input_size && !buf))
        return -1;
    p->model_id = model_id;
    p->input_size = input_size;
    p->timeout_ms = timeout_ms;
    p->buf = buf;
    p->hw = 0;
    p->chans = 0;
    p->err_type = 0;
    p->err_detail = 0;
    p->discarded = 0;
    p->last_ms = 0;
    p->crc = 0;
    p->base = p->off = p->ch = 0;
    reset(p);
    return 0;
}

int os_proto_set_chw(os_proto_t *p, uint32_t c, uint32_t h, uint32_t w)
{
    if (c == 0 || h == 0 || w == 0 || (uint64_t)c * h * w != p->input_size)
        return -1;
    p->hw = h * w;
    p->chans = c;
    return 0;
}

int os_proto_idle(const os_proto_t *p)
{
    return p->state == PS_HUNT;
}

/* version, type, model id, length: the first that is wrong becomes the pending error */
static void check_header(os_proto_t *p)
{
    const uint8_t ver = p->hdr[2], t = p->hdr[3];
    const uint32_t mid = rd32(p->hdr + 4), len = rd32(p->hdr + 8);
    if (ver != OS_PROTO_VERSION) {
        p->pend = OS_ERR_BAD_VERSION;
        p->pend_detail = ver;
    } else if (t != OS_MSG_INFO_REQUEST && t != OS_MSG_INFER) {
        p->pend = OS_ERR_UNKNOWN_TYPE;
    } else if (mid != p->model_id && !(t == OS_MSG_INFO_REQUEST && mid == OS_PROTO_ANY_MODEL)) {
        p->pend = OS_ERR_WRONG_MODEL;
        p->pend_detail = mid;
    } else {
        const uint32_t want = t == OS_MSG_INFER ? p->input_size : 0u;
        if (len != want) {
            p->pend = OS_ERR_BAD_LENGTH;
            p->pend_detail = want;
        }
    }
    p->len = len;
    p->got = 0;
    p->base = p->off = p->ch = 0;
    p->state = len ? PS_PAYLOAD : PS_CHECK;
}

static int fail(os_proto_t *p, uint8_t code, uint8_t type, uint32_t detail)
{
    p->err_type = type;
    p->err_detail = detail;
    reset(p);
    return -(int)code;
}

/* the inter-byte timeout fired */
static int expire(os_proto_t *p)
{
    if (p->state == PS_MAGIC1) { /* a lone 0x4F: not a frame */
        p->discarded++;
        reset(p);
        return 0;
    }
    if (p->pend) /* a bad header: its own error (the header is complete) */
        return fail(p, p->pend, p->hdr[3], p->pend_detail);
    return fail(p, OS_ERR_TIMEOUT, p->hdr_n > 3 ? p->hdr[3] : 0u, p->hdr_n + p->got + p->crc_n);
}

static void store(os_proto_t *p, uint8_t b)
{
    if (p->chans) { /* camera order (H, W, C) -> (C, H, W): index ch * H*W + (y * W + x) */
        p->buf[p->base + p->off] = b;
        p->off += p->hw;
        if (++p->ch == p->chans) {
            p->ch = 0;
            p->off = 0;
            p->base++;
        }
    } else {
        p->buf[p->got] = b;
    }
}

static int step(os_proto_t *p, uint8_t b)
{
    switch (p->state) {
    case PS_HUNT:
        if (b == OS_PROTO_MAGIC0)
            p->state = PS_MAGIC1;
        else
            p->discarded++;
        return 0;
    case PS_MAGIC1:
        if (b == OS_PROTO_MAGIC1) {
            p->state = PS_HEADER;
            p->hdr[0] = OS_PROTO_MAGIC0;
            p->hdr[1] = OS_PROTO_MAGIC1;
            p->hdr_n = 2;
            p->crc = os_crc32_update(os_crc32_update(0xFFFFFFFFu, OS_PROTO_MAGIC0), OS_PROTO_MAGIC1);
        } else if (b == OS_PROTO_MAGIC0) {
            p->discarded++; /* the earlier 0x4F; this one may start the magic */
        } else {
            p->discarded += 2;
            reset(p);
        }
        return 0;
    case PS_HEADER:
        if (p->hdr_n == 2 && b == OS_PROTO_MAGIC0) { /* "O S O": a false start; 0x4F is never a version */
            p->discarded += 2;
            reset(p);
            p->state = PS_MAGIC1;
            return 0;
        }
        p->hdr[p->hdr_n++] = b;
        p->crc = os_crc32_update(p->crc, b);
        if (p->hdr_n == OS_PROTO_HEADER_SIZE)
            check_header(p);
        return 0;
    case PS_PAYLOAD:
        if (!p->pend) { /* a bad header's payload is counted, not stored */
            store(p, b);
            p->crc = os_crc32_update(p->crc, b);
        }
        if (++p->got == p->len)
            p->state = PS_CHECK;
        return 0;
    case PS_CHECK:
        p->crc_in |= (uint32_t)b << (8u * p->crc_n);
        if (++p->crc_n < OS_PROTO_CRC_SIZE)
            return 0;
        {
            const uint8_t t = p->hdr[3];
            if (p->pend)
                return fail(p, p->pend, t, p->pend_detail);
            if (p->crc_in != ~p->crc)
                return fail(p, OS_ERR_BAD_CHECKSUM, t, ~p->crc);
            reset(p);
            return t;
        }
    default:
        reset(p);
        return 0;
    }
}

int os_proto_feed(os_proto_t *p, uint8_t byte, uint32_t now_ms)
{
    int ev = 0, r;
    if (p->state != PS_HUNT && (uint32_t)(now_ms - p->last_ms) > p->timeout_ms)
        ev = expire(p);
    p->last_ms = now_ms;
    r = step(p, byte); /* after a timeout the parser hunts: one byte completes nothing */
    return ev ? ev : r;
}

int os_proto_tick(os_proto_t *p, uint32_t now_ms)
{
    if (p->state != PS_HUNT && (uint32_t)(now_ms - p->last_ms) > p->timeout_ms)
        return expire(p);
    return 0;
}

/* ---- sending ---- */

static void raw(os_proto_writer_t *w, uint8_t b)
{
    if (w->put)
        w->put(w->ctx, b);
    else if (w->n < w->cap)
        w->buf[w->n] = b;
    w->n++;
}

static void emit(os_proto_writer_t *w, uint8_t b)
{
    w->reg = os_crc32_update(w->reg, b);
    raw(w, b);
}

void os_proto_writer_buf(os_proto_writer_t *w, uint8_t *buf, uint32_t cap)
{
    w->put = 0;
    w->ctx = 0;
    w->buf = buf;
    w->cap = buf ? cap : 0u;
    w->n = w->start = 0;
    w->reg = 0xFFFFFFFFu;
}

void os_proto_writer_put(os_proto_writer_t *w, os_proto_put_t put, void *ctx)
{
    w->put = put;
    w->ctx = ctx;
    w->buf = 0;
    w->cap = 0;
    w->n = w->start = 0;
    w->reg = 0xFFFFFFFFu;
}

void os_proto_put_u8(os_proto_writer_t *w, uint8_t v)
{
    emit(w, v);
}

void os_proto_put_u16(os_proto_writer_t *w, uint16_t v)
{
    emit(w, (uint8_t)(v & 0xFFu));
    emit(w, (uint8_t)(v >> 8));
}

void os_proto_put_u32(os_proto_writer_t *w, uint32_t v)
{
    for (unsigned i = 0; i < 4u; i++)
        emit(w, (uint8_t)((v >> (8u * i)) & 0xFFu));
}

void os_proto_put_i32(os_proto_writer_t *w, int32_t v)
{
    os_proto_put_u32(w, (uint32_t)v); /* modulo 2^32: defined */
}

void os_proto_put_i64(os_proto_writer_t *w, int64_t v)
{
    const uint64_t u = (uint64_t)v;
    os_proto_put_u32(w, (uint32_t)(u & 0xFFFFFFFFu));
    os_proto_put_u32(w, (uint32_t)(u >> 32));
}

void os_proto_put_bytes(os_proto_writer_t *w, const uint8_t *v, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        emit(w, v[i]);
}

/* a string in a fixed field: its bytes up to the NUL or n, then NUL padding */
static void put_fixed(os_proto_writer_t *w, const char *s, uint32_t n)
{
    uint32_t i = 0;
    if (s)
        for (; i < n && s[i]; i++)
            emit(w, (uint8_t)s[i]);
    for (; i < n; i++)
        emit(w, 0);
}

void os_proto_begin(os_proto_writer_t *w, uint8_t type, uint32_t model_id, uint32_t len)
{
    w->start = w->n;
    w->reg = 0xFFFFFFFFu;
    emit(w, OS_PROTO_MAGIC0);
    emit(w, OS_PROTO_MAGIC1);
    emit(w, OS_PROTO_VERSION);
    emit(w, type);
    os_proto_put_u32(w, model_id);
    os_proto_put_u32(w, len);
}

uint32_t os_proto_end(os_proto_writer_t *w)
{
    const uint32_t crc = ~w->reg;
    for (unsigned i = 0; i < 4u; i++)
        raw(w, (uint8_t)((crc >> (8u * i)) & 0xFFu));
    return w->n - w->start;
}

uint32_t os_proto_write_info(os_proto_writer_t *w, uint32_t model_id, const os_proto_info_t *info)
{
    static const uint8_t zero[32] = {0};
    os_proto_begin(w, OS_MSG_INFO, model_id, OS_PROTO_INFO_SIZE);
    os_proto_put_u8(w, OS_PROTO_VERSION);
    os_proto_put_u8(w, info->task);
    os_proto_put_u8(w, info->result_kind);
    os_proto_put_u8(w, info->flags);
    os_proto_put_u16(w, info->in_c);
    os_proto_put_u16(w, info->in_h);
    os_proto_put_u16(w, info->in_w);
    os_proto_put_u16(w, info->max_detections);
    os_proto_put_u32(w, info->n_outputs);
    os_proto_put_u32(w, info->clock_hz);
    os_proto_put_u32(w, info->max_payload);
    os_proto_put_u32(w, info->timeout_ms);
    os_proto_put_bytes(w, info->sha256 ? info->sha256 : zero, 32);
    put_fixed(w, info->name, 32);
    put_fixed(w, info->board, 16);
    return os_proto_end(w);
}

static void result_head(os_proto_writer_t *w, uint32_t model_id, uint8_t kind, uint16_t cls, uint32_t cycles,
                        uint32_t n, uint32_t item)
{
    os_proto_begin(w, OS_MSG_RESULT, model_id, OS_PROTO_RESULT_HEAD + item * n);
    os_proto_put_u8(w, kind);
    os_proto_put_u8(w, 0);
    os_proto_put_u16(w, cls);
    os_proto_put_u32(w, cycles);
    os_proto_put_u32(w, n);
}

uint32_t os_proto_write_result(os_proto_writer_t *w, uint32_t model_id, uint8_t kind, uint16_t cls, uint32_t cycles,
                               const int32_t *values, uint32_t n)
{
    result_head(w, model_id, kind, cls, cycles, n, 4u);
    for (uint32_t i = 0; i < n; i++)
        os_proto_put_i32(w, values[i]);
    return os_proto_end(w);
}

uint32_t os_proto_write_detections(os_proto_writer_t *w, uint32_t model_id, uint16_t cls, uint32_t cycles,
                                   const os_detection_t *dets, uint32_t n)
{
    result_head(w, model_id, OS_RESULT_DETECTIONS, cls, cycles, n, OS_PROTO_DET_SIZE);
    for (uint32_t k = 0; k < n; k++) {
        os_proto_put_i32(w, dets[k].cls);
        os_proto_put_i32(w, dets[k].x0);
        os_proto_put_i32(w, dets[k].y0);
        os_proto_put_i32(w, dets[k].x1);
        os_proto_put_i32(w, dets[k].y1);
        os_proto_put_i64(w, dets[k].score);
    }
    return os_proto_end(w);
}

uint32_t os_proto_write_error(os_proto_writer_t *w, uint32_t model_id, uint8_t code, uint8_t request_type,
                              uint32_t detail)
{
    os_proto_begin(w, OS_MSG_ERROR, model_id, OS_PROTO_ERROR_SIZE);
    os_proto_put_u8(w, code);
    os_proto_put_u8(w, request_type);
    os_proto_put_u16(w, 0);
    os_proto_put_u32(w, detail);
    return os_proto_end(w);
}

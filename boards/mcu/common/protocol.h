/*
 * protocol.h - the device side of the onespike device protocol, version 1 (docs/protocol.md).
 *
 * C99, no malloc, no floating point, no unaligned access (every integer is assembled byte by byte,
 * little-endian). The Python side (boards/protocol.py) runs the same state machine; the host tests
 * check both byte for byte (tests/test_protocol.py).
 *
 * Every message is one frame:
 *   magic 0x4F 0x53 ("OS") | version u8 (1) | type u8 | model id u32 | payload length u32 | payload |
 *   CRC-32 u32 (IEEE 802.3, as zlib.crc32) over everything from the magic through the payload.
 *
 * Receiving: os_proto_init once, then every received byte goes to os_proto_feed (with a millisecond
 * clock), and os_proto_tick is called now and then while no byte arrives (the inter-byte timeout).
 * Both return OS_PROTO_NEED_MORE (0), a complete request (OS_MSG_INFO_REQUEST, or OS_MSG_INFER with
 * the pixels in the buffer given to os_proto_init), or a negative error -OS_ERR_*: reply it with
 * os_proto_write_error(w, p->model_id, -r, p->err_type, p->err_detail) and go on feeding.
 *
 * Sending: an os_proto_writer_t puts the reply's bytes into a caller buffer or through a put-byte
 * callback (a UART), computing the CRC on the way; os_proto_write_info / _result / _detections /
 * _error write one complete frame. A long reply can also be streamed with os_proto_begin, the
 * os_proto_put_* fields and os_proto_end.
 */
#ifndef OS_PROTOCOL_H
#define OS_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

#include "onespike.h" /* os_detection_t */

#ifdef __cplusplus
extern "C" {
#endif

#define OS_PROTO_VERSION 1u
#define OS_PROTO_MAGIC0 0x4Fu
#define OS_PROTO_MAGIC1 0x53u
#define OS_PROTO_HEADER_SIZE 12u
#define OS_PROTO_CRC_SIZE 4u
#define OS_PROTO_INFO_SIZE 108u      /* INFO payload */
#define OS_PROTO_ERROR_SIZE 8u       /* ERROR payload */
#define OS_PROTO_RESULT_HEAD 12u     /* RESULT payload before its entries */
#define OS_PROTO_DET_SIZE 28u        /* one detection in a RESULT: cls, x0, y0, x1, y1 int32, score int64 */
#define OS_PROTO_NO_CLASS 0xFFFFu    /* RESULT class of a device that does not compute it */
#define OS_PROTO_ANY_MODEL 0u        /* the model id of an INFO request any device answers */
#define OS_PROTO_NEED_MORE 0

/* message types */
enum { OS_MSG_INFO_REQUEST = 0x01, OS_MSG_INFER = 0x02, OS_MSG_INFO = 0x81, OS_MSG_RESULT = 0x82, OS_MSG_ERROR = 0xFF };
/* ERROR codes (detail: see docs/protocol.md) */
enum {
    OS_ERR_BAD_VERSION = 1,  /* detail: the version byte received */
    OS_ERR_BAD_LENGTH = 2,   /* detail: the payload length this type must have */
    OS_ERR_BAD_CHECKSUM = 3, /* detail: the CRC-32 the device computed */
    OS_ERR_WRONG_MODEL = 4,  /* detail: the model id received */
    OS_ERR_UNKNOWN_TYPE = 5, /* detail: 0 */
    OS_ERR_TIMEOUT = 6,      /* detail: bytes of the frame received, magic included */
    OS_ERR_BUSY = 7,         /* detail: device-specific */
    OS_ERR_INTERNAL = 8      /* detail: device-specific */
};
/* RESULT kinds */
enum { OS_RESULT_LOGITS = 1, OS_RESULT_DETECTIONS = 2, OS_RESULT_MAP = 3 };
/* INFO task and capability flags */
enum { OS_TASK_CLASSIFY = 0, OS_TASK_DETECT = 1 };
enum { OS_FLAG_CYCLES = 0x01, OS_FLAG_BUSY = 0x02 };

/* ---- receiving ---- */

typedef struct {
    /* configuration (os_proto_init; read-only afterwards) */
    uint32_t model_id;   /* this device's model id (os_proto_model_id) */
    uint32_t input_size; /* C*H*W: an INFER payload has exactly this many bytes */
    uint32_t timeout_ms; /* the inter-byte timeout inside a frame */
    uint8_t *buf;        /* receives an INFER payload (input_size bytes) */
    uint32_t hw, chans;  /* os_proto_set_chw: H*W and C (0: stored in wire order) */
    /* the last error returned (valid after a negative return) */
    uint8_t err_type;    /* the frame's type byte, 0 if it ended before */
    uint32_t err_detail;
    /* statistics */
    uint32_t discarded;  /* bytes skipped while hunting for a magic */
    /* private */
    uint8_t state, pend, hdr_n, crc_n;
    uint8_t hdr[OS_PROTO_HEADER_SIZE];
    uint32_t pend_detail;
    uint32_t len, got, crc, crc_in, last_ms;
    uint32_t base, off, ch;
} os_proto_t;

/* Sets up the parser: model id, INFER size, the buffer for it (its size cap >= input_size, else
 * returns -1) and the inter-byte timeout. Returns 0. */
int os_proto_init(os_proto_t *p, uint32_t model_id, uint32_t input_size, uint8_t *buf, uint32_t cap,
                  uint32_t timeout_ms);

/* Optional: store an INFER payload (camera order: (H, W, C)) in the buffer in (C, H, W) order, as
 * os_infer takes it (straight into the model's own input buffer, no second copy). c * h * w must be
 * input_size (else returns -1). */
int os_proto_set_chw(os_proto_t *p, uint32_t c, uint32_t h, uint32_t w);

/* One received byte at now_ms (any free-running millisecond counter; it may wrap). Returns
 * OS_PROTO_NEED_MORE, OS_MSG_INFO_REQUEST, OS_MSG_INFER (p->buf holds the pixels) or -OS_ERR_*. */
int os_proto_feed(os_proto_t *p, uint8_t byte, uint32_t now_ms);

/* No byte, the clock at now_ms: -OS_ERR_* when the inter-byte timeout ends a frame, else 0. */
int os_proto_tick(os_proto_t *p, uint32_t now_ms);

/* 1 between frames (nothing of a frame received). */
int os_proto_idle(const os_proto_t *p);

/* The model id of a model file: its sha256's first 4 bytes, little-endian. */
uint32_t os_proto_model_id(const uint8_t sha256[32]);

/* CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), 16-entry table. The register starts at
 * 0xFFFFFFFF and the checksum is its complement: os_crc32(d, n) == ~update(...update(~0u, d[0])...). */
uint32_t os_crc32_update(uint32_t reg, uint8_t byte);
uint32_t os_crc32(const uint8_t *data, size_t n);

/* ---- sending ---- */

typedef void (*os_proto_put_t)(void *ctx, uint8_t byte);

typedef struct {
    os_proto_put_t put; /* the byte sink, or NULL: the bytes go to buf */
    void *ctx;
    uint8_t *buf;
    uint32_t cap;
    uint32_t n;         /* bytes produced since init; n > cap: buf was too small (the rest dropped) */
    uint32_t start;     /* n at the current frame's begin */
    uint32_t reg;       /* CRC register of the current frame */
} os_proto_writer_t;

void os_proto_writer_buf(os_proto_writer_t *w, uint8_t *buf, uint32_t cap);
void os_proto_writer_put(os_proto_writer_t *w, os_proto_put_t put, void *ctx);

/* What an INFO reply says (docs/protocol.md, "INFO"). */
typedef struct {
    uint8_t task;            /* OS_TASK_* */
    uint8_t result_kind;     /* OS_RESULT_*: what an INFER gets */
    uint8_t flags;           /* OS_FLAG_* */
    uint16_t in_c, in_h, in_w;
    uint16_t max_detections; /* a detector's; 0 for a classifier */
    uint32_t n_outputs;      /* logits, or the readout map's C*GH*GW */
    uint32_t clock_hz;
    uint32_t max_payload;    /* the receive buffer */
    uint32_t timeout_ms;
    const uint8_t *sha256;   /* 32 bytes */
    const char *name;        /* NUL-terminated; the first 32 bytes are sent */
    const char *board;       /* NUL-terminated; the first 16 bytes are sent */
} os_proto_info_t;

/* Complete frames; each returns its size in bytes. */
uint32_t os_proto_write_info(os_proto_writer_t *w, uint32_t model_id, const os_proto_info_t *info);
/* kind OS_RESULT_LOGITS or OS_RESULT_MAP: n int32 values */
uint32_t os_proto_write_result(os_proto_writer_t *w, uint32_t model_id, uint8_t kind, uint16_t cls, uint32_t cycles,
                               const int32_t *values, uint32_t n);
uint32_t os_proto_write_detections(os_proto_writer_t *w, uint32_t model_id, uint16_t cls, uint32_t cycles,
                                   const os_detection_t *dets, uint32_t n);
uint32_t os_proto_write_error(os_proto_writer_t *w, uint32_t model_id, uint8_t code, uint8_t request_type,
                              uint32_t detail);

/* Streaming: a frame's header (its payload length up front), its payload field by field, its CRC. */
void os_proto_begin(os_proto_writer_t *w, uint8_t type, uint32_t model_id, uint32_t len);
void os_proto_put_u8(os_proto_writer_t *w, uint8_t v);
void os_proto_put_u16(os_proto_writer_t *w, uint16_t v);
void os_proto_put_u32(os_proto_writer_t *w, uint32_t v);
void os_proto_put_i32(os_proto_writer_t *w, int32_t v);
void os_proto_put_i64(os_proto_writer_t *w, int64_t v);
void os_proto_put_bytes(os_proto_writer_t *w, const uint8_t *v, uint32_t n);
uint32_t os_proto_end(os_proto_writer_t *w); /* writes the CRC; returns the frame's size */

#ifdef __cplusplus
}
#endif
#endif /* OS_PROTOCOL_H */

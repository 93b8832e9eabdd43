/* Host test driver of boards/mcu/common/protocol.c (tests/test_protocol.py): a fake device.
 *
 * Usage: test_protocol_main KIND MODEL_ID C H W N_OUT TIMEOUT_MS MAX_PAYLOAD NAME BOARD CLOCK_HZ SHA256 FLAGS CHW
 *   KIND: logits | detections | map (what an INFER gets); MODEL_ID hex; CHW 1: store the pixels in
 *   (C, H, W) order (os_proto_set_chw), 0: in wire order.
 *
 * stdin: records, integers little-endian:
 *   'B' now_ms u32, n u32, n bytes: the bytes arrive at now_ms (os_proto_feed each)
 *   'T' now_ms u32: no byte, the clock at now_ms (os_proto_tick)
 * stdout: the device's replies, byte for byte. stderr: "discarded N" at the end.
 *
 * THE INFERENCE IS A TEST STUB (no model runs): the reply depends on every pixel so that the test
 * sees the payload arrive intact. With px the pixels as stored (see CHW), L their number and
 * s = sum(px) (uint32):
 *   logits:     class s % 10, cycles 3 s + 7, N_OUT logits v[i] = (px[i % L] - 128) * (i + 1) - s % 1000
 *   map:        class 0xFFFF (none), cycles 0, the same N_OUT values
 *   detections: class s % 10, cycles s, s % 4 detections k: cls px[k % L] % 3, x0 k, y0 -k,
 *               x1 px[(k + 1) % L], y1 s, score (s + 1) * 4294967311, negated for odd k
 * (tests/test_protocol.py, stub_result, is the same in Python.)
 *
 * INFO and ERROR replies are written into a buffer (the buffer writer), RESULT through a put-byte
 * callback (the streaming writer): both paths are checked. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"

#define MAX_OUT 4096
#define MAX_IN 65536

static uint8_t pixels[MAX_IN];
static int32_t values[MAX_OUT];
static os_detection_t dets[4];
static uint8_t reply[512];
static os_proto_t p;
static os_proto_info_t info;
static os_proto_writer_t wb, ws;
static uint32_t n_out, input_size;
static int kind;

static void put_stdout(void *ctx, uint8_t b)
{
    (void)ctx;
    putchar(b);
}

static int read_u32(uint32_t *v)
{
    uint8_t b[4];
    if (fread(b, 1, 4, stdin) != 4)
        return -1;
    *v = (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24);
    return 0;
}

static int hexbytes(const char *s, uint8_t *out, size_t n)
{
    if (strlen(s) != 2 * n)
        return -1;
    for (size_t i = 0; i < n; i++) {
        char two[3] = {s[2 * i], s[2 * i + 1], 0};
        char *end;
        out[i] = (uint8_t)strtoul(two, &end, 16);
        if (*end)
            return -1;
    }
    return 0;
}

/* the device's reply to what os_proto_feed / os_proto_tick returned */
static void reply_to(int r)
{
    if (r < 0) {
        os_proto_writer_buf(&wb, reply, sizeof reply);
        const uint32_t len = os_proto_write_error(&wb, p.model_id, (uint8_t)-r, p.err_type, p.err_detail);
        fwrite(reply, 1, len, stdout);
    } else if (r == OS_MSG_INFO_REQUEST) {
        os_proto_writer_buf(&wb, reply, sizeof reply);
        const uint32_t len = os_proto_write_info(&wb, p.model_id, &info);
        if (wb.n > wb.cap)
            exit(5);
        fwrite(reply, 1, len, stdout);
    } else if (r == OS_MSG_INFER) { /* the test stub (see the top of this file) */
        uint32_t s = 0;
        for (uint32_t j = 0; j < input_size; j++)
            s += pixels[j];
        for (uint32_t j = 0; j < n_out; j++)
            values[j] = ((int32_t)pixels[j % input_size] - 128) * (int32_t)(j + 1) - (int32_t)(s % 1000u);
        if (kind == OS_RESULT_LOGITS) {
            os_proto_write_result(&ws, p.model_id, OS_RESULT_LOGITS, (uint16_t)(s % 10u), 3u * s + 7u, values, n_out);
        } else if (kind == OS_RESULT_MAP) {
            os_proto_write_result(&ws, p.model_id, OS_RESULT_MAP, OS_PROTO_NO_CLASS, 0, values, n_out);
        } else {
            const uint32_t nd = s % 4u;
            const int64_t score = (int64_t)(s + 1u) * 4294967311LL;
            for (uint32_t k = 0; k < nd; k++) {
                dets[k].cls = pixels[k % input_size] % 3;
                dets[k].x0 = (int32_t)k;
                dets[k].y0 = -(int32_t)k;
                dets[k].x1 = pixels[(k + 1u) % input_size];
                dets[k].y1 = (int32_t)s;
                dets[k].score = (k & 1u) ? -score : score;
            }
            os_proto_write_detections(&ws, p.model_id, (uint16_t)(s % 10u), s, dets, nd);
        }
    }
}

int main(int argc, char **argv)
{
    static uint8_t sha[32];
    uint32_t max_payload, model_id;

    if (argc != 15) {
        fprintf(stderr, "usage: %s KIND MODEL_ID C H W N_OUT TIMEOUT_MS MAX_PAYLOAD NAME BOARD CLOCK_HZ SHA256 FLAGS CHW\n",
                argv[0]);
        return 2;
    }
    {
        static const uint8_t check[9] = {'1', '2', '3', '4', '5', '6', '7', '8', '9'};
        if (os_crc32(check, sizeof check) != 0xCBF43926u) { /* the CRC-32 check value */
            fprintf(stderr, "crc32 self-check failed\n");
            return 3;
        }
    }
    kind = !strcmp(argv[1], "logits") ? OS_RESULT_LOGITS : !strcmp(argv[1], "map") ? OS_RESULT_MAP
         : !strcmp(argv[1], "detections") ? OS_RESULT_DETECTIONS : 0;
    model_id = (uint32_t)strtoul(argv[2], NULL, 16);
    info.in_c = (uint16_t)strtoul(argv[3], NULL, 10);
    info.in_h = (uint16_t)strtoul(argv[4], NULL, 10);
    info.in_w = (uint16_t)strtoul(argv[5], NULL, 10);
    n_out = (uint32_t)strtoul(argv[6], NULL, 10);
    info.timeout_ms = (uint32_t)strtoul(argv[7], NULL, 10);
    max_payload = (uint32_t)strtoul(argv[8], NULL, 10);
    info.name = argv[9];
    info.board = argv[10];
    info.clock_hz = (uint32_t)strtoul(argv[11], NULL, 10);
    info.flags = (uint8_t)strtoul(argv[13], NULL, 10);
    input_size = (uint32_t)info.in_c * info.in_h * info.in_w;
    if (!kind || n_out > MAX_OUT || max_payload > MAX_IN || hexbytes(argv[12], sha, 32) != 0) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    info.sha256 = sha;
    info.task = kind == OS_RESULT_LOGITS ? OS_TASK_CLASSIFY : OS_TASK_DETECT;
    info.result_kind = (uint8_t)kind;
    info.max_detections = kind == OS_RESULT_LOGITS ? 0 : 3;
    info.n_outputs = n_out;
    info.max_payload = max_payload;
    if (os_proto_init(&p, model_id, input_size, pixels, max_payload, info.timeout_ms) != 0 ||
        (atoi(argv[14]) && os_proto_set_chw(&p, info.in_c, info.in_h, info.in_w) != 0)) {
        fprintf(stderr, "os_proto_init refused the configuration\n");
        return 2;
    }
    os_proto_writer_put(&ws, put_stdout, NULL);

    for (;;) {
        int tag = getchar();
        uint32_t now, n;
        if (tag == EOF)
            break;
        if (read_u32(&now) != 0)
            return 4;
        if (tag == 'T') {
            reply_to(os_proto_tick(&p, now));
            continue;
        }
        if (tag != 'B' || read_u32(&n) != 0)
            return 4;
        for (uint32_t i = 0; i < n; i++) {
            int c = getchar();
            if (c == EOF)
                return 4;
            reply_to(os_proto_feed(&p, (uint8_t)c, now));
        }
    }
    fflush(stdout);
    fprintf(stderr, "discarded %lu\n", (unsigned long)p.discarded);
    return 0;
}

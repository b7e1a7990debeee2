/* Unit and fuzz test of the device side: known CRC-32/SHA-256 vectors, COBS round trips, and the
 * receiver fed random bytes and random well-framed messages over a RAM flash that enforces NOR
 * rules. Built with -fsanitize=address,undefined; any finding aborts.
 *
 *   test_frame [ITERATIONS] [SEED]   prints one summary line, exit 0 when every check holds */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ek_flash.h"
#include "ek_update.h"

#define SLOT_SIZE (16u * EK_SECTOR)
static uint8_t flash[3][SLOT_SIZE];
static unsigned long nor_violations, tx_bytes, frames_fed, reboots;
static int failures;

#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                    \
        }                                                                  \
    } while (0)

static int in_area(unsigned a, uint32_t off, uint32_t len) {
    uint32_t lim = a == EK_AREA_META ? 2u * EK_SECTOR : SLOT_SIZE;
    return a <= EK_AREA_META && off <= lim && len <= lim - off;
}
int ek_flash_read(unsigned a, uint32_t off, void *dst, uint32_t len) {
    if (!in_area(a, off, len)) return -1;
    memcpy(dst, flash[a] + off, len);
    return 0;
}
int ek_flash_erase(unsigned a, uint32_t off, uint32_t len) {
    if (!in_area(a, off, len) || off % EK_SECTOR || len % EK_SECTOR) return -1;
    memset(flash[a] + off, 0xFF, len);
    return 0;
}
int ek_flash_write(unsigned a, uint32_t off, const void *src, uint32_t len) {
    const uint8_t *p = src;
    uint32_t i;
    if (!in_area(a, off, len)) return -1;
    for (i = 0; i < len; i++) {
        if ((flash[a][off + i] & p[i]) != p[i]) nor_violations++;
        flash[a][off + i] &= p[i];
    }
    return 0;
}
uint32_t ek_flash_slot_size(void) { return SLOT_SIZE; }
const char *ek_port_board(void) { return "testboard"; }
void ek_port_reboot(void) { reboots++; }
void ek_port_tx(const uint8_t *data, size_t len) {
    size_t i;
    for (i = 0; i < len; i++) (void)data[i]; /* touch: ASan checks the range */
    tx_bytes += len;
}

static uint32_t rng_state;
static uint32_t rnd(void) { /* xorshift32 */
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 17, rng_state ^= rng_state << 5;
    return rng_state;
}

static size_t cobs_encode(const uint8_t *in, size_t n, uint8_t *out) {
    size_t r = 0, w = 1, code_at = 0;
    uint8_t code = 1;
    while (r < n) {
        if (in[r] == 0) {
            out[code_at] = code, code_at = w++, code = 1;
        } else {
            out[w++] = in[r], code++;
            if (code == 0xFF) out[code_at] = code, code_at = w++, code = 1;
        }
        r++;
    }
    out[code_at] = code;
    return w;
}

static void feed_frame(const uint8_t *raw, size_t n) {
    static uint8_t body[EK_FRAME_RAW_MAX + 8], enc[EK_FRAME_MAX + 16];
    uint32_t crc;
    size_t m;
    if (n + 4 > sizeof body) return;
    memcpy(body, raw, n);
    crc = ek_crc32(body, n);
    body[n] = (uint8_t)crc, body[n + 1] = (uint8_t)(crc >> 8), body[n + 2] = (uint8_t)(crc >> 16),
    body[n + 3] = (uint8_t)(crc >> 24);
    m = cobs_encode(body, n + 4, enc);
    enc[m++] = 0;
    ek_rx(enc, m);
    frames_fed++;
}

static void test_vectors(void) {
    static const uint8_t abc_sha[32] = {
        0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
        0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    static const uint8_t long_sha[32] = { /* 56-byte two-block message of FIPS 180-2 */
        0x24, 0x8d, 0x6a, 0x61, 0xd2, 0x06, 0x38, 0xb8, 0xe5, 0xc0, 0x26, 0x93, 0x0c, 0x3e, 0x60, 0x39,
        0xa3, 0x3c, 0xe4, 0x59, 0x64, 0xff, 0x21, 0x67, 0xf6, 0xec, 0xed, 0xd4, 0x19, 0xdb, 0x06, 0xc1};
    const char *msg = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    uint8_t out[32];
    ek_sha256_ctx c;
    CHECK(ek_crc32((const uint8_t *)"123456789", 9) == 0xCBF43926u);
    ek_sha256_init(&c);
    ek_sha256_update(&c, (const uint8_t *)"abc", 3);
    ek_sha256_final(&c, out);
    CHECK(memcmp(out, abc_sha, 32) == 0);
    ek_sha256_init(&c);
    ek_sha256_update(&c, (const uint8_t *)msg, 20);
    ek_sha256_update(&c, (const uint8_t *)msg + 20, strlen(msg) - 20);
    ek_sha256_final(&c, out);
    CHECK(memcmp(out, long_sha, 32) == 0);
}

static void test_cobs_roundtrip(unsigned iters) {
    static uint8_t in[1200], enc[1300];
    unsigned it;
    for (it = 0; it < iters; it++) {
        size_t n = rnd() % sizeof in, i, m, d;
        unsigned zeros = rnd() % 4; /* from no zeros to mostly zeros */
        for (i = 0; i < n; i++) in[i] = (uint8_t)(zeros == 0 ? (rnd() % 255) + 1 : zeros == 3 ? 0 : rnd());
        m = cobs_encode(in, n, enc);
        d = ek_cobs_decode(enc, m);
        CHECK(d == n && memcmp(enc, in, n) == 0);
        if (failures) return;
    }
}

/* A valid BEGIN for this board, so that random DATA/END reach the session code. */
static void begin(uint32_t size) {
    uint8_t m[1 + 38 + 9];
    size_t i;
    m[0] = EK_BEGIN;
    m[1] = (uint8_t)size, m[2] = (uint8_t)(size >> 8), m[3] = (uint8_t)(size >> 16), m[4] = (uint8_t)(size >> 24);
    for (i = 0; i < 32; i++) m[5 + i] = (uint8_t)rnd();
    m[37] = (uint8_t)(rnd() & 3);
    m[38] = 9;
    memcpy(m + 39, "testboard", 9);
    feed_frame(m, sizeof m);
}

/* Power cut while the newest metadata record was being programmed: some of its bytes are lost. */
static void tear_newest_record(void) {
    uint32_t i, best = 0, best_seq = 0, seq;
    int found = 0;
    for (i = 0; i < 2u * EK_SECTOR / 128u; i++) {
        const uint8_t *r = flash[EK_AREA_META] + 128u * i;
        if (memcmp(r, "EKM1", 4) != 0) continue;
        seq = r[4] | (uint32_t)r[5] << 8 | (uint32_t)r[6] << 16 | (uint32_t)r[7] << 24;
        if (!found || (int32_t)(seq - best_seq) > 0) best = i, best_seq = seq, found = 1;
    }
    if (!found) return;
    flash[EK_AREA_META][128u * best + 4u + rnd() % 124u] &= (uint8_t)rnd();
    ek_boot();
}

static void fuzz(unsigned iters) {
    static uint8_t buf[EK_FRAME_MAX + 64];
    unsigned it;
    for (it = 0; it < iters; it++) {
        size_t n = rnd() % sizeof buf, i;
        uint32_t kind = rnd() % 8;
        for (i = 0; i < n; i++) buf[i] = (uint8_t)rnd();
        if (kind == 0) {
            ek_rx(buf, n); /* raw garbage, zeros included */
        } else if (kind == 1) {
            for (i = 0; i < n; i++) buf[i] |= 1; /* no delimiter: overflow path */
            ek_rx(buf, n);
        } else if (kind == 2) {
            begin(rnd() % (SLOT_SIZE + 2));
        } else if (kind == 3) {
            ek_boot();
            if (rnd() & 1) ek_confirm();
        } else { /* well framed, random type and body: the parsers' turn */
            static const uint8_t types[] = {EK_HELLO, EK_BEGIN, EK_DATA, EK_END, EK_INFO, 0x00, 0xFF};
            buf[0] = types[rnd() % sizeof types];
            if (buf[0] == EK_DATA && n >= 5) { /* plausible offsets and lengths */
                uint32_t off = (rnd() % (SLOT_SIZE / EK_CHUNK + 2)) * EK_CHUNK;
                buf[1] = (uint8_t)off, buf[2] = (uint8_t)(off >> 8), buf[3] = (uint8_t)(off >> 16), buf[4] = 0;
                if (rnd() & 1) n = 5 + EK_CHUNK;
            }
            feed_frame(buf, n > EK_FRAME_RAW_MAX - 4 ? EK_FRAME_RAW_MAX - 4 : n);
        }
        if (rnd() % 64 == 0) tear_newest_record();
    }
}

/* A real image, chunks shuffled within each window, 10 % dropped then all resent (duplicates):
 * the slot must end up exact, pending, then trial after the reboot, then confirmed active. */
static void test_transfer(void) {
    static uint8_t image[SLOT_SIZE], msg[5 + EK_CHUNK], start[1 + 38 + 9];
    static const uint8_t zero = 0;
    uint32_t size = SLOT_SIZE / 2 + rnd() % (SLOT_SIZE / 2), nchunks = (size + EK_CHUNK - 1) / EK_CHUNK;
    uint32_t g, i, order[EK_WINDOW], pass, size_active = 0;
    unsigned long reboots_before = reboots;
    ek_sha256_ctx c;
    int slot;
    for (i = 0; i < size; i++) image[i] = (uint8_t)rnd();
    ek_sha256_init(&c);
    ek_sha256_update(&c, image, size);
    start[0] = EK_BEGIN;
    for (i = 0; i < 4; i++) start[1 + i] = (uint8_t)(size >> (8 * i));
    ek_sha256_final(&c, start + 5);
    start[37] = 0, start[38] = 9;
    memcpy(start + 39, "testboard", 9);
    ek_boot();
    ek_boot(); /* a pending slot became the trial: this boot reverts it */
    ek_rx(&zero, 1); /* as the host does: end whatever partial frame the noise left */
    feed_frame(start, sizeof start);
    for (g = 0; g < nchunks; g += EK_WINDOW) {
        uint32_t n = nchunks - g < EK_WINDOW ? nchunks - g : EK_WINDOW;
        for (i = 0; i < n; i++) order[i] = g + i;
        for (i = n; i > 1; i--) {
            uint32_t j = rnd() % i, t = order[i - 1];
            order[i - 1] = order[j], order[j] = t;
        }
        for (pass = 0; pass < 2; pass++)
            for (i = 0; i < n; i++) {
                uint32_t off = order[i] * EK_CHUNK, len = size - off < EK_CHUNK ? size - off : EK_CHUNK;
                if (pass == 0 && rnd() % 10 == 0) continue;
                msg[0] = EK_DATA;
                msg[1] = (uint8_t)off, msg[2] = (uint8_t)(off >> 8), msg[3] = (uint8_t)(off >> 16), msg[4] = 0;
                memcpy(msg + 5, image + off, len);
                feed_frame(msg, 5 + len);
            }
    }
    msg[0] = EK_END;
    feed_frame(msg, 1);
    CHECK(reboots == reboots_before + 1);
    slot = ek_boot();
    CHECK(slot >= 0 && ek_slot_state((unsigned)slot) == EK_TRIAL);
    CHECK(ek_confirm() == 0);
    CHECK(ek_active_slot(&size_active) == slot && size_active == size);
    CHECK(slot >= 0 && memcmp(flash[slot], image, size) == 0);
}

int main(int argc, char **argv) {
    unsigned iters = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 20000u;
    rng_state = argc > 2 ? (uint32_t)strtoul(argv[2], NULL, 10) : 12345u;
    if (!rng_state) rng_state = 1;
    memset(flash, 0xFF, sizeof flash);
    test_vectors();
    test_cobs_roundtrip(iters / 4 + 1);
    test_transfer();
    test_transfer();
    fuzz(iters);
    test_transfer(); /* still works after the fuzzing */
    CHECK(nor_violations == 0);
    printf("test_frame: %s iterations=%u frames=%lu tx_bytes=%lu reboots=%lu nor_violations=%lu failures=%d\n",
           failures ? "FAIL" : "ok", iters, frames_fed, tx_bytes, reboots, nor_violations, failures);
    return failures ? 1 : 0;
}

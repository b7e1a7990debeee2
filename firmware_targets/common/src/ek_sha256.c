/* SHA-256 (FIPS 180-4), small rather than fast: a 16-word rolling message schedule. */
#include <string.h>

#include "ek_update.h"

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void block(ek_sha256_ctx *c) {
    uint32_t w[16], s[8];
    unsigned i;
    for (i = 0; i < 16; i++)
        w[i] = (uint32_t)c->buf[4 * i] << 24 | (uint32_t)c->buf[4 * i + 1] << 16 |
               (uint32_t)c->buf[4 * i + 2] << 8 | c->buf[4 * i + 3];
    memcpy(s, c->h, sizeof s);
    for (i = 0; i < 64; i++) {
        uint32_t t1, t2;
        if (i >= 16) {
            uint32_t a = w[(i + 1) & 15], b = w[(i + 14) & 15];
            w[i & 15] += (ROR(a, 7) ^ ROR(a, 18) ^ (a >> 3)) + w[(i + 9) & 15] +
                         (ROR(b, 17) ^ ROR(b, 19) ^ (b >> 10));
        }
        t1 = s[7] + (ROR(s[4], 6) ^ ROR(s[4], 11) ^ ROR(s[4], 25)) +
             ((s[4] & s[5]) ^ (~s[4] & s[6])) + K[i] + w[i & 15];
        t2 = (ROR(s[0], 2) ^ ROR(s[0], 13) ^ ROR(s[0], 22)) +
             ((s[0] & s[1]) ^ (s[0] & s[2]) ^ (s[1] & s[2]));
        {
            unsigned j;
            for (j = 7; j > 0; j--) s[j] = s[j - 1];
        }
        s[4] += t1;
        s[0] = t1 + t2;
    }
    for (i = 0; i < 8; i++) c->h[i] += s[i];
}

void ek_sha256_init(ek_sha256_ctx *c) {
    static const uint32_t H0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, H0, sizeof H0);
    c->len_lo = c->len_hi = 0;
    c->fill = 0;
}

void ek_sha256_update(ek_sha256_ctx *c, const uint8_t *p, size_t n) {
    while (n--) {
        c->buf[c->fill++] = *p++;
        if ((c->len_lo += 8) < 8) c->len_hi++;
        if (c->fill == 64) {
            block(c);
            c->fill = 0;
        }
    }
}

void ek_sha256_final(ek_sha256_ctx *c, uint8_t out[32]) {
    uint32_t lo = c->len_lo, hi = c->len_hi;
    unsigned i;
    static const uint8_t pad = 0x80, zero = 0;
    ek_sha256_update(c, &pad, 1);
    while (c->fill != 56) ek_sha256_update(c, &zero, 1);
    for (i = 0; i < 4; i++) c->buf[56 + i] = (uint8_t)(hi >> (24 - 8 * i));
    for (i = 0; i < 4; i++) c->buf[60 + i] = (uint8_t)(lo >> (24 - 8 * i));
    block(c);
    for (i = 0; i < 32; i++) out[i] = (uint8_t)(c->h[i >> 2] >> (24 - 8 * (i & 3)));
}

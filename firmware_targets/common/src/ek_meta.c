/* Slot metadata: an append-only log of CRC-checked records over two flash sectors.
 *
 * The newest valid record wins. A power cut mid-write leaves a record with a bad CRC, which is
 * skipped, so the previous state stands; a sector is erased only when the log moves into it,
 * and the other sector still holds the latest record while that happens. */
#include <string.h>

#include "ek_flash.h"
#include "ek_meta.h"

#define RECS_PER_SECTOR (EK_SECTOR / sizeof(ek_meta_t))
#define RECS (2u * RECS_PER_SECTOR)

ek_meta_t ek_meta;
static uint32_t next_pos; /* record index where the next write goes */

typedef char meta_is_128_bytes[sizeof(ek_meta_t) == 128 ? 1 : -1];

static int valid(const ek_meta_t *m) {
    return m->magic == EK_META_MAGIC &&
           m->crc == ek_crc32((const uint8_t *)m, offsetof(ek_meta_t, crc));
}

static int blank(const ek_meta_t *m) {
    const uint8_t *p = (const uint8_t *)m;
    size_t i;
    for (i = 0; i < sizeof *m; i++)
        if (p[i] != 0xFF) return 0;
    return 1;
}

int ek_load(void) {
    ek_meta_t rec;
    uint32_t i, best = RECS;
    ek_meta.state[0] = ek_meta.state[1] = EK_EMPTY;
    ek_meta.active = EK_NO_SLOT;
    ek_meta.progress = ek_meta.seq = 0;
    for (i = 0; i < RECS; i++) {
        if (ek_flash_read(EK_AREA_META, i * sizeof rec, &rec, sizeof rec)) return -1;
        if (valid(&rec) && (best == RECS || (int32_t)(rec.seq - ek_meta.seq) > 0)) {
            ek_meta = rec;
            best = i;
        }
    }
    next_pos = best == RECS ? 0 : best + 1;
    /* Skip torn records after the newest one; never program over them. */
    while (next_pos % RECS_PER_SECTOR != 0) {
        if (ek_flash_read(EK_AREA_META, next_pos * sizeof rec, &rec, sizeof rec)) return -1;
        if (blank(&rec)) break;
        next_pos++;
    }
    next_pos %= RECS;
    return 0;
}

int ek_meta_save(void) {
    ek_meta.magic = EK_META_MAGIC;
    ek_meta.seq++;
    ek_meta.crc = ek_crc32((const uint8_t *)&ek_meta, offsetof(ek_meta_t, crc));
    if (next_pos % RECS_PER_SECTOR == 0 &&
        ek_flash_erase(EK_AREA_META, next_pos * sizeof ek_meta, EK_SECTOR))
        return -1;
    if (ek_flash_write(EK_AREA_META, next_pos * sizeof ek_meta, &ek_meta, sizeof ek_meta))
        return -1;
    next_pos = (next_pos + 1) % RECS;
    return 0;
}

int ek_active_slot(uint32_t *size) {
    unsigned a = ek_meta.active;
    if (a > 1 || ek_meta.state[a] != EK_CONFIRMED) return -1;
    if (size) *size = ek_meta.size[a];
    return (int)a;
}

uint8_t ek_slot_state(unsigned slot) { return slot < 2 ? ek_meta.state[slot] : EK_EMPTY; }

uint8_t ek_test_flags(void) { return ek_meta.flags; }

int ek_verify_slot(unsigned slot) {
    uint8_t buf[64], digest[32];
    ek_sha256_ctx c;
    uint32_t off, size = ek_meta.size[slot & 1u];
    ek_sha256_init(&c);
    for (off = 0; off < size; off += sizeof buf) {
        uint32_t n = size - off < sizeof buf ? size - off : (uint32_t)sizeof buf;
        if (ek_flash_read(slot, off, buf, n)) return -1;
        ek_sha256_update(&c, buf, n);
    }
    ek_sha256_final(&c, digest);
    return memcmp(digest, ek_meta.sha[slot & 1u], 32) == 0 ? 0 : -1;
}

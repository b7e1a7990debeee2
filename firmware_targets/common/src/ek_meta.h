/* Internal: the metadata record shared by ek_meta.c and ek_update.c. */
#ifndef EK_META_H
#define EK_META_H

#include <stddef.h>
#include <stdint.h>

#include "ek_update.h"

#define EK_META_MAGIC 0x314D4B45u /* "EKM1" */

typedef struct {
    uint32_t magic;
    uint32_t seq;        /* newest valid record wins (wrap-safe comparison) */
    uint8_t state[2];    /* enum ek_state per slot */
    uint8_t active;      /* confirmed slot that runs, EK_NO_SLOT when none */
    uint8_t flags;       /* BEGIN flags of the receiving/pending/trial image */
    uint32_t size[2];
    uint32_t progress;   /* bytes of the RECEIVING slot known written: a resume point */
    uint8_t sha[2][32];
    uint8_t reserved[36];
    uint32_t crc;        /* CRC-32 of everything above */
} ek_meta_t;

extern ek_meta_t ek_meta;
int ek_meta_save(void);

#endif

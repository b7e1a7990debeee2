/* ek_flash_* of the update protocol on a board's memory-mapped flash areas: every request is
 * checked against the area's bounds and the erase granularity before the board sees it. */
#include <string.h>

#include "ek_board.h"
#include "ek_flash.h"
#include "ek_meta.h"
#include "ek_update.h"

static uint32_t area_size(unsigned area) {
    if (area == EK_AREA_META) return 2u * EK_SECTOR;
    return area <= EK_AREA_SLOT1 ? ek_board_slot_size() : 0u;
}

static int in_area(unsigned area, uint32_t off, uint32_t len) {
    uint32_t size = area_size(area);
    return size != 0u && off <= size && len <= size - off;
}

int ek_flash_erase(unsigned area, uint32_t off, uint32_t len) {
    if (!in_area(area, off, len) || off % EK_SECTOR || len % EK_SECTOR) return -1;
    return ek_board_erase(area, off, len);
}

int ek_flash_write(unsigned area, uint32_t off, const void *src, uint32_t len) {
    if (!in_area(area, off, len) || src == NULL) return -1;
    return len ? ek_board_program(area, off, src, len) : 0;
}

int ek_flash_read(unsigned area, uint32_t off, void *dst, uint32_t len) {
    const uint8_t *base = ek_board_area(area);
    if (!in_area(area, off, len) || base == NULL || dst == NULL) return -1;
    memcpy(dst, base + off, len);
    return 0;
}

uint32_t ek_flash_slot_size(void) { return ek_board_slot_size(); }

const uint8_t *ek_app_slot_model(unsigned slot, uint32_t *len) {
    uint32_t size;
    if (slot > EK_AREA_SLOT1 || ek_load()) return NULL;
    size = ek_meta.size[slot];
    if (size == 0u || size > ek_board_slot_size() || ek_board_area(slot) == NULL) return NULL;
    if (len) *len = size;
    return ek_board_area(slot);
}

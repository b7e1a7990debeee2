/* The flash a port provides: two model slots and a two-sector metadata area.
 *
 * NOR semantics are assumed: erase sets a sector to 0xFF, a write may only program erased bytes
 * (the protocol never writes a byte twice between erases). Every function returns 0 on success. */
#ifndef EK_FLASH_H
#define EK_FLASH_H

#include <stdint.h>

#define EK_AREA_SLOT0 0u
#define EK_AREA_SLOT1 1u
#define EK_AREA_META 2u /* 2 * EK_SECTOR bytes */

int ek_flash_erase(unsigned area, uint32_t off, uint32_t len); /* off, len: sector multiples */
int ek_flash_write(unsigned area, uint32_t off, const void *src, uint32_t len);
int ek_flash_read(unsigned area, uint32_t off, void *dst, uint32_t len);
uint32_t ek_flash_slot_size(void); /* bytes per model slot, a multiple of EK_SECTOR */

#endif

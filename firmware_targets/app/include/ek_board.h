/* What a board provides to the edgekit application glue (firmware_targets/app/): its flash
 * areas, its UART and its reset. Everything else (flash-slot checks, UART receive ring, boot,
 * self-test and confirm) is board-independent C99 in app/src/.
 *
 * Areas are EK_AREA_SLOT0, EK_AREA_SLOT1 (ek_board_slot_size() bytes each) and EK_AREA_META
 * (2 * EK_SECTOR bytes). They must be memory-mapped for reading: TFLM runs the model in place
 * (STM32/nRF: internal flash is; ESP32: map the partitions once with esp_partition_mmap). */
#ifndef EK_BOARD_H
#define EK_BOARD_H

#include <stddef.h>
#include <stdint.h>

const uint8_t *ek_board_area(unsigned area); /* first byte of the area, readable in place */
uint32_t ek_board_slot_size(void);          /* a multiple of EK_SECTOR */
/* off and len are checked by the glue: inside the area, erase ranges in whole EK_SECTORs. */
int ek_board_erase(unsigned area, uint32_t off, uint32_t len);
int ek_board_program(unsigned area, uint32_t off, const void *src, uint32_t len);
void ek_board_uart_write(const uint8_t *data, size_t len); /* blocking: returns once sent */
void ek_board_reset(void);  /* waits for the UART to drain, then resets (returns only on a host) */
const char *ek_board_name(void); /* the target name bundles use, e.g. "stm32h7" */

#endif

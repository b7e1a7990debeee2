/* Link-only board for `make arm`: STM32H7-like addresses, no flash or UART driver, so the
 * footprint measured is the glue's and the protocol's own. */
#include "ek_board.h"
#include "ek_flash.h"
#include "ek_update.h"

#define SLOT_SIZE (384u * 1024u)
#define BANK2 0x08100000u

const uint8_t *ek_board_area(unsigned area) {
    return (const uint8_t *)(BANK2 + area * SLOT_SIZE);
}
uint32_t ek_board_slot_size(void) { return SLOT_SIZE; }
int ek_board_erase(unsigned area, uint32_t off, uint32_t len) { return (int)(area + off + len) & 0; }
int ek_board_program(unsigned area, uint32_t off, const void *src, uint32_t len) {
    return (int)(area + off + len) & (src == 0);
}
void ek_board_uart_write(const uint8_t *data, size_t len) { (void)data, (void)len; }
void ek_board_reset(void) {}
const char *ek_board_name(void) { return "stm32h7"; }

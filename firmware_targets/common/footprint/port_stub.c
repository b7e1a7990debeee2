/* Empty port for `make footprint`: links the protocol alone so its own size can be measured. */
#include "ek_flash.h"
#include "ek_update.h"

int ek_flash_erase(unsigned area, uint32_t off, uint32_t len) { return (int)(area + off + len) & 0; }
int ek_flash_write(unsigned area, uint32_t off, const void *src, uint32_t len) {
    return (int)(area + off + len) & (src == 0);
}
int ek_flash_read(unsigned area, uint32_t off, void *dst, uint32_t len) {
    return (int)(area + off + len) & (dst == 0);
}
uint32_t ek_flash_slot_size(void) { return 512u * 1024u; }
void ek_port_tx(const uint8_t *data, size_t len) { (void)data, (void)len; }
const char *ek_port_board(void) { return "stm32h7"; }
void ek_port_reboot(void) {}

/* ek_board.h for the nRF52840 on Zephyr: the app.overlay partitions through the flash map
 * (internal flash is memory-mapped at address 0, so a slot is read in place), uart0 with an RX
 * interrupt, a cold reboot. NVMC writes whole 32-bit words: a partial tail is padded with
 * 0xFF, never programmed again (chunks and metadata records start on word bounds). */
#include <string.h>
#include <zephyr/device.h>
#include <zephyr/drivers/uart.h>
#include <zephyr/storage/flash_map.h>
#include <zephyr/sys/reboot.h>

#include "ek_app.h"
#include "ek_board.h"
#include "ek_flash.h"

#define WORD 4u

static const struct device *const uart = DEVICE_DT_GET(DT_NODELABEL(uart0));
static const struct flash_area *areas[3];
static const uint8_t area_ids[3] = {FIXED_PARTITION_ID(ek_slot0), FIXED_PARTITION_ID(ek_slot1),
                                    FIXED_PARTITION_ID(ek_meta)};

const uint8_t *ek_board_area(unsigned area) {
    return area < 3 && areas[area] ? (const uint8_t *)(uintptr_t)areas[area]->fa_off : NULL;
}

uint32_t ek_board_slot_size(void) { return (uint32_t)FIXED_PARTITION_SIZE(ek_slot0); }

int ek_board_erase(unsigned area, uint32_t off, uint32_t len) {
    return flash_area_erase(areas[area], off, len) == 0 ? 0 : -1;
}

int ek_board_program(unsigned area, uint32_t off, const void *src, uint32_t len) {
    uint32_t whole = len & ~(WORD - 1u);
    uint8_t tail[WORD];
    if (off % WORD) return -1;
    if (whole && flash_area_write(areas[area], off, src, whole)) return -1;
    if (whole == len) return 0;
    memset(tail, 0xFF, sizeof tail);
    memcpy(tail, (const uint8_t *)src + whole, len - whole);
    return flash_area_write(areas[area], off + whole, tail, WORD) == 0 ? 0 : -1;
}

void ek_board_uart_write(const uint8_t *data, size_t len) {
    while (len--) uart_poll_out(uart, *data++);
}

void ek_board_reset(void) {
    k_msleep(20); /* uart_poll_out returns per byte queued: let the last ones leave */
    sys_reboot(SYS_REBOOT_COLD);
}

const char *ek_board_name(void) { return "nrf52840"; }

static void on_uart(const struct device *dev, void *user) {
    uint8_t buf[32];
    int n;
    (void)user;
    while (uart_irq_update(dev) && uart_irq_rx_ready(dev) &&
           (n = uart_fifo_read(dev, buf, sizeof buf)) > 0)
        ek_app_uart_rx(buf, (size_t)n);
}

int board_init(void) {
    int i;
    if (!device_is_ready(uart)) return -1;
    for (i = 0; i < 3; i++)
        if (flash_area_open(area_ids[i], &areas[i])) return -1;
    if (areas[2]->fa_size != 2u * EK_SECTOR || areas[1]->fa_size != areas[0]->fa_size) return -1;
    uart_irq_callback_user_data_set(uart, on_uart, NULL);
    uart_irq_rx_enable(uart);
    return 0;
}

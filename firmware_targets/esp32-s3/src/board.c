/* ek_board.h for the ESP32-S3: the ek_slot0/ek_slot1/ek_meta partitions of partitions.csv
 * (4 KiB erase sectors = EK_SECTOR), read through an MMU mapping; UART0 through the IDF
 * driver; esp_restart(). A mapping may show stale cache lines after a write, so an area that
 * was written is mapped again before it is read. */
#include <string.h>

#include "driver/uart.h"
#include "ek_app.h"
#include "ek_board.h"
#include "ek_flash.h"
#include "esp_partition.h"
#include "esp_system.h"

#define EK_UART UART_NUM_0

static const char *const labels[3] = {"ek_slot0", "ek_slot1", "ek_meta"};
static const esp_partition_t *parts[3];
static const void *maps[3];
static esp_partition_mmap_handle_t handles[3];
static int stale[3] = {1, 1, 1};

const uint8_t *ek_board_area(unsigned area) {
    if (area > 2 || parts[area] == NULL) return NULL;
    if (stale[area]) {
        if (maps[area]) esp_partition_munmap(handles[area]);
        maps[area] = NULL;
        if (esp_partition_mmap(parts[area], 0, parts[area]->size, ESP_PARTITION_MMAP_DATA,
                               &maps[area], &handles[area]) != ESP_OK)
            return NULL;
        stale[area] = 0;
    }
    return maps[area];
}

uint32_t ek_board_slot_size(void) { return parts[0] ? parts[0]->size : 0u; }

int ek_board_erase(unsigned area, uint32_t off, uint32_t len) {
    stale[area] = 1;
    return esp_partition_erase_range(parts[area], off, len) == ESP_OK ? 0 : -1;
}

int ek_board_program(unsigned area, uint32_t off, const void *src, uint32_t len) {
    stale[area] = 1;
    return esp_partition_write(parts[area], off, src, len) == ESP_OK ? 0 : -1;
}

void ek_board_uart_write(const uint8_t *data, size_t len) {
    uart_write_bytes(EK_UART, (const char *)data, len);
}

void ek_board_reset(void) {
    uart_wait_tx_done(EK_UART, pdMS_TO_TICKS(100));
    esp_restart();
}

const char *ek_board_name(void) { return "esp32-s3"; }

int board_init(void) {
    unsigned i;
    uart_config_t cfg = {.baud_rate = 921600, .data_bits = UART_DATA_8_BITS,
                         .parity = UART_PARITY_DISABLE, .stop_bits = UART_STOP_BITS_1,
                         .flow_ctrl = UART_HW_FLOWCTRL_DISABLE, .source_clk = UART_SCLK_DEFAULT};
    for (i = 0; i < 3; i++) {
        parts[i] = esp_partition_find_first(ESP_PARTITION_TYPE_DATA, ESP_PARTITION_SUBTYPE_ANY,
                                            labels[i]);
        if (parts[i] == NULL) return -1;
    }
    if (parts[2]->size != 2u * EK_SECTOR || parts[0]->size != parts[1]->size) return -1;
    if (uart_driver_install(EK_UART, 8192, 0, 0, NULL, 0) != ESP_OK) return -1;
    return uart_param_config(EK_UART, &cfg) == ESP_OK ? 0 : -1;
}

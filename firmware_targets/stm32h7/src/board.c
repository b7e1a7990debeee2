/* ek_board.h for the STM32H743 (STM32Cube HAL). Flash bank 2 (8 sectors of 128 KiB at
 * 0x08100000) holds the model slots and the metadata; the firmware runs from bank 1:
 *   sectors 0-2  slot 0 (384 KiB)   sectors 3-5  slot 1 (384 KiB)   sectors 6-7  metadata
 * USART3 (PD8/PD9) is the NUCLEO's ST-LINK virtual COM port. */
#include <string.h>

#include "ek_app.h"
#include "ek_board.h"
#include "ek_config.h"
#include "ek_flash.h"
#include "stm32h7xx_hal.h"

#define BANK2_BASE 0x08100000u
#define SECTOR_BYTES 0x20000u
#define SLOT_SECTORS 3u
#define FLASH_WORD 32u /* the H7 programs 256-bit words */

_Static_assert(EK_SECTOR == SECTOR_BYTES, "build with -DEK_SECTOR=131072u");

static UART_HandleTypeDef uart;

static uint32_t first_sector(unsigned area) { return area * SLOT_SECTORS; }

const uint8_t *ek_board_area(unsigned area) {
    return (const uint8_t *)(BANK2_BASE + first_sector(area) * SECTOR_BYTES);
}

uint32_t ek_board_slot_size(void) { return SLOT_SECTORS * SECTOR_BYTES; }

int ek_board_erase(unsigned area, uint32_t off, uint32_t len) {
    FLASH_EraseInitTypeDef e = {0};
    uint32_t bad = 0;
    HAL_StatusTypeDef st;
    e.TypeErase = FLASH_TYPEERASE_SECTORS;
    e.Banks = FLASH_BANK_2;
    e.Sector = first_sector(area) + off / SECTOR_BYTES;
    e.NbSectors = len / SECTOR_BYTES;
    e.VoltageRange = FLASH_VOLTAGE_RANGE_3;
    HAL_FLASH_Unlock();
    st = HAL_FLASHEx_Erase(&e, &bad);
    HAL_FLASH_Lock();
    SCB_InvalidateDCache_by_Addr((void *)(ek_board_area(area) + off), (int32_t)len);
    return st == HAL_OK ? 0 : -1;
}

/* Whole flash words; a partial last word is padded with 0xFF (erased), which the protocol
 * never programs again: chunks start on 1024-byte and metadata records on 128-byte bounds. */
int ek_board_program(unsigned area, uint32_t off, const void *src, uint32_t len) {
    uint32_t addr = (uint32_t)(uintptr_t)ek_board_area(area) + off, done;
    int rc = 0;
    if (off % FLASH_WORD) return -1;
    HAL_FLASH_Unlock();
    for (done = 0; done < len && rc == 0; done += FLASH_WORD) {
        uint32_t word[FLASH_WORD / 4u];
        uint32_t n = len - done < FLASH_WORD ? len - done : FLASH_WORD;
        memset(word, 0xFF, sizeof word);
        memcpy(word, (const uint8_t *)src + done, n);
        rc = HAL_FLASH_Program(FLASH_TYPEPROGRAM_FLASHWORD, addr + done, (uint32_t)(uintptr_t)word)
                 == HAL_OK ? 0 : -1;
    }
    HAL_FLASH_Lock();
    SCB_InvalidateDCache_by_Addr((void *)(uintptr_t)addr, (int32_t)len);
    return rc;
}

void ek_board_uart_write(const uint8_t *data, size_t len) {
    HAL_UART_Transmit(&uart, (uint8_t *)data, (uint16_t)len, HAL_MAX_DELAY);
}

void ek_board_reset(void) {
    while (__HAL_UART_GET_FLAG(&uart, UART_FLAG_TC) == RESET) {
    }
    NVIC_SystemReset();
}

const char *ek_board_name(void) { return "stm32h7"; }

/* RX: one interrupt per byte through the FIFO; the ring in the glue absorbs flash stalls. */
void USART3_IRQHandler(void) {
    while (__HAL_UART_GET_FLAG(&uart, UART_FLAG_RXNE)) {
        uint8_t b = (uint8_t)(uart.Instance->RDR & 0xFFu);
        ek_app_uart_rx(&b, 1);
    }
    __HAL_UART_CLEAR_FLAG(&uart, UART_CLEAR_OREF | UART_CLEAR_FEF | UART_CLEAR_NEF);
}

void board_init(void) {
    GPIO_InitTypeDef pins = {0};
    SCB_EnableICache();
    SCB_EnableDCache();
    __HAL_RCC_GPIOD_CLK_ENABLE();
    __HAL_RCC_USART3_CLK_ENABLE();
    pins.Pin = GPIO_PIN_8 | GPIO_PIN_9;
    pins.Mode = GPIO_MODE_AF_PP;
    pins.Speed = GPIO_SPEED_FREQ_VERY_HIGH;
    pins.Alternate = GPIO_AF7_USART3;
    HAL_GPIO_Init(GPIOD, &pins);
    uart.Instance = USART3;
    uart.Init.BaudRate = 921600;
    uart.Init.WordLength = UART_WORDLENGTH_8B;
    uart.Init.StopBits = UART_STOPBITS_1;
    uart.Init.Parity = UART_PARITY_NONE;
    uart.Init.Mode = UART_MODE_TX_RX;
    uart.Init.OverSampling = UART_OVERSAMPLING_8;
    HAL_UART_Init(&uart);
    __HAL_UART_ENABLE_IT(&uart, UART_IT_RXNE);
    HAL_NVIC_SetPriority(USART3_IRQn, 1, 0);
    HAL_NVIC_EnableIRQ(USART3_IRQn);
}

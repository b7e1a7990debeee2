/* Framing: CRC-32 (IEEE, as zlib.crc32) with a 16-entry table, and COBS decoding in place. */
#include "ek_update.h"

static const uint32_t CRC_NIBBLE[16] = {
    0x00000000, 0x1DB71064, 0x3B6E20C8, 0x26D930AC, 0x76DC4190, 0x6B6B51F4, 0x4DB26158, 0x5005713C,
    0xEDB88320, 0xF00F9344, 0xD6D6A3E8, 0xCB61B38C, 0x9B64C2B0, 0x86D3D2D4, 0xA00AE278, 0xBDBDF21C};

uint32_t ek_crc32(const uint8_t *p, size_t n) {
    uint32_t crc = 0xFFFFFFFFu;
    while (n--) {
        crc ^= *p++;
        crc = (crc >> 4) ^ CRC_NIBBLE[crc & 15u];
        crc = (crc >> 4) ^ CRC_NIBBLE[crc & 15u];
    }
    return ~crc;
}

/* Each block is a code byte c then c-1 data bytes, then an implied zero unless c == 0xFF or the
 * frame ends. Output never overtakes input, so decoding in place is safe. */
size_t ek_cobs_decode(uint8_t *buf, size_t len) {
    size_t r = 0, w = 0;
    while (r < len) {
        uint8_t code = buf[r++];
        uint8_t i;
        if (code == 0) return SIZE_MAX;
        for (i = 1; i < code; i++) {
            if (r >= len || buf[r] == 0) return SIZE_MAX;
            buf[w++] = buf[r++];
        }
        if (code != 0xFF && r < len) buf[w++] = 0;
    }
    return w;
}

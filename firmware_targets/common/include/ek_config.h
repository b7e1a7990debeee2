/* Compile-time sizes of the edgekit model-update protocol (override with -D). */
#ifndef EK_CONFIG_H
#define EK_CONFIG_H

/* Data bytes per DATA frame. Must divide EK_SECTOR. */
#ifndef EK_CHUNK
#define EK_CHUNK 1024u
#endif

/* Erase unit of the model slots and of each of the two metadata sectors. */
#ifndef EK_SECTOR
#define EK_SECTOR 4096u
#endif

/* Chunks the device accepts ahead of its first missing one (selective repeat). At most 32:
 * the received-chunk map is one 32-bit word. */
#ifndef EK_WINDOW
#define EK_WINDOW 32u
#endif

#define EK_BOARD_MAX 32u
#define EK_PROTO_VERSION 1u

/* Decoded frame: type + offset + chunk + CRC; COBS adds one byte per 254 and the code byte. */
#define EK_FRAME_RAW_MAX (1u + 4u + EK_CHUNK + 4u)
#define EK_FRAME_MAX (EK_FRAME_RAW_MAX + EK_FRAME_RAW_MAX / 254u + 2u)

#if (EK_SECTOR % EK_CHUNK) != 0
#error "EK_CHUNK must divide EK_SECTOR"
#endif
#if EK_WINDOW > 32u
#error "EK_WINDOW is at most 32"
#endif

#endif

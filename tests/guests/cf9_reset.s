# Resets the machine through the PIIX reset control register at 0xCF9 (RST_CPU | SYS_RST).
        .include "common.inc"
start:
        cli
        mov     dx, 0xCF9
        mov     al, 0x06
        out     dx, al
        exit    0x7F                    # not reached

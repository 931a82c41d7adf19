# Resets the machine through the i8042: wait for the input buffer, command 0xFE.
        .include "common.inc"
start:
        cli
1:      in      al, 0x64
        test    al, 2
        jnz     1b
        mov     al, 0xFE
        out     0x64, al
        exit    0x7F                    # not reached

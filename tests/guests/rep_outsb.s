# Sends this ROM's own 4 KiB image (F000:F000-FFFF) to COM1 with REP OUTSB, without polling,
# REPEAT times; then leaves through debug-exit (0, exit code 1).
        .include "common.inc"
start:
        cli
        mov     ax, cs
        mov     ds, ax
        mov     bx, REPEAT
        mov     dx, COM1
        cld
1:      mov     si, 0xF000
        mov     cx, 0x1000
        rep     outsb
        dec     bx
        jnz     1b
        exit    0

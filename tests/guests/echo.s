# Waits for one byte on COM1 and leaves through debug-exit with it as the code.
        .include "common.inc"
start:
        mov     si, offset ready
        call    print
        mov     dx, COM1 + 5
1:      in      al, dx
        test    al, 1                   # LSR.DR
        jz      1b
        mov     dx, COM1
        in      al, dx
        out     DEBUG_EXIT, al
ready:  .asciz  "ready\r\n"

# Prints a line on COM1, then halts with interrupts off.
        .include "common.inc"
start:
        mov     si, offset msg
        call    print
        cli
1:      hlt
        jmp     1b
msg:    .asciz  "hello from a tiny guest\r\n"

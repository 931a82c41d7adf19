# Prints the same line on COM1 forever, polling LSR.THRE before every byte.
        .include "common.inc"
start:
        cli
1:      mov     si, offset line
        call    print
        jmp     1b
line:   .asciz  "flood 0123456789abcdefghijklmnopqrstuvwxyz\r\n"

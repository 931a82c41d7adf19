# The benchmark guest: prints one line on COM1 and leaves through debug-exit (code 1), so
# it ends the same way on minipc and on QEMU (which does not stop on a halt).
        .include "common.inc"
start:
        mov     si, offset msg
        call    print
        exit    0
msg:    .asciz  "bench guest\r\n"

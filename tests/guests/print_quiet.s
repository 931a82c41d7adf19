# Prints "up\r\n", then does nothing that leaves KVM: spins with interrupts off, or with
# --defsym IDLE=1 halts with interrupts on (and none unmasked). `print` polls LSR once more
# after its last byte, so the "\n" is written alone, after it: no exit follows that write.
        .include "common.inc"
start:
        low_stack
        .ifdef  IDLE
        init_8259s 0xFF, 0xFF
        .endif
        mov     si, offset up
        call    print
        mov     dx, COM1
        mov     al, '\n'
        out     dx, al
        .ifdef  IDLE
        sti
1:      hlt
        jmp     1b
        .else
        cli
2:      jmp     2b
        .endif
up:     .asciz  "up\r"

# Idle with the BIOS tick running: IRQ 0 from PIT channel 0 in mode 2 with divisor 65536
# (18.2 Hz, as the firmware programs it), acknowledged by its handler, and the CPU halted with
# interrupts enabled in between. Never exits by itself (the benchmark stops it with --timeout).
        .include "common.inc"
start:
        low_stack
        mov     word ptr [0x08 * 4], offset tick
        mov     word ptr [0x08 * 4 + 2], 0xF000
        # The master 8259 at vector 08h, only IRQ 0 unmasked; the slave masked.
        init_8259s 0xFE, 0xFF
        # Channel 0, LSB then MSB, mode 2, binary, divisor 65536.
        mov     al, 0x34
        out     0x43, al
        xor     al, al
        out     0x40, al
        out     0x40, al
        sti
1:      hlt
        jmp     1b

tick:
        push    ax
        inc     word ptr [0x46C]
        mov     al, 0x20
        out     0x20, al
        pop     ax
        iret

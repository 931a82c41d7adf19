# An interactive guest that waits in HLT with interrupts on: prints "ready\r\n" and the
# prompt "> " (no line end), then echoes every byte COM1 receives, without a line end, taken
# by its receive interrupt (IRQ 4 through the 8259). "q" leaves through debug-exit (0x71).
        .include "common.inc"
        .set    RX_BYTE, 0x500          # the last byte received, 0 when taken
start:
        low_stack
        mov     byte ptr [RX_BYTE], 0
        mov     word ptr [0x0C * 4], offset com_isr
        mov     word ptr [0x0C * 4 + 2], 0xF000
        # The 8259 pair: vectors 08h and 70h; only IRQ 4 unmasked.
        init_8259s 0xEF, 0xFF
        # COM1: interrupt on received data (IER.ERBFI).
        com1_irq 0x01
        mov     si, offset ready
        call    print
1:      sti
        hlt
        cli
        mov     al, [RX_BYTE]
        test    al, al
        jz      1b
        mov     byte ptr [RX_BYTE], 0
        cmp     al, 'q'
        je      2f
        mov     [echo], al
        mov     dx, COM1 + 5
3:      in      al, dx
        test    al, 0x20
        jz      3b
        mov     al, [echo]
        mov     dx, COM1
        out     dx, al
        jmp     1b
2:      exit    0x71

com_isr:
        com1_rx_isr mov [RX_BYTE], al

        .set    echo, 0x502
ready:  .asciz  "ready\r\n> "

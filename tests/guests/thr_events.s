# Prints "poll\r\n" by polling LSR.THRE, then makes the UART turn THR writes into events:
# - default: IER.ETBEI on, and "irq\r\n" sent from the THR-empty interrupt (IRQ 4 through
#   the 8259), one byte per interrupt;
# - with --defsym LOOPBACK=1: MCR.LOOP on, "x" written to THR must come back in RBR with
#   LSR.DR set at once; then loopback off and "loop x\r\n" printed by polling.
# With --defsym WAIT_MS=N, it waits N ms between the polled line and the switch; with
# --defsym LONG=1 the interrupt-driven text has ten more lines before "irq".
# Leaves through debug-exit with 0 (exit code 1), or 1 (exit code 3) when the looped byte
# did not come back.
        .include "common.inc"
        .set    NEXT, 0x500             # offset of the next interrupt-driven byte
start:
        low_stack
        mov     si, offset poll
        call    print
        .ifdef  WAIT_MS
        pm_wait WAIT_MS
        .endif
        .ifdef  LOOPBACK
        mov     dx, COM1 + 4
        mov     al, 0x10                # MCR.LOOP
        out     dx, al
        mov     dx, COM1
        mov     al, 'x'
        out     dx, al
        mov     dx, COM1 + 5
        in      al, dx
        test    al, 0x01                # LSR.DR
        jz      1f
        mov     dx, COM1
        in      al, dx
        cmp     al, 'x'
        jne     1f
        mov     dx, COM1 + 4
        xor     al, al
        out     dx, al
        mov     si, offset looped
        call    print
        exit    0
1:      exit    1
        .else
        mov     word ptr [NEXT], offset irq
        mov     word ptr [0x0C * 4], offset com_isr
        mov     word ptr [0x0C * 4 + 2], 0xF000
        # The 8259 pair: vectors 08h and 70h; only IRQ 4 unmasked.
        init_8259s 0xEF, 0xFF
        # IER.ETBEI: THR empty raises IRQ 4 at once.
        com1_irq 0x02
2:      sti
        hlt
        cli
        mov     si, [NEXT]
        cmp     byte ptr cs:[si], 0
        jne     2b
        exit    0

# Sends the next byte of the message on each THR-empty interrupt; at its end, turns the
# interrupt off.
com_isr:
        push    ax
        push    dx
        push    si
        mov     dx, COM1 + 2
        in      al, dx                  # IIR: acknowledges the THR-empty interrupt
        mov     si, [NEXT]
        mov     al, cs:[si]
        test    al, al
        jz      3f
        mov     dx, COM1
        out     dx, al
        inc     word ptr [NEXT]
        jmp     4f
3:      mov     dx, COM1 + 1
        xor     al, al
        out     dx, al
4:      mov     al, 0x20
        out     0x20, al
        pop     si
        pop     dx
        pop     ax
        iret
irq:
        .ifdef  LONG
        .rept   10
        .ascii  "an interrupt-driven line of text\r\n"
        .endr
        .endif
        .asciz  "irq\r\n"
        .endif
poll:   .asciz  "poll\r\n"
looped: .asciz  "loop x\r\n"

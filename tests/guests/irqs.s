# Counts the legacy interrupts that reach a real-mode guest through the 8259s: the PIT
# (IRQ 0, 100 Hz), COM1 receive (IRQ 4), the RTC's periodic interrupt (IRQ 8, 1024 Hz) and
# the ACPI SCI of the PM timer's overflow (IRQ 9, every 2.3 s). Prints
#   irqs pit PPPP com CCCC rtc RRRR sci SSSS
# (hex counts) once every source has fired or after about 6 s of PIT ticks, then halts.
        .include "common.inc"
        .set    PIT_COUNT, 0x500
        .set    COM_COUNT, 0x502
        .set    RTC_COUNT, 0x504
        .set    SCI_COUNT, 0x506
        .macro  vector n, handler
        mov     word ptr [\n * 4], offset \handler
        mov     word ptr [\n * 4 + 2], 0xF000
        .endm
start:
        low_stack
        mov     dword ptr [PIT_COUNT], 0
        mov     dword ptr [RTC_COUNT], 0
        vector  0x08, pit_isr
        vector  0x0C, com_isr
        vector  0x70, rtc_isr
        vector  0x71, sci_isr
        # The 8259 pair: vectors 08h and 70h; IRQ 0, 2 (cascade), 4, 8, 9 unmasked.
        init_8259s 0xEA, 0xFC
        # PIT channel 0, rate generator, 100 Hz.
        mov     al, 0x34
        out     0x43, al
        mov     ax, 11932
        out     0x40, al
        mov     al, ah
        out     0x40, al
        # RTC: 1024 Hz periodic interrupt.
        mov     al, 0x0A
        out     0x70, al
        mov     al, 0x26
        out     0x71, al
        mov     al, 0x0B
        out     0x70, al
        mov     al, 0x42
        out     0x71, al
        # COM1: interrupt on received data (IER.ERBFI).
        com1_irq 0x01
        # ACPI: the PM timer's overflow raises the SCI.
        mov     dx, 0x602
        mov     ax, 0x0001              # PM1a_EN.TMR_EN
        out     dx, ax
        mov     si, offset ready
        call    print
        sti
1:      hlt
        cmp     word ptr [PIT_COUNT], 600
        jae     2f
        cmp     word ptr [PIT_COUNT], 3
        jb      1b
        cmp     word ptr [RTC_COUNT], 3
        jb      1b
        cmp     word ptr [COM_COUNT], 1
        jb      1b
        cmp     word ptr [SCI_COUNT], 1
        jb      1b
2:      cli
        mov     si, offset tag_pit
        call    print
        mov     ax, [PIT_COUNT]
        call    hex16
        mov     si, offset tag_com
        call    print
        mov     ax, [COM_COUNT]
        call    hex16
        mov     si, offset tag_rtc
        call    print
        mov     ax, [RTC_COUNT]
        call    hex16
        mov     si, offset tag_sci
        call    print
        mov     ax, [SCI_COUNT]
        call    hex16
        mov     si, offset crlf
        call    print
3:      hlt
        jmp     3b

pit_isr:
        push    ax
        push    ds
        xor     ax, ax
        mov     ds, ax
        inc     word ptr [PIT_COUNT]
        mov     al, 0x20
        out     0x20, al
        pop     ds
        pop     ax
        iret

com_isr:
        com1_rx_isr inc word ptr [COM_COUNT]

rtc_isr:
        push    ax
        push    ds
        xor     ax, ax
        mov     ds, ax
        mov     al, 0x0C
        out     0x70, al
        in      al, 0x71                # acknowledge: read register C
        inc     word ptr [RTC_COUNT]
        mov     al, 0x20
        out     0xA0, al
        out     0x20, al
        pop     ds
        pop     ax
        iret

sci_isr:
        push    ax
        push    dx
        push    ds
        xor     ax, ax
        mov     ds, ax
        mov     dx, 0x600
        in      ax, dx
        out     dx, ax                  # PM1a_STS: write 1 to clear what is set
        inc     word ptr [SCI_COUNT]
        mov     al, 0x20
        out     0xA0, al
        out     0x20, al
        pop     ds
        pop     dx
        pop     ax
        iret

hex16:
        push    cx
        mov     cx, 4
        mov     dx, COM1
4:      rol     ax, 4
        push    ax
        and     al, 0x0F
        add     al, '0'
        cmp     al, '9'
        jbe     5f
        add     al, 'a' - '9' - 1
5:      out     dx, al
        pop     ax
        loop    4b
        pop     cx
        ret

ready:   .asciz "ready\r\n"
tag_pit: .asciz "irqs pit "
tag_com: .asciz " com "
tag_rtc: .asciz " rtc "
tag_sci: .asciz " sci "
crlf:    .asciz "\r\n"

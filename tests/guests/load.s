# A guest for the load tests (tests/load.rs, bench/load.py). Prints
#   load IIII start
# then waits TICKS ticks of the PIT (channel 0 at 18.2 Hz: 18 ticks are about a second),
# halted with interrupts on, prints
#   load IIII done
# and leaves through debug-exit with CODE. ID (printed in hex), CODE and TICKS are set with
# --defsym; ID and TICKS default to 0 (no wait).
        .include "common.inc"
        .ifndef ID
        .set    ID, 0
        .endif
        .ifndef TICKS
        .set    TICKS, 0
        .endif
        .set    COUNT, 0x500                    # PIT ticks seen
start:
        low_stack
        mov     si, offset starting
        call    report
        .if     TICKS
        mov     word ptr [COUNT], 0
        mov     word ptr [0x08 * 4], offset pit_isr
        mov     word ptr [0x08 * 4 + 2], 0xF000
        # The master 8259: vectors 08h-0Fh, IRQ 0 alone unmasked.
        mov     al, 0x11
        out     0x20, al
        mov     al, 0x08
        out     0x21, al
        mov     al, 0x04
        out     0x21, al
        mov     al, 0x01
        out     0x21, al
        mov     al, 0xFE
        out     0x21, al
        # PIT channel 0, rate generator, count 65536: 18.2 Hz.
        mov     al, 0x34
        out     0x43, al
        xor     al, al
        out     0x40, al
        out     0x40, al
        sti
1:      hlt
        cmp     word ptr [COUNT], TICKS
        jb      1b
        cli
        .endif
        mov     si, offset finished
        call    report
        exit    CODE

pit_isr:
        push    ax
        inc     word ptr [COUNT]
        mov     al, 0x20                        # EOI
        out     0x20, al
        pop     ax
        iret

# report: "load ", ID in four hex digits, then the string at CS:SI.
report:
        push    si
        mov     si, offset prefix
        call    print
        mov     bx, ID
        mov     cx, 4
1:      rol     bx, 4
        mov     al, bl
        and     al, 0x0F
        add     al, '0'
        cmp     al, '9'
        jbe     2f
        add     al, 'a' - '9' - 1
2:      call    putc
        loop    1b
        pop     si
        jmp     print

# putc: AL to COM1 once LSR.THRE is set.
putc:
        push    dx
        push    ax
        mov     dx, COM1 + 5
1:      in      al, dx
        test    al, 0x20
        jz      1b
        pop     ax
        mov     dx, COM1
        out     dx, al
        pop     dx
        ret

prefix:   .asciz  "load "
starting: .asciz  " start\r\n"
finished: .asciz  " done\r\n"

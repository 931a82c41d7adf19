# The PIT as Linux and a BIOS use it, timed against the ACPI PM timer (3.579545 MHz, its own
# clock in the VMM) and the CMOS clock:
#  1. pit_calibrate_tsc: port 0x61 gate 2 on and speaker off, channel 2 in mode 0 with a
#     50 ms count (59659), then port 0x61 polled until bit 5 (channel 2's OUT) rises. OUT
#     must be low at first and rise after 50 ms (at most 250 ms).
#  2. quick_pit_calibrate: channel 2 in mode 0 from 0xFFFF, LSB and MSB read in a loop while
#     the MSB keeps the value expected, for the 64 MSB values after 0xFF (Linux's
#     pit_expect_msb). From the first change of the MSB to the 64th must take 0.5 to 2 times
#     64 * 256 ticks (13.7 ms): the bounds leave room for a vCPU thread the host preempts
#     when it should see a change (then values go by unread: counted, not judged).
#  3. Counter latch and read-back: the status of channel 2; a latched count is held while
#     the counter runs on (1 ms later the live count is at least 1100 ticks further).
#  4. BCD: 9000 in mode 0, 1 ms later reads valid BCD digits, 7900 or less. The BCD count
#     wraps every 10000 ticks (8.4 ms), so a vCPU thread the host preempts for more than
#     about 6.5 ms in that millisecond reads a value out of range: up to 5 tries, one in
#     range is enough; every try must read valid digits.
#  5. IRQ 0 through the 8259 from channel 0 in mode 2 at 100 Hz: 50-102 interrupts in one
#     second of the CMOS clock (edges the VMM is late for are coalesced: fewer on a loaded
#     host, never more).
#  6. The same in mode 3: 12-26 interrupts in a quarter second of the PM timer.
# Prints a line for each, then leaves through debug-exit with 0, or with the number of the
# first check that failed.
        .include "common.inc"
        .set    PM_TMR, 0x608
        .set    TICKS, 0x500            # dword: IRQ 0 count
        .set    QSTART, 0x504           # dword: PM time of the first MSB change
        .set    QMIN, 0x508             # dword: fewest reads of one MSB value
        .set    QLOW, 0x50C             # dword: MSB values read 5 times or fewer
        .set    QZERO, 0x510            # dword: MSB values no read saw
        .set    MS, 3580                # PM timer ticks in a millisecond

        .macro  fail n
        mov     al, \n
        jmp     failed
        .endm

start:
        low_stack
        mov     word ptr [0x08 * 4], offset irq0
        mov     word ptr [0x08 * 4 + 2], 0xF000

# 1. pit_calibrate_tsc.
        in      al, 0x61
        and     al, 0xFD
        or      al, 0x01
        out     0x61, al
        mov     al, 0xB0                # channel 2, LSB then MSB, mode 0, binary
        out     0x43, al
        call    pm_now
        mov     ebx, eax
        mov     al, 0x0B                # 59659 = 0xE90B: 50 ms
        out     0x42, al
        mov     al, 0xE9
        out     0x42, al
        xor     ecx, ecx
1:      in      al, 0x61
        test    al, 0x20
        jnz     2f
        inc     ecx
        jmp     1b
2:      call    pm_since
        mov     edi, eax
        mov     si, offset msg_tsc
        call    print
        mov     eax, ecx
        call    hex32
        mov     si, offset msg_pm
        call    print
        mov     eax, edi
        call    hex32
        call    crlf
        test    ecx, ecx
        jnz     3f
        fail    1
3:      cmp     edi, 178900             # 49.98 ms
        jae     4f
        fail    1
4:      cmp     edi, 894886             # 250 ms
        jbe     5f
        fail    1

# 2. quick_pit_calibrate.
5:      mov     al, 0xB0
        out     0x43, al
        mov     al, 0xFF
        out     0x42, al
        out     0x42, al
        in      al, 0x42                # pit_verify_msb(0): the first edge
        in      al, 0x42
        mov     bl, 0xFF
        call    expect_msb
        call    pm_now
        mov     [QSTART], eax
        mov     dword ptr [QMIN], 0xFFFFFFFF
        mov     dword ptr [QLOW], 0
        mov     dword ptr [QZERO], 0
        mov     bh, 1
1:      mov     bl, 0xFF
        sub     bl, bh
        call    expect_msb
        cmp     ecx, [QMIN]
        jae     2f
        mov     [QMIN], ecx
2:      cmp     ecx, 5
        ja      3f
        inc     dword ptr [QLOW]
3:      test    ecx, ecx
        jnz     4f
        inc     dword ptr [QZERO]
4:      inc     bh
        cmp     bh, 64
        jbe     1b
        mov     ebx, [QSTART]
        call    pm_since
        mov     ecx, eax
        mov     si, offset msg_quick
        call    print
        mov     eax, [QMIN]
        call    hex32
        mov     si, offset msg_low
        call    print
        mov     eax, [QLOW]
        call    hex32
        mov     si, offset msg_zero
        call    print
        mov     eax, [QZERO]
        call    hex32
        mov     si, offset msg_pm
        call    print
        mov     eax, ecx
        call    hex32
        call    crlf
        cmp     ecx, 24576              # 0.5 * 64 * 256 PIT ticks, in PM ticks
        jb      5f
        cmp     ecx, 98304              # 2 times
        jbe     6f
5:      fail    2

# 3. Latch and read-back (channel 2 still counts down from 0xFFFF: OUT low).
6:      mov     al, 0xE8                # read-back: status of channel 2
        out     0x43, al
        in      al, 0x42
        cmp     al, 0x30                # OUT low, count loaded, LSB-MSB, mode 0, binary
        je      1f
        fail    3
1:      mov     al, 0x80                # counter latch, channel 2
        call    latched_minus_live
        jnc     2f
        fail    3
2:      mov     al, 0xD8                # read-back: count of channel 2
        call    latched_minus_live
        jnc     3f
        fail    3
3:      mov     si, offset msg_latch
        call    print

# 4. BCD.
        mov     bp, 5                   # tries
5:      mov     al, 0xB1                # channel 2, LSB then MSB, mode 0, BCD
        out     0x43, al
        xor     al, al
        out     0x42, al
        mov     al, 0x90                # 9000
        out     0x42, al
        mov     ecx, MS
        call    pm_delay
        mov     al, 0x80
        out     0x43, al
        call    read_word
        mov     si, offset msg_bcd
        call    print
        movzx   eax, cx
        call    hex32
        call    crlf
        mov     ax, cx
        mov     dl, 4
1:      mov     bl, al
        and     bl, 0x0F
        cmp     bl, 9
        jbe     2f
        fail    4
2:      shr     ax, 4
        dec     dl
        jnz     1b
        cmp     cx, 0x7900
        jbe     4f
        dec     bp
        jnz     5b
        fail    4

# 5. IRQ 0 in mode 2 at 100 Hz, over one second of the CMOS clock. The 8259 pair at
# vectors 08h and 70h, only IRQ 0 unmasked.
4:      init_8259s 0xFE, 0xFF
        mov     al, 0x34                # channel 0, LSB then MSB, mode 2
        call    pit_100hz
        call    rtc_seconds
        mov     bl, al
        sti
1:      hlt
        call    rtc_seconds
        cmp     al, bl
        je      1b
        mov     dword ptr [TICKS], 0
        mov     bl, al
2:      hlt
        call    rtc_seconds
        cmp     al, bl
        je      2b
        cli
        mov     ecx, [TICKS]
        mov     si, offset msg_mode2
        call    print
        mov     eax, ecx
        call    hex32
        call    crlf
        cmp     ecx, 50
        jb      3f
        cmp     ecx, 102
        jbe     4f
3:      fail    5

# 6. Mode 3, over a quarter second of the PM timer.
4:      mov     al, 0x36                # channel 0, LSB then MSB, mode 3
        call    pit_100hz
        mov     dword ptr [TICKS], 0
        call    pm_now
        mov     ebx, eax
        sti
1:      hlt
        call    pm_since
        cmp     eax, 894886             # 0.25 s
        jb      1b
        cli
        mov     ecx, [TICKS]
        mov     si, offset msg_mode3
        call    print
        mov     eax, ecx
        call    hex32
        call    crlf
        cmp     ecx, 12
        jb      2f
        cmp     ecx, 26
        jbe     3f
2:      fail    6
3:      mov     si, offset msg_ok
        call    print
        exit    0

failed:
        mov     si, offset msg_fail
        call    print
        out     DEBUG_EXIT, al
        hlt

irq0:
        push    ax
        push    ds
        xor     ax, ax
        mov     ds, ax
        inc     dword ptr [TICKS]
        mov     al, 0x20
        out     0x20, al
        pop     ds
        pop     ax
        iret

# Channel 0 in the mode of the control word in AL, at 100 Hz (11932).
pit_100hz:
        out     0x43, al
        mov     al, 0x9C
        out     0x40, al
        mov     al, 0x2E
        out     0x40, al
        ret

# AL: the seconds register of the CMOS clock.
rtc_seconds:
        xor     al, al
        out     0x70, al
        in      al, 0x71
        ret

# pit_expect_msb: counts in ECX the LSB-MSB reads of channel 2 whose MSB is BL (stops at
# the first other value, or at 50000).
expect_msb:
        xor     ecx, ecx
1:      in      al, 0x42
        in      al, 0x42
        cmp     al, bl
        jne     2f
        inc     ecx
        cmp     ecx, 50000
        jb      1b
2:      ret

# CX: channel 2's LSB then MSB.
read_word:
        in      al, 0x42
        mov     cl, al
        in      al, 0x42
        mov     ch, al
        ret

# Latches channel 2 with the command in AL, waits 1 ms, reads the latch, then the live count:
# CF clear when the latch is 1100-60000 ticks above the live count.
latched_minus_live:
        out     0x43, al
        mov     ecx, MS
        call    pm_delay
        call    read_word
        mov     dx, cx
        call    read_word
        sub     dx, cx
        cmp     dx, 1100
        jb      1f
        cmp     dx, 60000
        ja      1f
        clc
        ret
1:      stc
        ret

# EAX: the PM timer.
pm_now:
        push    dx
        mov     dx, PM_TMR
        in      eax, dx
        and     eax, 0xFFFFFF
        pop     dx
        ret

# EAX: PM timer ticks since EBX.
pm_since:
        call    pm_now
        sub     eax, ebx
        and     eax, 0xFFFFFF
        ret

# Waits ECX PM timer ticks.
pm_delay:
        push    ebx
        call    pm_now
        mov     ebx, eax
1:      call    pm_since
        cmp     eax, ecx
        jb      1b
        pop     ebx
        ret

# EAX in hex on COM1.
hex32:
        push    eax
        push    cx
        push    dx
        push    bx
        mov     cx, 8
        mov     dx, COM1
1:      rol     eax, 4
        mov     bl, al
        and     bl, 0x0F
        add     bl, '0'
        cmp     bl, '9'
        jbe     2f
        add     bl, 'a' - '9' - 1
2:      xchg    al, bl
        out     dx, al
        xchg    al, bl
        loop    1b
        pop     bx
        pop     dx
        pop     cx
        pop     eax
        ret

crlf:
        mov     si, offset msg_crlf
        jmp     print

msg_tsc:   .asciz "calibrate_tsc polls "
msg_pm:    .asciz " pm "
msg_quick: .asciz "quick_pit min "
msg_low:   .asciz " low "
msg_zero:  .asciz " zero "
msg_latch: .asciz "latch ok\r\n"
msg_bcd:   .asciz "bcd "
msg_mode2: .asciz "mode2 irqs "
msg_mode3: .asciz "mode3 irqs "
msg_ok:    .asciz "pit ok\r\n"
msg_fail:  .asciz "FAIL\r\n"
msg_crlf:  .asciz "\r\n"

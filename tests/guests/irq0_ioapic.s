# IRQ 0 through the I/O APIC, as an OS that follows the MADT's IRQ0->GSI2 override sees it:
# in 32-bit protected mode with the 8259s masked and the local APIC enabled, I/O APIC pin 2
# is vector 0x30 and pin 0 vector 0x31. PIT channel 0 runs in mode 2 at 100 Hz for half a
# second of PM timer time (interrupts enabled, spinning), then the guest prints
#   pin2 NNNN pin0 MMMM
# (hex counts) and leaves through debug-exit: 0 when pin 2 took 10-75 interrupts (50 due;
# fewer when the VMM is late on a loaded host) and pin 0 none, 1 otherwise. The handlers drop their frame and restart the wait instead of IRET,
# which this host's KVM cannot emulate in protected mode.
        .include "common.inc"
        .include "pmode.inc"
        .set    PIN2_COUNT, 0x500
        .set    PIN0_COUNT, 0x504
        .set    IDT, 0x1000
        .set    IDT_DESC, 0x0F00
        .set    LAPIC, 0xFEE00000
        .set    IOAPIC, 0xFEC00000
        .set    PM_TMR, 0x608
        .set    HALF_SECOND, 1789772    # PM timer ticks (3.579545 MHz)
        .macro  gate vec, handler
        mov     eax, offset \handler + 0xF0000
        mov     word ptr [IDT + \vec * 8], ax
        mov     word ptr [IDT + \vec * 8 + 2], 0x08
        mov     word ptr [IDT + \vec * 8 + 4], 0x8E00
        shr     eax, 16
        mov     word ptr [IDT + \vec * 8 + 6], ax
        .endm
        .macro  redirect pin, low
        mov     dword ptr [IOAPIC], 0x10 + \pin * 2
        mov     dword ptr [IOAPIC + 0x10], \low
        mov     dword ptr [IOAPIC], 0x11 + \pin * 2
        mov     dword ptr [IOAPIC + 0x10], 0        # destination: APIC ID 0
        .endm
start:
        cli
        enter_pmode
        .code32
pm_start:
        mov     ax, 0x10
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     esp, 0x7000
        mov     dword ptr [PIN2_COUNT], 0
        mov     dword ptr [PIN0_COUNT], 0
        # Every vector of the IDT empty but the two pins' and the spurious vector.
        mov     edi, IDT
        mov     ecx, 512
        xor     eax, eax
        rep     stosd
        gate    0x30, isr_pin2
        gate    0x31, isr_pin0
        gate    0xFF, isr_spurious
        mov     word ptr [IDT_DESC], 256 * 8 - 1
        mov     dword ptr [IDT_DESC + 2], IDT
        lidt    [IDT_DESC]
        # The 8259s masked: IRQ 0 can only come through the I/O APIC.
        mov     al, 0xFF
        out     0x21, al
        out     0xA1, al
        # The local APIC on (spurious vector 0xFF); LINT0 masked.
        mov     dword ptr [LAPIC + 0xF0], 0x1FF
        mov     dword ptr [LAPIC + 0x350], 0x10000
        # Edge, active high, fixed, physical, unmasked.
        redirect 2, 0x30
        redirect 0, 0x31
        # PIT channel 0, LSB then MSB, mode 2, 100 Hz.
        mov     al, 0x34
        out     0x43, al
        mov     ax, 11932
        out     0x40, al
        mov     al, ah
        out     0x40, al
        mov     dx, PM_TMR
        in      eax, dx
        mov     ebx, eax
wait:   sti
1:      pause
        in      eax, dx
        sub     eax, ebx
        and     eax, 0xFFFFFF
        cmp     eax, HALF_SECOND
        jb      1b
        cli
        mov     esi, offset tag_pin2 + 0xF0000
        call    print32
        mov     eax, [PIN2_COUNT]
        call    hex16
        mov     esi, offset tag_pin0 + 0xF0000
        call    print32
        mov     eax, [PIN0_COUNT]
        call    hex16
        mov     esi, offset crlf + 0xF0000
        call    print32
        cmp     dword ptr [PIN0_COUNT], 0
        jne     2f
        cmp     dword ptr [PIN2_COUNT], 10
        jb      2f
        cmp     dword ptr [PIN2_COUNT], 75
        ja      2f
        exit    0
2:      exit    1

# EBX (the start time) and EDX (the PM timer port) are the wait's: kept.
isr_pin2:
        inc     dword ptr [PIN2_COUNT]
        mov     dword ptr [LAPIC + 0xB0], 0     # EOI
        add     esp, 12
        jmp     wait
isr_pin0:
        inc     dword ptr [PIN0_COUNT]
        mov     dword ptr [LAPIC + 0xB0], 0
        add     esp, 12
        jmp     wait
isr_spurious:
        add     esp, 12
        jmp     wait

# print32: the string at ESI to COM1.
print32:
        push    edx
        mov     dx, COM1
1:      mov     al, [esi]
        test    al, al
        jz      2f
        out     dx, al
        inc     esi
        jmp     1b
2:      pop     edx
        ret

# hex16: the low 16 bits of EAX in hex.
hex16:
        push    edx
        push    ecx
        mov     ecx, 4
        mov     dx, COM1
        shl     eax, 16
1:      rol     eax, 4
        push    eax
        and     eax, 0x0F
        mov     al, [eax + hex_digits + 0xF0000]
        out     dx, al
        pop     eax
        loop    1b
        pop     ecx
        pop     edx
        ret

hex_digits: .ascii "0123456789abcdef"
tag_pin2: .asciz "pin2 "
tag_pin0: .asciz " pin0 "
crlf:   .asciz  "\r\n"
        gdt_table

# First boot: leaves a mark in RAM and resets through port 0xCF9. After a reboot (RAM kept,
# as on a PC) it sees the mark, counts the boot, and leaves through debug-exit with the
# number of boots (2) once the PAM registers are back at their reset value. Each device the
# first boot changed must be back at its power-on state (an exit code from 0x77 up says which
# was not).
        .include "common.inc"
        .set    MARK, 0x600
start:
        cli
        xor     ax, ax
        mov     ds, ax
        cmp     dword ptr [MARK], 0x746F6F62    # "boot"
        je      again
        mov     dword ptr [MARK], 0x746F6F62
        mov     word ptr [MARK + 4], 1
        # State a reset must clear: the RTC's periodic interrupt enable, the UART's
        # interrupt enables.
        mov     al, 0x0B
        out     0x70, al
        in      al, 0x71
        or      al, 0x40
        out     0x71, al
        mov     dx, 0x3F9
        mov     al, 0x0F
        out     dx, al
        mov     dx, 0x602                       # ACPI PM1 enable: power button
        mov     ax, 0x0100
        out     dx, ax
        mov     ecx, 0x174                      # an MSR: SYSENTER_CS
        mov     eax, 0x1234
        xor     edx, edx
        wrmsr
        mov     al, 0x60                        # i8042 command byte: translation off
        out     0x64, al
        mov     al, 0x05
        out     0x60, al
        mov     al, 0x34                        # PIT channel 0: mode 2, 1000 Hz
        out     0x43, al
        mov     al, 0xA9
        out     0x40, al
        mov     al, 0x04
        out     0x40, al
        mov     al, 0x03                        # port B: gate 2 high, speaker data on
        out     0x61, al
        mov     al, 0xB6                        # channel 2: mode 3, running
        out     0x43, al
        out     0x42, al
        out     0x42, al
        # 0xF0000 write-only RAM (reads still from the ROM this runs from); a reset must
        # bring the PAM registers back to zero.
        mov     dx, 0xCF8
        mov     eax, 0x80000058
        out     dx, eax
        mov     dx, 0xCFD
        mov     al, 0x20
        out     dx, al
        mov     si, offset first
        call    print
        # Long enough for the VMM to give COM1's ring up after the IER write above
        # (src/coalesced_io.rs); the reset must give the next boot the ring back.
        pm_wait 60
        mov     dx, 0xCF9
        mov     al, 0x06
        out     dx, al
        exit    0x7F                            # not reached
again:
        inc     word ptr [MARK + 4]
        mov     dx, 0xCF8                       # the PCI address latch, cleared
        in      eax, dx
        test    eax, eax
        jz      2f
        exit    0x7D
2:      mov     al, 0x0B                        # RTC register B: PIE cleared
        out     0x70, al
        in      al, 0x71
        test    al, 0x40
        jz      3f
        exit    0x7C
3:      mov     dx, 0x3F9                       # UART IER cleared
        in      al, dx
        test    al, al
        jz      4f
        exit    0x7B
4:      mov     dx, 0x602                       # PM1 enable cleared
        in      ax, dx
        test    ax, ax
        jz      5f
        exit    0x7A
5:      mov     al, 0x20                        # the i8042 command byte at its default
        out     0x64, al
        in      al, 0x60
        cmp     al, 0x05
        jne     6f
        exit    0x79
6:      mov     ecx, 0x174                      # SYSENTER_CS back at its reset value
        rdmsr
        test    eax, eax
        jz      7f
        exit    0x78
7:      mov     al, 0xEA                        # PIT read-back: status of channels 0, 2
        out     0x43, al
        in      al, 0x40
        cmp     al, 0x30                        # OUT low, mode 0, LSB-MSB, no count
        jne     8f
        in      al, 0x42
        cmp     al, 0x30
        jne     8f
        in      al, 0x61                        # port B: gate 2 low, speaker off, OUT 2 low
        test    al, 0x2F
        jz      9f
8:      exit    0x77
9:
        mov     si, offset second
        call    print
        mov     dx, 0xCF8
        mov     eax, 0x80000058
        out     dx, eax
        mov     dx, 0xCFD
        in      al, dx                          # PAM0
        test    al, al
        jz      1f
        exit    0x7E
1:      mov     al, [MARK + 4]
        out     DEBUG_EXIT, al
first:  .asciz  "first boot\r\n"
second: .asciz  "second boot\r\n"
